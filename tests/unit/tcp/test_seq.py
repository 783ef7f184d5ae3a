"""Sequence arithmetic modulo 2^32 (RFC 9293 3.4), across the wrap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from netstack.proto.tcp.seq import (
    MASK,
    seq_add,
    seq_diff,
    seq_ge,
    seq_gt,
    seq_in,
    seq_le,
    seq_lt,
    seq_max,
    seq_min,
    unwrap,
    wire,
)

u32 = st.integers(0, MASK)
step = st.integers(1, (1 << 31) - 1)


def test_comparisons_across_the_wrap() -> None:
    top = 0xFFFFFFF0
    assert seq_lt(top, 5) and seq_gt(5, top)
    assert seq_le(top, top) and seq_ge(top, top)
    assert not seq_lt(5, top)
    assert seq_add(top, 0x20) == 0x10
    assert seq_diff(0x10, top) == 0x20 and seq_diff(top, 0x10) == -0x20
    assert seq_max(top, 3) == 3 and seq_min(top, 3) == top
    assert seq_in(2, top, 10) and not seq_in(10, top, 10) and seq_in(top, top, 10)
    assert not seq_in(5, 5, 5)  # empty range


@given(u32, step)
def test_a_step_forward_is_later(a: int, n: int) -> None:
    b = seq_add(a, n)
    assert seq_lt(a, b) and seq_gt(b, a) and not seq_lt(b, a)
    assert seq_diff(b, a) == n and seq_diff(a, b) == -n
    assert seq_in(a, a, b) and not seq_in(b, a, b)


@given(u32, st.integers(-(1 << 31) + 1, (1 << 31) - 1), st.integers(0, 3))
def test_unwrap_finds_the_nearest_value(reference: int, offset: int, laps: int) -> None:
    """A reference anywhere in the unbounded space (a connection that has sent GBs)."""
    ref = reference + laps * (1 << 32)
    target = ref + offset
    assert unwrap(wire(target), ref) == target
    assert wire(target) == target & MASK
