"""Software GSO and GRO for a link that negotiated no offloads (issue 10): what Linux does for
a device without TSO/USO/GRO, at our link boundary, in C (ffi/netstack_ffi.c ns_gso_* / ns_gro_*).

Without them every Python step handles one 1500-byte frame (~8 us a received segment, ~12 us
a sent one). With them TCP builds super-segments of up to 64 KB as it does for TSO
(config.tso_max / tso6_max), and the link writer cuts each into MSS wire segments just before
the descriptor (the kernel's skb_gso_segment before the driver); the link reader merges the
in-order segments of one flow within one receive batch (NAPI's tcp_gro_receive) and hands the
result to the stack exactly as a virtio-net GRO super-frame (gso_type TCPV4/TCPV6, gso_size the
piece size, the checksum vouched for). The writer also cuts UDP super-frames (GSO_UDP_L4, the
UDP echo's runs of replies) into datagrams, as the kernel's __udp_gso_segment: one Python
step then sends a batch's echo replies, as with the TAP's USO. Everything between the
protocols and the link (pcap, --fault, counters) sees the super-frame, as with the kernel's
offloads.

`gso` and `gro` config keys: "auto" (software where the link lacks the feature) or "off".
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from netstack._ffi import ffi, lib
from netstack.wire import vnet as wvnet

MODES = ("auto", "off")
# Headers of one super-segment's pieces are cut into a scratch area first: room for this many
# pieces (a 64 KB payload at an MSS of 16 bytes; TCP never sends smaller pieces).
MAX_PIECES = 4096
MAX_HDR: int = lib.NS_GSO_MAX_HDR
# What the cut takes: TCP super-segments (TSO/TSO6) and UDP super-frames (USO: the echo runs
# of proto/udp.py and udp6.py, which the host makes whenever the link can cut them).
_GSO_CUT = frozenset({wvnet.GSO_TCPV4, wvnet.GSO_TCPV6, wvnet.GSO_UDP_L4})
_VnetMark = wvnet.VnetMark


def gso_mark(frame: tuple) -> wvnet.VnetMark | None:
    """The mark of a TCP or UDP super-frame (after the Ethernet header, where ARP/ND put it)."""
    if len(frame) > 1:
        mark = frame[1]
        if mark.__class__ is _VnetMark and mark.vnet.gso in _GSO_CUT and mark.vnet.gso_size:
            return mark
    return None


def split(frame: tuple, hdr_len: int) -> tuple[bytes, memoryview | bytes]:
    """(headers, payload) of a super-frame: the header pieces joined (~80 bytes), the payload
    where it lies when it is the last piece (the send buffer's view: no copy)."""
    pieces = [p for p in frame if len(p)]
    last = pieces[-1]
    size = 0
    for p in pieces:
        size += len(p)
    if size - len(last) == hdr_len:
        return b"".join(pieces[:-1]), last
    whole = b"".join(pieces)
    return whole[:hdr_len], memoryview(whole)[hdr_len:]


class SoftGso:
    """The link writer's cut: one C call cuts a super-segment and writes its pieces (one writev
    each on a TAP, sendmmsg on AF_PACKET), payloads from where they lie.

    When the kernel says EAGAIN part-way, the pieces written are remembered by the frame's
    bytes: the loop keeps the frame (an owned copy, hence no identity) and offers it again,
    and only the rest is written then.
    """

    def __init__(self, fd: int, mmsg: bool, name: str) -> None:
        self.ring = None  # a TAP writer's io_uring (io/uring.py): the pieces in one call
        self.fd = fd
        self.mmsg = 1 if mmsg else 0
        self.name = name
        self._scratch = ffi.new("uint8_t[]", MAX_HDR * MAX_PIECES)
        self._resume: tuple[bytes, bytes, int] | None = None  # (headers, payload, done)
        self.frames = 0  # super-segments cut
        self.pieces = 0  # wire segments written from them

    def write(self, frame: tuple, mark: wvnet.VnetMark) -> bool:
        """Write one super-segment: True when all of it went, False when the kernel said
        EAGAIN first (the rest is written when it is offered again). Raises OSError(errno)
        when the kernel refuses a piece for good, or the frame cannot be cut (EINVAL)."""
        vnet = mark.vnet
        hdr, data = split(frame, vnet.hdr_len)
        resume = self._resume
        skip = 0
        if resume is not None and resume[0] == hdr and resume[1] == data:
            skip = resume[2]
        self._resume = None
        if self.ring is not None:
            r = lib.ns_gso_write_uring(
                self.ring, self.fd, ffi.from_buffer(hdr), len(hdr), ffi.from_buffer(data),
                len(data), vnet.gso_size, skip, self._scratch, MAX_PIECES,
            )  # fmt: skip
        else:
            r = lib.ns_gso_write(
                self.fd, self.mmsg, ffi.from_buffer(hdr), len(hdr), ffi.from_buffer(data),
                len(data), vnet.gso_size, skip, self._scratch, MAX_PIECES,
            )  # fmt: skip
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        total = wvnet.segments(len(data), vnet.gso_size)
        self.pieces += r - skip
        if r >= total:
            self.frames += 1
            return True
        # Remembered by its bytes, headers and payload: a frame the loop let go meanwhile
        # (its queue trimmed, a --fault drop) must not make the next one skip pieces, and
        # two UDP runs can have the same headers (IPv6 has no ID). Only an identical frame
        # resumes, and its pieces are then exactly the ones still owed.
        self._resume = (hdr, bytes(data), r)
        return False


_scratch = None  # gso_cut's, made on first use


def gso_cut(frame: bytes, mark: wvnet.VnetMark) -> list[bytes]:
    """The wire segments ns_gso_cut makes of a super-frame (for tests and tools: the bytes of
    each piece joined in Python, which the link never does)."""
    global _scratch
    vnet = mark.vnet
    hdr, data = split((frame,), vnet.hdr_len)
    if _scratch is None:
        _scratch = ffi.new("uint8_t[]", MAX_HDR * MAX_PIECES)
    scratch = _scratch
    n = lib.ns_gso_cut(
        ffi.from_buffer(hdr), len(hdr), ffi.from_buffer(data), len(data), vnet.gso_size,
        scratch, MAX_PIECES,
    )  # fmt: skip
    if n < 0:
        raise OSError(-n, os.strerror(-n))
    hl, mss = len(hdr), vnet.gso_size
    headers = bytes(ffi.buffer(scratch, n * hl))
    return [headers[i * hl : (i + 1) * hl] + bytes(data[i * mss : (i + 1) * mss]) for i in range(n)]


def meta_of_gro(word: int) -> int:
    """The vnet metadata int (wire/vnet.py) of a merged frame from ns_gro_merge's out_gso word
    (gso_size | gso_type << 16 | header length << 24): DATA_VALID, the GSO type and size."""
    if not word:
        return 0
    return (
        wvnet.F_DATA_VALID | ((word >> 16) & 0xFF) << 8 | (word & 0xFFFF) << 16 | (word >> 24) << 64
    )


class SoftGro:
    """The link reader's merge over one batch in the receive arena (slots large enough for a
    64 KB super-frame); out: the frames left and their metadata."""

    def __init__(self, max_batch: int, mac: bytes) -> None:
        self.mac = mac  # frames to this MAC only (the stack's; runtime sets it)
        self._idx = ffi.new("uint32_t[]", max_batch)
        self._gso = ffi.new("uint32_t[]", max_batch)
        self.frames = 0  # super-frames made
        self.pieces = 0  # wire segments merged into them

    def merge(
        self, arena, slot_size: int, lens_c, n: int, slots: Sequence[memoryview]
    ) -> tuple[list[memoryview], list[int] | None]:
        """(frames, metadata or None when nothing merged) for the n frames in the arena."""
        m = lib.ns_gro_merge(arena, slot_size, lens_c, n, self.mac, self._idx, self._gso)
        lens = ffi.unpack(lens_c, n)
        if m == n:
            return [slots[i][: lens[i]] for i in range(n)], None
        idx = ffi.unpack(self._idx, m)
        words = ffi.unpack(self._gso, m)
        self.pieces += n - m + sum(1 for w in words if w)
        self.frames += sum(1 for w in words if w)
        return [slots[i][: lens[i]] for i in idx], [meta_of_gro(w) for w in words]


def gro_merge(frames: Sequence[bytes], mac: bytes) -> list[tuple[bytes, int]]:
    """ns_gro_merge over frames laid in a fresh arena: (frame, metadata) pairs (for tests)."""
    slot = (wvnet.HEADER_LEN + 65536 + 22 + 63) & ~63
    n = len(frames)
    arena = ffi.new("uint8_t[]", max(n, 1) * slot)
    lens = ffi.new("uint32_t[]", max(n, 1))
    for i, f in enumerate(frames):
        if len(f) >= slot:
            raise ValueError("frame longer than a slot")
        ffi.memmove(arena + i * slot, f, len(f))
        lens[i] = len(f)
    view = memoryview(ffi.buffer(arena))
    slots = [view[i * slot : (i + 1) * slot] for i in range(n)]
    out, metas = SoftGro(max(n, 1), mac).merge(arena, slot, lens, n, slots)
    return [(bytes(f), m) for f, m in zip(out, metas or [0] * len(out), strict=True)]
