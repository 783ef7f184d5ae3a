"""TCP header and options (RFC 9293, 7323, 2018) with the IPv4 pseudo-header checksum."""

from __future__ import annotations

import struct
from typing import NamedTuple

from netstack.drops import Drop
from netstack.wire.checksum import Buffer, _fold, _from_buffer, _partial
from netstack.wire.errors import Malformed

HEADER_LEN = 20
MAX_HEADER_LEN = 60
MAX_OPTIONS_LEN = MAX_HEADER_LEN - HEADER_LEN
PROTO_TCP = 6

SRC_PORT_OFFSET = 0
DST_PORT_OFFSET = 2
SEQ_OFFSET = 4
ACK_OFFSET = 8
DATA_OFFSET_OFFSET = 12  # data offset in the high 4 bits
FLAGS_OFFSET = 13
WINDOW_OFFSET = 14
CHECKSUM_OFFSET = 16
URGENT_OFFSET = 18
OPTIONS_OFFSET = 20

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WINDOW_SCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8
MAX_SACK_BLOCKS = 4
# Length each fixed-size option must have; anything else is malformed.
_OPTION_LEN = {OPT_MSS: 4, OPT_WINDOW_SCALE: 3, OPT_SACK_PERMITTED: 2, OPT_TIMESTAMP: 10}

_HEADER = struct.Struct("!HHIIBBHHH")  # ..., data offset byte, flags byte, window, csum, urgent
_U16 = struct.Struct("!H")
_U32X2 = struct.Struct("!II")
_NOP_NOP_TS = struct.Struct("!4sII")  # the layout Linux puts on every established segment
_TS_PREFIX = bytes((OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10))
_SACK_BLOCKS = tuple(struct.Struct(f"!{2 * n}I") for n in range(MAX_SACK_BLOCKS + 1))
assert _HEADER.size == HEADER_LEN

# Builders for the Linux option layout (tcp_options_write): each piece is 4-byte aligned.
_OPT_MSS = struct.Struct("!BBH")  # kind 2, len 4, mss
_OPT_SACKOK_TS = struct.Struct("!BBBBII")  # 4,2,8,10 or 1,1,8,10, then TSval, TSecr
_OPT_NOP_NOP_SACKOK = bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2))
_OPT_NOP_WS = struct.Struct("!BBBB")  # 1, 3, 3, shift
_SACK_HEAD = struct.Struct("!BBBB")  # 1, 1, 5, len
# build_fast: the header alone, or followed by Linux's NOP NOP TS layout (the established case)
_HEADER_TS = struct.Struct("!HHIIBBHHH4sII")
_TS_PREFIX_SUM = (OPT_NOP << 8 | OPT_NOP) + (OPT_TIMESTAMP << 8 | 10)
_OFFSET_FLAGS_PLAIN = HEADER_LEN << 10  # data offset 5 in the top 4 bits of the flags word
_OFFSET_FLAGS_TS = (HEADER_LEN + 12) << 10


# The SYN layout Linux sends (tcp_options_write) and `build_syn` makes: MSS, SACK permitted
# and timestamps, NOP and window scale; taken in one unpack on receive (`parse`).
_SYN_OPTS = struct.Struct("!HH4sII3sB")  # 2,4 | mss | 4,2,8,10 | TSval | TSecr | 1,3,3 | ws
_MSS_KIND_LEN = OPT_MSS << 8 | 4
_SACKOK_TS = bytes((OPT_SACK_PERMITTED, 2, OPT_TIMESTAMP, 10))
_NOP_WS = bytes((OPT_NOP, OPT_WINDOW_SCALE, 3))
_SYN_OPTS_LEN = _SYN_OPTS.size  # 20

# NamedTuple's generated __new__ is a Python-level call; tuple.__new__ builds the same
# object for a fraction of the cost on the per-packet path (field count fixed by the code).
_new = tuple.__new__


class TcpOptions(NamedTuple):
    mss: int | None = None
    window_scale: int | None = None  # raw shift as received; the engine clamps to 14
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()  # (left edge, right edge)
    timestamp: tuple[int, int] | None = None  # (TSval, TSecr)


NO_OPTIONS = TcpOptions()


class TcpHeader(NamedTuple):
    src_port: int
    dst_port: int
    seq: int
    ack: int
    header_len: int
    flags: int
    window: int
    checksum: int
    urgent: int
    options: TcpOptions


