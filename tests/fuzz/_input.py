"""How a fuzz input is laid out, shared by every target: options, split lengths, payload.

How it works: byte 0 holds the target's option flags (each target documents its bits);
byte 1, taken mod 16, says how many split-length bytes follow; the rest is the payload
(the bytes a peer sends, or a message body). Each split-length byte is the size of one
piece, 0 included (an empty receive_data() must change nothing), and the sizes are used
in a cycle until the payload is used up. So the fuzzer chooses the options and the cut
points with a few bytes it can mutate cheaply, and a raw transcript becomes a seed by
putting b"\\x00\\x00" in front of it (seed() does that).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["FuzzInput", "cut", "parse", "seed", "splits"]


@dataclass(frozen=True, slots=True)
class FuzzInput:
    flags: int
    lengths: tuple[int, ...]
    payload: bytes


def parse(data: bytes) -> FuzzInput:
    """Split a fuzz input into its option flags, split lengths and payload."""
    flags = data[0] if data else 0
    count = data[1] % 16 if len(data) > 1 else 0
    lengths = tuple(data[2 : 2 + count])
    return FuzzInput(flags, lengths, data[2 + count :])


def seed(payload: bytes, flags: int = 0, lengths: Iterable[int] = ()) -> bytes:
    """The fuzz input that parse() turns back into these options and this payload."""
    sizes = bytes(lengths)
    if len(sizes) > 15:
        raise ValueError("at most 15 split lengths")
    return bytes([flags, len(sizes)]) + sizes + payload


def cut(payload: bytes, lengths: tuple[int, ...], at: Iterable[int] = ()) -> list[bytes]:
    """``payload`` in pieces of the given sizes, in a cycle, and also cut at each
    offset in ``at`` (boundaries the input must not cross, such as a TLS handshake)."""
    bounds = set(at)
    if any(lengths):
        offset = 0
        for size in itertools.cycle(lengths):
            if offset >= len(payload):
                break
            offset += size
            bounds.add(offset)
    edges = [0, *sorted(b for b in bounds if 0 < b < len(payload)), len(payload)]
    pieces = [payload[a:b] for a, b in itertools.pairwise(edges)]
    if 0 in lengths:  # the fuzzer asked for empty reads: put one between every piece
        pieces = [piece for pair in zip(pieces, itertools.repeat(b"")) for piece in pair]
    return pieces


def splits(fuzz: FuzzInput, at: Iterable[int] = ()) -> list[list[bytes]]:
    """The payload whole, byte by byte, and cut where the fuzzer chose (if it chose);
    every variant is also cut at each offset in ``at``."""
    at = tuple(at)
    payload = fuzz.payload
    variants = [cut(payload, (), at), [payload[i : i + 1] for i in range(len(payload))]]
    if any(fuzz.lengths):
        variants.append(cut(payload, fuzz.lengths, at))
    return variants
