"""Offloads off the wire: the host taking super-frames (GRO-like), trusting what the header
vouches for; the link's header on transmit; negotiation; pcap and --fault with super-frames."""

from __future__ import annotations

import random

import pytest

from netstack.api.services import TcpDiscard
from netstack.api.tcp import listen
from netstack.counters import Counters
from netstack.drops import Drop
from netstack.io import offload
from netstack.io.fault import RX_META_FORM, TX_FORM, FaultChannel, Impairment
from netstack.io.link import BatchLink
from netstack.pcap import PcapWriter, read_pcap
from netstack.proto.tcp.config import TcpConfig
from netstack.wire import ipv4 as wipv4
from netstack.wire import tcp as wtcp
from netstack.wire import vnet
from tests.unit.hosttools import OUR_IP, PEER_IP, drain, ip_frame, learn_peer, make_host

PORT, PEER_PORT, PEER_ISN = 9, 40000, 5000
MSS = 1460


def tcp_frame(
    seq: int, ack: int, flags: int, payload: bytes = b"", *, partial: bool = False, options=None
) -> bytes:
    tcp = wtcp.build(
        PEER_IP, OUR_IP, PEER_PORT, PORT, seq, ack, flags, 65535, payload, options=options
    )
    if partial:  # as the kernel hands a CHECKSUM_PARTIAL frame: only the pseudo-header sum
        tcp = tcp[:16] + vnet.pseudo_sum(PEER_IP, OUR_IP, len(tcp) + len(payload)) + tcp[18:]
    return ip_frame(tcp + payload, wipv4.PROTO_TCP)


def tcp_of(frame: bytes) -> tuple[wtcp.TcpHeader, bytes]:
    h, payload = wtcp.parse(memoryview(frame[34:]), OUR_IP, PEER_IP)
    return h, bytes(payload)


def established():
    host = make_host(tcp=TcpConfig(receive_buffer=1 << 20))
    learn_peer(host)
    sinks: list[TcpDiscard] = []
    listen(host.tcp, PORT, lambda: sinks.append(TcpDiscard()) or sinks[-1])
    syn = tcp_frame(PEER_ISN, 0, wtcp.SYN, options=wtcp.TcpOptions(mss=MSS, window_scale=7))
    host.receive_batch([memoryview(syn)], 1.0)
    (synack,) = drain(host)
    h, _ = tcp_of(synack)
    iss = h.seq
    host.receive_batch([memoryview(tcp_frame(PEER_ISN + 1, iss + 1, wtcp.ACK))], 1.0)
    drain(host)
    return host, sinks, iss


def gso_meta(payload_len: int, flags: int = vnet.F_NEEDS_CSUM) -> int:
    header = vnet.VnetHeader(flags, vnet.GSO_TCPV4, 54, MSS, 34, 16)
    return vnet.meta_of(header.emit())


def test_a_super_frame_is_one_segment_with_one_ack() -> None:
    host, sinks, iss = established()
    payload = bytes(range(256)) * 240  # 61 440 bytes: 43 wire segments
    frame = tcp_frame(PEER_ISN + 1, iss + 1, wtcp.ACK, payload, partial=True)
    host.receive_batch([memoryview(frame)], 1.001, [gso_meta(len(payload))])
    out = drain(host)
    assert len(out) == 1  # one ACK decision for the whole super-frame
    h, _ = tcp_of(out[0])
    assert h.ack == PEER_ISN + 1 + len(payload) and h.flags & wtcp.ACK
    (sink,) = sinks
    assert sink.bytes == len(payload)
    c = host.counters
    assert (c.gso_frames_rx, c.gso_segments_rx) == (1, 43)
    assert c.tcp_segments_rx == 2 + 43  # SYN and ACK, then the wire segments
    assert not c.drops


def test_a_partial_checksum_without_the_header_is_a_bad_checksum() -> None:
    host, sinks, iss = established()
    frame = tcp_frame(PEER_ISN + 1, iss + 1, wtcp.ACK, b"x" * 3000, partial=True)
    host.receive_batch([memoryview(frame)], 1.001, [0])
    assert host.counters.drops[Drop.TCP_BAD_CHECKSUM] == 1
    assert sinks[0].bytes == 0


