"""Software GSO and GRO (netstack/io/softoffload.py, ffi ns_gso_cut / ns_gro_merge).

- The C cut of a TCP super-segment equals wire/vnet.py's software_segments (the reference,
  the kernel's tcp_gso_segment rules) byte for byte, and scapy agrees with every checksum.
- The GRO merge follows tcp_gro_receive's rules: a table of runs, then the round trip (the
  cut of a super-frame merges back into exactly that super-frame, checksums made right).
- A host fed merged frames delivers the same bytes and counts the same drops as one fed the
  frames one by one (hypothesis, as tests/unit/test_fastpath.py does for the fast path).
- Through a link: send_batch cuts (and resumes exactly after EAGAIN part-way), receive_batch
  merges and reports the metadata a virtio GRO frame would carry.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from netstack._ffi import lib
from scapy.all import IP, TCP, UDP, Ether, IPv6, raw  # type: ignore[import-untyped]

from netstack.drops import Drop
from netstack.io import softoffload
from netstack.io.link import BatchLink
from netstack.proto.tcp import isn as isnmod
from netstack.wire import ipv4 as wipv4
from netstack.wire import tcp as wtcp
from netstack.wire import vnet as wvnet
from tests.unit.hosttools import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, learn_peer
from tests.unit.test_fuzz_receive import _host

SRC6, DST6 = "2001:db8::1", "2001:db8::2"
ACK, PSH, FIN, SYN, RST, URG, ECE, CWR = 0x10, 0x08, 0x01, 0x02, 0x04, 0x20, 0x40, 0x80


def super_frame(
    family: int,
    payload: bytes,
    flags: str = "A",
    *,
    seq: int = 1000,
    ident: int = 7,
    ts: tuple[int, int] | None = (1, 2),
    dst_mac: bytes = OUR_MAC,
) -> tuple[bytes, int, int]:
    """A TCP super-frame as scapy builds it: (frame, where TCP starts, TCP header length)."""
    options = [("Timestamp", ts)] if ts is not None else []
    tcp = TCP(sport=4000, dport=7, seq=seq, ack=77, flags=flags, window=500, options=options)
    if family == 4:
        ip = IP(src="192.0.2.1", dst="192.0.2.2", id=ident, flags="DF")
        l4 = 34
    else:
        ip = IPv6(src=SRC6, dst=DST6)
        l4 = 54
    frame = raw(Ether(dst=dst_mac, src=PEER_MAC) / ip / tcp / payload)
    return frame, l4, (frame[l4 + 12] >> 4) * 4


def mark_of(family: int, l4: int, thl: int, mss: int) -> wvnet.VnetMark:
    return (wvnet.tcp4_gso_mark if family == 4 else wvnet.tcp6_gso_mark)(l4, thl, mss)


def scapy_valid(frame: bytes, layer=TCP) -> bool:
    """scapy recomputes the IPv4 header and the TCP (or UDP) checksum: the same as the
    frame's?"""
    pkt = Ether(frame)
    want = pkt[layer].chksum
    del pkt[layer].chksum
    if IP in pkt:
        ip_want = pkt[IP].chksum
        del pkt[IP].chksum
        again = Ether(raw(pkt))
        return again[layer].chksum == want and again[IP].chksum == ip_want
    return Ether(raw(pkt))[layer].chksum == want


