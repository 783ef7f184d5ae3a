"""Fuzz targets: one per wire parser/builder pair, one for the C checksum, one for a Host.

`reassembly` drives the IPv4/IPv6 reassembler (reasmfuzz.py). IPv6 has three: `ipv6` (fixed
header, extension-header walk, Fragment header, RFC 7112 check), `icmpv6` (messages, ND bodies
and options) and `mldv2` (the MLDv2 report builder, read back
by RFC 3810 §5.2 spelled out here).

Each target is `target(data: bytes) -> None` and raises (an AssertionError, or whatever the
product raised) only on a finding. The same functions run under atheris (tests/fuzz/run.py,
coverage-guided) and under pytest (tests/fuzz/test_corpus.py, replaying the committed corpus
and crash reproducers), so a reproducer is just a file of bytes.

The wire targets take the bytes as the header they parse (a corpus of real headers is
meaningful to them) and check two things:
  - parse(arbitrary bytes) returns or raises `Malformed`, nothing else;
  - what parsed builds back to the same value: parse(build(parse(x))) == parse(x), for every
    field the builder can express (e.g. IPv4 options and TCP option order are not).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from netstack.wire import arp, ethernet, icmp, icmpv6, ipv4, ipv6, tcp, udp
from netstack.wire import checksum as wchecksum
from netstack.wire.errors import Malformed

Target = Callable[[bytes], None]
_IPS = struct.Struct("!II")


def _attempt(parse, *args, **kwargs):
    """The parser's result, or None when it raised Malformed (any other exception escapes)."""
    try:
        return parse(*args, **kwargs)
    except Malformed:
        return None


def _ips(data: bytes) -> tuple[int, int, bytes]:
    """The first 8 bytes as (source, destination) IPv4 addresses for a pseudo-header."""
    if len(data) < 8:
        data = data + bytes(8 - len(data))
    src, dst = _IPS.unpack_from(data)
    return src, dst, data[8:]


# -- wire targets ----------------------------------------------------------------------------
def ethernet_target(data: bytes) -> None:
    got = _attempt(ethernet.parse, memoryview(data))
    if got is None:
        assert len(data) < ethernet.HEADER_LEN
        return
    h, payload = got
    rebuilt = ethernet.build(h.dst, h.src, h.ethertype) + bytes(payload)
    assert rebuilt == data  # Ethernet II has nothing the builder cannot express
    h2, payload2 = ethernet.parse(memoryview(rebuilt))
    assert h2 == h and bytes(payload2) == bytes(payload)


def arp_target(data: bytes) -> None:
    p = _attempt(arp.parse, memoryview(data))
    if p is None:
        return
    rebuilt = arp.build(*p)
    assert rebuilt == data[: arp.HEADER_LEN]
    assert arp.parse(memoryview(rebuilt)) == p


def ipv4_target(data: bytes) -> None:
    view = memoryview(data)
    strict = _attempt(ipv4.parse, view)
    loose = _attempt(ipv4.parse, view, False)
    truncated = _attempt(ipv4.parse, view, False, allow_truncated=True)
    if strict is not None:  # each relaxation accepts at least what the stricter parse did
        assert loose is not None and loose[0] == strict[0]
    if loose is not None:
        assert truncated is not None and truncated[0] == loose[0]
        assert bytes(truncated[1]) == bytes(loose[1])
    if truncated is None:
        return
    h, payload = truncated
    assert len(payload) <= h.total_length - h.header_len
    rebuilt_header = ipv4.build(
        h.src, h.dst, h.protocol, len(payload), ident=h.ident, ttl=h.ttl, tos=h.tos,
        dont_fragment=h.dont_fragment, more_fragments=h.more_fragments,
        frag_offset=h.frag_offset,
    )  # fmt: skip
    h2, payload2 = ipv4.parse(memoryview(rebuilt_header + bytes(payload)))  # checksum verified
    assert bytes(payload2) == bytes(payload)
    assert h2.header_len == ipv4.MIN_HEADER_LEN and h2.total_length == 20 + len(payload)
    same = ("tos", "ident", "dont_fragment", "more_fragments", "frag_offset", "ttl", "protocol",
            "src", "dst")  # fmt: skip
    for name in same:
        assert getattr(h2, name) == getattr(h, name), name
    if strict is not None and h.header_len == ipv4.MIN_HEADER_LEN and not data[6] & 0x80:
        # Same header bytes (the reserved flag clear): the same checksum, 0 and 0xFFFF aside.
        assert h2.checksum == h.checksum or {h.checksum, h2.checksum} == {0, 0xFFFF}


def icmp_target(data: bytes) -> None:
    view = memoryview(data)
    verified = _attempt(icmp.parse, view)
    got = _attempt(icmp.parse, view, False)
    if verified is not None:
        assert got is not None and got[0] == verified[0]
    if got is None:
        assert len(data) < icmp.HEADER_LEN
        return
    h, payload = got
    rebuilt = icmp.build(h.type, h.code, h.rest, payload) + bytes(payload)
    h2, payload2 = icmp.parse(memoryview(rebuilt))  # its checksum verifies
    assert (h2.type, h2.code, h2.rest) == (h.type, h.code, h.rest)
    assert bytes(payload2) == bytes(payload)
    if verified is not None:
        assert h2.checksum == h.checksum or {h.checksum, h2.checksum} == {0, 0xFFFF}