def parse(
    view: memoryview, src_ip: int, dst_ip: int, verify_checksum: bool = True
) -> tuple[TcpHeader, memoryview]:
    """Validate a segment (view = the whole IP payload); return its header and payload view."""
    size = len(view)
    if size < HEADER_LEN:
        raise Malformed(Drop.TCP_TRUNCATED)
    src_port, dst_port, seq, ack, offset, flags, window, csum, urgent = _HEADER.unpack_from(view)
    hlen = (offset >> 4) << 2
    if hlen < HEADER_LEN:
        raise Malformed(Drop.TCP_BAD_HEADER_LENGTH)
    if hlen > size:
        raise Malformed(Drop.TCP_TRUNCATED)
    if verify_checksum:
        pseudo = (src_ip >> 16) + (src_ip & 0xFFFF) + (dst_ip >> 16) + (dst_ip & 0xFFFF)
        if _fold(_partial(_from_buffer(view), size, pseudo + PROTO_TCP + size)):
            raise Malformed(Drop.TCP_BAD_CHECKSUM)
    if hlen == HEADER_LEN:
        options = NO_OPTIONS
    elif hlen == 32 and (fast := _NOP_NOP_TS.unpack_from(view, OPTIONS_OFFSET))[0] == _TS_PREFIX:
        options = _new(TcpOptions, (None, None, False, (), (fast[1], fast[2])))
    elif (
        hlen == HEADER_LEN + _SYN_OPTS_LEN
        and (syn := _SYN_OPTS.unpack_from(view, OPTIONS_OFFSET))[0] == _MSS_KIND_LEN
        and syn[2] == _SACKOK_TS
        and syn[5] == _NOP_WS
    ):  # a SYN or SYN-ACK as Linux lays its options out: what parse_options would make
        options = _new(TcpOptions, (syn[1], syn[6], True, (), (syn[3], syn[4])))
    else:
        options = parse_options(view, OPTIONS_OFFSET, hlen)
    fields = (src_port, dst_port, seq, ack, hlen, flags, window, csum, urgent, options)
    return _new(TcpHeader, fields), view[hlen:]


def parse_options(view: memoryview, start: int, end: int) -> TcpOptions:
    """Decode the options in view[start:end]; unknown kinds are skipped by their length."""
    mss = window_scale = timestamp = None
    sack_permitted = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    i = start
    while i < end:
        kind = view[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise Malformed(Drop.TCP_BAD_OPTIONS)
        length = view[i + 1]
        if length < 2 or i + length > end:
            raise Malformed(Drop.TCP_BAD_OPTIONS)
        expected = _OPTION_LEN.get(kind)
        if expected is not None and length != expected:
            raise Malformed(Drop.TCP_BAD_OPTIONS)
        if kind == OPT_MSS:
            mss = _U16.unpack_from(view, i + 2)[0]
        elif kind == OPT_WINDOW_SCALE:
            window_scale = view[i + 2]
        elif kind == OPT_SACK_PERMITTED:
            sack_permitted = True
        elif kind == OPT_TIMESTAMP:
            timestamp = _U32X2.unpack_from(view, i + 2)
        elif kind == OPT_SACK:
            count, rem = divmod(length - 2, 8)
            if rem or not 1 <= count <= MAX_SACK_BLOCKS:
                raise Malformed(Drop.TCP_BAD_OPTIONS)
            edges = _SACK_BLOCKS[count].unpack_from(view, i + 2)
            sack_blocks = tuple(zip(edges[::2], edges[1::2], strict=True))
        i += length
    return _new(TcpOptions, (mss, window_scale, sack_permitted, sack_blocks, timestamp))


def build_options(options: TcpOptions) -> bytes:
    """Options in Linux's order and alignment (a SYN: mss, sackOK, TS, nop, wscale).

    SACK blocks beyond what fits in 40 bytes are left out (3 with timestamps, else 4); the
    first blocks are kept, as RFC 2018 wants the most recent one first.
    """
    out = b""
    if options.mss is not None:
        out += _OPT_MSS.pack(OPT_MSS, 4, options.mss)
    if options.timestamp is not None:
        tsval, tsecr = options.timestamp
        if options.sack_permitted:
            out += _OPT_SACKOK_TS.pack(OPT_SACK_PERMITTED, 2, OPT_TIMESTAMP, 10, tsval, tsecr)
        else:
            out += _OPT_SACKOK_TS.pack(OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, tsval, tsecr)
    elif options.sack_permitted:
        out += _OPT_NOP_NOP_SACKOK
    if options.window_scale is not None:
        out += _OPT_NOP_WS.pack(OPT_NOP, OPT_WINDOW_SCALE, 3, options.window_scale)
    if options.sack_blocks:
        room = (MAX_OPTIONS_LEN - len(out) - 4) // 8
        blocks = options.sack_blocks[: min(room, MAX_SACK_BLOCKS)]
        if blocks:
            edges = [edge for block in blocks for edge in block]
            out += _SACK_HEAD.pack(OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(blocks))
            out += _SACK_BLOCKS[len(blocks)].pack(*edges)
    if len(out) & 3:  # not reached with the layout above; kept so any change stays aligned
        out += b"\x00" * (4 - (len(out) & 3))
    return out


def build(
    src_ip: int,
    dst_ip: int,
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: Buffer = b"",
    *,
    options: TcpOptions | None = None,
    urgent: int = 0,
) -> bytes:
    """Header + options (a multiple of 4 bytes), checksummed over pseudo-header and payload."""
    opts = build_options(options) if options is not None else b""
    hlen = HEADER_LEN + len(opts)
    offset_flags = (hlen << 10) | flags  # data offset (hlen / 4) in the top 4 bits
    length = hlen + len(payload)
    s = (src_ip >> 16) + (src_ip & 0xFFFF) + (dst_ip >> 16) + (dst_ip & 0xFFFF) + PROTO_TCP
    s += length + src_port + dst_port + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16)
    s += (ack & 0xFFFF) + offset_flags + window + urgent
    if opts:
        s = _partial(_from_buffer(opts), len(opts), s)
    csum = _fold(_partial(_from_buffer(payload), len(payload), s))
    return _HEADER.pack(src_port, dst_port, seq, ack, hlen << 2, flags, window, csum, urgent) + opts