# -- the cut --------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from([4, 6]),
    size=st.integers(1, 20000),
    mss=st.sampled_from([536, 1000, 1397, 1448, 1460, 8948]),
    flags=st.sampled_from(["A", "PA", "FA", "FPA", "CA", "CEA", "FPCA", "UA"]),
    seq=st.integers(0, 2**32 - 1),
    ident=st.integers(0, 0xFFFF),
    ts=st.sampled_from([None, (1, 2), (0xFFFFFFFF, 5)]),
)
def test_c_cut_equals_the_reference_and_scapy(family, size, mss, flags, seq, ident, ts) -> None:
    frame, l4, thl = super_frame(family, os.urandom(size), flags, seq=seq, ident=ident, ts=ts)
    mark = mark_of(family, l4, thl, mss)
    cut = softoffload.gso_cut(frame, mark)
    assert cut == wvnet.software_segments(frame, mark.vnet)
    assert len(cut) == -(-size // mss)
    assert all(scapy_valid(piece) for piece in cut)
    # sequence numbers advance by the payload, flags split as tcp_gso_segment does
    first = Ether(cut[0])[TCP]
    assert first.seq == seq and (first.flags & CWR) == (Ether(frame)[TCP].flags & CWR)
    for piece in cut[1:]:
        assert not Ether(piece)[TCP].flags & CWR
    for piece in cut[:-1]:
        assert not Ether(piece)[TCP].flags & (FIN | PSH)
    if family == 4:
        assert [Ether(p)[IP].id for p in cut] == [(ident + i) & 0xFFFF for i in range(len(cut))]


def test_cut_refuses_what_is_not_a_tcp_or_udp_super_frame() -> None:
    frame, l4, thl = super_frame(4, b"x" * 3000)
    udp = bytearray(frame)
    udp[23] = 17  # UDP, but the header length says Ethernet + IP + a 32-byte TCP header
    with pytest.raises(OSError):
        softoffload.gso_cut(bytes(udp), mark_of(4, l4, thl, 1448))
    icmp = bytearray(frame)
    icmp[23] = 1
    with pytest.raises(OSError):
        softoffload.gso_cut(bytes(icmp), mark_of(4, l4, thl, 1448))
    with pytest.raises(OSError):  # a header length that is not Ethernet + IP + TCP
        softoffload.gso_cut(frame, mark_of(4, l4, thl + 4, 1448))


def uso_frame(family: int, payload: bytes, size: int, ident: int = 7):
    """A UDP super-frame as the echo runs make it (proto/udp.py flush): headers for the whole
    payload, the UDP checksum field holding the pseudo-header sum (NEEDS_CSUM), gso_size
    `size`. Returns (frame, mark)."""
    udp = UDP(sport=7, dport=4000, len=8 + len(payload), chksum=0)
    if family == 4:
        ip = IP(src="192.0.2.2", dst="192.0.2.1", id=ident, flags="DF", proto=17)
        l4 = 34
    else:
        ip = IPv6(src=DST6, dst=SRC6, nh=17)
        l4 = 54
    frame = bytearray(raw(Ether(dst=PEER_MAC, src=OUR_MAC) / ip / udp / payload))
    if family == 4:
        pseudo = wvnet.pseudo_sum(
            wipv4.ip_from_str("192.0.2.2"), wipv4.ip_from_str("192.0.2.1"), len(payload) + 8, 17
        )
        frame[l4 + 6 : l4 + 8] = pseudo
    vnet = wvnet.VnetHeader(wvnet.F_NEEDS_CSUM, wvnet.GSO_UDP_L4, l4 + 8, size, l4, 6)
    return bytes(frame), wvnet.mark(vnet)


def udp_valid(piece: bytes) -> bool:
    return scapy_valid(piece, UDP)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from([4, 6]),
    size=st.integers(1, 1472),
    count=st.integers(1, 64),
    short=st.integers(0, 1471),
    ident=st.integers(0, 0xFFFF),
)
def test_c_cut_of_a_udp_super_frame_equals_the_reference_and_scapy(
    family, size, count, short, ident
) -> None:
    """USO in software: datagrams of `size` payload bytes (the last shorter), each with its
    own IP ID (+1, as Linux's __udp_gso_segment), lengths and a complete UDP checksum."""
    count = min(count, (0xFFFF - 40 - 8) // size)  # within one IP packet, as the runs are
    payload = os.urandom(size * count - min(short, size - 1))
    frame, mark = uso_frame(family, payload, size, ident)
    cut = softoffload.gso_cut(frame, mark)
    assert cut == wvnet.software_segments(frame, mark.vnet)
    assert len(cut) == -(-len(payload) // size)
    assert all(udp_valid(piece) for piece in cut)
    assert b"".join(bytes(Ether(p)[UDP].payload) for p in cut) == payload
    if family == 4:
        assert [Ether(p)[IP].id for p in cut] == [(ident + i) & 0xFFFF for i in range(len(cut))]


@pytest.mark.parametrize("family", [4, 6])
def test_c_cut_sends_a_zero_udp_checksum_as_ffff(family: int) -> None:
    """RFC 768 (and RFC 8200 8.1): a computed UDP checksum of 0 goes out as 0xFFFF. The
    datagram's last two payload bytes are chosen so that its sum comes to exactly that."""
    body = bytearray(os.urandom(30) + b"\0\0")
    frame, mark = uso_frame(family, bytes(body), len(body))
    (piece,) = softoffload.gso_cut(frame, mark)
    fix = Ether(piece)[UDP].chksum  # the complement of the sum with the two bytes zero
    body[-2:] = fix.to_bytes(2, "big")  # adds `fix` to the sum: it folds to 0xFFFF, sent 0xFFFF
    frame, mark = uso_frame(family, bytes(body), len(body))
    (piece,) = softoffload.gso_cut(frame, mark)
    assert Ether(piece)[UDP].chksum == 0xFFFF
    assert [piece] == wvnet.software_segments(frame, mark.vnet)


# -- the merge ------------------------------------------------------------------------------------
MSS = 1448


def pieces(family: int = 4, n: int = 5, *, flags: str = "A", last: int = MSS, seq: int = 1000):
    """The wire segments of one flow: n pieces, the last `last` bytes."""
    frame, l4, thl = super_frame(family, os.urandom(MSS * (n - 1) + last), flags, seq=seq)
    return [bytearray(p) for p in softoffload.gso_cut(frame, mark_of(family, l4, thl, MSS))]


def refresh(piece: bytearray, family: int = 4) -> bytes:
    """Recompute a hand-edited piece's checksums (scapy)."""
    pkt = Ether(bytes(piece))
    del pkt[TCP].chksum
    if family == 4:
        del pkt[IP].chksum
    return raw(pkt)


def set_flags(piece: bytearray, family: int, flags: int) -> bytes:
    l4 = 34 if family == 4 else 54
    piece[l4 + 13] = flags
    return refresh(piece, family)


def runs(frames: list[bytes]) -> list[int]:
    """The merge's output as the number of wire pieces in each frame (1: left alone)."""
    out = []
    for frame, meta in softoffload.gro_merge(frames, OUR_MAC):
        if meta:
            hdr = meta >> 64
            out.append(wvnet.segments(len(frame) - hdr, wvnet.meta_gso_size(meta)))
        else:
            out.append(1)
    return out


def _other_flow(family: int) -> bytes:
    other = pieces(family, 1)[0]
    l4 = 34 if family == 4 else 54
    other[l4 : l4 + 2] = (4001).to_bytes(2, "big")
    return refresh(other, family)


def _case_gap(family: int) -> list[bytes]:
    p = pieces(family, 5)
    return [bytes(x) for i, x in enumerate(p) if i != 2]


def _case_psh_middle(family: int) -> list[bytes]:
    p = pieces(family, 5)
    return [set_flags(x, family, ACK | PSH) if i == 1 else bytes(x) for i, x in enumerate(p)]


def _case_tsval(family: int) -> list[bytes]:
    p = pieces(family, 5)
    l4 = 34 if family == 4 else 54
    for x in p[3:]:
        x[l4 + 20 + 4] ^= 1  # TSval from piece 3 on (options: NOP NOP TS)
    return [refresh(x, family) if i >= 3 else bytes(x) for i, x in enumerate(p)]


def _case_bad_checksum(family: int) -> list[bytes]:
    p = pieces(family, 5)
    p[2][-1] ^= 0xFF  # payload byte: the TCP checksum no longer holds
    return [bytes(x) for x in p]


def _case_fin(family: int) -> list[bytes]:
    p = pieces(family, 4)
    return [set_flags(x, family, ACK | FIN) if i == 3 else bytes(x) for i, x in enumerate(p)]


def _case_short_middle(family: int) -> list[bytes]:
    a = pieces(family, 2, last=700)
    b = pieces(family, 2, seq=1000 + MSS + 700)
    return [bytes(x) for x in a + b]


def _case_window(family: int) -> list[bytes]:
    p = pieces(family, 4)
    l4 = 34 if family == 4 else 54
    for x in p[2:]:
        x[l4 + 14 : l4 + 16] = (501).to_bytes(2, "big")
    return [refresh(x, family) if i >= 2 else bytes(x) for i, x in enumerate(p)]


def _case_not_to_us(family: int) -> list[bytes]:
    p = pieces(family, 4)
    for x in p:
        x[0:6] = PEER_MAC
    return [bytes(x) for x in p]


def _case_flags(flags: int):
    def case(family: int) -> list[bytes]:
        p = pieces(family, 4)
        return [set_flags(x, family, flags) if i == 1 else bytes(x) for i, x in enumerate(p)]

    return case


def _case_ipv4_options(family: int) -> list[bytes]:
    frame, _, _ = super_frame(4, os.urandom(MSS))
    pkt = Ether(frame)
    pkt[IP].options = [b"\x01\x01\x01\x00"]  # NOP NOP NOP EOL
    del pkt[IP].ihl, pkt[IP].len, pkt[IP].chksum, pkt[TCP].chksum
    p = pieces(4, 4)
    return [bytes(p[0]), raw(pkt), *map(bytes, p[1:])]


def _case_ip_ttl(family: int) -> list[bytes]:
    p = pieces(family, 4)
    for x in p[2:]:
        x[22 if family == 4 else 21] = 1
    return [refresh(x, family) if i >= 2 else bytes(x) for i, x in enumerate(p)]


# (name, frames of the case, the runs expected)
GRO_CASES = [
    ("mergeable run", lambda f: [bytes(x) for x in pieces(f, 5)], [5]),
    ("short last piece ends it", lambda f: [bytes(x) for x in pieces(f, 4, last=100)], [4]),
    ("gap in sequence", _case_gap, [2, 2]),
    ("other flow interleaved", lambda f: [*map(bytes, pieces(f, 2)), _other_flow(f)], [2, 1]),
    ("psh in the middle", _case_psh_middle, [2, 3]),
    ("different tsval", _case_tsval, [3, 2]),
    ("bad checksum piece", _case_bad_checksum, [2, 1, 2]),
    ("fin", _case_fin, [3, 1]),
    ("short middle piece", _case_short_middle, [2, 2]),
    ("window differs", _case_window, [2, 2]),
    ("not to our mac", _case_not_to_us, [1, 1, 1, 1]),
    ("syn", _case_flags(SYN | ACK), [1, 1, 2]),
    ("rst", _case_flags(RST | ACK), [1, 1, 2]),
    ("urg", _case_flags(URG | ACK), [1, 1, 2]),
    ("ece", _case_flags(ECE | ACK), [1, 1, 2]),
    ("cwr", _case_flags(CWR | ACK), [1, 1, 2]),
    ("no ack", _case_flags(0), [1, 1, 2]),
    ("ttl or hop limit differs", _case_ip_ttl, [2, 2]),
]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(("name", "make", "expected"), GRO_CASES, ids=[c[0] for c in GRO_CASES])
def test_gro_runs(family: int, name: str, make, expected: list[int]) -> None:
    assert runs(make(family)) == expected


def test_gro_ipv4_options_not_merged() -> None:
    assert runs(_case_ipv4_options(4)) == [1, 1, 3]


def test_gro_psh_on_the_last_piece_is_kept() -> None:
    p = pieces(4, 3, flags="PA")  # the cut puts PSH on the last piece only
    ((frame, meta),) = softoffload.gro_merge([bytes(x) for x in p], OUR_MAC)
    assert Ether(frame)[TCP].flags & PSH and meta


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("size", [1448 * 2, 1448 * 44 + 1, 1448 * 45 - 1, 3001])
def test_gro_undoes_the_cut(family: int, size: int) -> None:
    """The cut of a super-frame merges back into exactly it: the headers of the first piece
    with the total length, PSH from the last, and a TCP checksum that scapy agrees with."""
    frame, l4, thl = super_frame(family, os.urandom(size), "PA")
    cut = softoffload.gso_cut(frame, mark_of(family, l4, thl, MSS))
    ((merged, meta),) = softoffload.gro_merge(cut, OUR_MAC)
    assert merged == frame and scapy_valid(merged)
    header = wvnet.meta_header(meta)
    assert header.flags == wvnet.F_DATA_VALID and header.gso_size == MSS
    assert header.gso_type == (wvnet.GSO_TCPV4 if family == 4 else wvnet.GSO_TCPV6)
    assert header.hdr_len == l4 + thl


def test_gro_stops_at_64k() -> None:
    # 50 full pieces in sequence (72 400 bytes): more than one IPv4 datagram holds
    p = pieces(4, 30) + pieces(4, 20, seq=1000 + 30 * MSS)
    assert runs([bytes(x) for x in p]) == [45, 5]


# -- a host fed merged frames is a host fed the pieces --------------------------------------------
def _twin():
    host = _host()
    host.tcp.secrets = isnmod.Secrets(b"\x07" * 32)
    learn_peer(host)
    return host


def ip_frame(payload: bytes, protocol: int) -> bytes:
    """As a Linux peer sends TCP: DF set (so GRO takes any IPv4 ID, RFC 6864)."""
    header = wipv4.build(PEER_IP, OUR_IP, protocol, len(payload), ident=1, dont_fragment=True)
    return OUR_MAC + PEER_MAC + b"\x08\x00" + header + payload


def _seg(seq: int, ack: int, flags: int, data: bytes = b"", ts: int = 1, window: int = 2000):
    opts = wtcp.TcpOptions(timestamp=(ts, 0))
    segment = wtcp.build(PEER_IP, OUR_IP, 4000, 9, seq, ack, flags, window, data, options=opts)
    return ip_frame(segment + data, wipv4.PROTO_TCP)


def _open(hosts) -> int:
    """The same handshake into the twins' discard service; our ISN + 1 (their ACK)."""
    opts = wtcp.TcpOptions(mss=MSS, sack_permitted=True, timestamp=(1, 0), window_scale=7)
    syn = wtcp.build(PEER_IP, OUR_IP, 4000, 9, 999, 0, SYN, 65535, options=opts)
    isns = set()
    for host in hosts:
        host.receive_batch([memoryview(ip_frame(syn, wipv4.PROTO_TCP))], 0.0)
        (synack,) = [b"".join(bytes(p) for p in f) for f in host.tx]
        host.tx.clear()
        isns.add(int.from_bytes(synack[38:42], "big"))
    (isn,) = isns
    for host in hosts:
        host.receive_batch([memoryview(_seg(1000, isn + 1, ACK))], 0.0)
        host.tx.clear()
    return isn + 1


def _delivered(host) -> list[bytes]:
    """What the discard service is handed, recorded (it reads in order: the bytes delivered)."""
    (conn,) = host.tcp.conns.values()
    protocol = conn.user._protocol
    got: list[bytes] = []
    original = protocol.data_received

    def record(data: bytes) -> None:
        got.append(bytes(data))
        original(data)

    protocol.data_received = record
    return got


COMPARED = ("tcp_segments_rx", "ipv4_rx")  # wire segments in, as Linux's InSegs


def _stream(ops: list[tuple[int, int]], isn: int) -> list[list[bytes]]:
    """Batches of the peer's segments: 41 full segments, perturbed by ops
    (kind, where): 0 drop, 1 duplicate, 2 swap with the next, 3 flip a payload byte, 4 PSH,
    5 another window, 6 a batch boundary, 7 a stray segment of another flow."""
    data = bytes(range(256)) * 250
    segs = [
        _seg(1000 + off, isn, ACK, data[off : off + MSS], ts=2)
        for off in range(0, 40 * MSS + 500, MSS)
    ]
    cuts: set[int] = set()
    for kind, where in ops:
        i = where % len(segs)
        if kind == 0 and len(segs) > 1:
            del segs[i]
        elif kind == 1:
            segs.insert(i, segs[i])
        elif kind == 2 and i + 1 < len(segs):
            segs[i], segs[i + 1] = segs[i + 1], segs[i]
        elif kind == 3:
            bad = bytearray(segs[i])
            bad[-1] ^= 0x5A
            segs[i] = bytes(bad)
        elif kind in (4, 5):
            pkt = Ether(segs[i])
            if kind == 4:
                pkt[TCP].flags = "PA"
            else:
                pkt[TCP].window = 1999
            del pkt[TCP].chksum
            segs[i] = raw(pkt)
        elif kind == 6:
            cuts.add(i)
        elif kind == 7:
            stray = wtcp.build(PEER_IP, OUR_IP, 4001, 7, 5, 5, ACK, 100, b"zz")
            segs.insert(i, ip_frame(stray + b"zz", wipv4.PROTO_TCP))
    batches, cur = [], []
    for i, s in enumerate(segs):
        if i in cuts and cur:
            batches.append(cur)
            cur = []
        cur.append(s)
        if len(cur) == 64:
            batches.append(cur)
            cur = []
    if cur:
        batches.append(cur)
    return batches


def _run(merge: bool, ops) -> tuple[bytes, dict, dict]:
    host = _twin()
    isn = _open([host])
    got = _delivered(host)
    now = 1.0
    for batch in _stream(ops, isn):
        if merge:
            pairs = softoffload.gro_merge(batch, OUR_MAC)
            frames = [memoryview(f) for f, _ in pairs]
            host.receive_batch(frames, now, [m for _, m in pairs])
        else:
            host.receive_batch([memoryview(f) for f in batch], now)
        host.tx.clear()
        now += 0.001
    for _ in range(10):  # timers (delayed ACKs)
        now += 0.25
        host.poll(now)
        host.tx.clear()
    stream = b"".join(got)
    c = host.counters
    drops = {k: v for k, v in c.drops.items() if v}
    return stream, drops, {k: getattr(c, k) for k in COMPARED}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 60)), max_size=8))