def udp_target(data: bytes) -> None:
    src, dst, body = _ips(data)
    view = memoryview(body)
    verified = _attempt(udp.parse, view, src, dst)
    got = _attempt(udp.parse, view, src, dst, False)
    if verified is not None:
        assert got is not None and got[0] == verified[0]
    if got is None:
        return
    h, payload = got
    assert h.length == udp.HEADER_LEN + len(payload)
    rebuilt = udp.build(src, dst, h.src_port, h.dst_port, payload) + bytes(payload)
    h2, payload2 = udp.parse(memoryview(rebuilt), src, dst)
    assert (h2.src_port, h2.dst_port, h2.length) == (h.src_port, h.dst_port, h.length)
    assert bytes(payload2) == bytes(payload) and h2.checksum != 0
    if verified is not None and h.checksum:
        assert h2.checksum == h.checksum


def tcp_target(data: bytes) -> None:
    src, dst, body = _ips(data)
    view = memoryview(body)
    verified = _attempt(tcp.parse, view, src, dst)
    got = _attempt(tcp.parse, view, src, dst, False)
    if verified is not None:
        assert got is not None and got[0] == verified[0]
    if got is None:
        return
    h, payload = got
    # The fast path for NOP NOP TS must agree with the general option parser.
    if h.header_len > tcp.HEADER_LEN:
        slow = tcp.parse_options(view, tcp.OPTIONS_OFFSET, h.header_len)
        assert slow == h.options, (slow, h.options)
    opts = h.options
    rebuilt = tcp.build(
        src, dst, h.src_port, h.dst_port, h.seq, h.ack, h.flags, h.window, payload,
        options=opts, urgent=h.urgent,
    ) + bytes(payload)  # fmt: skip
    h2, payload2 = tcp.parse(memoryview(rebuilt), src, dst)  # checksum verified
    assert bytes(payload2) == bytes(payload)
    fields = ("src_port", "dst_port", "seq", "ack", "flags", "window", "urgent")
    for name in fields:
        assert getattr(h2, name) == getattr(h, name), name
    # SACK blocks beyond what fits beside the other options are left out, the first kept.
    others = len(tcp.build_options(opts._replace(sack_blocks=())))
    room = min((tcp.MAX_OPTIONS_LEN - others - 4) // 8, tcp.MAX_SACK_BLOCKS)
    want = opts._replace(sack_blocks=opts.sack_blocks[: max(room, 0)])
    assert h2.options == want, (h2.options, want)
    assert h2.header_len <= tcp.MAX_HEADER_LEN and h2.header_len % 4 == 0


def _checksum_reference(data: bytes, initial: int) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = initial + sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def checksum_target(data: bytes) -> None:
    """The C checksum (cffi) against RFC 1071 spelled out, the input cut into pieces at the
    positions the first bytes choose (odd pieces exercise the byte-swap path)."""
    if len(data) < 6:
        return
    initial = int.from_bytes(data[:4], "big")
    cuts = sorted({b % (len(data) - 5) for b in data[4:6]})
    body = data[6:]
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(body[start:cut])
        start = max(start, cut)
    pieces.append(body[start:])
    got = wchecksum.checksum(*pieces, initial=initial)
    assert got == _checksum_reference(body, initial), (got, pieces, initial)


# -- IPv6 ------------------------------------------------------------------------------------
def _masked_fragment_header(raw: bytes) -> bytes:
    """A Fragment header with its reserved fields (byte 1, bits 1-2 of the offset word) zero:
    what build_fragment writes."""
    word = int.from_bytes(raw[2:4], "big") & 0xFFF9
    return raw[:1] + b"\0" + word.to_bytes(2, "big") + raw[4:8]


def ipv6_target(data: bytes) -> None:
    view = memoryview(data)
    got = _attempt(ipv6.parse, view)
    if got is None:
        return
    h, payload = got
    assert len(payload) == h.payload_length and h.payload_length > 0
    rebuilt = ipv6.build(h.src, h.dst, h.next_header, len(payload), h.hop_limit,
                         h.traffic_class, h.flow_label) + bytes(payload)  # fmt: skip
    assert rebuilt == data[: ipv6.HEADER_LEN + h.payload_length]  # every field expressible
    multicast = ipv6.is_multicast(h.dst)
    try:
        chain = ipv6.walk(payload, h.next_header, multicast)
    except ipv6.ParamProblem as problem:  # a pointer inside the packet, a known code
        assert 0 <= problem.pointer < ipv6.HEADER_LEN + len(payload), problem.pointer
        assert problem.code in (ipv6.PP_ERRONEOUS_FIELD, ipv6.PP_UNRECOGNIZED_NEXT_HEADER,
                                ipv6.PP_UNRECOGNIZED_OPTION), problem.code  # fmt: skip
        return
    except Malformed:
        return
    assert 0 <= chain.offset <= len(payload)
    assert 6 <= chain.nh_at < ipv6.HEADER_LEN + len(payload)
    assert data[chain.nh_at] == chain.upper
    frag = chain.fragment
    if frag is None:
        assert chain.upper not in ipv6.EXTENSION_HEADERS and chain.upper != ipv6.NO_NEXT
        return
    at = frag.header_offset
    raw = bytes(payload[at : at + ipv6.FRAGMENT_HEADER_LEN])
    assert chain.offset == at + ipv6.FRAGMENT_HEADER_LEN
    assert ipv6.build_fragment(frag.next_header, frag.offset, frag.more, frag.ident) == (
        _masked_fragment_header(raw)
    )
    assert frag.offset % 8 == 0 and frag.offset <= 0xFFF8
    # RFC 7112's check and the walk after the Fragment header raise nothing but Malformed.
    ipv6.chain_complete(payload, frag.next_header, chain.offset)
    _attempt(ipv6.walk, payload, frag.next_header, multicast, start=chain.offset)


def icmpv6_target(data: bytes) -> None:
    """The first 32 bytes are the source and destination (the checksum's pseudo-header)."""
    if len(data) < 32:
        return
    src, dst, message = data[:16], data[16:32], data[32:]
    got = _attempt(icmpv6.parse, memoryview(message), src, dst)
    if got is None:
        if len(message) < icmpv6.HEADER_LEN:
            return
        # Past the checksum gate, so that the fuzzer reaches the bodies: the same message
        # with the checksum it should have had.
        good = icmpv6.build(src, dst, message[0], message[1], message[4:])
        message = message[:2] + good[2:4] + message[4:]
        got = icmpv6.parse(memoryview(message), src, dst)
    h, body = got
    rebuilt = icmpv6.build(src, dst, h.type, h.code, body)
    assert rebuilt == message[:2] + rebuilt[2:4] + message[4:]
    assert h.checksum == int.from_bytes(rebuilt[2:4], "big") or {
        h.checksum,
        int.from_bytes(rebuilt[2:4], "big"),
    } == {0, 0xFFFF}
    if len(body) >= 4:  # echo and errors: header() sums the data without joining it
        head = icmpv6.header(src, dst, h.type, h.code, icmpv6.word(body), body[4:])
        assert head + bytes(body[4:]) == rebuilt
    if h.type in icmpv6.ND_FIXED:
        msg = _attempt(icmpv6.parse_nd, h.type, body)
        if msg is None:
            return
        again = icmpv6.nd_body(msg)
        assert icmpv6.parse_nd(h.type, memoryview(again)) == msg
        whole = icmpv6.build_nd(src, dst, msg)
        h2, body2 = icmpv6.parse(memoryview(whole), src, dst)
        assert (h2.type, h2.code) == (h.type, 0) and icmpv6.parse_nd(h.type, body2) == msg


def _mldv2_records(body: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """RFC 3810 §5.2: reserved (2), record count (2), then per record: type, aux data length
    (in 32-bit words), number of sources (2), the group (16), the sources, the aux data."""
    count = int.from_bytes(body[2:4], "big")
    records, i = [], 4
    for _ in range(count):
        kind, aux, sources = body[i], body[i + 1], int.from_bytes(body[i + 2 : i + 4], "big")
        records.append((kind, body[i + 4 : i + 20]))
        i += 20 + 16 * sources + 4 * aux
    assert i == len(body) and body[:2] == b"\0\0"
    return count, records


def mldv2_target(data: bytes) -> None:
    """The report we send for our solicited-node groups, read back field by field."""
    if not data:
        return
    kind = data[0]
    groups = [data[i : i + 16] for i in range(1, len(data) - 15, 16)]
    body = icmpv6.mldv2_report_body(groups, kind)
    count, records = _mldv2_records(body)
    assert count == len(groups) and records == [(kind, g) for g in groups]
    src, dst = bytes(16), bytes.fromhex("ff020000000000000000000000000016")
    message = icmpv6.build(src, dst, icmpv6.TYPE_MLDV2_REPORT, 0, body)
    h, body2 = icmpv6.parse(memoryview(message), src, dst)
    assert h.type == icmpv6.TYPE_MLDV2_REPORT and bytes(body2) == body


WIRE_TARGETS: dict[str, Target] = {
    "ethernet": ethernet_target,
    "arp": arp_target,
    "ipv4": ipv4_target,
    "icmp": icmp_target,
    "udp": udp_target,
    "tcp": tcp_target,
    "checksum": checksum_target,
    "ipv6": ipv6_target,
    "icmpv6": icmpv6_target,
    "mldv2": mldv2_target,
}


def _host_target(data: bytes) -> None:
    from tests.fuzz.hostfuzz import host_target  # imports the whole stack: only when used

    host_target(data)


def _reassembly_target(data: bytes) -> None:
    from tests.fuzz.reasmfuzz import reassembly_target

    reassembly_target(data)


TARGETS: dict[str, Target] = {
    **WIRE_TARGETS,
    "host": _host_target,
    "reassembly": _reassembly_target,
}
