"""TCP over IPv6 through a whole Host (Ethernet, IPv6, ND, ICMPv6): every segment in is built by
scapy (IPv6()/TCP(), its checksum), every segment out is parsed by scapy and its checksum
recomputed by scapy, so the pseudo-header (RFC 8200 8.1) is checked both ways."""

from __future__ import annotations

import errno

from scapy.layers import inet6 as s6
from scapy.layers.l2 import Ether

from netstack.api.services import start_services
from netstack.drops import Drop
from netstack.io import offload
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.introspect import connection_table
from netstack.proto.tcp.net import v6_sum
from netstack.wire import ipv6 as wipv6
from netstack.wire import tcp as wtcp
from netstack.wire import vnet
from tests.unit.tcp.tcptools import RecordingHandler
from tests.unit.test_host_ipv6 import OUR_LL_S, PEER_MAC_S, STATIC_S, feed, peer, ready_host

PEER_S = "2001:db8::1"  # on-link: the static address's /64
ISN = 1000


def tcp_in(flags: str, seq: int, ack: int = 0, sport: int = 40000, dport: int = 7, data=b"", **kw):
    """A segment from the peer to our static address (scapy computes the checksum)."""
    return peer(STATIC_S, src=PEER_S) / s6.TCP(
        sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=65535, **kw
    ) / data  # fmt: skip


def checked(frame: Ether) -> Ether:
    """The frame, after asserting scapy computes the same TCP checksum we sent."""
    tcp = frame[s6.TCP]
    sent = tcp.chksum
    tcp.chksum = None
    again = Ether(bytes(frame))
    assert again[s6.TCP].chksum == sent, "TCP checksum over the IPv6 pseudo-header differs"
    return again


def v6_host(tcp: TcpConfig | None = None):
    """ready_host, and the peer's global address resolved (its NS: a STALE entry)."""
    host = ready_host(tcp=tcp)
    ns = peer(STATIC_S, "ff02::1:ff00:2", src=PEER_S, hlim=255) / s6.ICMPv6ND_NS(
        tgt=STATIC_S
    ) / s6.ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC_S)  # fmt: skip
    out = feed(host, ns, 1.6)
    assert out[0].haslayer(s6.ICMPv6ND_NA)
    return host


def host_with_echo(tcp: TcpConfig | None = None):
    host = v6_host(tcp)
    start_services(host.udp, {"tcp_echo": 7}, host.tcp)
    host.tcp.choose_isn = lambda conn, now: 5000
    return host


def handshake(host, sport: int = 40000):
    out = feed(host, tcp_in("S", ISN, sport=sport, options=[("MSS", 1440)]), 2.0)
    assert len(out) == 1
    synack = checked(out[0])
    ip, tcp = synack[s6.IPv6], synack[s6.TCP]
    assert (ip.src, ip.dst) == (STATIC_S, PEER_S)  # from the address the SYN came to
    assert tcp.flags == "SA" and tcp.ack == ISN + 1 and tcp.seq == 5000
    assert dict(tcp.options)["MSS"] == 1440  # RFC 8200: MTU 1500 - 40 - 20
    assert feed(host, tcp_in("A", ISN + 1, 5001, sport=sport), 2.0) == []
    return synack


def test_pseudo_header_sum_matches_scapy() -> None:
    src, dst = wipv6.from_str("2001:db8::2"), wipv6.from_str("fe80::1:2:3:ffff")
    payload = b"hello, v6" * 7
    ours = wtcp.build(v6_sum(src, dst), 0, 1234, 80, 7, 9, wtcp.ACK | wtcp.PSH, 512, payload)
    ref = s6.IPv6(src="2001:db8::2", dst="fe80::1:2:3:ffff") / s6.TCP(
        sport=1234, dport=80, seq=7, ack=9, flags="PA", window=512
    ) / payload  # fmt: skip
    assert ours == bytes(s6.IPv6(bytes(ref))[s6.TCP])[:20]


def test_passive_open_and_echo_over_v6() -> None:
    host = host_with_echo()
    handshake(host)
    out = feed(host, tcp_in("PA", ISN + 1, 5001, data=b"ping over six"), 3.0)
    data = [checked(f) for f in out if len(f[s6.TCP].payload)]
    assert len(data) == 1 and bytes(data[0][s6.TCP].payload) == b"ping over six"
    assert data[0][s6.TCP].seq == 5001 and data[0][s6.IPv6].dst == PEER_S
    table = connection_table(host.tcp, 3.0)
    (conn,) = table["connections"]
    assert conn["local"] == "[2001:db8::2]:7" and conn["peer"] == "[2001:db8::1]:40000"
    assert conn["tcp_info"]["tcpi_pmtu"] == 1500
    assert host.counters.tcp_passive_opens == 1