def test_data_valid_is_trusted_and_plain_frames_are_verified() -> None:
    host, sinks, iss = established()
    good = tcp_frame(PEER_ISN + 1, iss + 1, wtcp.ACK, b"a" * 100)
    bad = bytearray(tcp_frame(PEER_ISN + 101, iss + 1, wtcp.ACK, b"b" * 100))
    bad[-1] ^= 1  # a corrupted byte: caught unless the kernel vouched for it
    valid = vnet.meta_of(vnet.build(vnet.F_DATA_VALID))
    host.receive_batch([memoryview(good), memoryview(bytes(bad))], 1.001, [valid, 0])
    assert sinks[0].bytes == 100
    assert host.counters.drops[Drop.TCP_BAD_CHECKSUM] == 1


def test_a_super_frame_of_another_kind_is_dropped() -> None:
    host, _, iss = established()
    frame = tcp_frame(PEER_ISN + 1, iss + 1, wtcp.ACK, b"x" * 3000, partial=True)
    uso = vnet.meta_of(vnet.build(vnet.F_NEEDS_CSUM, vnet.GSO_UDP_L4, 42, 1000, 34, 6))
    host.receive_batch([memoryview(frame)], 1.001, [uso])
    assert host.counters.drops[Drop.LINK_GSO_UNSUPPORTED] == 1


def test_a_big_tcp_super_frame_with_total_length_zero_is_taken() -> None:
    """Linux BIG TCP: over 64 KiB the IPv4 total length is 0; the frame's length counts."""
    host, sinks, iss = established()
    first = tcp_frame(PEER_ISN + 1, iss + 1, wtcp.ACK, bytes(3000))  # its ACK opens the window
    host.receive_batch([memoryview(first)], 1.001)
    assert drain(host)
    payload = bytes(70_000)
    seq = PEER_ISN + 3001
    tcp = wtcp.build(PEER_IP, OUR_IP, PEER_PORT, PORT, seq, iss + 1, wtcp.ACK, 65535)
    tcp = tcp[:16] + vnet.pseudo_sum(PEER_IP, OUR_IP, len(tcp) + len(payload)) + tcp[18:]
    ip = bytearray(wipv4.build(PEER_IP, OUR_IP, 6, 0, ident=1, dont_fragment=True))
    ip[2:4] = b"\0\0"
    ip[10:12] = b"\0\0"
    ip[10:12] = wipv4_checksum(bytes(ip))
    frame = ip_frame(b"", 0)[:14] + bytes(ip) + tcp + payload
    host.receive_batch([memoryview(frame)], 1.001, [gso_meta(len(payload))])
    assert sinks[0].bytes == 3000 + len(payload), host.counters.drops
    # without the GSO mark the same frame is malformed
    host2, _, _ = established()
    host2.receive_batch([memoryview(frame)], 1.001, [0])
    assert host2.counters.drops[Drop.IPV4_BAD_TOTAL_LENGTH] == 1


def wipv4_checksum(header: bytes) -> bytes:
    from netstack.wire.checksum import checksum

    return checksum(header).to_bytes(2, "big")


def test_host_sends_tso_super_frames_with_their_mark() -> None:
    host, _, _ = established()
    host.tcp.config.tso_max = offload.TSO_MAX
    conn = next(iter(host.tcp.conns.values()))
    conn.send(bytes(50_000))
    host.tcp.flush(1.002)
    frames = list(host.tx)
    host.tx.clear()
    (frame,) = frames  # the initial window, one super-frame
    mark = frame[1]
    assert isinstance(mark, vnet.VnetMark)
    assert mark.vnet == vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 54, MSS, 34, 16)
    data = b"".join(bytes(p) for p in frame)
    ip, _ = wipv4.parse(memoryview(data[14:]))
    assert ip.dont_fragment and ip.total_length == len(data) - 14 == 20 + 20 + 10 * MSS
    segments = vnet.software_segments(data, mark.vnet)
    assert len(segments) == 10
    for s in segments:
        wtcp.parse(memoryview(s[34:]), OUR_IP, PEER_IP)  # every checksum valid once cut
    c = host.counters
    assert (c.gso_frames_tx, c.gso_segments_tx) == (1, 10)