def template_sum(src_ip: int, dst_ip: int, src_port: int, dst_port: int) -> int:
    """Unfolded sum of what a connection never changes in its segments' checksum: the
    pseudo-header's addresses and protocol, and both ports (for `build_fast`)."""
    return (
        (src_ip >> 16) + (src_ip & 0xFFFF) + (dst_ip >> 16) + (dst_ip & 0xFFFF)
        + PROTO_TCP + src_port + dst_port
    )  # fmt: skip


def build_fast(
    base: int,
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    timestamp: tuple[int, int] | None,
    payload: Buffer,
) -> bytes:
    """`build` for the per-segment case (no options but an optional timestamp, no urgent
    pointer), from a connection's `template_sum`: one pack, one C call over the payload.
    The bytes are the same as build(..., options=TcpOptions(timestamp=timestamp))."""
    csum = segment_sum(base, seq, ack, flags, window, timestamp, payload)
    if timestamp is None:
        return _HEADER.pack(src_port, dst_port, seq, ack, HEADER_LEN << 2, flags, window, csum, 0)
    tsval, tsecr = timestamp
    return _HEADER_TS.pack(
        src_port, dst_port, seq, ack, (HEADER_LEN + 12) << 2, flags, window, csum, 0,
        _TS_PREFIX, tsval, tsecr,
    )  # fmt: skip


def segment_sum(
    base: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    timestamp: tuple[int, int] | None,
    payload: Buffer,
) -> int:
    """The TCP checksum of a template segment (no options but an optional timestamp, no
    urgent pointer), folded and complemented. One computation for build_fast and the IP
    layers' lean sends (Ipv4Engine/Ipv6Engine.send_tcp), which pack the TCP header together
    with their own."""
    plen = len(payload)
    s = base + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF) + window
    if timestamp is None:
        s += HEADER_LEN + plen + (_OFFSET_FLAGS_PLAIN | flags)
    else:
        tsval, tsecr = timestamp
        s += HEADER_LEN + 12 + plen + (_OFFSET_FLAGS_TS | flags) + _TS_PREFIX_SUM
        s += (tsval >> 16) + (tsval & 0xFFFF) + (tsecr >> 16) + (tsecr & 0xFFFF)
    if plen:
        s = _partial(_from_buffer(payload), plen, s)
    return _fold(s)