def test_closed_port_gets_a_reset_over_v6() -> None:
    host = v6_host()
    out = feed(host, tcp_in("S", ISN, dport=9), 2.0)
    rst = checked(out[0])
    assert rst[s6.IPv6].src == STATIC_S and rst[s6.IPv6].dst == PEER_S
    assert rst[s6.TCP].flags == "RA" and rst[s6.TCP].seq == 0 and rst[s6.TCP].ack == ISN + 1
    assert host.counters.drops[Drop.TCP_NO_LISTENER] == 1
    # a bad checksum is a counted drop, never a RST
    bad = tcp_in("S", ISN, dport=9, chksum=0x1234)
    assert feed(host, bad, 2.0) == []
    assert host.counters.drops[Drop.TCP_BAD_CHECKSUM] == 1


def test_tcp_to_a_group_is_dropped() -> None:
    host = ready_host()
    seg = peer("ff02::1", src=PEER_S) / s6.TCP(sport=1, dport=7, flags="S")
    assert feed(host, seg, 2.0) == []
    assert host.counters.drops[Drop.TCP_NOT_UNICAST] == 1


def test_one_listener_takes_both_families() -> None:
    host = host_with_echo()
    handshake(host)
    from scapy.layers.inet import IP, TCP

    v4 = Ether(src="02:aa:bb:cc:dd:02", dst="02:aa:bb:cc:dd:01") / IP(
        src="192.0.2.1", dst="192.0.2.2"
    ) / TCP(sport=40000, dport=7, flags="S", seq=ISN)  # fmt: skip
    out = feed(host, v4, 2.0)
    # needs ARP first (the peer's MAC is not known over IPv4): the SYN-ACK waits on it
    assert host.tcp.connections_by_state()["syn_received"] == 1
    assert host.tcp.connections_by_state()["established"] == 1
    assert len(host.tcp.conns) == 2 and any(type(k[0]) is int for k in host.tcp.conns)
    del out


def test_syn_cookie_over_v6() -> None:
    host = host_with_echo()
    listener = host.tcp.listeners[7]
    listener.syn_backlog = 0  # every SYN is answered with a cookie
    out = feed(host, tcp_in("S", ISN, options=[("MSS", 1440)]), 2.0)
    synack = checked(out[0])
    assert host.counters.tcp_syn_cookies_sent == 1 and not host.tcp.conns
    cookie = synack[s6.TCP].seq
    assert dict(synack[s6.TCP].options)["MSS"] == 1440
    out = feed(host, tcp_in("PA", ISN + 1, cookie + 1, data=b"via cookie"), 2.0)
    assert host.counters.tcp_syn_cookies_validated == 1
    echoed = [checked(f) for f in out if len(f[s6.TCP].payload)]
    assert bytes(echoed[0][s6.TCP].payload) == b"via cookie"
    # the cookie is bound to the v6 4-tuple: another port's ACK fails
    feed(host, tcp_in("S", ISN, sport=40001), 2.0)
    out = feed(host, tcp_in("A", ISN + 1, cookie + 1, sport=40002), 2.0)
    assert checked(out[0])[s6.TCP].flags == "R"


def test_active_open_from_the_rfc6724_source() -> None:
    host = ready_host()
    host.tcp.choose_isn = lambda conn, now: 7000
    conn = host.tcp.connect((wipv6.from_str("fe80::2"), 22))
    conn.handler = RecordingHandler(conn, [])
    host.tcp.flush(2.0)
    out = [checked(Ether(b"".join(bytes(p) for p in f))) for f in host.tx]
    host.tx.clear()
    (syn,) = out
    assert syn[s6.IPv6].src == OUR_LL_S  # rule 2: link-local to a link-local peer
    assert syn[s6.TCP].flags == "S" and dict(syn[s6.TCP].options)["MSS"] == 1440
    sport = syn[s6.TCP].sport
    answer = peer(OUR_LL_S) / s6.TCP(
        sport=22, dport=sport, flags="SA", seq=ISN, ack=7001, options=[("MSS", 1440)]
    )  # fmt: skip
    out = feed(host, answer, 2.1)
    assert checked(out[0])[s6.TCP].flags == "A"
    assert conn.state.value == "established" and conn.mss == 1440