@example(ops=[(1, 1), (2, 0)])  # a super-frame spanning a queued segment (TCP took only a part)
def test_gro_on_and_off_deliver_the_same(ops) -> None:
    plain = _run(False, ops)
    merged = _run(True, ops)
    assert merged[0] == plain[0] and merged[2] == plain[2]  # bytes, wire segments counted
    if not any(kind == 1 for kind, _ in ops):
        assert merged[1] == plain[1]  # the same drops, reason by reason
        return
    # A duplicate merged with the new data after it is one segment, partly old: TCP trims it
    # (as Linux's GRO, then tcp_data_queue, would) where alone it was dropped out of window.
    fewer = dict(plain[1])
    fewer.pop(Drop.TCP_OUT_OF_WINDOW, None)
    assert {k: v for k, v in merged[1].items() if k is not Drop.TCP_OUT_OF_WINDOW} == fewer
    assert merged[1].get(Drop.TCP_OUT_OF_WINDOW, 0) <= plain[1].get(Drop.TCP_OUT_OF_WINDOW, 0)


def test_gro_on_and_off_deliver_the_same_clean_stream() -> None:
    plain = _run(False, [])
    assert plain == _run(True, []) and len(plain[0]) == 41 * MSS


def test_gro_host_counts_wire_segments_and_super_frames() -> None:
    host = _twin()
    isn = _open([host])
    before = host.counters.tcp_segments_rx
    batch = _stream([], isn)[0]
    pairs = softoffload.gro_merge(batch, OUR_MAC)
    assert len(pairs) == 1  # 41 segments, one super-frame
    host.receive_batch([memoryview(f) for f, _ in pairs], 1.0, [m for _, m in pairs])
    assert host.counters.tcp_segments_rx - before == 41
    assert host.counters.gso_frames_rx == 1 and host.counters.gso_segments_rx == 41
    # Linux ACKs a GRO super-frame of >= 2 MSS at once: the echo's data carries the ACK
    acks = [b"".join(bytes(p) for p in f) for f in host.tx]
    assert acks and int.from_bytes(acks[0][42:46], "big") == 1000 + 41 * MSS