def test_negotiation_keeps_what_the_kernel_takes() -> None:
    def kernel(known: int):
        calls: list[int] = []

        def set_offload(bits: int) -> int:
            calls.append(bits)
            return 0 if bits & ~known == 0 else -22

        return set_offload, calls

    everything = offload.TUN_F_CSUM | offload.TUN_F_TSO4 | offload.TUN_F_TSO6 | offload.TUN_F_USO
    set_offload, calls = kernel(everything)
    assert offload.negotiate(set_offload) == (offload.WANTED, everything)
    assert calls[-1] == offload.WANTED  # left in force: what the stack can take
    set_offload, _ = kernel(offload.TUN_F_CSUM | offload.TUN_F_TSO6)  # no TSO4: csum and tso6
    csum_tso6 = offload.TUN_F_CSUM | offload.TUN_F_TSO6
    assert offload.negotiate(set_offload) == (csum_tso6, csum_tso6)
    set_offload, calls = kernel(0)  # an old kernel: nothing, and nothing left on
    assert offload.negotiate(set_offload) == (0, 0) and calls[-1] == 0
    o = offload.Offloads(True, offload.WANTED, everything, 10)
    assert o.describe("tap0") == (
        "offload on tap0: vnet header 10 bytes, csum tso4 tso6 (kernel also has: uso, not used)"
    )
    assert o.describe("tap0", send_only=("uso",)) == (
        "offload on tap0: vnet header 10 bytes, csum tso4 tso6; uso for sending only"
    )


def fake_link(vnet_on: bool) -> BatchLink:
    return BatchLink("fake0", -1, bytes(6), 1500, 4, vnet=vnet_on)


def test_link_puts_the_header_before_every_frame() -> None:
    link = fake_link(True)
    header = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 66, 1448, 34, 16)
    big = (b"E" * 14, vnet.mark(header), b"I" * 20, memoryview(b"P" * 60_000))
    keep = link._fill_iov(((b"small",), big))
    from netstack._ffi import ffi

    def iov(i: int) -> bytes:
        base, size = link._iov_words[2 * i], link._iov_words[2 * i + 1]
        return bytes(ffi.buffer(ffi.cast("uint8_t *", base), size))

    assert list(link._iov_counts)[:2] == [1, 4]  # small: copied; big: header + 3 pieces
    assert iov(0) == vnet.PLAIN + b"small"
    assert iov(1) == header.emit()
    assert b"".join(iov(i) for i in (2, 3, 4)) == b"".join(bytes(p) for p in big)
    del keep


def test_pcap_records_completed_checksums() -> None:
    host, _, iss = established()
    host.tcp.config.tso_max = offload.TSO_MAX
    conn = next(iter(host.tcp.conns.values()))
    conn.send(bytes(range(256)) * 40)
    host.tcp.flush(1.002)
    (frame,) = host.tx
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pcap"
        with PcapWriter(path, time_offset=0.0) as pcap:
            pcap.write(frame, 1.0)
            rx = tcp_frame(PEER_ISN + 1, iss + 1, wtcp.ACK, b"q" * 3000, partial=True)
            pcap.write((vnet.meta_mark(gso_meta(3000)), memoryview(rx)), 1.1)
        _, records = read_pcap(path)
    sent, got = records[0][2], records[1][2]
    assert len(sent) == 14 + 40 + 10240 and records[0][1] == len(sent)
    wtcp.parse(memoryview(sent[34:]), OUR_IP, PEER_IP)  # the checksum is complete
    wtcp.parse(memoryview(got[34:]), PEER_IP, OUR_IP)


def test_fault_keeps_metadata_and_unvouches_corruption() -> None:
    ch = FaultChannel(Impairment(delay=0.01), random.Random(1), RX_META_FORM)
    out: list = []
    ch.process([(memoryview(b"frame"), 7)], 0.0, out)
    assert out == []
    ch.release(0.02, out)
    assert [(bytes(v), m) for v, m in out] == [(b"frame", 7)]
    bad = FaultChannel(Impairment(corrupt=1.0), random.Random(1), RX_META_FORM)
    out = []
    bad.process([(memoryview(b"frame"), 7)], 0.0, out)
    ((view, meta),) = out
    assert meta == 0 and bytes(view) != b"frame"


def test_fault_loses_a_corrupted_outgoing_super_frame() -> None:
    drops: list[Drop] = []
    ch = FaultChannel(Impairment(corrupt=1.0), random.Random(1), TX_FORM, drops.append)
    header = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 66, 1448, 34, 16)
    out: list = []
    ch.process([(b"eth", vnet.mark(header), b"x" * 5000), (b"plain",)], 0.0, out)
    assert len(out) == 1 and out[0] != (b"plain",) and len(out[0][0]) == 5
    assert drops == [Drop.LINK_FAULT_INJECTED] and ch.stats.corrupted == 2


