"""TSO: TCP hands the link super-segments of whole MSS pieces, and everything that counts
segments (cwnd, SACK, RACK, retransmission) still counts the pieces the kernel will cut.

The fake IP layer here plays the kernel: it records each super-segment and cuts it with
wire.vnet.software_segments (the same rules as Linux's tcp4_gso_segment), so the tests read
wire segments as the peer would.
"""

from __future__ import annotations

import hashlib

import pytest

from netstack.api.tcp import Protocol, TcpTransport, connect, listen
from netstack.proto.tcp.config import TcpConfig
from netstack.wire import ipv4 as wipv4
from netstack.wire import vnet as wvnet
from netstack.wire.tcp import ACK, SYN
from tests.unit.tcp.simnet import SimNet
from tests.unit.tcp.tcptools import (
    LOCAL_IP,
    LOCAL_ISN,
    LOCAL_PORT,
    MSS,
    REMOTE_IP,
    REMOTE_ISN,
    REMOTE_PORT,
    FakeIpv4,
    Harness,
    RecordingHandler,
    Seg,
    make_harness,
    quiet_config,
    seg,
    to_us,
)

TSO_MAX = 65535 - 20 - 60


def cut(src: int, dst: int, tcp: bytes, gso_size: int) -> list[bytes]:
    """A TCP super-segment as the wire carries it (Ethernet and IPv4 put around, then off)."""
    ip = wipv4.build(src, dst, wipv4.PROTO_TCP, len(tcp), dont_fragment=True)
    frame = bytes(14) + ip + tcp
    l4 = 14 + 20
    thl = (tcp[12] >> 4) * 4
    header = wvnet.VnetHeader(
        wvnet.F_NEEDS_CSUM, wvnet.GSO_TCPV4, l4 + thl, gso_size, l4, wvnet.TCP_CSUM_OFFSET
    )
    return [segment[l4:] for segment in wvnet.software_segments(frame, header)]


