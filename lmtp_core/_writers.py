"""Events to bytes: replies for the server, command lines for the client.

How it works: plain formatting, no state. Everything written here was validated
before it got here (Reply checks its own text; the client connection checks
addresses and parameters), so a writer never sees CR, LF or NUL in its input.
"""

from __future__ import annotations

from ._events import Params, Reply


def write_reply(reply: Reply) -> bytes:
    text, enhanced = reply.text, reply.enhanced
    if "\n" not in text:  # one line, nearly every reply: no per-line formatting
        if enhanced:
            return f"{reply.code} {enhanced} {text}\r\n".encode()
        return f"{reply.code} {text}\r\n".encode()
    head = f"{reply.code}"
    enhanced = f"{enhanced} " if enhanced else ""
    lines = reply.lines
    last = len(lines) - 1
    return "".join(
        f"{head}{'-' if i < last else ' '}{enhanced}{line}\r\n" for i, line in enumerate(lines)
    ).encode("utf-8")


def write_params(params: Params) -> str:
    return "".join(f" {key}" if value is None else f" {key}={value}" for key, value in params)
