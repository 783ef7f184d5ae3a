"""TCP header and options against scapy, both directions, plus every drop reason."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet import TCPOptions as SCAPY_TCP_OPTIONS
from scapy.packet import Raw

from netstack.drops import Drop
from netstack.wire import ipv4, tcp
from netstack.wire.errors import Malformed
from netstack.wire.tcp import TcpOptions
from tests.wire.reference import _checksum_py, ip, payloads, pseudo_header, u8, u16, u32

# kinds scapy decodes itself (MD5, AO, TFO, ...): it fails on their random values, we do not
SCAPY_KNOWN_KINDS = frozenset(SCAPY_TCP_OPTIONS[0])
SRC = ip("192.0.2.1")
DST = ip("192.0.2.2")

sack_blocks = st.lists(st.tuples(u32, u32), min_size=1, max_size=4).map(tuple)
tcp_options = st.builds(
    TcpOptions,
    mss=st.none() | u16,
    window_scale=st.none() | u8,
    sack_permitted=st.booleans(),
    sack_blocks=st.just(()) | sack_blocks,
    timestamp=st.none() | st.tuples(u32, u32),
)
segments = st.fixed_dictionaries(
    {
        "src_port": u16,
        "dst_port": u16,
        "seq": u32,
        "ack": u32,
        "flags": u8,
        "window": u16,
        "urgent": u16,
    }
)


def linux_layout_size(options: TcpOptions) -> int:
    """Bytes of options other than SACK blocks in the Linux layout, counted independently."""
    size = 4 if options.mss is not None else 0
    if options.timestamp is not None:
        size += 12
    elif options.sack_permitted:
        size += 4
    return size + (4 if options.window_scale is not None else 0)


def blocks_sent(options: TcpOptions) -> tuple[tuple[int, int], ...]:
    room = (40 - linux_layout_size(options) - 4) // 8
    return options.sack_blocks[: max(0, room)]


def to_scapy(options: TcpOptions) -> list[tuple[str, object]]:
    """What scapy's dissector should list for these options, NOP/EOL left out."""
    out: list[tuple[str, object]] = []
    if options.mss is not None:
        out.append(("MSS", options.mss))
    if options.window_scale is not None:
        out.append(("WScale", options.window_scale))
    if options.sack_permitted:
        out.append(("SAckOK", b""))
    if options.sack_blocks:
        out.append(("SAck", tuple(edge for block in options.sack_blocks for edge in block)))
    if options.timestamp is not None:
        out.append(("Timestamp", options.timestamp))
    return out


def scapy_options(pkt: TCP) -> list[tuple[str, object]]:
    order = ["MSS", "WScale", "SAckOK", "SAck", "Timestamp"]
    kept = [opt for opt in pkt.options if opt[0] not in ("NOP", "EOL")]
    return sorted(kept, key=lambda opt: order.index(opt[0]))


def scapy_len(opts: list[tuple[object, object]]) -> int:
    sizes = {"NOP": 1, "MSS": 4, "WScale": 3, "SAckOK": 2, "Timestamp": 10}
    total = 0
    for name, value in opts:
        if name == "SAck":
            total += 2 + 4 * len(value)  # type: ignore[arg-type]
        elif isinstance(name, int):
            total += 2 + len(value)  # type: ignore[arg-type]
        else:
            total += sizes[name]  # type: ignore[index]
    return total


# -- scapy builds, we parse ------------------------------------------------------------------


@st.composite
def scapy_option_lists(draw: st.DrawFn) -> tuple[list[tuple[object, object]], TcpOptions]:
    """Options in any order, with NOPs and unknown kinds mixed in, and what we should read."""
    options = draw(tcp_options)
    items: list[tuple[object, object]] = list(to_scapy(options))
    items += draw(st.lists(st.just(("NOP", None)), max_size=3))
    unknown_kinds = st.integers(6, 255).filter(lambda kind: kind not in SCAPY_KNOWN_KINDS)
    items += draw(st.lists(st.tuples(unknown_kinds, st.binary(max_size=6)), max_size=2))
    return draw(st.permutations(items)), options


@given(segments, scapy_option_lists(), payloads)
def test_parse_scapy_built(seg: dict, opts: tuple, data: bytes) -> None:
    items, expected = opts
    assume(scapy_len(items) <= 40)
    pkt = (
        IP(src="192.0.2.1", dst="192.0.2.2")
        / TCP(
            sport=seg["src_port"],
            dport=seg["dst_port"],
            seq=seg["seq"],
            ack=seg["ack"],
            flags=seg["flags"],
            window=seg["window"],
            urgptr=seg["urgent"],
            options=items,
        )
        / Raw(data)
    )
    raw = bytes(pkt)
    dissected = IP(raw)[TCP]
    header, payload = ipv4.parse(memoryview(raw))
    parsed, body = tcp.parse(payload, header.src, header.dst)
    assert parsed == tcp.TcpHeader(
        **seg, header_len=dissected.dataofs * 4, checksum=dissected.chksum, options=expected
    )
    assert isinstance(body, memoryview) and bytes(body) == data