class TsoIpv4(FakeIpv4):
    """FakeIpv4 with TSO: super-segments are recorded, then cut as the kernel would."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.super_segments: list[tuple[int, int]] = []  # (payload bytes, gso_size)

    def send(self, dst: int, protocol: int, pieces, now: float, **kw) -> bool:
        data = b"".join(bytes(p) for p in pieces)
        gso = kw.get("gso_size", 0)
        if not gso:
            self.sent.append((dst, data, now))
            return True
        assert kw["l4_header_len"] == (data[12] >> 4) * 4
        self.super_segments.append((len(data) - kw["l4_header_len"], gso))
        for segment in cut(self.config.address, dst, data, gso):
            self.sent.append((dst, segment, now))
        return True


def tso_harness(**overrides) -> Harness:
    t = make_harness(quiet_config(tso_max=TSO_MAX, send_buffer=1 << 20, **overrides))
    ipv4 = TsoIpv4()
    ipv4.handlers = t.ipv4.handlers
    ipv4.pmtu = t.engine.pmtu
    t.engine.ipv4 = ipv4
    t.ipv4 = ipv4
    return t


def established_sack(t: Harness):
    """Client side, SACK on (no timestamps): the segments read plainly."""
    conn = t.engine.connect((REMOTE_IP, REMOTE_PORT), local_port=LOCAL_PORT)
    conn.handler = RecordingHandler(conn, t.events)
    t.engine.flush(t.now)
    t.expect(to_us(Seg(flags=SYN, seq=LOCAL_ISN, ack=0, mss=MSS, sack_perm=True)))
    t.send(seg(flags=SYN | ACK, seq=REMOTE_ISN, ack=LOCAL_ISN + 1, mss=MSS, sack_perm=True))
    t.expect(to_us(seg(seq=LOCAL_ISN + 1, ack=REMOTE_ISN + 1)))
    assert conn.sack_ok
    return conn


def test_a_write_goes_out_as_one_super_segment_recorded_per_mss() -> None:
    t = tso_harness(sack=True)
    conn = established_sack(t)
    conn.send(bytes(100_000))
    t.engine.flush(t.now)
    iw = conn.recovery.cc.cwnd
    assert t.ipv4.super_segments == [(iw, MSS)]  # the initial window, in one piece
    wire = t.recv()
    assert [len(s.payload) for s in wire] == [MSS] * (iw // MSS)
    assert [s.seq for s in wire] == [LOCAL_ISN + 1 + i * MSS for i in range(iw // MSS)]
    records = list(conn.recovery.board)
    assert [(r.start - LOCAL_ISN - 1, r.end - r.start) for r in records] == [
        (i * MSS, MSS) for i in range(iw // MSS)
    ]
    assert t.counters.tcp_segments_tx == 2 + iw // MSS  # SYN, ACK, then wire segments


def test_a_retransmission_resends_exactly_the_lost_piece() -> None:
    """Piece 2 of a super-segment is lost; SACKs for the rest: one MSS-sized retransmission
    of exactly that range, then new data (again in super-segments)."""
    t = tso_harness(sack=True)
    conn = established_sack(t)
    conn.send(bytes(100_000))
    t.engine.flush(t.now)
    pieces = len(t.recv())
    base = LOCAL_ISN + 1
    lost = (base + 2 * MSS, base + 3 * MSS)
    t.now += 0.01
    t.send(seg(seq=REMOTE_ISN + 1, ack=base + 2 * MSS, window=65535))  # pieces 0, 1 arrived
    t.recv()
    for k in range(4, pieces + 1):  # pieces 3.. arrive above the hole: SACKed dupacks
        t.send(
            seg(seq=REMOTE_ISN + 1, ack=lost[0], window=65535, sack=((lost[1], base + k * MSS),))
        )
    sent = t.recv()
    again = [s for s in sent if s.seq < base + pieces * MSS and s.payload]
    assert [(s.seq, s.seq + len(s.payload)) for s in again] == [lost]
    assert t.counters.tcp_retransmitted_segments == 1


class Sink(Protocol):
    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.bytes = 0

    def data_received(self, data: bytes) -> None:
        self.hash.update(data)
        self.bytes += len(data)


def transfer(seed: int, size: int, offload: str, **link) -> tuple[SimNet, Sink, bytes]:
    config = TcpConfig(tso_max=TSO_MAX if offload != "off" else 0)
    net = SimNet(seed, config_a=config, config_b=config, offload=offload, **link)
    sinks: list[Sink] = []
    listen(net.b, 9, lambda: sinks.append(Sink()) or sinks[-1])
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    data = data[:size]

    class Source(Protocol):
        def connection_made(self, transport: TcpTransport) -> None:
            self.transport, self.pos = transport, 0
            self.resume_writing()

        def resume_writing(self) -> None:
            while self.pos < len(data):
                n = self.transport.write(data[self.pos : self.pos + 65536])
                self.pos += n
                if n == 0:
                    return
            self.transport.write_eof()

    connect(net.a, (LOCAL_IP, 9), Source)
    net.run(600, stop=lambda: bool(sinks) and sinks[0].bytes >= size)
    return net, sinks[0], data


@pytest.mark.parametrize("offload", ["wire", "gro"])
def test_transfer_with_tso_is_exact_over_a_lossy_link(offload: str) -> None:
    """'wire': super-segments are cut and lost piece by piece; 'gro': delivered whole to a
    receiver that trusts their checksum (and lost whole). Either way every byte arrives."""
    net, sink, data = transfer(5, 2_000_000, offload, loss=0.02, delay=0.005)
    assert sink.bytes == len(data) and sink.hash.digest() == hashlib.sha256(data).digest()
    c = net.a.counters
    assert c.gso_frames_tx == 0  # counted by IPv4, which SimNet replaces
    assert net.super_segments > 10
    assert c.tcp_retransmitted_segments > 0


def test_transfer_without_offload_sends_no_super_segments() -> None:
    net, sink, data = transfer(5, 300_000, "off", delay=0.005)
    assert sink.hash.digest() == hashlib.sha256(data).digest()
    assert net.super_segments == 0


def test_slow_start_counts_the_pieces_a_stretch_ack_covers() -> None:
    """RFC 3465's L limits slow start to 2 SMSS per ACK; a GRO receiver ACKs a whole
    super-segment at once, so with TSO L becomes the pieces of one (Linux has no L)."""
    with_tso = tso_harness().engine.make_cc(MSS)
    without = make_harness().engine.make_cc(MSS)
    assert (with_tso.abc_limit, without.abc_limit) == (TSO_MAX // MSS, 2)
    for cc in (with_tso, without):
        cc.on_ack(45 * MSS, 1.0, 0.001, 45 * MSS)
    assert with_tso.cwnd == (10 + TSO_MAX // MSS) * MSS and without.cwnd == 12 * MSS


def test_after_frag_needed_super_segments_use_the_new_mss() -> None:
    """RFC 1191 with TSO: the in-flight pieces are resent at the new MSS, and the next
    super-segment's gso_size is the new MSS (the kernel cuts it to fit the path)."""
    from netstack.wire import ipv4 as wipv4

    t = tso_harness(sack=True)
    conn = established_sack(t)
    conn.send(bytes(100_000))
    t.engine.flush(t.now)
    iw = conn.recovery.cc.cwnd
    assert t.ipv4.super_segments == [(iw, MSS)]
    t.recv()
    base = LOCAL_ISN + 1
    inner = wipv4.Ipv4Header(20, 0, 1500, 0, True, False, 0, 64, 6, 0, t.ipv4.config.address,
                             REMOTE_IP)  # fmt: skip
    quoted = memoryview(
        LOCAL_PORT.to_bytes(2, "big") + REMOTE_PORT.to_bytes(2, "big") + base.to_bytes(4, "big")
    )
    t.now += 0.01
    t.engine.receive_frag_needed(inner, quoted, 1280, t.now)
    t.engine.flush(t.now)
    assert conn.mss == 1240
    resent = t.recv()
    assert {len(s.payload) for s in resent} == {1240, MSS - 1240}
    assert sum(len(s.payload) for s in resent) == iw
    t.ipv4.super_segments.clear()
    t.send(seg(seq=REMOTE_ISN + 1, ack=base + iw, window=65535))  # all of it arrived
    assert t.ipv4.super_segments and {g for _, g in t.ipv4.super_segments} == {1240}
    assert {len(s.payload) for s in t.recv()} == {1240}
