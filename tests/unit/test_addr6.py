"""IPv6 address table: states, lifetimes, source selection, RFC 7217 interface IDs."""

from __future__ import annotations

from netstack.proto.addr6 import (
    AddressTable,
    AddrState,
    Ipv6Interface,
    Origin,
    multicast_mac,
    solicited_node,
    stable_iid,
)
from netstack.wire import ipv6 as wipv6

A = wipv6.from_str


def test_solicited_node_and_mac() -> None:
    group = solicited_node(A("2001:db8::aabb:ccdd"))
    assert group == A("ff02::1:ffbb:ccdd")
    assert multicast_mac(group) == bytes.fromhex("3333ffbbccdd")


def test_stable_iid_is_stable_opaque_and_per_prefix() -> None:
    one = stable_iid(A("2001:db8:1::"), "tap0", b"secret")
    assert one == stable_iid(A("2001:db8:1::"), "tap0", b"secret")
    assert one != stable_iid(A("2001:db8:2::"), "tap0", b"secret")
    assert one != stable_iid(A("2001:db8:1::"), "tap0", b"other")
    assert one != stable_iid(A("2001:db8:1::"), "tap0", b"secret", dad_counter=1)
    assert len(one) == 8


def test_lifetimes_deprecate_then_remove() -> None:
    table = AddressTable()
    e = Ipv6Interface(A("2001:db8:1::5"), 64, Origin.SLAAC, AddrState.PREFERRED, 100.0, 50.0)
    table.add(e)
    assert table.next_deadline() == 50.0
    table.poll(50.0)
    assert e.state is AddrState.DEPRECATED and table.is_ours(e.address)
    assert table.poll(100.0) == [e] and not table.is_ours(e.address)


def test_tentative_is_not_ours() -> None:
    table = AddressTable()
    table.add(Ipv6Interface(A("fe80::1"), 64, Origin.LINK_LOCAL))
    assert not table.is_ours(A("fe80::1")) and table.select_source(A("fe80::2")) is None


def test_source_selection_scope_and_deprecation() -> None:
    table = AddressTable()
    ll = Ipv6Interface(A("fe80::1"), 64, Origin.LINK_LOCAL, AddrState.PREFERRED)
    g1 = Ipv6Interface(A("2001:db8:1::1"), 64, Origin.SLAAC, AddrState.DEPRECATED)
    g2 = Ipv6Interface(A("2001:db8:2::1"), 64, Origin.SLAAC, AddrState.PREFERRED)
    for e in (ll, g1, g2):
        table.add(e)
    assert table.select_source(A("fe80::9")) == ll.address  # rule 2: smallest scope reaching it
    assert table.select_source(A("2001:db8:1::9")) == g2.address  # rule 3 beats rule 8
    assert table.select_source(A("2001:db8:1::1")) == g1.address  # rule 1
    g1.state = AddrState.PREFERRED
    assert table.select_source(A("2001:db8:1::9")) == g1.address  # rule 8
    assert table.select_source(A("ff02::1")) == ll.address