# -- we build, scapy parses -----------------------------------------------------------------


@given(segments, st.none() | tcp_options, payloads)
def test_build_scapy_dissects(seg: dict, options: TcpOptions | None, data: bytes) -> None:
    header = tcp.build(SRC, DST, payload=data, options=options, **seg)
    assert len(header) % 4 == 0 and 20 <= len(header) <= 60
    raw = ipv4.build(SRC, DST, ipv4.PROTO_TCP, len(header) + len(data)) + header + data
    pkt = IP(raw)[TCP]
    assert (pkt.sport, pkt.dport, pkt.seq, pkt.ack) == (
        seg["src_port"],
        seg["dst_port"],
        seg["seq"],
        seg["ack"],
    )
    assert (int(pkt.flags), pkt.window, pkt.urgptr) == (seg["flags"], seg["window"], seg["urgent"])
    assert pkt.dataofs * 4 == len(header) and pkt.reserved == 0
    expected = options._replace(sack_blocks=blocks_sent(options)) if options else TcpOptions()
    assert scapy_options(pkt) == to_scapy(expected)
    assert bytes(pkt.payload) == data
    assert _checksum_py(pseudo_header(SRC, DST, 6, len(header) + len(data)), header, data) == 0
    redo = IP(raw)
    redo[TCP].chksum = None
    assert IP(bytes(redo))[TCP].chksum == pkt.chksum == int.from_bytes(header[16:18], "big")


@given(segments, tcp_options, payloads)
def test_round_trip(seg: dict, options: TcpOptions, data: bytes) -> None:
    header = tcp.build(SRC, DST, payload=memoryview(data), options=options, **seg)
    parsed, body = tcp.parse(memoryview(header + data), SRC, DST)
    assert parsed.options == options._replace(sack_blocks=blocks_sent(options))
    assert parsed._replace(options=None, checksum=0) == tcp.TcpHeader(
        **seg, header_len=len(header), checksum=0, options=None
    )
    assert bytes(body) == data


# -- the Linux option layouts ----------------------------------------------------------------

TS = (0x01020304, 0x0A0B0C0D)
TS_BYTES = bytes.fromhex("01020304 0a0b0c0d")


@pytest.mark.parametrize(
    ("options", "wire"),
    [
        (
            TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamp=TS),
            "020405b4 0402080a" + TS_BYTES.hex() + "01030307",
        ),  # mss,sackOK,TS,nop,wscale
        (
            TcpOptions(mss=1460, window_scale=7, sack_permitted=True),
            "020405b4 01010402 01030307",
        ),  # mss,nop,nop,sackOK,nop,wscale
        (TcpOptions(mss=536), "02040218"),
        (TcpOptions(timestamp=TS), "0101080a" + TS_BYTES.hex()),
        (
            TcpOptions(timestamp=TS, sack_blocks=((1, 2),)),
            "0101080a" + TS_BYTES.hex() + "0101050a 00000001 00000002",
        ),
        (
            TcpOptions(sack_blocks=((1, 2), (3, 4), (5, 6), (7, 8))),
            "01010522" + "".join(f"{n:08x}" for n in range(1, 9)),
        ),
        (
            TcpOptions(timestamp=TS, sack_blocks=((1, 2), (3, 4), (5, 6), (7, 8))),  # 3 fit
            "0101080a" + TS_BYTES.hex() + "0101051a" + "".join(f"{n:08x}" for n in range(1, 7)),
        ),
        (TcpOptions(), ""),
    ],
)
def test_linux_layout(options: TcpOptions, wire: str) -> None:
    assert tcp.build_options(options) == bytes.fromhex(wire)
    header = tcp.build(SRC, DST, 1, 2, 3, 4, tcp.SYN, 5, options=options)
    assert header[20:] == bytes.fromhex(wire)
    assert header[12] >> 4 == len(header) // 4


# -- option parsing corner cases -------------------------------------------------------------