def build_syn(
    base: int,
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: TcpOptions,
) -> bytes:
    """`build` for a SYN or SYN-ACK (no payload, no urgent pointer, no SACK blocks) from a
    connection's `template_sum`: the common layout (MSS, SACK permitted, timestamps, window
    scale: Linux's) in one pack, the others through build_options. Same bytes as
    build(..., options=options)."""
    mss, wscale, sack, _, ts = options
    if mss is not None and wscale is not None and sack and ts is not None:
        tsval, tsecr = ts
        hlen = HEADER_LEN + _SYN_OPTS_LEN
        offset_flags = (hlen << 10) | flags
        s = base + hlen + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF) + window
        s += offset_flags + _SYN_OPTS_SUM + mss + wscale
        s += (tsval >> 16) + (tsval & 0xFFFF) + (tsecr >> 16) + (tsecr & 0xFFFF)
        return _HEADER_SYN.pack(
            src_port, dst_port, seq, ack, hlen << 2, flags, window, _fold(s), 0,
            _MSS_KIND_LEN, mss, _SACKOK_TS, tsval, tsecr, _NOP_WS, wscale,
        )  # fmt: skip
    opts = build_options(options)
    hlen = HEADER_LEN + len(opts)
    s = base + hlen + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF) + window
    s = _partial(_from_buffer(opts), len(opts), s + ((hlen << 10) | flags))
    csum = _fold(s)
    return _HEADER.pack(src_port, dst_port, seq, ack, hlen << 2, flags, window, csum, 0) + opts


_HEADER_SYN = struct.Struct("!HHIIBBHHH" + _SYN_OPTS.format.lstrip("!"))
# The constant option bytes of the SYN layout, as 16-bit words: 0x0204, 0x0402, 0x080a, 0x0103,
# and 0x03 in the high byte of the word whose low byte is the shift.
_SYN_OPTS_SUM = _MSS_KIND_LEN + (_SACKOK_TS[0] << 8 | _SACKOK_TS[1])
_SYN_OPTS_SUM += _SACKOK_TS[2] << 8 | _SACKOK_TS[3]
_SYN_OPTS_SUM += (_NOP_WS[0] << 8 | _NOP_WS[1]) + (_NOP_WS[2] << 8)


# -- the symmetric value (smoltcp's TcpRepr) ---------------------------------------------------
class TcpRepr(NamedTuple):
    """A TCP segment as a plain value: `parse` a view into one, `emit` one into header bytes.

    The engine builds the segments it makes outside a connection's per-segment path through
    it (RST replies, SYN cookies, resets it sends, segments with options); `reset_for` is
    RFC 9293 3.10.7.1's reply to a segment for no connection, as a value tests can compare.
    The payload travels beside the header (emit sums it, never copies it).
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    options: TcpOptions | None = None
    urgent: int = 0
    payload: Buffer = b""

    @classmethod
    def parse(
        cls, view: memoryview, src_ip: int, dst_ip: int, verify_checksum: bool = True
    ) -> TcpRepr:
        """The value of a segment (Malformed, with its Drop reason, as `parse`)."""
        h, payload = parse(view, src_ip, dst_ip, verify_checksum)
        options = None if h.options == NO_OPTIONS else h.options
        return cls(
            h.src_port, h.dst_port, h.seq, h.ack, h.flags, h.window, options, h.urgent, payload
        )

    def header_len(self) -> int:
        opts = build_options(self.options) if self.options is not None else b""
        return HEADER_LEN + len(opts)

    def buffer_len(self) -> int:
        return self.header_len() + len(self.payload)

    def emit(self, src_ip: int, dst_ip: int) -> bytes:
        """Header and options, checksummed over the pseudo-header and the payload."""
        return build(
            src_ip, dst_ip, self.src_port, self.dst_port, self.seq, self.ack, self.flags,
            self.window, self.payload, options=self.options, urgent=self.urgent,
        )  # fmt: skip

    @classmethod
    def reset_for(
        cls, src_port: int, dst_port: int, seq: int, ack: int, flags: int, payload_len: int
    ) -> TcpRepr | None:
        """RFC 9293 3.10.7.1: the RST answering a segment (its ports, SEQ, ACK, flags and
        payload length) that belongs to no connection; None for a RST (never answered).
        With ACK: <SEQ=SEG.ACK><CTL=RST>; without: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>."""
        if flags & RST:
            return None
        if flags & ACK:
            return cls(dst_port, src_port, ack, 0, RST, 0)
        seg_len = payload_len + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        return cls(dst_port, src_port, 0, (seq + seg_len) & 0xFFFFFFFF, RST | ACK, 0)
