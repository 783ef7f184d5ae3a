"""The assembled host, frame in and frame out: Ethernet demux, ICMP echo and errors, UDP."""

from __future__ import annotations

import struct

import pytest

from netstack.api.services import start_services
from netstack.drops import Drop
from netstack.proto.icmp import MAX_ERROR_DATAGRAM, IcmpConfig
from netstack.wire import ethernet as weth
from netstack.wire import icmp as wicmp
from netstack.wire import ipv4 as wipv4
from netstack.wire import udp as wudp
from tests.unit.hosttools import (
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    drain,
    echo_request,
    feed,
    ip_frame,
    learn_peer,
    make_host,
    parse_ip,
    udp_frame,
)


def test_echo_reply_mirrors_id_seq_and_data() -> None:
    host = make_host()
    learn_peer(host)
    out = feed(host, echo_request(b"abcdefgh" * 7, ident=0x4242, seq=9))
    assert len(out) == 1
    eth, ip, payload = parse_ip(out[0])
    assert (eth.dst, eth.src) == (PEER_MAC, OUR_MAC)
    assert (ip.src, ip.dst, ip.protocol) == (OUR_IP, PEER_IP, wipv4.PROTO_ICMP)
    icmp, data = wicmp.parse(payload)
    assert (icmp.type, icmp.code, icmp.rest) == (wicmp.TYPE_ECHO_REPLY, 0, 0x4242 << 16 | 9)
    assert bytes(data) == b"abcdefgh" * 7
    assert host.counters.icmp[("rx", "echo_request")] == 1
    assert host.counters.icmp[("tx", "echo_reply")] == 1


def test_large_echo_is_reassembled_and_answered_in_fragments() -> None:
    host = make_host()
    learn_peer(host)
    data = bytes(range(256)) * 16  # 4096 bytes: three fragments at MTU 1500
    icmp = wicmp.build(wicmp.TYPE_ECHO_REQUEST, 0, 1 << 16 | 1, data) + data
    frames = []
    chunk = 1480
    for offset in range(0, len(icmp), chunk):
        piece = icmp[offset : offset + chunk]
        more = offset + chunk < len(icmp)
        header = wipv4.build(
            PEER_IP, OUR_IP, wipv4.PROTO_ICMP, len(piece), ident=77,
            more_fragments=more, frag_offset=offset,
        )  # fmt: skip
        frames.append(weth.build(OUR_MAC, PEER_MAC, weth.ETHERTYPE_IPV4) + header + piece)
    out = []
    for frame in reversed(frames):  # out of order on purpose
        out += feed(host, frame)
    assert len(out) == 3
    reassembled = bytearray()
    for frame in out:
        assert len(frame) <= 1514
        _, ip, payload = parse_ip(frame)
        assert ip.frag_offset == len(reassembled)
        reassembled += payload
    icmp_reply, reply_data = wicmp.parse(memoryview(bytes(reassembled)))
    assert icmp_reply.type == wicmp.TYPE_ECHO_REPLY
    assert bytes(reply_data) == data


def test_broadcast_echo_is_ignored() -> None:
    host = make_host()
    learn_peer(host)
    frame = echo_request(b"x", dst=wipv4.ip_from_str("192.0.2.255"), dst_mac=weth.BROADCAST)
    assert feed(host, frame) == []
    assert host.counters.drops[Drop.ICMP_BROADCAST_ECHO] == 1


def test_frames_for_other_macs_and_unknown_ethertypes_are_counted_drops() -> None:
    host = make_host()
    other = weth.build(bytes.fromhex("02ffffffff01"), PEER_MAC, weth.ETHERTYPE_IPV4) + b"\0" * 46
    ipv6 = weth.build(OUR_MAC, PEER_MAC, 0x86DD) + b"\0" * 46
    assert feed(host, other) == [] and feed(host, ipv6) == []
    assert feed(host, b"\x01\x02") == []
    assert host.counters.drops[Drop.ETH_NOT_FOR_US] == 1
    assert host.counters.drops[Drop.ETH_UNKNOWN_ETHERTYPE] == 1
    assert host.counters.drops[Drop.ETH_TRUNCATED] == 1
    assert host.counters.rx_packets == 3


def test_udp_echo_service_answers_with_checksum() -> None:
    host = make_host()
    start_services(host.udp, {"udp_echo": 7, "udp_discard": 9})
    learn_peer(host)
    out = feed(host, udp_frame(b"ping!", 40000, 7))
    assert len(out) == 1
    _, ip, payload = parse_ip(out[0])
    udp, data = wudp.parse(payload, ip.src, ip.dst)
    assert (udp.src_port, udp.dst_port, bytes(data)) == (7, 40000, b"ping!")
    assert udp.checksum != 0
    assert feed(host, udp_frame(b"gone", 40000, 9)) == []
    assert (host.counters.udp_rx, host.counters.udp_tx) == (2, 1)