def test_port_unreachable_refuses_a_connect() -> None:
    host = v6_host()
    conn = host.tcp.connect((wipv6.from_str(PEER_S), 9))
    handler = conn.handler = RecordingHandler(conn, [])
    host.tcp.flush(2.0)
    syn = Ether(b"".join(bytes(p) for p in host.tx[-1]))
    host.tx.clear()
    err = peer(STATIC_S, src=PEER_S) / s6.ICMPv6DestUnreach(code=4) / bytes(syn[s6.IPv6])
    feed(host, err, 2.1)
    assert conn.state.value == "closed"
    assert handler.closed and handler.closed[0].errno == errno.ECONNREFUSED


def test_packet_too_big_shrinks_the_segments_in_flight() -> None:
    host = host_with_echo()
    handshake(host)
    data = bytes(range(256)) * 12  # 3072 bytes: three segments at MSS 1440 (no timestamps)
    out = feed(host, tcp_in("PA", ISN + 1, 5001, data=data), 3.0)
    sent = [checked(f) for f in out if len(f[s6.TCP].payload)]
    assert [len(f[s6.TCP].payload) for f in sent] == [1440, 1440, 192]
    # a PTB quoting a segment not in flight is ignored (RFC 5927)
    stale = bytes(sent[0][s6.IPv6])
    forged = bytearray(stale)
    forged[40 + 4 : 40 + 8] = (12345).to_bytes(4, "big")
    feed(host, peer(STATIC_S, src=PEER_S) / s6.ICMPv6PacketTooBig(mtu=1280) / bytes(forged[:1232]))
    assert host.counters.drops[Drop.TCP_ICMP_OUT_OF_WINDOW] == 1
    assert host.v6.ipv6.pmtu.lookup(wipv6.from_str(PEER_S), 3.0) is None  # not even lowered
    ptb = peer(STATIC_S, src=PEER_S) / s6.ICMPv6PacketTooBig(mtu=1280) / stale[:1232]
    out = feed(host, ptb, 3.1)
    resent = [checked(f) for f in out]
    # RFC 8201: MTU 1280 -> MSS 1220; the lost bytes go again at the new size, no fragments
    # (each lost segment is cut at the new MSS, as over IPv4: recovery.simple_retransmit)
    got = [(f[s6.TCP].seq, len(f[s6.TCP].payload)) for f in resent]
    assert got == [(5001, 1220), (6221, 220), (6441, 1220), (7661, 220)]
    assert host.tcp.conns[next(iter(host.tcp.conns))].mss == 1220
    assert all(not f.haslayer(s6.IPv6ExtHdrFragment) for f in resent)
    assert all(len(f[s6.IPv6]) <= 1280 for f in resent)


def test_tso6_super_segment_is_cut_into_valid_wire_segments() -> None:
    host = host_with_echo()
    handshake(host)
    host.tcp.config.tso6_max = offload.TSO_MAX
    conn = next(iter(host.tcp.conns.values()))
    conn.send(bytes(range(250)) * 200)  # 50 000 bytes; the initial window is 10 segments
    host.tcp.flush(3.0)
    (frame,) = host.tx
    host.tx.clear()
    mark = vnet.find_mark(frame)
    assert mark is not None
    # TCPV6: headers 14 + 40 + 20, the checksum at 54 + 16, pieces of one MSS
    assert mark.vnet == vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV6, 74, 1440, 54, 16)
    data = b"".join(bytes(p) for p in frame)
    assert int.from_bytes(data[18:20], "big") == len(data) - 54 == 20 + 10 * 1440
    segments = vnet.software_segments(data, mark.vnet)
    assert len(segments) == 10
    seqs = [checked(Ether(s))[s6.TCP].seq for s in segments]  # every checksum valid once cut
    assert seqs == [5001 + i * 1440 for i in range(10)]
    assert (host.counters.gso_frames_tx, host.counters.gso_segments_tx) == (1, 10)


def test_a_tcpv6_gro_super_frame_is_one_segment() -> None:
    host = host_with_echo()
    handshake(host)
    payload = bytes(range(256)) * 100  # 25 600 bytes: 18 wire segments of 1440
    frame = bytearray(bytes(tcp_in("A", ISN + 1, 5001, data=payload)))
    tcp_len = len(frame) - 54
    # as the kernel hands a CHECKSUM_PARTIAL frame: the field holds the pseudo-header sum
    frame[70:72] = vnet.pseudo_sum(v6_sum(frame[22:38], frame[38:54]), 0, tcp_len)
    meta = vnet.meta_of(vnet.tcp6_gso_mark(54, 20, 1440).vnet.emit())
    host.receive_batch([memoryview(bytes(frame))], 3.0, [meta])
    out = [Ether(b"".join(bytes(p) for p in f)) for f in host.tx]
    host.tx.clear()
    assert out and out[-1][s6.TCP].ack == ISN + 1 + len(payload)
    c = host.counters
    assert (c.gso_frames_rx, c.gso_segments_rx) == (1, 18)
    assert not c.drops.get(Drop.TCP_BAD_CHECKSUM)
    # without the header the same partial checksum is a bad checksum
    host.receive_batch([memoryview(bytes(frame))], 3.1)
    assert c.drops[Drop.TCP_BAD_CHECKSUM] == 1