# -- through a link -------------------------------------------------------------------------------
class PairLink(BatchLink):
    """A BatchLink over one end of an AF_UNIX datagram socketpair (a frame per datagram)."""

    _rx_fn = staticmethod(lib.ns_read_batch)
    _tx_fn = staticmethod(lib.ns_write_batch)


def _pair(**kw):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    return PairLink("pair", a.fileno(), OUR_MAC, 1500, 64, **kw), a, b


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def _tx_frame(family: int, size: int, flags: str = "A"):
    frame, l4, thl = super_frame(family, os.urandom(size), flags)
    mark = mark_of(family, l4, thl, MSS)
    as_sent = (frame[:14], mark, frame[14:l4], frame[l4 : l4 + thl], memoryview(frame)[l4 + thl :])
    return frame, mark, as_sent


@pytest.mark.parametrize("family", [4, 6])
def test_link_send_cuts_super_segments_in_order(family: int) -> None:
    link, a, b = _pair(gso=True)
    try:
        frame, mark, as_sent = _tx_frame(family, 10000, "PA")
        plain = (b"p" * 60,)
        assert link.send_batch([plain, as_sent, plain]) == 3
        got = _drain(b)
        assert got == [plain[0], *softoffload.gso_cut(frame, mark), plain[0]]
        assert link.soft_gso is not None and link.soft_gso.frames == 1
    finally:
        a.close()
        b.close()


