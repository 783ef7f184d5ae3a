"""The IPv6 receive fast path (proto/fast6.py, ns_rx_fast6) must be indistinguishable from the
general path: same counters, drop reasons, ICMPv6/ND state and frames out, for valid frames,
edge cases and mutations; and the one-step echo replies must be what a full build gives."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers import inet6 as s6
from scapy.layers.l2 import Ether

from netstack.api.services import start_services
from netstack.proto.addr6 import AddrState
from netstack.proto.host import Host
from netstack.proto.nd import NudState
from netstack.wire import ipv6 as wipv6
from tests.unit.test_host_ipv6 import (
    OUR_LL_S,
    OUR_MAC_S,
    PEER_LL_S,
    PEER_MAC_S,
    STATIC_S,
    frames,
    peer,
    ready_host,
)

PEER_GLOBAL_S = "2001:db8::1"
PEER_GLOBAL = wipv6.from_str(PEER_GLOBAL_S)
PEER_LL = wipv6.from_str(PEER_LL_S)


def _twin(general_only: bool) -> Host:
    host = ready_host()
    start_services(host.udp, {"udp_echo": 7, "udp_discard": 9, "tcp_echo": 7}, host.tcp)
    if general_only:
        host.receive = host._receive_general  # type: ignore[method-assign]
    return host


def _state(host: Host) -> tuple:
    c = host.counters
    fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    counters = {k: v for k, v in fields.items() if isinstance(v, int | dict)}
    out = [b"".join(bytes(p) for p in frame) for frame in host.tx]
    host.tx.clear()
    nd = host.v6.nd
    return counters, out, nd.state(PEER_GLOBAL), nd.state(PEER_LL)


def _same(frames_in: list[bytes], poll_at: float | None = None) -> list[bytes]:
    fast, general = _twin(False), _twin(True)
    general.tcp.secrets = fast.tcp.secrets  # the same RFC 6528 key: the same ISNs and TS offsets
    out: list[bytes] = []
    for i, frame in enumerate(frames_in):
        for host in (fast, general):
            host.receive_batch([memoryview(frame)], 2.0 + i)
        a, b = _state(fast), _state(general)
        assert a == b, frame.hex()
        out += a[1]
    if poll_at is not None:
        fast.poll(poll_at)
        general.poll(poll_at)
        a, b = _state(fast), _state(general)
        assert a == b
        out += a[1]
    return out


def _udp(dport: int, data: bytes = b"x" * 64, src: str = PEER_LL_S, dst: str = STATIC_S, **kw):
    return bytes(peer(dst, src=src) / s6.UDP(sport=5000, dport=dport, **kw) / data)


def _tcp(dport: int, flags: str = "S", data: bytes = b"", src: str = PEER_LL_S, **kw) -> bytes:
    opts = [("MSS", 1440), ("SAckOK", b""), ("Timestamp", (1, 0)), ("WScale", 7)]
    segment = s6.TCP(sport=40000, dport=dport, flags=flags, seq=1000, options=opts, **kw)
    return bytes(peer(STATIC_S, src=src) / segment / data)


def _echo(data: bytes = b"y" * 56, src: str = PEER_LL_S, dst: str = STATIC_S, tc: int = 0) -> bytes:
    pkt = peer(dst, src=src) / s6.ICMPv6EchoRequest(id=7, seq=1, data=data)
    pkt[s6.IPv6].tc = tc
    return bytes(pkt)


def _learn_global() -> bytes:
    """An NS from the peer's global address: the host learns it STALE (RFC 4861 7.2.3)."""
    return bytes(
        peer(STATIC_S, "ff02::1:ff00:2", src=PEER_GLOBAL_S, hlim=255)
        / s6.ICMPv6ND_NS(tgt=STATIC_S)
        / s6.ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC_S)
    )


_IP6 = s6.IPv6(src=PEER_LL_S, dst=STATIC_S)
VALID = [
    _udp(7),  # echoed
    _udp(7, src=PEER_GLOBAL_S),  # echoed to a peer with no neighbour entry: NS, queued
    _udp(9),  # discarded
    _udp(999),  # port unreachable
    _udp(7, dst=OUR_LL_S),
    _udp(7, b""),  # empty datagram
    _echo(),
    _echo(dst=OUR_LL_S, tc=0xB8),  # the traffic class is copied to the reply
    _echo(b"", src=PEER_GLOBAL_S),
    bytes(peer(STATIC_S) / s6.ICMPv6EchoReply(id=1, seq=1)),
    bytes(peer(STATIC_S) / s6.ICMPv6EchoRequest(code=3, data=b"odd code")),
    _tcp(7),  # SYN to the echo listener: SYN-ACK
    _tcp(999),  # SYN to a closed port: RST
    _tcp(7, "A", b"data for nobody", ack=5),  # an ACK for no connection: RST
    _tcp(7, "S", src=PEER_GLOBAL_S),  # to a peer with no neighbour entry: NS, queued
]


