"""Core bugs the fuzzers found that are not fixed yet, by the seed file that shows each.

How it works: the crashing input stays in corpus/<target>/ under the name given here.
test_fuzz_targets.py runs it as a strict xfail (so the fix is noticed), and run_all.py
leaves it out of the fuzzing corpus (libFuzzer would stop on it at once and find nothing
else). When the core is fixed, delete the entry: the file becomes an ordinary seed.
"""

from __future__ import annotations

KNOWN_BUGS: dict[str, str] = {}
# Fixed: "crash-reply-ahead-of-the-body" (a reply received with the 354, before the
# body went out, was paired as a reply after the data); the core now closes on a reply
# ahead of what it would answer, the client-session target asserts it again, and the
# file is an ordinary seed.
# Fixed: "crash-nonascii-parameter-in-reply" (a non-ASCII parameter echoed into a 501's
# text made Reply() raise out of next_event()); the file is now an ordinary seed.