def test_api_takes_address_strings_of_either_family() -> None:
    from netstack.api.tcp import connect
    from netstack.wire import inet

    assert inet.from_str("2001:db8::1") == wipv6.from_str("2001:db8::1")
    assert inet.from_str("fe80::2%tap0") == wipv6.from_str("fe80::2")
    assert inet.from_str("192.0.2.1") == 0xC0000201 and inet.to_str(0xC0000201) == "192.0.2.1"
    assert inet.to_str(wipv6.from_str("2001:0db8:0::1")) == "2001:db8::1"
    for bad in ("2001:db8::g", "192.0.2", "example.org"):
        try:
            inet.from_str(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was taken")
    host = v6_host()
    made = []

    class Protocol:
        def connection_made(self, transport) -> None:
            made.append(transport)

        def data_received(self, data: bytes) -> None:
            pass

        def eof_received(self) -> None:
            pass

        def connection_lost(self, exc) -> None:
            pass

    transport = connect(host.tcp, (PEER_S, 9), Protocol)
    host.tcp.flush(2.0)
    syn = checked(Ether(b"".join(bytes(p) for p in host.tx[-1])))
    host.tx.clear()
    assert syn[s6.IPv6].src == STATIC_S and syn[s6.TCP].dport == 9
    assert transport.get_extra_info("peername") == (PEER_S, 9)
    assert transport.get_extra_info("sockname") == (STATIC_S, syn[s6.TCP].sport)
    v4 = connect(host.tcp, ("192.0.2.1", 9), Protocol)
    assert v4.get_extra_info("peername") == ("192.0.2.1", 9)


def test_rfc6528_isns_hash_the_v6_four_tuple() -> None:
    from netstack.proto.tcp import isn

    secrets = isn.Secrets(b"k" * 16)
    a, b = wipv6.from_str("2001:db8::2"), wipv6.from_str("2001:db8::1")
    t = isn.tuple_bytes(a, 80, b, 40000)
    assert len(t) == 36 and t == a + (80).to_bytes(2, "big") + b + (40000).to_bytes(2, "big")
    assert secrets.isn(t, 10.0) == secrets.isn(isn.tuple_bytes(a, 80, b, 40000), 10.0)
    others = {secrets.isn(isn.tuple_bytes(a, 80, b, port), 10.0) for port in range(40001, 40011)}
    assert secrets.isn(t, 10.0) not in others and len(others) == 10
    # an IPv4 tuple of the same ports is another input (12 bytes)
    assert len(isn.tuple_bytes(0xC0000202, 80, 0xC0000201, 40000)) == 12


def test_active_close_goes_through_time_wait_over_v6() -> None:
    host = host_with_echo()
    handshake(host)
    conn = next(iter(host.tcp.conns.values()))
    conn.close()
    host.tcp.flush(3.0)
    fin = [checked(Ether(b"".join(bytes(p) for p in f))) for f in host.tx]
    host.tx.clear()
    assert fin[-1][s6.TCP].flags == "FA" and fin[-1][s6.TCP].seq == 5001
    out = feed(host, tcp_in("FA", ISN + 1, 5002), 3.1)
    assert checked(out[-1])[s6.TCP].flags == "A" and out[-1][s6.TCP].ack == ISN + 2
    assert conn.state.value == "time_wait"
    assert host.tcp.connections_by_state()["time_wait"] == 1
    host.poll(3.1 + host.tcp.config.time_wait + 0.1)
    assert not host.tcp.conns and conn.state.value == "closed"


def test_checked_mode_counts_v6_arrivals() -> None:
    """The invariant checker sees IPv6 arrivals: a duplicate ACK answering each out-of-order
    segment is allowed (it was taken for an ACK without an arrival, and the connection reset)."""
    host = host_with_echo(TcpConfig(checked=True))
    handshake(host)
    conn = next(iter(host.tcp.conns.values()))
    for i in range(3):  # a hole at ISN + 1: each segment beyond it gets a duplicate ACK
        out = feed(host, tcp_in("A", ISN + 101 + 100 * i, 5001, data=b"x" * 100), 3.0 + i / 100)
        assert [checked(f)[s6.TCP].ack for f in out] == [ISN + 1]
    assert conn.state.value == "established"
