"""Sequence-number arithmetic modulo 2^32 (RFC 9293 3.4), and unwrapping to plain integers.

On the wire a sequence number is 32 bits and wraps. Comparisons are modular: `a` is before `b`
when b - a (mod 2^32) lies in (0, 2^31). The functions below implement that, for sequence
numbers and (RFC 7323) timestamps alike.

Inside a connection every sequence number is *unwrapped*: an unbounded Python int that equals
the wire value modulo 2^32 (the ISN itself is a 32-bit value; counting up from it never wraps).
A received value is unwrapped against a reference the connection already holds (RCV.NXT for
SEG.SEQ, SND.UNA for SEG.ACK) by taking the representative nearest to it. That is exact for
anything within 2^31 of the reference — every value that can be acceptable is, since windows
are below 2^30 (RFC 7323 2.3) — and it lets the state machine use plain `<` and `-` with no
wrap bugs. The wrap is exercised by tests that start connections just below 2^32.
"""

from __future__ import annotations

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def seq_add(a: int, n: int) -> int:
    """a + n on the wire (mod 2^32)."""
    return (a + n) & MASK


def seq_diff(a: int, b: int) -> int:
    """The signed distance a - b, in [-2^31, 2^31)."""
    d = (a - b) & MASK
    return d - MOD if d >= HALF else d


def seq_lt(a: int, b: int) -> bool:
    """a is strictly before b."""
    return 0 < ((b - a) & MASK) < HALF


def seq_le(a: int, b: int) -> bool:
    return ((b - a) & MASK) < HALF


def seq_gt(a: int, b: int) -> bool:
    return 0 < ((a - b) & MASK) < HALF


def seq_ge(a: int, b: int) -> bool:
    return ((a - b) & MASK) < HALF


def seq_in(x: int, lo: int, hi: int) -> bool:
    """lo <= x < hi, modulo 2^32 (an empty range when lo == hi)."""
    return ((x - lo) & MASK) < ((hi - lo) & MASK)


def seq_max(a: int, b: int) -> int:
    return b if seq_lt(a, b) else a


def seq_min(a: int, b: int) -> int:
    return a if seq_lt(a, b) else b


def unwrap(wire: int, reference: int) -> int:
    """The unbounded value congruent to `wire` (mod 2^32) nearest to `reference`."""
    d = (wire - reference) & MASK
    return reference + (d - MOD if d >= HALF else d)


def wire(seq: int) -> int:
    """The 32-bit on-the-wire form of an unwrapped sequence number."""
    return seq & MASK


# Timestamps (RFC 7323 5.2) compare the same way.
ts_lt = seq_lt
ts_le = seq_le