def _segment(options: bytes, data: bytes = b"") -> memoryview:
    """A valid segment carrying raw option bytes (padded with EOL to a multiple of 4)."""
    options += bytes(-len(options) % 4)
    base = bytearray(tcp.build(SRC, DST, 1, 2, 3, 4, tcp.ACK, 100))
    base[12] = (20 + len(options)) << 2
    raw = base + options + data
    raw[16:18] = b"\x00\x00"
    raw[16:18] = _checksum_py(pseudo_header(SRC, DST, 6, len(raw)), raw).to_bytes(2, "big")
    return memoryview(bytes(raw))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("01010101", TcpOptions()),
        ("00", TcpOptions()),
        ("1e04aabb 020405b4", TcpOptions(mss=1460)),  # unknown kind skipped by length
        ("020405b4 00ffffff ffffffff", TcpOptions(mss=1460)),  # nothing read after EOL
        ("fe02 0303 0e", TcpOptions(window_scale=14)),
        ("0303 ff", TcpOptions(window_scale=255)),  # clamping to 14 is the engine's job
        ("0402", TcpOptions(sack_permitted=True)),
        ("020405b4 02040218", TcpOptions(mss=536)),  # the last one wins
        ("0101 080a" + TS_BYTES.hex(), TcpOptions(timestamp=TS)),  # the fast path
        ("080a" + TS_BYTES.hex() + "0101", TcpOptions(timestamp=TS)),  # same, general path
        ("0101 050a 00000001 00000002", TcpOptions(sack_blocks=((1, 2),))),  # 32 bytes, no TS
        (
            "0101 0522" + "".join(f"{n:08x}" for n in range(8)),
            TcpOptions(sack_blocks=((0, 1), (2, 3), (4, 5), (6, 7))),
        ),
    ],
)
def test_options_parse(options: str, expected: TcpOptions) -> None:
    parsed, payload = tcp.parse(_segment(bytes.fromhex(options), b"data"), SRC, DST)
    assert parsed.options == expected
    assert bytes(payload) == b"data"


@pytest.mark.parametrize(
    "options",
    [
        "010101 02",  # kind in the last byte: no room for its length
        "1e00",  # length 0
        "1e01",  # length 1
        "1e08 0000",  # runs past the header
        "020405b4 0206 0000",  # runs past the header (second option)
        "0203 05",  # MSS of length 3
        "020500000000",  # MSS of length 5
        "0304 0700",  # window scale of length 4
        "0403",  # SACK-permitted of length 3
        "0808 000000000000",  # timestamp of length 8
        "0502",  # SACK with no blocks
        "0506 00000000",  # SACK with half a block
        "050b 000000000000000000",  # SACK length not 2 + 8n
    ],
)
def test_bad_options(options: str) -> None:
    with pytest.raises(Malformed) as info:
        tcp.parse(_segment(bytes.fromhex(options)), SRC, DST)
    assert info.value.reason is Drop.TCP_BAD_OPTIONS


# -- header drop reasons ---------------------------------------------------------------------


def test_truncated_and_header_length() -> None:
    good = tcp.build(SRC, DST, 1, 2, 3, 4, tcp.SYN, 5, options=TcpOptions(mss=1460))
    for size in (0, 1, 19):
        with pytest.raises(Malformed) as info:
            tcp.parse(memoryview(good[:size]), SRC, DST)
        assert info.value.reason is Drop.TCP_TRUNCATED
    with pytest.raises(Malformed) as info:  # data offset says 24, only 20 bytes present
        tcp.parse(memoryview(good[:20]), SRC, DST, verify_checksum=False)
    assert info.value.reason is Drop.TCP_TRUNCATED
    for offset in (0, 1, 4):
        bad = good[:12] + bytes([offset << 4]) + good[13:]
        with pytest.raises(Malformed) as info:
            tcp.parse(memoryview(bad), SRC, DST, verify_checksum=False)
        assert info.value.reason is Drop.TCP_BAD_HEADER_LENGTH


def test_bad_checksum() -> None:
    raw = bytearray(tcp.build(SRC, DST, 1, 2, 3, 4, tcp.ACK, 5, b"data") + b"data")
    raw[-1] ^= 1
    with pytest.raises(Malformed) as info:
        tcp.parse(memoryview(raw), SRC, DST)
    assert info.value.reason is Drop.TCP_BAD_CHECKSUM
    header, body = tcp.parse(memoryview(raw), SRC, DST, verify_checksum=False)
    assert header.seq == 3 and bytes(body) == b"dat`"
    good = tcp.build(SRC, DST, 1, 2, 3, 4, tcp.ACK, 5)
    with pytest.raises(Malformed) as info:  # the pseudo-header counts
        tcp.parse(memoryview(good), SRC + 1, DST)
    assert info.value.reason is Drop.TCP_BAD_CHECKSUM


def test_reserved_bits_are_not_flags() -> None:
    raw = bytearray(tcp.build(SRC, DST, 1, 2, 3, 4, tcp.SYN | tcp.ACK, 5))
    raw[12] |= 0x0F  # reserved + NS/AE
    header, _ = tcp.parse(memoryview(raw), SRC, DST, verify_checksum=False)
    assert header.flags == tcp.SYN | tcp.ACK and header.header_len == 20