def test_closed_udp_port_gets_port_unreachable_quoting_the_datagram() -> None:
    host = make_host()
    learn_peer(host)
    sent = udp_frame(b"q" * 40, 40000, 5999)
    out = feed(host, sent)
    assert host.counters.drops[Drop.UDP_NO_PORT] == 1
    assert len(out) == 1
    _, _ip, payload = parse_ip(out[0])
    icmp, quoted = wicmp.parse(payload)
    assert (icmp.type, icmp.code) == (wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_PORT_UNREACHABLE)
    assert bytes(quoted) == sent[weth.HEADER_LEN :]


def test_icmp_errors_are_rate_limited() -> None:
    host = make_host(icmp=IcmpConfig(error_rate=1.0, error_burst=2))
    learn_peer(host)
    sent = [feed(host, udp_frame(b"x", 40000, 6000 + i), now=0.0) for i in range(5)]
    assert [len(s) for s in sent] == [1, 1, 0, 0, 0]
    assert host.counters.drops[Drop.ICMP_RATE_LIMITED] == 3
    assert len(feed(host, udp_frame(b"x", 40000, 6000), now=1.0)) == 1


def test_no_error_about_broadcasts_or_icmp_errors() -> None:
    host = make_host()
    learn_peer(host)
    bcast = wipv4.ip_from_str("192.0.2.255")
    assert feed(host, udp_frame(b"x", 1, 5999, dst=bcast, dst_mac=weth.BROADCAST)) == []
    error = wicmp.build(wicmp.TYPE_DEST_UNREACHABLE, 3, 0, b"")
    assert feed(host, ip_frame(error, wipv4.PROTO_ICMP)) == []


def test_error_quote_is_bounded_to_576_bytes() -> None:
    host = make_host()
    learn_peer(host)
    out = feed(host, udp_frame(b"z" * 1400, 40000, 5999))
    _, ip, _ = parse_ip(out[0])
    assert ip.total_length == MAX_ERROR_DATAGRAM


def test_unknown_protocol_gets_protocol_unreachable() -> None:
    host = make_host()
    learn_peer(host)
    out = feed(host, ip_frame(b"\0" * 20, 200))
    assert host.counters.drops[Drop.IPV4_UNKNOWN_PROTOCOL] == 1
    _, _, payload = parse_ip(out[0])
    icmp, _ = wicmp.parse(payload)
    assert (icmp.type, icmp.code) == (wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_PROTOCOL_UNREACHABLE)


def test_port_unreachable_reaches_the_sending_socket() -> None:
    host = make_host()
    learn_peer(host)
    errors = []
    sock = host.udp.bind(0, lambda *a: None, lambda t, c, peer, now: errors.append((t, c, peer)))
    assert 49152 <= sock.port <= 65535
    sock.sendto(b"hello", (PEER_IP, 53))
    (sent,) = drain(host)
    quoted = sent[weth.HEADER_LEN :]
    error = wicmp.build(wicmp.TYPE_DEST_UNREACHABLE, 3, 0, quoted) + quoted
    feed(host, ip_frame(error, wipv4.PROTO_ICMP))
    assert errors == [(3, 3, (PEER_IP, 53))]


def test_udp_socket_api_bind_rules() -> None:
    host = make_host()
    host.udp.bind(7, lambda *a: None)
    with pytest.raises(OSError):
        host.udp.bind(7, lambda *a: None)
    ports = {host.udp.bind(0, lambda *a: None).port for _ in range(20)}
    assert len(ports) == 20


def test_udp_bad_checksum_is_dropped() -> None:
    host = make_host()
    start_services(host.udp, {"udp_echo": 7})
    learn_peer(host)
    frame = bytearray(udp_frame(b"data", 40000, 7))
    frame[-1] ^= 0xFF
    assert feed(host, bytes(frame)) == []
    assert host.counters.drops[Drop.UDP_BAD_CHECKSUM] == 1


def test_send_to_unresolved_peer_waits_for_arp_then_flows() -> None:
    host = make_host()
    sock = host.udp.bind(5000, lambda *a: None)
    sock.sendto(b"first", (PEER_IP, 9))
    (request,) = drain(host)
    eth, _rest = weth.parse(memoryview(request))
    assert eth.dst == weth.BROADCAST and eth.ethertype == weth.ETHERTYPE_ARP
    from netstack.wire import arp as warp

    reply = warp.build(warp.OP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP)
    out = feed(host, weth.build(OUR_MAC, PEER_MAC, weth.ETHERTYPE_ARP) + reply)
    assert len(out) == 1
    _, ip, payload = parse_ip(out[0])
    assert bytes(wudp.parse(payload, ip.src, ip.dst)[1]) == b"first"


