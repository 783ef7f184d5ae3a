"""RFC 6528 ISNs, timestamp offsets, and SYN cookies (RFC 4987, Linux's layout)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from netstack.proto.tcp.isn import (
    MSS_TABLE,
    Secrets,
    cookie_ts_options,
    cookie_tsval,
    tuple_bytes,
)

T1 = tuple_bytes(0xC0000202, 80, 0xC0000201, 40000)
T2 = tuple_bytes(0xC0000202, 80, 0xC0000201, 40001)


def test_isn_is_keyed_per_tuple_and_runs_on_a_4us_clock() -> None:
    s = Secrets(b"key")
    assert s.isn(T1, 10.0) != s.isn(T2, 10.0)
    assert (s.isn(T1, 10.001) - s.isn(T1, 10.0)) & 0xFFFFFFFF == 250  # 1 ms = 250 ticks
    assert Secrets(b"other").isn(T1, 10.0) != s.isn(T1, 10.0)  # the secret matters
    assert Secrets().isn(T1, 10.0) != Secrets().isn(T1, 10.0)  # random secrets


def test_timestamp_offset_is_per_tuple() -> None:
    s = Secrets(b"key")
    assert s.ts_offset(T1) == s.ts_offset(T1) != s.ts_offset(T2)


@given(st.integers(0, 0xFFFFFFFF), st.integers(100, 9000), st.floats(0, 1e7))
def test_cookie_round_trip(peer_isn: int, mss: int, now: float) -> None:
    s = Secrets(b"key")
    cookie, encoded = s.make_cookie(T1, peer_isn, mss, now)
    assert encoded in MSS_TABLE and encoded <= max(mss, MSS_TABLE[0])
    assert s.check_cookie(T1, peer_isn, cookie, now + 100.0) == encoded


def test_cookie_fails_for_another_tuple_secret_or_age() -> None:
    s = Secrets(b"key")
    cookie, mss = s.make_cookie(T1, 1234, 1460, 1000.0)
    assert mss == 1460
    assert s.check_cookie(T2, 1234, cookie, 1000.0) is None
    assert Secrets(b"nope").check_cookie(T1, 1234, cookie, 1000.0) is None
    assert s.check_cookie(T1, 1234, cookie, 1000.0 + 64 * 2) == 1460  # two ticks: still ok
    assert s.check_cookie(T1, 1234, cookie, 1000.0 + 64 * 4) is None  # too old
    # Hash bits flipped: forged. (Like Linux's, the check on the low bits is weak by design:
    # the ACK must also carry our cookie in full, and the peer's ISN is its own to choose.)
    assert s.check_cookie(T1, 1234, cookie ^ 0x1000, 1000.0) is None


def test_cookie_mss_rounds_down_to_the_table() -> None:
    s = Secrets(b"key")
    assert s.make_cookie(T1, 1, 1400, 0.0)[1] == 1300
    assert s.make_cookie(T1, 1, 100, 0.0)[1] == 536  # below the table: its smallest


@given(st.integers(0, 0xFFFFFFFF), st.one_of(st.none(), st.integers(0, 14)), st.booleans())
def test_cookie_timestamp_carries_wscale_and_sack(tsval: int, wscale, sack: bool) -> None:
    ts = cookie_tsval(tsval, wscale, sack)
    assert ((tsval - ts) & 0xFFFFFFFF) < 64  # never ahead of the clock, at most 63 behind
    assert cookie_ts_options(ts) == (wscale, sack)
