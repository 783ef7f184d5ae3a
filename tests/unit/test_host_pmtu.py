"""ICMP "fragmentation needed" through the whole host (RFC 1191): the next-hop MTU field is
read, UDP sockets learn the path MTU, TCP segments leave with DF."""

from __future__ import annotations

from netstack.drops import Drop
from netstack.wire import ethernet as weth
from netstack.wire import icmp as wicmp
from netstack.wire import ipv4 as wipv4
from tests.unit.hosttools import PEER_IP, drain, feed, ip_frame, learn_peer, make_host


def frag_needed(quoted: bytes, mtu: int) -> bytes:
    message = wicmp.build(wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_FRAG_NEEDED, mtu, quoted)
    return ip_frame(message + quoted, wipv4.PROTO_ICMP)


def test_udp_socket_learns_the_path_mtu() -> None:
    host = make_host()
    learn_peer(host)
    errors = []
    sock = host.udp.bind(0, lambda *a: None, lambda t, c, peer, now: errors.append((t, c, peer)))
    assert sock.path_mtu(PEER_IP) == 1500
    sock.sendto(b"x" * 1400, (PEER_IP, 53))
    (sent,) = drain(host)
    quoted = bytes(sent[weth.HEADER_LEN :])[:28]  # header + 8 bytes, as routers quote
    feed(host, frag_needed(quoted, 1280))
    assert sock.path_mtu(PEER_IP) == 1280
    assert errors == [(wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_FRAG_NEEDED, (PEER_IP, 53))]
    feed(host, frag_needed(quoted, 0))  # old-style: plateau below 1428 -> 1006
    assert sock.path_mtu(PEER_IP) == 1006
    assert host.ipv4.pmtu.updates == 2


def test_frag_needed_for_a_port_nobody_holds_is_a_counted_drop() -> None:
    host = make_host()
    learn_peer(host)
    sock = host.udp.bind(0, lambda *a: None)
    sock.sendto(b"x" * 100, (PEER_IP, 53))
    (sent,) = drain(host)
    sock.close()
    feed(host, frag_needed(bytes(sent[weth.HEADER_LEN :]), 1280))
    assert host.counters.drops[Drop.UDP_ICMP_NO_SOCKET] == 1
    assert host.ipv4.path_mtu(PEER_IP, 0.0) == 1500


def test_tcp_segments_carry_df() -> None:
    host = make_host()
    learn_peer(host)
    host.tcp.connect((PEER_IP, 80))
    host.tcp.flush(0.0)
    (syn,) = drain(host)
    ip, _ = wipv4.parse(memoryview(syn)[weth.HEADER_LEN :])
    assert ip.dont_fragment
