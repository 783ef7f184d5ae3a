"""Fuzz targets: one per wire parser/builder pair, one for the C checksum, one for a Host.

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

from netstack.wire import arp, ethernet, icmp, ipv4, tcp, udp
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


WIRE_TARGETS: dict[str, Target] = {
    "ethernet": ethernet_target,
    "arp": arp_target,
    "ipv4": ipv4_target,
    "icmp": icmp_target,
    "udp": udp_target,
    "tcp": tcp_target,
    "checksum": checksum_target,
}


def _host_target(data: bytes) -> None:
    from tests.fuzz.hostfuzz import host_target  # imports the whole stack: only when used

    host_target(data)


TARGETS: dict[str, Target] = {**WIRE_TARGETS, "host": _host_target}