def test_link_without_gso_sends_the_super_frame_whole() -> None:
    """gso off (the per-segment path): nothing cuts; TCP never makes super-segments then."""
    link, a, b = _pair()
    try:
        frame, _, as_sent = _tx_frame(4, 5000)
        assert link.send_batch([as_sent]) == 1
        assert _drain(b) == [frame]
    finally:
        a.close()
        b.close()


def test_link_send_resumes_after_eagain_part_way() -> None:
    """The kernel takes part of a super-segment: the frame stays unsent for the loop, and the
    next send writes only the pieces not yet written (each piece exactly once)."""
    link, a, b = _pair(gso=True)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        frame, mark, as_sent = _tx_frame(4, 40 * MSS)
        want = softoffload.gso_cut(frame, mark)
        got: list[bytes] = []
        rounds = 0
        queue = [as_sent]
        while queue and rounds < 200:
            written = link.send_batch(queue)
            if written:
                del queue[:written]
            else:
                queue = [wvnet.own_frame(f) for f in queue]  # what the loop keeps
            got += _drain(b)
            rounds += 1
        assert not queue and rounds > 1  # it did stop part-way
        assert got == want
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("family", [4, 6])
def test_link_receive_merges_a_batch(family: int) -> None:
    link, a, b = _pair(gro=True)
    try:
        frame, l4, thl = super_frame(family, os.urandom(5 * MSS + 10), "PA")
        cut = softoffload.gso_cut(frame, mark_of(family, l4, thl, MSS))
        other = pieces(family, 1, flags="FA")[0]
        for f in [*cut, other]:
            b.send(f)
        frames = link.receive_batch()
        assert [bytes(f) for f in frames] == [frame, bytes(other)]
        assert link.rx_meta is not None and link.rx_meta[1] == 0
        assert wvnet.meta_gso_size(link.rx_meta[0]) == MSS
        b.send(bytes(other))
        assert [bytes(f) for f in link.receive_batch()] == [bytes(other)]
        assert link.rx_meta is None  # nothing merged: a plain batch
    finally:
        a.close()
        b.close()


