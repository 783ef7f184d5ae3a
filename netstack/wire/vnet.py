"""The virtio-net header (struct virtio_net_hdr, include/uapi/linux/virtio_net.h) that TAP
(IFF_VNET_HDR) and AF_PACKET (PACKET_VNET_HDR) put before every frame once offloads are on.

We use the 10-byte legacy layout, not the 12-byte virtio_net_hdr_v1 / mrg_rxbuf one:
- AF_PACKET's PACKET_VNET_HDR always speaks the 10-byte header (a 12-byte one needs
  PACKET_VNET_HDR_SZ, Linux >= 6.2), so one layout serves both links on any kernel;
- the 2 extra bytes (num_buffers) only mean something to a virtio device with mergeable
  buffers, which a TAP reader is not;
- 10 + 14 (Ethernet) puts the IP header on a 4-byte boundary of a 64-byte aligned slot.
Fields are in the host's byte order (legacy virtio is "guest-native"; TUNSETVNETLE/BE would
only matter on a big-endian host, which this code does not claim to support).

What the fields say (virtio spec 5.1.6):
- flags NEEDS_CSUM: the L4 checksum is partial; whoever completes the frame sums from
  csum_start to the end and stores the result at csum_start + csum_offset (the field holds
  the pseudo-header sum meanwhile). DATA_VALID: the checksum was verified already.
- gso_type TCPV4/TCPV6/UDP_L4 (| ECN): the frame is a super-frame to be cut into segments of
  gso_size payload bytes, each after a copy of the first hdr_len bytes of headers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from netstack.drops import Drop
from netstack.wire.checksum import checksum
from netstack.wire.errors import Malformed

HEADER_LEN = 10

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
F_RSC_INFO = 4

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO, withdrawn from Linux; never negotiated here
GSO_TCPV6 = 4
GSO_UDP_L4 = 5  # USO (Linux >= 6.2)
GSO_ECN = 0x80

FLAGS_OFFSET = 0
GSO_TYPE_OFFSET = 1
HDR_LEN_OFFSET = 2
GSO_SIZE_OFFSET = 4
CSUM_START_OFFSET = 6
CSUM_OFFSET_OFFSET = 8

TCP_CSUM_OFFSET = 16  # where the checksum field sits in a TCP header
UDP_CSUM_OFFSET = 6

_HEADER = struct.Struct("=BBHHHH")  # native order, no padding: the kernel's struct
assert _HEADER.size == HEADER_LEN

# The header of a frame that asks nothing of the kernel: checksums complete, no GSO.
PLAIN = bytes(HEADER_LEN)


class VnetHeader(NamedTuple):
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & F_NEEDS_CSUM)

    @property
    def data_valid(self) -> bool:
        return bool(self.flags & F_DATA_VALID)

    @property
    def gso(self) -> int:
        """The GSO kind without the ECN bit (GSO_NONE for an ordinary frame)."""
        return self.gso_type & ~GSO_ECN

    def emit(self) -> bytes:
        return _HEADER.pack(*self)


def parse(view: memoryview | bytes) -> VnetHeader:
    """The header at the start of `view` (Malformed when the buffer is shorter)."""
    if len(view) < HEADER_LEN:
        raise Malformed(Drop.LINK_VNET_TRUNCATED)
    return VnetHeader(*_HEADER.unpack_from(view))


def build(
    flags: int = 0,
    gso_type: int = GSO_NONE,
    hdr_len: int = 0,
    gso_size: int = 0,
    csum_start: int = 0,
    csum_offset: int = 0,
) -> bytes:
    return _HEADER.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def tcp4_gso(l4_start: int, tcp_header_len: int, gso_size: int) -> bytes:
    """The header of an IPv4 TCP super-frame for the kernel to cut into `gso_size` segments.

    l4_start = Ethernet + IP header length (where the TCP header starts in the frame); the
    TCP checksum field must hold the pseudo-header sum (netstack.wire.gso), the kernel
    completes it per segment.
    """
    return _HEADER.pack(
        F_NEEDS_CSUM,
        GSO_TCPV4,
        l4_start + tcp_header_len,
        gso_size,
        l4_start,
        TCP_CSUM_OFFSET,
    )


# -- a frame's header as a piece of the frame ----------------------------------------------------
class VnetMark(bytes):
    """A zero-length piece that carries a frame's virtio-net header through the frame tuple.

    Frames travel as tuples of buffers (for writev); a super-frame is one whose tuple holds a
    VnetMark (after the Ethernet header on transmit, first on a received frame shown to
    observers). Being empty, it vanishes from every join, length sum and pcap record, so code
    that does not know about offloads handles the frame unchanged; the link finds it and
    puts its `header` on the wire. Whoever copies a frame keeps it with `own_frame`.
    """

    header: bytes
    vnet: VnetHeader

    def __new__(cls, vnet: VnetHeader) -> VnetMark:
        mark = super().__new__(cls)
        mark.vnet = vnet
        mark.header = vnet.emit()
        return mark

    def __repr__(self) -> str:
        return f"VnetMark({self.vnet})"


_marks: dict[VnetHeader, VnetMark] = {}


def mark(vnet: VnetHeader) -> VnetMark:
    """The (shared, immutable) mark for a header: a few distinct ones per connection."""
    found = _marks.get(vnet)
    if found is None:
        if len(_marks) > 4096:  # bounded: MSS x header-length combinations are few
            _marks.clear()
        found = _marks[vnet] = VnetMark(vnet)
    return found


def tcp4_gso_mark(l4_start: int, tcp_header_len: int, gso_size: int) -> VnetMark:
    return mark(
        VnetHeader(
            F_NEEDS_CSUM, GSO_TCPV4, l4_start + tcp_header_len, gso_size, l4_start,
            TCP_CSUM_OFFSET,
        )
    )  # fmt: skip


def tcp6_gso_mark(l4_start: int, tcp_header_len: int, gso_size: int) -> VnetMark:
    """TSO6: as tcp4_gso_mark, for a TCP super-segment over IPv6 (gso_type TCPV6)."""
    return mark(
        VnetHeader(
            F_NEEDS_CSUM, GSO_TCPV6, l4_start + tcp_header_len, gso_size, l4_start,
            TCP_CSUM_OFFSET,
        )
    )  # fmt: skip


def find_mark(frame: tuple) -> VnetMark | None:
    for piece in frame:
        if piece.__class__ is VnetMark:
            return piece
    return None


def own_frame(frame: tuple) -> tuple:
    """A copy of a frame that outlives the buffers it points into, its VnetMark kept."""
    for i, piece in enumerate(frame):
        if piece.__class__ is VnetMark:
            before, after = b"".join(frame[:i]), b"".join(frame[i + 1 :])
            return (before, piece, after) if before else (piece, after)
    return (b"".join(frame),)


def fill_checksum(frame: bytearray | memoryview, vnet: VnetHeader) -> None:
    """Complete a NEEDS_CSUM frame's partial checksum in place, as the kernel or NIC would."""
    if not vnet.flags & F_NEEDS_CSUM:
        return
    start, field = vnet.csum_start, vnet.csum_start + vnet.csum_offset
    if field + 2 > len(frame) or start >= len(frame):
        return
    value = checksum(frame[start:])
    if value == 0 and vnet.csum_offset == UDP_CSUM_OFFSET:
        value = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    frame[field] = value >> 8
    frame[field + 1] = value & 0xFF