@pytest.mark.parametrize(
    "frame",
    [
        *VALID,
        _udp(7, chksum=0),  # zero UDP checksum: invalid over IPv6
        _udp(7, chksum=0x1234),  # bad checksum
        _udp(7, dst="2001:db8::99"),  # not ours
        _udp(7, src=STATIC_S),  # our own address as the source
        _udp(7, src="::1"),  # loopback source
        _udp(7, src="ff02::1"),  # multicast source
        _udp(7, dst="ff02::1"),  # to a group: the general path (never reflected)
        _udp(7, len=4),  # UDP length below its header
        _udp(7, len=200),  # UDP length beyond the payload
        _udp(7) + b"\x00" * 10,  # Ethernet padding trimmed
        _tcp(7, chksum=0x1234),  # TCP with a bad checksum
        _tcp(7, dataofs=15),  # TCP data offset beyond the segment
        _tcp(7, dataofs=4),  # TCP data offset below its header
        _tcp(7) + b"\x00" * 10,  # TCP with Ethernet padding
        bytes(peer(STATIC_S) / s6.ICMPv6EchoRequest(cksum=0xBEEF)),
        bytes(peer(STATIC_S) / s6.IPv6ExtHdrHopByHop() / s6.UDP(dport=7) / b"hop"),
        bytes(peer(STATIC_S) / s6.ICMPv6ND_NS(tgt=STATIC_S)),  # hop limit 64: an ND drop
        bytes(Ether(src=PEER_MAC_S, dst=OUR_MAC_S) / s6.IPv6(src=PEER_LL_S, dst=STATIC_S, nh=17)),
        bytes(Ether(src=PEER_MAC_S, dst="02:00:00:00:00:09") / _IP6 / s6.UDP(dport=7)),
        bytes(Ether(src="03:00:00:00:00:01", dst=OUR_MAC_S) / _IP6 / s6.UDP(dport=7)),
    ],
    ids=lambda frame: frame[54:62].hex() + "-" + frame[22:24].hex(),
)
def test_edge_frames_same_on_both_paths(frame: bytes) -> None:
    _same([frame])


def test_frames_to_a_tentative_address_same_on_both_paths() -> None:
    fast, general = _twin(False), _twin(True)
    for host in (fast, general):
        host.v6.addresses.find(wipv6.from_str(STATIC_S)).state = AddrState.TENTATIVE
        host.receive_batch([memoryview(_udp(7)), memoryview(_echo())], 2.0)
    assert _state(fast) == _state(general)
    assert not fast.tx and fast.counters.drops


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 70), st.integers(0, 255)), max_size=4),
    st.integers(14, 200),
)
def test_mutated_frames_same_on_both_paths(frame: bytes, flips: list, cut: int) -> None:
    """Flips land in the headers (Ethernet, IPv6, UDP/ICMPv6), where the fast path decides."""
    mutated = bytearray(frame)
    for position, value in flips:
        if position < len(mutated):
            mutated[position] = value
    _same([bytes(mutated[:cut])])


def _stale_peer(host: Host) -> None:
    """The peer's global address learnt (its NS), confirmed (a solicited NA: REACHABLE), then
    left alone past the reachable time: STALE (RFC 4861 7.3.3)."""
    host.receive_batch([memoryview(_learn_global())], 2.0)
    na = (
        peer(STATIC_S, src=PEER_GLOBAL_S, hlim=255)
        / s6.ICMPv6ND_NA(tgt=PEER_GLOBAL_S, S=1, O=1, R=0)
        / s6.ICMPv6NDOptDstLLAddr(lladdr=PEER_MAC_S)
    )
    host.receive_batch([memoryview(bytes(na))], 2.1)
    assert host.v6.nd.state(PEER_GLOBAL) is NudState.REACHABLE
    host.poll(100.0)
    frames(host)
    assert host.v6.nd.state(PEER_GLOBAL) is NudState.STALE