def test_gro_arena_holds_a_whole_super_frame() -> None:
    link, a, b = _pair(gro=True)
    try:
        assert link.slot_size >= 65535 + 14
        assert link.tx_slot_size < link.slot_size  # transmit slots stay frame-sized
    finally:
        a.close()
        b.close()


def test_meta_word_round_trip() -> None:
    word = 1448 | wvnet.GSO_TCPV6 << 16 | 86 << 24
    header = wvnet.meta_header(softoffload.meta_of_gro(word))
    assert header == wvnet.VnetHeader(wvnet.F_DATA_VALID, wvnet.GSO_TCPV6, 86, 1448, 0, 0)
    assert softoffload.meta_of_gro(0) == 0
    assert struct.calcsize("=BBHHHH") == wvnet.HEADER_LEN


# -- configuration ---------------------------------------------------------------------------------
def test_gso_gro_config_keys_flags_and_check_config(tmp_path, capsys) -> None:
    from netstack.cli import main
    from netstack.config import ConfigError, build_config

    config = build_config()
    assert (config.gso, config.gro) == ("auto", "auto")  # software where the link lacks it
    assert build_config({"gso": "off", "gro": "off"}).gro == "off"
    with pytest.raises(ConfigError, match="'gso'"):
        build_config({"gso": "on"})
    path = tmp_path / "n.toml"
    path.write_text('gso = "off"\ngro = "auto"\n')
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "gso = off" in out and "gro = auto" in out


