"""Connections are keyed by the full 4-tuple (local address, local port, remote address, remote
port): one peer port talking to two of our IPv6 addresses (link-local and a static one) makes
two connections, each answered from its own address, and everything that looks a connection up
(segments, RSTs, ICMPv6 errors, TIME_WAIT, `netstack ss`) finds the right one."""

from __future__ import annotations

import errno

import pytest
from scapy.layers import inet6 as s6
from scapy.layers.l2 import Ether

from netstack.api.tcp import Protocol
from netstack.api.tcp import connect as tcp_connect
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.introspect import connection_table
from netstack.wire import ipv6 as wipv6
from tests.unit.tcp.test_tcp6 import ISN, checked, host_with_echo
from tests.unit.test_host_ipv6 import OUR_LL_S, PEER_LL_S, STATIC_S, feed, peer

SPORT = 40000
OURS = (STATIC_S, OUR_LL_S)


def seg(dst: str, flags: str, seq: int, ack: int = 0, data: bytes = b"", **kw):
    """From the peer's link-local address and one port, to `dst` (one of ours), port 7."""
    return peer(dst, src=PEER_LL_S) / s6.TCP(
        sport=SPORT, dport=7, flags=flags, seq=seq, ack=ack, window=65535, **kw
    ) / data  # fmt: skip


def open_both(tcp: TcpConfig | None = None):
    host = host_with_echo(tcp)
    for dst in OURS:
        out = feed(host, seg(dst, "S", ISN, options=[("MSS", 1440)]), 2.0)
        (synack,) = [checked(f) for f in out]
        assert synack[s6.IPv6].src == dst and synack[s6.TCP].flags == "SA"
        assert feed(host, seg(dst, "A", ISN + 1, 5001), 2.0) == []
    return host


def test_one_peer_port_to_two_of_our_addresses_makes_two_connections() -> None:
    host = open_both()
    assert host.tcp.connections_by_state()["established"] == 2
    for i, dst in enumerate(OURS):
        data = f"to {dst}".encode()
        out = [checked(f) for f in feed(host, seg(dst, "PA", ISN + 1, 5001, data), 3.0 + i)]
        (echo,) = [f for f in out if len(f[s6.TCP].payload)]
        assert echo[s6.IPv6].src == dst and bytes(echo[s6.TCP].payload) == data
    table = connection_table(host.tcp, 5.0)
    assert [e["local"] for e in table["listeners"]] == ["*:7"]  # ss's dual-family listener
    local = sorted(c["local"] for c in table["connections"])
    assert local == sorted([f"[{STATIC_S}]:7", f"[{OUR_LL_S}]:7"])
    assert {c["peer"] for c in table["connections"]} == {f"[{PEER_LL_S}]:{SPORT}"}


def test_icmpv6_errors_rst_and_time_wait_find_the_right_connection() -> None:
    host = open_both()
    by_local = {wipv6.to_str(c.local_ip): c for c in host.tcp.conns.values()}
    # data in flight on both; a Packet Too Big quoting the link-local one's segment
    sent = {}
    for dst in OURS:
        out = feed(host, seg(dst, "PA", ISN + 1, 5001, bytes(3000)), 3.0)
        sent[dst] = [checked(f) for f in out if len(f[s6.TCP].payload)]
    quoted = bytes(sent[OUR_LL_S][0][s6.IPv6])[:1232]
    feed(host, peer(OUR_LL_S, src=PEER_LL_S) / s6.ICMPv6PacketTooBig(mtu=1280) / quoted, 3.1)
    assert by_local[OUR_LL_S].mss == 1220 and by_local[STATIC_S].mss == 1440
    # a RST to the static address ends that one only
    feed(host, seg(STATIC_S, "R", ISN + 3001), 3.2)
    assert by_local[STATIC_S].state.value == "closed"
    assert by_local[OUR_LL_S].state.value == "established"
    # the link-local one closes actively into TIME_WAIT; a new SYN to the static address with
    # the same peer port is a new connection, not that TIME_WAIT's business
    conn = by_local[OUR_LL_S]
    feed(host, seg(OUR_LL_S, "A", ISN + 3001, conn.snd_nxt & 0xFFFFFFFF), 3.3)
    conn.close()
    host.tcp.flush(3.4)
    host.tx.clear()
    feed(host, seg(OUR_LL_S, "FA", ISN + 3001, conn.snd_nxt & 0xFFFFFFFF), 3.5)
    assert conn.state.value == "time_wait"
    out = [checked(f) for f in feed(host, seg(STATIC_S, "S", 77777), 3.6)]
    assert [(f[s6.IPv6].src, str(f[s6.TCP].flags)) for f in out] == [(STATIC_S, "SA")]
    assert conn.state.value == "time_wait"
    assert host.tcp.connections_by_state()["syn_received"] == 1