@pytest.mark.parametrize("data", [b"", b"a", b"odd!!", bytes(range(256)) * 5, b"\xff" * 64])
def test_udp_echo_reflected_reply_has_the_right_checksum(data: bytes) -> None:
    """The echo's reply built in one step (UdpSocket.reflect) reuses the request's checksum:
    scapy recomputes the reply's and must agree; a datagram without a checksum (0) goes the
    ordinary way (sendto computes one)."""
    from scapy.layers.inet import IP, UDP

    host = make_host()
    services = start_services(host.udp, {"udp_echo": 7})
    learn_peer(host)
    (out,) = feed(host, udp_frame(data, 40000, 7))
    reply = IP(bytes(out[weth.HEADER_LEN :]))
    sent_sum = reply[UDP].chksum
    del reply[UDP].chksum
    assert IP(bytes(reply))[UDP].chksum == sent_sum
    assert (reply[UDP].sport, reply[UDP].dport, bytes(reply[UDP].payload)) == (7, 40000, data)
    assert host.counters.udp_tx == 1 and host.udp._ports[7].reflected == 1
    # no checksum in the request: the reply gets one all the same
    bare = bytearray(udp_frame(data, 40001, 7))
    bare[weth.HEADER_LEN + 26 : weth.HEADER_LEN + 28] = b"\0\0"
    (out,) = feed(host, bytes(bare))
    _, ip, payload = parse_ip(out)
    udp, echoed = wudp.parse(payload, ip.src, ip.dst)
    assert udp.checksum != 0 and bytes(echoed) == data and udp.dst_port == 40001
    assert services["udp_echo"].datagrams == 2 and host.counters.udp_tx == 2


def _uso_segments(frame: tuple) -> list[bytes]:
    """What the kernel makes of a UDP super-frame (GSO_UDP_L4): the datagrams, each with its
    IPv4 header (ID + i), UDP length and completed checksum; checked against the mark."""
    from netstack.wire import vnet

    eth, mark, ip_header, udp_header, *payloads = frame
    v = mark.vnet
    assert (v.flags, v.gso_type, v.hdr_len, v.csum_start, v.csum_offset) == (
        vnet.F_NEEDS_CSUM, vnet.GSO_UDP_L4, 42, 34, 6,
    )  # fmt: skip
    total, ident, src, dst = struct.unpack_from("!2xHH6xII", bytes(ip_header))
    data = b"".join(bytes(p) for p in payloads)
    assert total == 28 + len(data) and all(len(p) == v.gso_size for p in payloads)
    sport, dport, length, partial = struct.unpack("!HHHH", bytes(udp_header))
    pseudo = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 17 + length
    assert length == 8 + len(data) and partial == (pseudo & 0xFFFF) + (pseudo >> 16)
    out = []
    for i in range(0, len(data), v.gso_size):
        piece = data[i : i + v.gso_size]
        udp = wudp.build(src, dst, sport, dport, piece) + piece
        ip = wipv4.build(src, dst, 17, len(udp), ident=ident + i // v.gso_size)
        out.append(bytes(eth) + ip + udp)
    return out


def test_udp_echo_runs_leave_as_super_frames_when_the_link_has_uso() -> None:
    """UdpEngine.gso_max: the echo replies of one receive batch to one peer and size leave as
    one UDP super-frame (one write); the kernel's cut of it gives exactly the replies. A run
    of one is an ordinary datagram; another peer or size starts a new run."""
    from netstack.wire import vnet

    host = make_host()
    start_services(host.udp, {"udp_echo": 7})
    learn_peer(host)
    host.udp.gso_max = 4
    other = wipv4.ip_from_str("192.0.2.77")
    frames = [udp_frame(bytes([i]) * 32, 40000, 7) for i in range(6)]  # runs of 4 and 2
    frames.append(udp_frame(b"x" * 33, 40000, 7))  # another size: a run of 1
    frames.append(udp_frame(b"y" * 32, 40000, 7, src=other))  # another peer (ARP first)
    host.receive_batch([memoryview(f) for f in frames], 0.0)
    tx = list(host.tx)
    marked = [f for f in tx if any(isinstance(p, vnet.VnetMark) for p in f)]
    assert len(marked) == 2 and host.counters.gso_frames_tx == 2
    got = _uso_segments(marked[0]) + _uso_segments(marked[1])
    assert len(got) == 6
    for frame in marked:  # the relay's software cut (wire/vnet.py) agrees, scapy too
        joined = b"".join(bytes(p) for p in frame)
        assert vnet.software_segments(joined, frame[1].vnet) == _uso_segments(frame)
    from scapy.layers.inet import IP, UDP

    reply = IP(got[-1][weth.HEADER_LEN :])
    sent_sum = reply[UDP].chksum
    del reply[UDP].chksum
    assert IP(bytes(reply))[UDP].chksum == sent_sum
    for i, frame in enumerate(got):
        _, ip, payload = parse_ip(frame)
        udp, data = wudp.parse(payload, ip.src, ip.dst)
        assert (udp.src_port, udp.dst_port, bytes(data)) == (7, 40000, bytes([i]) * 32)
    plain = [b"".join(bytes(p) for p in f) for f in tx if f not in marked]
    single = [f for f in plain if len(f) == 14 + 28 + 33]
    assert len(single) == 1
    _, ip, payload = parse_ip(single[0])
    assert bytes(wudp.parse(payload, ip.src, ip.dst)[1]) == b"x" * 33
    assert host.counters.udp_tx == 8  # the 8th is queued by ARP (sent, as for sendto)
    assert host.udp._ports[7].reflected == 8