def test_links_take_software_offloads_only_without_a_vnet_header() -> None:
    link, a, b = _pair(gso=True, gro=True, vnet=True)
    try:
        assert link.soft_gso is None and link.soft_gro is None
    finally:
        a.close()
        b.close()
    with pytest.raises(ValueError):
        from netstack.io.tap import TapLink

        TapLink("tap-x", gso="on")


def test_loop_drains_on_while_software_gro_read_full_batches() -> None:
    """A full read merged into fewer frames is still a full read: the loop reads again in the
    same turn (as for any full batch), so a burst of 3 batches is taken in one turn."""
    from netstack.counters import Counters
    from netstack.io.loop import Loop

    link, a, b = _pair(gro=True)
    link.max_batch = 8  # the arena has 64 slots; read 8 at a time
    got: list[int] = []
    try:
        frame, l4, thl = super_frame(4, os.urandom(24 * MSS))
        for piece in softoffload.gso_cut(frame, mark_of(4, l4, thl, MSS)):
            b.send(piece)
        with Loop(Counters()) as loop:
            loop.add_link(link, lambda frames, now: got.append(len(frames)))
            loop.run_once(0.5)
        assert got == [1, 1, 1]  # three full reads of 8 pieces, each merged, in one turn
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("requests", [1, 2, 40])
def test_link_cuts_echo_runs_into_the_replies_a_host_without_uso_sends(requests: int) -> None:
    """Software USO end to end: a host whose echo service makes runs (udp.gso_max, as
    runtime sets it when the link cuts in software) answers a batch of requests with a UDP
    super-frame; the link's cut writes exactly the datagrams, byte for byte (IP IDs and
    checksums included), that a host without runs sends for the same batch."""
    from tests.unit.test_echo_batch import Arena, _ip, _udp
    from tests.unit.test_echo_batch import _host as echo_host

    wire: dict[int, list[bytes]] = {}
    for uso in (64, 0):
        host = echo_host()
        host.udp.gso_max = uso
        frames = [  # one flow (a run's key: peer, port, size), each payload its own
            _ip(PEER_IP, OUR_IP, 17, _udp(PEER_IP, OUR_IP, 5000, 7, bytes([i, 7 * i & 0xFF]) * 50))
            for i in range(requests)
        ]
        views, metas, arena = Arena(requests, False).lay(frames, [False] * requests)
        host.tx.clear()
        host.receive_batch(views, 1.0, metas, arena)
        marks = [f for f in host.tx if softoffload.gso_mark(f) is not None]
        assert len(marks) == (1 if uso and requests > 1 else 0)
        link, a, b = _pair(gso=True)
        try:
            assert link.send_batch(host.tx) == len(host.tx)
            wire[uso] = _drain(b)
        finally:
            a.close()
            b.close()
    assert len(wire[0]) == requests
    assert wire[64] == wire[0]
    assert all(udp_valid(d) for d in wire[64])