def test_flag_values_match_scapy() -> None:
    names = {
        "F": tcp.FIN,
        "S": tcp.SYN,
        "R": tcp.RST,
        "P": tcp.PSH,
        "A": tcp.ACK,
        "U": tcp.URG,
        "E": tcp.ECE,
        "C": tcp.CWR,
    }
    for letter, value in names.items():
        assert int(TCP(flags=letter).flags) == value


def test_payload_is_a_view() -> None:
    arena = bytearray(tcp.build(SRC, DST, 1, 2, 3, 4, tcp.ACK, 5, b"abcd") + b"abcd")
    _, payload = tcp.parse(memoryview(arena), SRC, DST)
    arena[-1] = ord("Z")
    assert bytes(payload) == b"abcZ"


def test_options_default_to_none() -> None:
    parsed, _ = tcp.parse(memoryview(tcp.build(SRC, DST, 1, 2, 3, 4, tcp.ACK, 5)), SRC, DST)
    assert parsed.options == TcpOptions(None, None, False, (), None)


# -- the per-segment builder: same bytes as build, checksum right by scapy -------------------


@given(segments, st.none() | st.tuples(u32, u32), payloads, u32, u32)
def test_build_fast_matches_build(
    seg: dict, ts: tuple[int, int] | None, data: bytes, src: int, dst: int
) -> None:
    seg = {**seg, "urgent": 0}
    options = TcpOptions(timestamp=ts) if ts is not None else None
    slow = tcp.build(src, dst, payload=data, options=options, **seg)
    base = tcp.template_sum(src, dst, seg["src_port"], seg["dst_port"])
    fast = tcp.build_fast(
        base, seg["src_port"], seg["dst_port"], seg["seq"], seg["ack"], seg["flags"],
        seg["window"], ts, memoryview(data),
    )  # fmt: skip
    assert fast == slow
    raw = ipv4.build(src, dst, ipv4.PROTO_TCP, len(fast) + len(data)) + fast + data
    redo = IP(raw)
    redo[TCP].chksum = None
    assert IP(bytes(redo))[TCP].chksum == int.from_bytes(fast[16:18], "big")


# -- the SYN builder and the SYN options fast path: same as build / parse_options ------------
syn_options = st.builds(
    TcpOptions,
    mss=st.none() | u16,
    window_scale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    sack_blocks=st.just(()),
    timestamp=st.none() | st.tuples(u32, u32),
)


@given(segments, syn_options, st.booleans(), u32, u32)
def test_build_syn_matches_build(
    seg: dict, options: TcpOptions, synack: bool, src: int, dst: int
) -> None:
    flags = tcp.SYN | (tcp.ACK if synack else 0)
    slow = tcp.build(
        src, dst, seg["src_port"], seg["dst_port"], seg["seq"], seg["ack"], flags,
        seg["window"], options=options,
    )  # fmt: skip
    base = tcp.template_sum(src, dst, seg["src_port"], seg["dst_port"])
    fast = tcp.build_syn(
        base, seg["src_port"], seg["dst_port"], seg["seq"], seg["ack"], flags, seg["window"],
        options,
    )  # fmt: skip
    assert fast == slow
    redo = IP(ipv4.build(src, dst, ipv4.PROTO_TCP, len(fast)) + fast)
    redo[TCP].chksum = None
    assert IP(bytes(redo))[TCP].chksum == int.from_bytes(fast[16:18], "big")
    # parse's one-unpack path for this layout decodes what parse_options decodes
    parsed, _ = tcp.parse(memoryview(fast), src, dst)
    assert parsed.options == tcp.parse_options(memoryview(fast), 20, len(fast))
    full = None not in (options.mss, options.window_scale, options.timestamp)
    if full and options.sack_permitted:
        assert parsed.options == options


@given(st.binary(min_size=20, max_size=20), u32, u32)
def test_syn_layout_fast_path_agrees_with_parse_options(opts: bytes, src: int, dst: int) -> None:
    """Any 20 option bytes, the Linux SYN layout's constant bytes forced in half the time:
    the fast path takes exactly what parse_options would (or it is not taken)."""
    for data in (
        opts,
        b"\x02\x04" + opts[2:4] + b"\x04\x02\x08\x0a" + opts[8:16] + b"\x01\x03\x03" + opts[19:],
    ):
        header = tcp.build(src, dst, 1, 2, 3, 4, tcp.SYN, 5)
        raw = bytes([*header[:12], (40 // 4) << 4, *header[13:16], 0, 0, *header[18:20]]) + data
        try:
            expected = tcp.parse_options(memoryview(raw), 20, 40)
        except Malformed:
            with pytest.raises(Malformed):
                tcp.parse(memoryview(raw), src, dst, verify_checksum=False)
            continue
        parsed, _ = tcp.parse(memoryview(raw), src, dst, verify_checksum=False)
        assert parsed.options == expected