@pytest.mark.parametrize("on", [True, False])
def test_fake_link_without_fd_has_no_metadata_unless_vnet(on: bool) -> None:
    link = fake_link(on)
    assert (link.rx_meta is None) is (not on)
    assert link.slot_size == (vnet_slot() if on else 9024)
    assert isinstance(Counters(), Counters)


def vnet_slot() -> int:
    from netstack.io.link import VNET_RX_SLOT

    return VNET_RX_SLOT


def test_c_completes_a_partial_checksum_in_place() -> None:
    """What the link does to an ordinary NEEDS_CSUM frame (a kernel UDP datagram)."""
    from netstack._ffi import ffi, lib

    from netstack.wire import udp as wudp

    data = b"hello, partial world"
    udp = bytearray(wudp.build(PEER_IP, OUR_IP, 5000, 7, data) + data)
    udp[6:8] = vnet.pseudo_sum(PEER_IP, OUR_IP, len(udp), protocol=17)
    frame = ip_frame(bytes(udp), wipv4.PROTO_UDP)
    buf = ffi.new("uint8_t[]", frame)
    assert lib.ns_csum_complete(buf, len(frame), 34, 6) == 0
    done = bytes(ffi.buffer(buf, len(frame)))
    _, payload = wudp.parse(memoryview(done[34:]), PEER_IP, OUR_IP)
    assert bytes(payload) == data and done[40:42] == wudp.build(PEER_IP, OUR_IP, 5000, 7, data)[6:]
    assert lib.ns_csum_complete(buf, len(frame), len(frame) - 1, 6) < 0  # out of the frame


def test_fault_link_keeps_each_frame_with_its_metadata() -> None:
    """--fault over a link with the virtio-net header: rx_meta stays parallel to the frames
    through drops and delays."""
    from netstack.io.fault import FaultLink, parse_fault
    from tests.unit.test_fault import Clock, FakeLink

    inner = FakeLink()
    inner.vnet = True  # type: ignore[attr-defined]
    inner.rx_meta = []  # type: ignore[attr-defined]
    spec = parse_fault("rx:drop=0.5,rx:delay=1ms,seed=4")
    assert spec is not None
    clock = Clock()
    link = FaultLink(inner, spec, clock=clock, counters=Counters())  # type: ignore[arg-type]
    frames = [bytes([i]) * 10 for i in range(40)]
    inner.incoming = [memoryview(f) for f in frames]
    inner.rx_meta = [1000 + i for i in range(40)]  # type: ignore[attr-defined]
    assert link.receive_batch() == [] and link.rx_meta == []  # all held (delay)
    clock.now += 0.01
    inner.incoming, inner.rx_meta = [], []  # type: ignore[attr-defined]
    got = link.receive_batch()
    assert 5 < len(got) < 35 and len(link.rx_meta) == len(got)
    for view, meta in zip(got, link.rx_meta, strict=True):
        assert meta == 1000 + view[0]


def test_offload_setting() -> None:
    from netstack.config import ConfigError, build_config

    assert build_config().offload == "auto"
    assert build_config({"offload": "off"}).offload == "off"
    with pytest.raises(ConfigError, match="offload"):
        build_config({"offload": "on"})
    assert "offload = auto" in build_config().describe()


def _partial_udp_frame(data: bytes) -> bytes:
    """An ordinary frame as the kernel hands it over with CHECKSUM_PARTIAL: the UDP checksum
    field holds the pseudo-header sum only."""
    from netstack.wire import udp as wudp

    udp = bytearray(wudp.build(PEER_IP, OUR_IP, 5000, 7, data) + data)
    udp[6:8] = vnet.pseudo_sum(PEER_IP, OUR_IP, len(udp), protocol=17)
    return ip_frame(bytes(udp), wipv4.PROTO_UDP)


