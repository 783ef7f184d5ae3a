"""The path MTU cache (netstack/proto/pmtu.py): RFC 1191 3/5/6.3/7 and Linux's floor."""

from __future__ import annotations

import pytest

from netstack.proto import pmtu

D1, D2, D3 = 0xC6336401, 0xC6336402, 0xC6336403


def test_reports_only_lower_the_estimate() -> None:
    cache = pmtu.PmtuCache()
    assert cache.path_mtu(D1, 1500, 0.0) == 1500
    assert cache.report(D1, 1280, 1500, 0.0) is not None
    assert cache.path_mtu(D1, 1500, 1.0) == 1280
    assert cache.report(D1, 1400, 1500, 2.0) is None  # RFC 1191 3: never raised by a report
    assert cache.report(D1, 1280, 1500, 2.0) is None
    assert cache.report(D1, 1500, 1500, 2.0) is None
    assert cache.path_mtu(D2, 1500, 1.0) == 1500  # per destination
    assert cache.updates == 1 and len(cache) == 1


def test_the_link_mtu_bounds_the_estimate() -> None:
    cache = pmtu.PmtuCache()
    cache.report(D1, 1400, 1500, 0.0)
    assert cache.path_mtu(D1, 1300, 1.0) == 1300  # the link went smaller (DHCP MTU option)


def test_estimates_age_out_after_ten_minutes() -> None:
    """RFC 1191 6.3: raise (forget) the estimate after 10 minutes (Linux mtu_expires 600)."""
    cache = pmtu.PmtuCache()
    cache.report(D1, 1280, 1500, 100.0)
    assert cache.path_mtu(D1, 1500, 699.9) == 1280
    assert cache.path_mtu(D1, 1500, 700.0) == 1500
    assert len(cache) == 0 and cache.expired == 1
    cache.report(D2, 1280, 1500, 100.0)
    cache.expire(800.0)
    assert len(cache) == 0


def test_a_tiny_report_is_clamped_to_the_floor_and_locked() -> None:
    """Linux's min_pmtu 552: below it the estimate is 552 and DF goes off (mtu lock)."""
    cache = pmtu.PmtuCache()
    entry = cache.report(D1, 300, 1500, 0.0)
    assert entry is not None and entry.mtu == 552 and entry.locked
    assert cache.report(D1, 100, 1500, 1.0) is None  # already at the floor
    low = pmtu.PmtuCache(min_mtu=68).report(D1, 300, 1500, 0.0)
    assert low is not None and low.mtu == 300 and not low.locked
    with pytest.raises(ValueError):
        pmtu.PmtuCache(min_mtu=67)


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = pmtu.PmtuCache(max_entries=2)
    cache.report(D1, 1400, 1500, 0.0)
    cache.report(D2, 1400, 1500, 0.0)
    assert cache.lookup(D1, 1.0) is not None  # D1 used: D2 is now the oldest
    cache.report(D3, 1400, 1500, 2.0)
    assert len(cache) == 2
    assert cache.lookup(D2, 3.0) is None
    assert cache.lookup(D1, 3.0) is not None and cache.lookup(D3, 3.0) is not None


@pytest.mark.parametrize(
    ("reported", "quoted", "expected"),
    [
        (1280, 1500, 1280),  # RFC 1191 next-hop MTU
        (0, 1500, 1492),  # RFC 1191 5: old router, plateau below 1500
        (0, 1492, 1006),
        (0, 576, 508),
        (0, 68, 68),
        (1500, 1500, 1492),  # not below the datagram that did not fit: bogus, plateau
        (40, 1500, 1492),  # below 68: bogus
    ],
)
def test_next_hop_mtu_and_plateaus(reported: int, quoted: int, expected: int) -> None:
    assert pmtu.next_hop_mtu(reported, quoted) == expected