def test_udp_cut_refuses_an_ipv6_header_cut_short() -> None:
    """An IPv6 UDP super-frame whose header length says less than Ethernet + IPv6 + UDP:
    refused before any address byte past the header is read."""
    frame, mark = uso_frame(6, b"x" * 300, 100)
    for hlen in (42, 50, 53, 61):
        vnet = mark.vnet._replace(hdr_len=hlen)
        with pytest.raises(OSError):
            softoffload.gso_cut(frame[:hlen] + frame[62:], wvnet.mark(vnet))


def test_udp_runs_with_the_same_headers_never_resume_each_other() -> None:
    """Two IPv6 echo runs to one peer, port and size have the same headers (no IP ID). The
    first is cut short by EAGAIN and then let go (the loop trims its queue, or --fault drops
    it); the second must still be written whole: only the very same frame resumes."""
    link, a, b = _pair(gso=True)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        first, mark = uso_frame(6, bytes([1]) * 40 * 1000, 1000)
        second, _ = uso_frame(6, bytes([2]) * 40 * 1000, 1000)
        as_sent = [(f[:14], mark, f[14:62], memoryview(f)[62:]) for f in (first, second)]
        assert link.send_batch([as_sent[0]]) == 0  # part of it went, then EAGAIN
        sent_first = _drain(b)
        assert 0 < len(sent_first) < 40
        got: list[bytes] = []
        queue = [wvnet.own_frame(as_sent[1])]
        for _ in range(200):
            if not queue:
                break
            if link.send_batch(queue):
                queue = []
            got += _drain(b)
        got += _drain(b)
        assert got == softoffload.gso_cut(second, mark)
    finally:
        a.close()
        b.close()