@pytest.mark.parametrize("mixed", [False, True])
def test_vnet_receive_completes_partial_checksums_in_c(mixed: bool) -> None:
    """BatchLink._receive_vnet over a datagram socketpair: ordinary NEEDS_CSUM frames come out
    complete (what a wire carries). A batch of only those and plain frames is plain
    (ns_vnet_rx_plain_v): metadata 0, but F_DATA_VALID for the frames whose UDP/TCP checksum
    it completed, so the host's fast path does not sum them again; a batch with a frame whose
    header says more keeps the per-frame metadata, the completed frames then DATA_VALID."""
    import socket

    from netstack._ffi import lib

    from netstack.wire import udp as wudp

    class PairLink(BatchLink):
        _rx_fn = staticmethod(lib.ns_read_batch)
        _tx_fn = staticmethod(lib.ns_write_batch)

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        a.setblocking(False)
        link = PairLink("pair0", a.fileno(), bytes(6), 1500, 8, vnet=True)
        partial = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, 34, 6).emit()
        frames = [_partial_udp_frame(b"one"), _partial_udp_frame(b"two, longer")]
        b.send(partial + frames[0])
        b.send(vnet.PLAIN + b"plain frame")
        b.send(partial + frames[1])
        if mixed:
            valid = vnet.VnetHeader(vnet.F_DATA_VALID, vnet.GSO_NONE, 0, 0, 0, 0).emit()
            b.send(valid + b"vouched")
        got = link.receive_batch()
        assert [bytes(g) for g in got][1] == b"plain frame"
        for view, data in zip((got[0], got[2]), (b"one", b"two, longer"), strict=True):
            _, payload = wudp.parse(memoryview(bytes(view)[34:]), PEER_IP, OUR_IP)
            assert bytes(payload) == data
        meta = link.rx_meta
        assert meta is not None and len(meta) == len(got)
        if not mixed:
            assert meta == [vnet.F_DATA_VALID, 0, vnet.F_DATA_VALID]
        else:
            assert bytes(got[3]) == b"vouched"
            flags = [m & 0xFF for m in meta]
            assert flags == [vnet.F_DATA_VALID, 0, vnet.F_DATA_VALID, vnet.F_DATA_VALID]
            assert all(vnet.meta_gso_type(m) == 0 for m in meta)
    finally:
        a.close()
        b.close()


def _vnet_arena(frames: list[tuple[vnet.VnetHeader, bytes]], slot: int = 2048):
    """frames laid out as BatchLink's receive arena: each slot its header, then the frame."""
    from netstack._ffi import ffi

    arena = ffi.new("uint8_t[]", slot * len(frames))
    lens = ffi.new("uint32_t[]", len(frames))
    for i, (header, frame) in enumerate(frames):
        data = header.emit() + frame
        ffi.memmove(arena + i * slot, data, len(data))
        lens[i] = len(data)
    return arena, lens, slot


def test_c_marks_completed_checksums_verified_only_when_they_are_the_l4_checksum() -> None:
    """ns_vnet_rx_plain_v: F_DATA_VALID exactly for the frames whose completed checksum is
    the one ns_rx_fast would verify (IPv4, 20-byte header, no padding, TCP at 16 / UDP at 6
    with the datagram's length); plain frames and odd positions are not vouched for."""
    from netstack._ffi import ffi, lib

    partial_udp = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, 34, 6)
    tcp = tcp_frame(1, 2, wtcp.ACK, b"data", partial=True)
    udp = _partial_udp_frame(b"x" * 20)
    frames = [
        (partial_udp, udp),  # verified
        (vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, 34, 16), tcp),  # verified
        (vnet.VnetHeader(0, vnet.GSO_NONE, 0, 0, 0, 0), tcp_frame(1, 2, wtcp.ACK)),  # plain
        (partial_udp, udp + bytes(6)),  # padded: the sum covered the padding too
        (vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, 14, 10), udp),  # IP's field
    ]
    arena, lens, slot = _vnet_arena(frames)
    verified = ffi.new("uint8_t[]", len(frames))
    r = lib.ns_vnet_rx_plain_v(arena, slot, vnet.HEADER_LEN, lens, len(frames), verified)
    assert r & 0xFFFF == 0 and r >> 16 == 2
    assert ffi.unpack(verified, len(frames)) == [vnet.F_DATA_VALID, vnet.F_DATA_VALID, 0, 0, 0]
    # the same pass without the output array: ns_vnet_rx_plain, unchanged
    arena, lens, slot = _vnet_arena(frames)
    assert lib.ns_vnet_rx_plain(arena, slot, vnet.HEADER_LEN, lens, len(frames)) == 0