def test_stale_neighbour_goes_delay_then_probe_on_the_fast_path() -> None:
    """A reply to a STALE peer moves it to DELAY, and 5 s on a unicast probe goes out, as
    for any packet (RFC 4861 7.3.3): the fast path sends through the same ND engine."""
    fast, general = _twin(False), _twin(True)
    for host in (fast, general):
        _stale_peer(host)
    for frame in (_udp(7, src=PEER_GLOBAL_S), _echo(src=PEER_GLOBAL_S)):
        for host in (fast, general):
            host.receive_batch([memoryview(frame)], 100.5)
        assert _state(fast) == _state(general)
    assert fast.v6.nd.state(PEER_GLOBAL) is NudState.DELAY
    assert fast.counters.udp_tx == 1 and fast.counters.icmp6[("tx", "echo_reply")] == 1
    for host in (fast, general):
        host.poll(106.0)
    assert fast.v6.nd.state(PEER_GLOBAL) is NudState.PROBE
    a, b = _state(fast), _state(general)
    assert a == b
    ns = [f for f in map(Ether, a[1]) if f.haslayer(s6.ICMPv6ND_NS)]
    probe = [f for f in ns if f[s6.ICMPv6ND_NS].tgt == PEER_GLOBAL_S]
    assert len(probe) == 1 and probe[0].dst == PEER_MAC_S  # unicast, to the cached MAC
    assert probe[0][s6.IPv6].dst == PEER_GLOBAL_S


def test_common_frames_take_the_fast_path(monkeypatch) -> None:
    host = _twin(False)

    def general(frame, now):
        raise AssertionError(f"general path taken for {bytes(frame).hex()}")

    monkeypatch.setattr(host, "_receive_general", general)
    c = host.counters
    before = c.ipv6_rx
    host.receive_batch([memoryview(_udp(7)), memoryview(_echo()), memoryview(_udp(9))], 2.0)
    assert c.udp_rx == 2 and c.ipv6_rx - before == 3 and c.udp_tx == 1 and not c.drops
    assert c.icmp6[("tx", "echo_reply")] == 1 and len(host.tx) == 2
    # TCP over IPv6 too: a SYN to the echo listener gets its SYN-ACK
    host.tx.clear()
    host.receive_batch([memoryview(_tcp(7))], 2.1)
    assert c.tcp_segments_rx == 1 and c.ipv6_rx - before == 4 and not c.drops
    (synack,) = [Ether(b"".join(bytes(p) for p in f)) for f in host.tx]
    assert synack[s6.TCP].flags == "SA" and synack[s6.TCP].ack == 1001


def test_fast_path_works_without_an_ipv4_address() -> None:
    """With no IPv4 address (DHCP not bound yet) IPv6 still takes its fast path."""
    host = _twin(False)
    host.set_address(0, 0, None)
    frames(host)
    taken = []
    general = host._receive_general
    host._receive_general = lambda frame, now: taken.append(1) or general(frame, now)
    host.receive_batch([memoryview(_udp(7))], 2.0)
    assert not taken and len(frames(host)) == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 255))
def test_echo_reply_checksum_is_what_a_full_build_gives(
    data: bytes, code: int, ident: int, tc: int
) -> None:
    """The reply's incremental checksum (RFC 1624) equals scapy's computation from scratch."""
    host = _twin(False)
    req = peer(STATIC_S) / s6.ICMPv6EchoRequest(code=code, id=ident, seq=9, data=data)
    req[s6.IPv6].tc = tc
    host.receive_batch([memoryview(bytes(req))], 2.0)
    out = frames(host)
    assert len(out) == 1
    rep = out[0]
    assert rep[s6.IPv6].tc == tc and rep[s6.ICMPv6EchoReply].code == 0
    assert bytes(rep[s6.ICMPv6EchoReply].data) == data
    raw = bytes(rep)
    rep[s6.ICMPv6EchoReply].cksum = None
    assert bytes(Ether(bytes(rep))) == raw


