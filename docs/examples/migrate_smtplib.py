"""The same delivery with smtplib.LMTP and with transports.blocking.deliver(), side by side.

Run: python migrate_smtplib.py [SOCKET_PATH] against a server that refuses
nobody@example.org at RCPT and fails full@example.org after the data (the docs' tests
run it against the pytest plugin's lmtp_server, set up so). One message goes to four
recipients: smtplib reads one reply after the data, where LMTP sends one per accepted
recipient (three here), so it reports only the first and its next commands read the
replies it left behind; deliver() reports each recipient's own outcome.
"""

import smtplib
import sys

from transports import LMTPError, blocking

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"
SENDER = "app@example.net"
RECIPIENTS = ["alice@example.org", "nobody@example.org", "full@example.org", "bob@example.org"]
MESSAGE = b"Subject: side by side\r\n\r\nOne message, four recipients.\r\n"


def with_smtplib() -> None:
    lmtp = smtplib.LMTP(SOCKET)  # a path starting with "/" is a UNIX socket
    try:
        # sendmail() returns the recipients refused at RCPT; it raises
        # SMTPRecipientsRefused if all were, SMTPDataError if the ONE reply it reads
        # after the data is not 250, SMTPServerDisconnected if the connection ends.
        refused = lmtp.sendmail(SENDER, RECIPIENTS, MESSAGE)
        print("smtplib: refused at RCPT:", refused)
        print("smtplib: nothing raised, so every other recipient looks delivered")
        # The replies for full@ and bob@ are still waiting on the connection: the next
        # commands read them as their own.
        print("smtplib: NOOP got", lmtp.noop())
        print("smtplib: QUIT got", lmtp.docmd("QUIT"))
    except smtplib.SMTPException as exc:
        print("smtplib:", type(exc).__name__, exc)
    finally:
        lmtp.close()


def with_lmtp() -> int:
    try:
        result = blocking.deliver(MESSAGE, SENDER, RECIPIENTS, socket_path=SOCKET)
    except LMTPError as exc:  # nobody could be tried: no connection, TLS, the session
        print("lmtp: not delivered:", exc)
        return 75
    for r in result.recipients:  # one outcome per recipient, in the order given
        print("lmtp:", r.recipient, r.status, r.stage, r.reply or r.reason)
    print("lmtp: to retry later:", [r.recipient for r in result.retry])  # temporary, unknown
    print("lmtp: to bounce:", [r.recipient for r in result.failed])  # permanent
    return 0


if __name__ == "__main__":
    with_smtplib()
    sys.exit(with_lmtp())