def test_a_verified_frame_skips_the_checksum_and_others_are_summed() -> None:
    """DATA_VALID metadata (the link completed or the kernel verified the checksum) makes the
    fast path skip its L4 sum: a frame whose checksum is wrong is then taken by the fast path
    itself (proof that it was not summed a second time; before, the sum failed and the general
    path took it, trusting the header), while the same frame without the mark is a drop."""
    host, sinks, iss = established()
    general: list[bytes] = []
    receive_general = host._receive_general
    host._receive_general = lambda frame, now: (  # type: ignore[method-assign]
        general.append(bytes(frame)) or receive_general(frame, now)
    )
    bad = bytearray(tcp_frame(PEER_ISN + 1, iss + 1, wtcp.ACK, b"a" * 100))
    bad[50] ^= 0xFF  # the TCP checksum field: wrong, but vouched for
    host.receive_batch([memoryview(bytes(bad))], 1.001, [vnet.F_DATA_VALID])
    assert sinks[0].bytes == 100 and not host.counters.drops
    assert general == []
    again = bytearray(tcp_frame(PEER_ISN + 101, iss + 1, wtcp.ACK, b"b" * 100))
    again[50] ^= 0xFF
    host.receive_batch([memoryview(bytes(again))], 1.002, [0])
    assert sinks[0].bytes == 100
    assert host.counters.drops[Drop.TCP_BAD_CHECKSUM] == 1


def _one_frame_cases() -> dict[str, bytes]:
    """What a vnet link may read, each as one datagram: header + frame."""
    from netstack.io.link import VNET_RX_SLOT

    partial = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, 34, 6).emit()
    outside = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, 4000, 6).emit()
    not_l4 = vnet.VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, 14, 10).emit()
    valid = vnet.VnetHeader(vnet.F_DATA_VALID, vnet.GSO_NONE, 0, 0, 0, 0).emit()
    gso = vnet.VnetHeader(0, vnet.GSO_TCPV4, 54, 1448, 0, 0).emit()
    udp = _partial_udp_frame(b"echo me")
    return {
        "plain": vnet.PLAIN + udp,
        "partial udp": partial + udp,
        "partial, positions outside": outside + udp,
        "partial, not the l4 checksum": not_l4 + udp,
        "data valid": valid + b"vouched frame",
        "gso": gso + udp,
        "shorter than the header": vnet.PLAIN[:5],
        "truncated": vnet.PLAIN + bytes(VNET_RX_SLOT),
    }


@pytest.mark.parametrize("case", [*_one_frame_cases(), "plain link", "plain link, truncated"])
def test_vnet_one_frame_read_is_the_batch_read(case: str) -> None:
    """The one-frame shortcuts of _receive_vnet and of the plain receive_batch (no list
    unpacking when a read brings one ordinary frame): a frame read alone comes out exactly as
    it does at the head of a batch read by the general path (a plain filler frame after it):
    the same bytes, metadata, arena offer, header rewrite and counters."""
    import socket

    from netstack._ffi import ffi, lib

    from netstack.io.link import VNET_RX_SLOT

    class PairLink(BatchLink):
        _rx_fn = staticmethod(lib.ns_read_batch)
        _tx_fn = staticmethod(lib.ns_write_batch)

    vnet_link = not case.startswith("plain link")
    if vnet_link:
        data = _one_frame_cases()[case]
        filler = vnet.PLAIN + b"filler frame"
    else:
        data = _partial_udp_frame(b"x") if case == "plain link" else bytes(VNET_RX_SLOT)
        filler = b"filler frame"
    got = []
    for batch in ([data], [data, filler]):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * len(data))
            a.setblocking(False)
            link = PairLink("pair0", a.fileno(), bytes(6), 1500, 8, vnet=vnet_link)
            for d in batch:
                b.send(d)
            frames = [bytes(f) for f in link.receive_batch()]
            meta = list(link.rx_meta or []) if vnet_link else [None] * len(frames)
            if len(batch) == 2:  # the filler: plain, last, metadata 0
                assert frames.pop() == b"filler frame" and meta.pop() in (0, None)
            header = bytes(ffi.buffer(link._arena, vnet.HEADER_LEN))
            arena = link.rx_arena is not None
            got.append((frames, meta, arena, header, link.rx_oversize, link.rx_vnet_truncated))
        finally:
            a.close()
            b.close()
    assert got[0] == got[1]
    frames, meta, _, _, oversize, truncated = got[0]
    assert len(frames) == len(meta) == (0 if oversize or truncated else 1)
