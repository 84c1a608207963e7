"""Receive mail with the blocking driver: a Handler decides, the Server does the rest.

Run: python server_blocking.py [SOCKET_PATH], then deliver to that socket
(/tmp/lmtp-tutorial.sock by default); Ctrl-C stops it gracefully.
"""

import sys
import threading

from lmtp_core import Params, Reply
from transports import Envelope, Handler, blocking

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmtp-tutorial.sock"
QUOTA = 3  # messages per mailbox, to show a failure after the data


class Mailboxes(Handler):
    """Accepts mail for known addresses and keeps it in memory."""

    def __init__(self, addresses: list[str]) -> None:
        self.boxes: dict[str, list[bytes]] = {address: [] for address in addresses}
        self.lock = threading.Lock()  # each session runs in a thread of its own

    def mail_from(self, sender: str, params: Params) -> Reply | None:
        return None  # None accepts (250 2.1.0); "" is the null sender <>

    def rcpt_to(self, recipient: str, params: Params) -> Reply | None:
        if recipient.lower() not in self.boxes:
            return Reply(550, "5.1.1", "No such user here")
        return None  # accepted (250 2.1.5)

    def deliver(self, envelope: Envelope) -> list[Reply | None]:
        # Called once the message is whole; one answer per accepted recipient, in order.
        data = envelope.read()  # or stream envelope.message, a file
        answers: list[Reply | None] = []
        with self.lock:
            for recipient in envelope.recipients:
                box = self.boxes[recipient.lower()]
                if len(box) >= QUOTA:
                    answers.append(Reply(552, "5.2.2", "Mailbox full"))
                else:
                    box.append(data)
                    answers.append(None)  # None: 250 2.0.0 Delivered
        return answers


def main() -> None:
    handler = Mailboxes(["alice@example.org", "bob@example.org"])
    server = blocking.Server(handler, socket_path=SOCKET)  # listening from here on
    print("listening on", server.address)
    try:
        server.serve_forever()  # accepts in this thread, one thread per session
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()  # 421 to idle sessions, `grace` seconds for the others
    for address, box in handler.boxes.items():
        print(address, len(box), "messages")


if __name__ == "__main__":
    main()