def test_checked_mode_counts_arrivals_per_local_address() -> None:
    """The invariant checker's arrival counts use the same key: a duplicate ACK answering an
    out-of-order segment on one address is allowed, whatever the other connection does."""
    host = open_both(TcpConfig(checked=True))
    for i in range(3):
        for dst in OURS:
            out = feed(host, seg(dst, "A", ISN + 101 + 100 * i, 5001, b"x" * 100), 3.0 + i / 10)
            assert [(f[s6.IPv6].src, checked(f)[s6.TCP].ack) for f in out] == [(dst, ISN + 1)]
    assert host.tcp.connections_by_state()["established"] == 2


def test_active_opens_from_a_chosen_address_share_a_port() -> None:
    """connect(..., local_ip) (a socket bound to one of our addresses): two connections from
    one local port to one peer port, one per local address; a foreign source is refused."""
    host = host_with_echo()
    remote = (wipv6.from_str(PEER_LL_S), 22)
    conns = [tcp_connect(host.tcp, (PEER_LL_S, 22), Protocol, 50000, ours) for ours in OURS]
    host.tcp.flush(2.0)
    syns = [checked(Ether(b"".join(bytes(p) for p in f))) for f in host.tx]
    host.tx.clear()
    assert sorted((f[s6.IPv6].src, f[s6.TCP].sport, str(f[s6.TCP].flags)) for f in syns) == sorted(
        (ours, 50000, "S") for ours in OURS
    )
    assert {t.get_extra_info("sockname") for t in conns} == {(ours, 50000) for ours in OURS}
    for bad in ("2001:db8::99", "192.0.2.2"):  # not ours; ours but the other family
        with pytest.raises(OSError) as err:
            host.tcp.connect(remote, 50001, wipv6.from_str(bad) if ":" in bad else 0xC0000202)
        assert err.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(OSError) as err:  # the same 4-tuple twice
        host.tcp.connect(remote, 50000, wipv6.from_str(STATIC_S))
    assert err.value.errno == errno.EADDRINUSE


def test_syn_cookies_per_local_address() -> None:
    """Cookie handshakes from one peer port to two of our addresses: each cookie is bound to
    its own 4-tuple (our address in it), and each completes its own connection."""
    host = host_with_echo()
    host.tcp.listeners[7].syn_backlog = 0  # every SYN is answered with a cookie
    cookies = {}
    for dst in OURS:
        (synack,) = [checked(f) for f in feed(host, seg(dst, "S", ISN), 2.0)]
        assert synack[s6.IPv6].src == dst
        cookies[dst] = synack[s6.TCP].seq
    assert cookies[STATIC_S] != cookies[OUR_LL_S] and not host.tcp.conns
    # the static address's cookie does not open a connection on the link-local one
    out = [checked(f) for f in feed(host, seg(OUR_LL_S, "A", ISN + 1, cookies[STATIC_S] + 1))]
    assert [str(f[s6.TCP].flags) for f in out] == ["R"] and not host.tcp.conns
    for dst in OURS:
        data = f"cookie to {dst}".encode()
        out = [checked(f) for f in feed(host, seg(dst, "PA", ISN + 1, cookies[dst] + 1, data))]
        (echo,) = [f for f in out if len(f[s6.TCP].payload)]
        assert echo[s6.IPv6].src == dst and echo[s6.TCP].load == data
    assert host.counters.tcp_syn_cookies_validated == 2
    assert host.tcp.connections_by_state()["established"] == 2