def test_udp_echo_reply_is_what_scapy_builds() -> None:
    host = _twin(False)
    host.receive_batch([memoryview(_udp(7, b"hello six", src=PEER_GLOBAL_S))], 2.0)
    out = [f for f in frames(host) if f.haslayer(s6.UDP)]
    host.receive_batch([memoryview(_learn_global())], 2.1)
    out += [f for f in frames(host) if f.haslayer(s6.UDP)]  # the queued reply, once resolved
    assert len(out) == 1
    rep = out[0]
    assert (rep[s6.IPv6].src, rep[s6.IPv6].dst) == (STATIC_S, PEER_GLOBAL_S)
    assert (rep[s6.UDP].sport, rep[s6.UDP].dport) == (7, 5000)
    assert bytes(rep[s6.UDP].payload) == b"hello six"
    raw = bytes(rep)
    rep[s6.UDP].chksum = None
    assert bytes(Ether(bytes(rep))) == raw


def test_udp_echo_runs_over_ipv6_leave_as_super_frames_when_the_link_has_uso() -> None:
    """Udp6's echo runs (UdpEngine.gso_max): replies of one batch to one peer and size leave as
    one UDP super-frame whose cut (wire/vnet.py, as the kernel's) gives exactly the replies,
    each with a checksum scapy agrees with. A run of one is an ordinary datagram; to a peer
    not resolved yet the replies go one by one into the ND queue (never a super-frame)."""
    from netstack.wire import vnet

    host = _twin(False)
    host.udp.gso_max = 4
    batch = [_udp(7, bytes([i]) * 32) for i in range(6)]  # runs of 4 and 2
    batch.append(_udp(7, b"x" * 33))  # another size: a run of 1
    batch += [_udp(7, b"y" * 32, src=PEER_GLOBAL_S)] * 2  # another peer, unresolved
    host.receive_batch([memoryview(f) for f in batch], 2.0)
    tx = list(host.tx)
    marked = [f for f in tx if any(isinstance(p, vnet.VnetMark) for p in f)]
    assert len(marked) == 2 and host.counters.gso_frames_tx == 2
    got: list[bytes] = []
    for frame in marked:
        mark = frame[1]
        assert isinstance(mark, vnet.VnetMark) and mark.vnet.gso == vnet.GSO_UDP_L4
        got += vnet.software_segments(b"".join(bytes(p) for p in frame), mark.vnet)
    assert len(got) == 6
    for i, raw in enumerate(got):
        rep = Ether(raw)
        assert (rep[s6.IPv6].src, rep[s6.IPv6].dst) == (STATIC_S, PEER_LL_S)
        assert (rep[s6.UDP].sport, rep[s6.UDP].dport) == (7, 5000)
        assert bytes(rep[s6.UDP].payload) == bytes([i]) * 32
        rep[s6.UDP].chksum = None
        rep[s6.IPv6].plen = None
        assert bytes(Ether(bytes(rep))) == raw
    plain = [Ether(b"".join(bytes(p) for p in f)) for f in tx if f not in marked]
    single = [f for f in plain if f.haslayer(s6.UDP)]
    assert len(single) == 1 and bytes(single[0][s6.UDP].payload) == b"x" * 33
    assert [f.haslayer(s6.ICMPv6ND_NS) for f in plain].count(True) == 1  # for the new peer
    assert host.udp._ports[7].reflected == 9 and host.counters.udp_tx == 9
    host.tx.clear()
    host.receive_batch([memoryview(_learn_global())], 2.1)  # the queued replies, resolved
    queued = [Ether(b"".join(bytes(p) for p in f)) for f in host.tx]
    echoes = [f for f in queued if f.haslayer(s6.UDP)]
    assert len(echoes) == 2 and all(bytes(f[s6.UDP].payload) == b"y" * 32 for f in echoes)


def test_an_echo_run_over_ipv6_stays_within_64_kib() -> None:
    """A run's super-frame holds at most (65535 - 48) // size datagrams: its IPv6 packet, like
    IPv4's, within 64 KiB; the rest of the batch starts the next run."""
    from netstack.wire import vnet

    host = _twin(False)
    host.udp.gso_max = 64
    host.receive_batch([memoryview(_udp(7, bytes([i]) * 1400)) for i in range(50)], 2.0)
    marked = [f for f in host.tx if any(isinstance(p, vnet.VnetMark) for p in f)]
    sizes = [len(b"".join(bytes(p) for p in f)) - 14 for f in marked]
    assert [len(f) - 4 for f in marked] == [46, 4]  # eth, mark, IPv6 and UDP headers + data
    assert max(sizes) == 40 + 8 + 46 * 1400 <= 0xFFFF