def pseudo_sum(src: int, dst: int, tcp_len: int, protocol: int = 6) -> bytes:
    """The checksum field of a NEEDS_CSUM frame: the folded, uncomplemented IPv4
    pseudo-header sum (Linux's ~tcp_v4_check(len, saddr, daddr, 0))."""
    s = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + protocol + tcp_len
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s.to_bytes(2, "big")


def segments(payload_len: int, gso_size: int) -> int:
    """Wire segments a super-frame with this much L4 payload becomes."""
    return -(-payload_len // gso_size) if gso_size else 1


# -- per-frame receive metadata ------------------------------------------------------------------
# A link in vnet mode reports each received frame's header as one int (cheap to keep in a
# list beside the frames): flags | gso_type << 8 | gso_size << 16 | csum_start << 32 |
# csum_offset << 48 | hdr_len << 64. 0 means "nothing vouched, not a super-frame": exactly
# what a link without offloads would say.
META_TRUSTED = F_NEEDS_CSUM | F_DATA_VALID
_META = struct.Struct("=BBHHHH")


def meta_of(view: memoryview | bytes) -> int:
    """The metadata int of the header at the start of `view` (>= HEADER_LEN bytes)."""
    flags, gso_type, hdr_len, gso_size, start, offset = _META.unpack_from(view)
    return flags | gso_type << 8 | gso_size << 16 | start << 32 | offset << 48 | hdr_len << 64


def meta_header(meta: int) -> VnetHeader:
    """The header a metadata int came from."""
    return VnetHeader(
        meta & 0xFF, (meta >> 8) & 0xFF, meta >> 64, (meta >> 16) & 0xFFFF,
        (meta >> 32) & 0xFFFF, (meta >> 48) & 0xFFFF,
    )  # fmt: skip


def meta_mark(meta: int) -> VnetMark:
    """The VnetMark of a received frame's header (for observers such as the pcap)."""
    return mark(meta_header(meta))


def meta_of_header(vnet: VnetHeader) -> int:
    return meta_of(vnet.emit())


def meta_trusted(meta: int) -> bool:
    """Does the header vouch for the L4 checksum (complete and verified, or partial)?"""
    return bool(meta & META_TRUSTED)


def meta_gso_type(meta: int) -> int:
    return (meta >> 8) & 0xFF & ~GSO_ECN


def meta_gso_size(meta: int) -> int:
    return (meta >> 16) & 0xFFFF


# -- software GSO ---------------------------------------------------------------------------------
ETH_LEN = 14
_FIN_PSH = 0x09
_CWR = 0x80


def software_segments(frame: bytes | memoryview, vnet: VnetHeader) -> list[bytes]:
    """What a super-frame becomes on a real wire: the kernel's tcp4_gso_segment in Python.

    For whoever stands for the wire (the soak/test relay; tests checking our TSO output).
    An IPv4 TCP super-frame (GSO_TCPV4, untagged Ethernet; GSO_TCPV6 likewise, _tcp6_segments)
    is cut into gso_size payloads, each
    after a copy of the headers with the IP total length, ID (+1 per segment, RFC 6864 allows
    either way with DF), header checksum, TCP sequence number and flags (FIN/PSH on the last,
    CWR on the first) adjusted, and the TCP checksum computed. A UDP super-frame (GSO_UDP_L4,
    the stack's echo runs) is cut as the kernel's __udp_gso_segment does: datagrams of gso_size
    payload bytes, each with its IP total length, ID (+1), header checksum, UDP length and
    checksum. Any other frame comes back alone, its partial checksum completed if it had one.
    """
    if vnet.gso == GSO_UDP_L4 and vnet.gso_size:
        if frame[12:14] == b"\x86\xdd":  # IPv6 (proto/udp6.py's echo runs)
            return _udp6_segments(frame, vnet.gso_size)
        return _udp4_segments(frame, vnet.gso_size)
    if vnet.gso == GSO_TCPV6 and vnet.gso_size:
        return _tcp6_segments(frame, vnet.gso_size)
    if vnet.gso != GSO_TCPV4 or not vnet.gso_size:
        out = bytearray(frame)
        fill_checksum(out, vnet)
        return [bytes(out)]
    ihl = (frame[ETH_LEN] & 0x0F) << 2
    l4 = ETH_LEN + ihl
    ident = int.from_bytes(frame[ETH_LEN + 4 : ETH_LEN + 6], "big")
    src = int.from_bytes(frame[ETH_LEN + 12 : ETH_LEN + 16], "big")
    dst = int.from_bytes(frame[ETH_LEN + 16 : ETH_LEN + 20], "big")
    pseudo = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 6

    def ipv4_header(h: bytearray, i: int, l4_len: int) -> None:
        """Total length, the ID counting up (RFC 6864, as the kernel), header checksum."""
        h[ETH_LEN + 2 : ETH_LEN + 4] = (ihl + l4_len).to_bytes(2, "big")
        h[ETH_LEN + 4 : ETH_LEN + 6] = ((ident + i) & 0xFFFF).to_bytes(2, "big")
        h[ETH_LEN + 10 : ETH_LEN + 12] = b"\0\0"
        h[ETH_LEN + 10 : ETH_LEN + 12] = checksum(h[ETH_LEN:l4]).to_bytes(2, "big")

    return _tcp_segments(frame, vnet.gso_size, l4, pseudo, ipv4_header)


def _tcp6_segments(frame: bytes | memoryview, mss: int) -> list[bytes]:
    """The kernel's tcp6_gso_segment for an untagged IPv6 super-frame whose next header is TCP
    (all TSO6 we make): the IPv6 payload length adjusted, the rest as for IPv4, the checksum
    over the IPv6 pseudo-header (RFC 8200 8.1)."""
    pseudo = sum(struct.unpack("!16H", bytes(frame[ETH_LEN + 8 : ETH_LEN + 40]))) + 6

    def ipv6_header(h: bytearray, i: int, l4_len: int) -> None:
        h[ETH_LEN + 4 : ETH_LEN + 6] = l4_len.to_bytes(2, "big")

    return _tcp_segments(frame, mss, ETH_LEN + 40, pseudo, ipv6_header)


def _tcp_segments(
    frame: bytes | memoryview,
    mss: int,
    l4: int,
    pseudo: int,
    ip_header: Callable[[bytearray, int, int], None],
) -> list[bytes]:
    """Cut a TCP super-frame (its IP header ends at `l4`) into wire segments, as the kernel's
    tcp_gso_segment: each piece gets the headers with the sequence number advanced, FIN/PSH
    only on the last, CWR only on the first, its own TCP checksum (`pseudo`: the pseudo-header
    sum without the length), and the family's IP fields patched by `ip_header`."""
    thl = (frame[l4 + 12] >> 4) << 2
    hdrs = l4 + thl
    data = memoryview(frame)[hdrs:]
    seq = int.from_bytes(frame[l4 + 4 : l4 + 8], "big")
    flags = frame[l4 + 13]
    out: list[bytes] = []
    for i, off in enumerate(range(0, len(data), mss)):
        chunk = data[off : off + mss]
        h = bytearray(frame[:hdrs])
        ip_header(h, i, thl + len(chunk))
        h[l4 + 4 : l4 + 8] = ((seq + off) & 0xFFFFFFFF).to_bytes(4, "big")
        seg_flags = flags
        if off + mss < len(data):
            seg_flags &= ~_FIN_PSH
        if i:
            seg_flags &= ~_CWR
        h[l4 + 13] = seg_flags
        h[l4 + 16 : l4 + 18] = b"\0\0"
        tcp_csum = checksum(h[l4:], chunk, initial=pseudo + thl + len(chunk))
        h[l4 + 16 : l4 + 18] = tcp_csum.to_bytes(2, "big")
        out.append(bytes(h) + bytes(chunk))
    return out


def _udp4_segments(frame: bytes | memoryview, size: int) -> list[bytes]:
    """software_segments for GSO_UDP_L4: one datagram per `size` bytes of payload."""
    ihl = (frame[ETH_LEN] & 0x0F) << 2
    l4 = ETH_LEN + ihl
    hdrs = l4 + 8
    data = memoryview(frame)[hdrs:]
    ident = int.from_bytes(frame[ETH_LEN + 4 : ETH_LEN + 6], "big")
    src = int.from_bytes(frame[ETH_LEN + 12 : ETH_LEN + 16], "big")
    dst = int.from_bytes(frame[ETH_LEN + 16 : ETH_LEN + 20], "big")
    pseudo = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 17
    out: list[bytes] = []
    for i, off in enumerate(range(0, len(data), size)):
        chunk = data[off : off + size]
        h = bytearray(frame[:hdrs])
        h[ETH_LEN + 2 : ETH_LEN + 4] = (ihl + 8 + len(chunk)).to_bytes(2, "big")
        h[ETH_LEN + 4 : ETH_LEN + 6] = ((ident + i) & 0xFFFF).to_bytes(2, "big")
        h[ETH_LEN + 10 : ETH_LEN + 12] = b"\0\0"
        h[ETH_LEN + 10 : ETH_LEN + 12] = checksum(h[ETH_LEN:l4]).to_bytes(2, "big")
        h[l4 + 4 : l4 + 6] = (8 + len(chunk)).to_bytes(2, "big")
        h[l4 + 6 : l4 + 8] = b"\0\0"
        udp_csum = checksum(h[l4:], chunk, initial=pseudo + 8 + len(chunk)) or 0xFFFF
        h[l4 + 6 : l4 + 8] = udp_csum.to_bytes(2, "big")
        out.append(bytes(h) + bytes(chunk))
    return out


def _udp6_segments(frame: bytes | memoryview, size: int) -> list[bytes]:
    """_udp4_segments for IPv6 (a 40-byte header, no extension headers: what the stack sends):
    each datagram with its payload length, UDP length and checksum (RFC 8200 8.1)."""
    l4 = ETH_LEN + 40
    hdrs = l4 + 8
    data = memoryview(frame)[hdrs:]
    addresses = bytes(frame[ETH_LEN + 8 : ETH_LEN + 40])
    pseudo = sum(int.from_bytes(addresses[i : i + 2], "big") for i in range(0, 32, 2)) + 17
    out: list[bytes] = []
    for off in range(0, len(data), size):
        chunk = data[off : off + size]
        h = bytearray(frame[:hdrs])
        h[ETH_LEN + 4 : ETH_LEN + 6] = (8 + len(chunk)).to_bytes(2, "big")
        h[l4 + 4 : l4 + 6] = (8 + len(chunk)).to_bytes(2, "big")
        h[l4 + 6 : l4 + 8] = b"\0\0"
        udp_csum = checksum(h[l4:], chunk, initial=pseudo + 8 + len(chunk)) or 0xFFFF
        h[l4 + 6 : l4 + 8] = udp_csum.to_bytes(2, "big")
        out.append(bytes(h) + bytes(chunk))
    return out
