"""What the loop needs from a link, and the batched rx/tx machinery TAP and AF_PACKET share.

One receive_batch or send_batch is one crossing into C (ffi/netstack_ffi.c): frames land in a
preallocated arena and come back as memoryviews; frames to send are gathered into a
preallocated iovec array, piece by piece, without joining headers and payloads.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import Protocol

from netstack._ffi import ffi, lib
from netstack.io import softoffload
from netstack.wire import vnet as wvnet

Buffer = bytes | bytearray | memoryview
Frame = tuple[Buffer, ...]

# Room above the MTU in a receive slot: Ethernet header (14) + one VLAN tag (4) + slack, so that
# the largest legal frame never fills a slot and a full slot always means "truncated". Slots
# never shrink below a jumbo frame, so an MTU raised after opening (the CLI does that) still fits.
RX_HEADROOM = 22
MIN_SLOT_MTU = 9000
IFNAMSIZ = 16
# With the virtio-net header a received frame may be a super-frame: an IPv4 datagram of up to
# 64 KiB (the TAP's default gso_max_size) plus Ethernet, VLAN and the header itself.
VNET_RX_SLOT = (wvnet.HEADER_LEN + 65536 + RX_HEADROOM + 63) & ~63
# Transmit iovecs per frame in vnet mode: the header, then up to this many pinned pieces of a
# frame too large for a transmit slot (more pieces are joined first).
VNET_TX_PIECES = 7
_PARTIAL_NOT_GSO = wvnet.F_NEEDS_CSUM | 0xFF00  # metadata bits: NEEDS_CSUM and the GSO type


class LinkError(Exception):
    """A link could not be opened or used; str() is a one-line message for the user."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class LinkUnavailableError(LinkError):
    """The kernel lacks what the link needs (no /dev/net/tun, no AF_PACKET)."""


class LinkPermissionError(LinkError):
    """Opening the link needs root or CAP_NET_ADMIN."""


class LinkBusyError(LinkError):
    """The interface is already attached to another process."""


class LinkNotFoundError(LinkError):
    """The named interface does not exist."""


class LinkTxError(LinkError):
    """The kernel refused frame number `written` of a send_batch with a hard error.

    Frames before it were written; the refused frame should be dropped (Drop.LINK_TX_ERROR)
    and the ones after it sent again.
    """

    def __init__(self, message: str, errno_: int, written: int) -> None:
        super().__init__(message, errno_)
        self.written = written


def link_error(err: int, name: str, action: str, capability: str = "CAP_NET_ADMIN") -> LinkError:
    """Turn a -errno from the C helpers into the LinkError a user can act on."""
    err = abs(err)
    if err in (errno.EPERM, errno.EACCES):
        return LinkPermissionError(f"{action} {name} needs root or {capability}", err)
    if err == errno.EBUSY:
        return LinkBusyError(f"interface {name} is in use", err)
    if err == errno.ENODEV:
        return LinkNotFoundError(f"interface {name} does not exist", err)
    if err == errno.EAFNOSUPPORT:
        return LinkUnavailableError(f"{action} {name}: AF_PACKET is not supported here", err)
    return LinkError(f"{action} {name}: {os.strerror(err)}", err)


def check_ifname(name: str) -> bytes:
    encoded = name.encode()
    if not encoded or len(encoded) >= IFNAMSIZ or b"\0" in encoded or b"/" in encoded:
        raise LinkError(f"bad interface name {name!r} (1 to {IFNAMSIZ - 1} bytes, no '/')")
    return encoded


def read_mtu(name: str) -> int:
    mtu = lib.ns_if_mtu(name.encode())
    if mtu < 0:
        raise link_error(mtu, name, "reading the MTU of")
    return mtu


def read_hwaddr(name: str) -> bytes:
    out = ffi.new("uint8_t[6]")
    rc = lib.ns_if_hwaddr(name.encode(), out)
    if rc < 0:
        raise link_error(rc, name, "reading the MAC of")
    return bytes(ffi.buffer(out, 6))


class Link(Protocol):
    """A source and sink of Ethernet frames the loop can poll.

    `mac` is the MAC the stack should answer with on this link, `mtu` the interface's IP MTU,
    `fd` what the loop registers in epoll.
    """

    name: str
    mac: bytes
    mtu: int
    fd: int
    # Frames received longer than a slot since the loop last looked (it counts and zeroes this).
    rx_oversize: int

    def receive_batch(self) -> list[memoryview]:
        """Read what is queued, up to the batch size, in one call.

        The views point into the link's arena: valid only until the next receive_batch.
        """
        ...

    def send_batch(self, frames: Sequence[Frame]) -> int:
        """Write frames from the front in one call; returns how many were written.

        Fewer than len(frames) means the kernel said EAGAIN: the rest stay the caller's to
        retry. Raises LinkTxError when one frame is refused for good.
        """
        ...

    def close(self) -> None: ...


BatchFn = Callable[..., int]


class BatchLink:
    """Arena-backed receive and send over one nonblocking descriptor.

    Receive: the C side fills up to max_batch slots of an arena; Python gets memoryviews.
    Send: each frame's pieces are copied into a slot of a transmit arena (one bytes.join and one
    slice assignment, ~0.25 us a frame) and described by one preallocated iovec whose words are
    written through a memoryview. That measured 2.5x cheaper than pinning every piece with
    ffi.from_buffer, and the copy of a 1500-byte frame costs far less than the syscall. A frame
    too large for a slot is pinned and pointed at instead of copied.
    Subclasses open the descriptor and name the C functions that move a batch (read loop and
    writev for TAP, recvmmsg/sendmmsg for AF_PACKET).
    """

    # C functions, set by subclasses as staticmethod(lib.ns_...).
    _rx_fn: BatchFn
    _tx_fn: BatchFn

    # Software GSO/GRO (io/softoffload.py): set by subclasses that can write several frames
    # per call (their `_gso_mmsg` says how: sendmmsg or one writev each).
    soft_gso: softoffload.SoftGso | None = None
    soft_gro: softoffload.SoftGro | None = None
    rx_read = 0  # software GRO: frames the last receive_batch read (it hands on fewer)
    _gso_mmsg = False

    def __init__(
        self,
        name: str,
        fd: int,
        mac: bytes,
        mtu: int,
        max_batch: int,
        *,
        vnet: bool = False,
        gso: bool = False,
        gro: bool = False,
    ) -> None:
        """`vnet`: every frame on the fd starts with a virtio-net header (wire/vnet.py).
        `gso`/`gro` (without vnet only): cut TCP super-segments into wire segments on send and
        merge one flow's in-order segments of a batch on receive, in software."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.name = name
        self.fd = fd
        self.mac = mac
        self.mtu = mtu
        self.max_batch = max_batch
        self.rx_oversize = 0
        self.vnet = vnet
        # Per received frame, its header as wire.vnet metadata ints (None: no vnet header).
        self.rx_meta: list[int] | None = [] if vnet else None
        slot = max(mtu, MIN_SLOT_MTU) + RX_HEADROOM
        self.slot_size = slot_size = (slot + 63) & ~63
        if vnet:
            # Receive slots hold a whole super-frame; transmit slots stay small (a larger
            # frame is pointed at, not copied), with room for the header.
            self.slot_size = VNET_RX_SLOT
            self.receive_batch = self._receive_vnet  # type: ignore[method-assign]
            self._fill_iov = self._fill_iov_vnet  # type: ignore[method-assign]
        elif gro:  # a merged frame grows in its first piece's slot, up to 64 KiB
            self.slot_size = VNET_RX_SLOT
            self.soft_gro = softoffload.SoftGro(max_batch, mac)
            self.receive_batch = self._receive_gro  # type: ignore[method-assign]
        if gso and not vnet:
            self.soft_gso = softoffload.SoftGso(fd, self._gso_mmsg, name)
            self.send_batch = self._send_batch_gso  # type: ignore[method-assign]
        rx_slot = self.slot_size
        # receive
        self._arena = ffi.new("uint8_t[]", rx_slot * max_batch)
        self._lens = ffi.new("uint32_t[]", max_batch)
        # vnet: per frame, F_DATA_VALID when ns_vnet_rx_plain_v completed its L4 checksum
        self._verified = ffi.new("uint8_t[]", max_batch)
        view = memoryview(ffi.buffer(self._arena)).toreadonly()
        self._slots = [view[i * rx_slot : (i + 1) * rx_slot] for i in range(max_batch)]
        # send: iovec i always describes frame i, in slot i of the tx arena (vnet: frame i
        # starts at iovec VNET_TX_PIECES + 1 times i; the counts say how many it uses)
        self.tx_slot_size = slot_size
        self._tx_arena = ffi.new("uint8_t[]", slot_size * max_batch)
        self._tx_view = memoryview(ffi.buffer(self._tx_arena))
        self._iov = ffi.new("struct iovec[]", max_batch * (VNET_TX_PIECES + 1 if vnet else 1))
        word = "Q" if ffi.sizeof("void *") == 8 else "I"
        if ffi.sizeof("struct iovec") != 2 * ffi.sizeof("void *"):
            raise RuntimeError("unexpected struct iovec layout")
        self._iov_words = memoryview(ffi.buffer(self._iov)).cast(word)  # base0, len0, base1, ...
        self._iov_counts = ffi.new("int[]", [1] * max_batch)
        base = int(ffi.cast("uintptr_t", self._tx_arena))
        self._tx_bases = [base + i * slot_size for i in range(max_batch)]
        # What the host may read the last batch from in C (Host.receive_batch's `arena`):
        # set when the frames returned are exactly the arena's first slots, else None.
        self._rx_whole = (
            self._arena, self.slot_size, wvnet.HEADER_LEN if vnet else 0, self._lens,
            self._verified if vnet else ffi.NULL,
        )  # fmt: skip

    rx_arena: tuple | None = None  # see _rx_whole

    def receive_batch(self) -> list[memoryview]:
        n = self._rx_fn(self.fd, self._arena, self.slot_size, self.max_batch, self._lens)
        if n <= 0:
            if n == 0 or n == -errno.EAGAIN:
                return []
            raise link_error(n, self.name, "reading from")
        if n == 1 and self._lens[0] < self.slot_size:  # one frame (a round trip's turn)
            self.rx_arena = self._rx_whole
            return [self._slots[0][: self._lens[0]]]
        lens = ffi.unpack(self._lens, n)
        slots = self._slots
        if max(lens) >= self.slot_size:  # a full slot means the kernel truncated the frame
            self.rx_arena = None
            return self._without_oversize(lens)
        self.rx_arena = self._rx_whole
        return [slots[i][: lens[i]] for i in range(n)]

    def _receive_gro(self) -> list[memoryview]:
        """receive_batch with software GRO: the batch's mergeable runs become super-frames
        (rx_meta says which, as a vnet link would; None when nothing merged)."""
        n = self._rx_fn(self.fd, self._arena, self.slot_size, self.max_batch, self._lens)
        self.rx_meta = None
        self.rx_read = max(n, 0)  # frames read, before merging (the loop drains on while full)
        if n <= 0:
            if n == 0 or n == -errno.EAGAIN:
                return []
            raise link_error(n, self.name, "reading from")
        if n == 1 and self._lens[0] < self.slot_size:
            self.rx_arena = self._rx_whole
            return [self._slots[0][: self._lens[0]]]
        gro = self.soft_gro
        assert gro is not None
        lens = ffi.unpack(self._lens, n)
        self.rx_arena = None
        if max(lens) >= self.slot_size:  # a truncated frame: this batch is not merged
            return self._without_oversize(lens)
        frames, self.rx_meta = gro.merge(self._arena, self.slot_size, self._lens, n, self._slots)
        if self.rx_meta is None:  # nothing merged: the frames are the slots, as read
            self.rx_arena = self._rx_whole
        return frames

    def _receive_vnet(self) -> list[memoryview]:
        """receive_batch with a virtio-net header before each frame: strip it, keep it as
        metadata in rx_meta (parallel to the returned frames)."""
        n = self._rx_fn(self.fd, self._arena, self.slot_size, self.max_batch, self._lens)
        if n <= 0:
            self.rx_meta = []
            if n == 0 or n == -errno.EAGAIN:
                return []
            raise link_error(n, self.name, "reading from")
        hlen = wvnet.HEADER_LEN
        # One C pass completes the kernel's partial checksums on ordinary frames; when no
        # header is left with anything to say, the batch is plain (metadata 0 each), but for
        # the frames whose TCP/UDP checksum that pass completed: F_DATA_VALID, so the host's
        # fast path does not sum them a second time (ns_rx_fast_v). The pass rewrites the
        # headers it completed, so it runs once per batch, before any branch.
        r = lib.ns_vnet_rx_plain_v(self._arena, self.slot_size, hlen, self._lens, n, self._verified)
        if n == 1 and not r & 0xFFFF:
            # One ordinary frame (a round trip's turn, most of a connection's): no lists to
            # unpack. "Not odd" implies hlen <= length < slot_size (the C pass checks both).
            self.rx_meta = [self._verified[0]]
            self.rx_arena = self._rx_whole
            return [self._slots[0][hlen : self._lens[0]]]
        lens = ffi.unpack(self._lens, n)
        slots = self._slots
        if not r & 0xFFFF:
            self.rx_meta = ffi.unpack(self._verified, n) if r >> 16 else [0] * n
            self.rx_arena = self._rx_whole  # _verified holds the metadata of each frame
            return [slots[i][hlen : lens[i]] for i in range(n)]
        self.rx_arena = None
        if max(lens) >= self.slot_size or min(lens) < hlen:
            return self._vnet_odd(lens)
        meta_of = wvnet.meta_of
        metas = [meta_of(slots[i]) for i in range(n)]
        for i, meta in enumerate(metas):
            if meta & _PARTIAL_NOT_GSO == wvnet.F_NEEDS_CSUM:
                metas[i] = self._complete(i, lens[i], meta)
        self.rx_meta = metas
        return [slots[i][hlen : lens[i]] for i in range(n)]

    def _complete(self, i: int, length: int, meta: int) -> int:
        """A partial checksum on an ordinary frame (the kernel's CHECKSUM_PARTIAL UDP or TCP
        segment) is completed where it lies, in C, and the frame then said verified: it is
        exactly what a wire would carry, so an ICMP error quoting it, a capture or a
        corruption by --fault see a true checksum. Super-frames stay partial (summing 64 KiB
        would cost more than their whole processing); nothing quotes or re-sends them."""
        hlen = wvnet.HEADER_LEN
        start, offset = (meta >> 32) & 0xFFFF, (meta >> 48) & 0xFFFF
        frame = self._arena + (i * self.slot_size + hlen)
        if lib.ns_csum_complete(frame, length - hlen, start, offset) < 0:
            return meta & ~0xFF  # positions outside the frame: vouch for nothing, verify it
        return (meta & ~0xFF) | wvnet.F_DATA_VALID

    def _vnet_odd(self, lens: list[int]) -> list[memoryview]:
        """A batch with a truncated frame or one shorter than its header: skip those."""
        hlen = wvnet.HEADER_LEN
        out: list[memoryview] = []
        metas: list[int] = []
        self.rx_meta = metas
        for i, (slot, length) in enumerate(zip(self._slots, lens, strict=False)):
            if length >= self.slot_size:
                self.rx_oversize += 1
            elif length < hlen:
                self.rx_vnet_truncated += 1
            else:
                meta = wvnet.meta_of(slot)
                if meta & _PARTIAL_NOT_GSO == wvnet.F_NEEDS_CSUM:
                    meta = self._complete(i, length, meta)
                metas.append(meta)
                out.append(slot[hlen:length])
        return out

    rx_vnet_truncated = 0  # frames shorter than the header (the loop counts and zeroes it)

    def _without_oversize(self, lens: list[int]) -> list[memoryview]:
        slot_size = self.slot_size
        out = []
        for slot, length in zip(self._slots, lens, strict=False):
            if length >= slot_size:
                self.rx_oversize += 1
            else:
                out.append(slot[:length])
        return out

    def send_batch(self, frames: Sequence[Frame]) -> int:
        n_frames = len(frames)
        chunk = self.max_batch
        total = 0
        while total < n_frames:
            batch = frames if n_frames <= chunk else frames[total : total + chunk]
            n = len(batch)
            keep = self._fill_iov(batch)
            written = self._write_iov(n, total)
            del keep
            total += written
            if written < n:
                break
        return total

    def _write_iov(self, n: int, total: int) -> int:
        """Write the n frames _fill_iov prepared: how many went (0 when the fd would block);
        an error is a LinkTxError that says `total` frames went before it."""
        written = self._tx_fn(self.fd, self._iov, self._iov_counts, n)
        if written >= 0:
            return written
        if written == -errno.EAGAIN:
            return 0
        err = -written
        raise LinkTxError(f"writing to {self.name}: {os.strerror(err)}", err, total)

    def _send_batch_gso(self, frames: Sequence[Frame]) -> int:
        """send_batch with software GSO: runs of ordinary frames as send_batch sends them, a
        TCP super-segment (its VnetMark) cut into wire segments and written by one C call."""
        n_frames = len(frames)
        total = 0
        gso = self.soft_gso
        assert gso is not None
        while total < n_frames:
            n, keep = self._fill_iov_plain(frames, total)
            if n:
                written = self._write_iov(n, total)
                del keep
                total += written
                if written < n:
                    return total
                continue
            frame = frames[total]
            mark = softoffload.gso_mark(frame)
            assert mark is not None
            try:
                if not gso.write(frame, mark):
                    return total
            except OSError as err:
                if err.errno == errno.EAGAIN:
                    return total
                raise LinkTxError(
                    f"writing to {self.name}: {err.strerror}", err.errno or 0, total
                ) from None
            total += 1
        return total

    def _fill_iov_plain(self, frames: Sequence[Frame], start: int) -> tuple[int, list | None]:
        """_fill_iov for the frames from `start` up to the next super-segment (or a batch):
        (how many, cdata to keep alive)."""
        end = min(len(frames), start + self.max_batch)
        mark_cls = wvnet.VnetMark
        gso_mark = softoffload.gso_mark  # a VnetMark is empty, hence falsy: test for None
        stop = start
        while stop < end:
            frame = frames[stop]
            if len(frame) > 1 and frame[1].__class__ is mark_cls and gso_mark(frame) is not None:
                break
            stop += 1
        if stop == start:
            return 0, None
        whole = start == 0 and stop == len(frames)  # the common case: no super-segment
        return stop - start, self._fill_iov(frames if whole else frames[start:stop])

    def _fill_iov(self, frames: Sequence[Frame]) -> list | None:
        """Copy each frame into its tx slot and set its iovec; returns cdata to keep alive."""
        words = self._iov_words
        view = self._tx_view
        bases = self._tx_bases
        slot_size = self.tx_slot_size  # receive slots may be larger (vnet, software GRO)
        keep = None
        w = 0
        for i, frame in enumerate(frames):
            data = frame[0] if len(frame) == 1 else b"".join(frame)
            size = len(data)
            if size < slot_size:
                off = i * slot_size
                view[off : off + size] = data
                words[w] = bases[i]
            else:  # larger than a slot: point at it rather than copy
                pinned = ffi.from_buffer(data)
                keep = [pinned] if keep is None else [*keep, pinned]
                words[w] = int(ffi.cast("uintptr_t", pinned))
                size = len(pinned)
            words[w + 1] = size
            w += 2
        return keep

    def _fill_iov_vnet(self, frames: Sequence[Frame]) -> list | None:
        """_fill_iov with a virtio-net header before each frame: a frame's VnetMark gives it
        (a super-frame for the kernel to cut), else the all-zero one. A frame that fits a
        transmit slot is copied there after its header (one iovec); a larger one is sent
        from where its pieces lie (header + pieces, pinned: no 64 KiB copy)."""
        words = self._iov_words
        view = self._tx_view
        bases = self._tx_bases
        counts = self._iov_counts
        slot_size = self.tx_slot_size
        hlen = wvnet.HEADER_LEN
        plain = wvnet.PLAIN
        mark_cls = wvnet.VnetMark
        keep: list | None = None
        w = 0
        for i, frame in enumerate(frames):
            header = plain
            if len(frame) > 1 and frame[1].__class__ is mark_cls:
                header = frame[1].header
            data = frame[0] if len(frame) == 1 else None
            size = len(data) if data is not None else sum(map(len, frame))
            if size + hlen <= slot_size:
                off = i * slot_size
                view[off : off + hlen] = header
                view[off + hlen : off + hlen + size] = data if data is not None else b"".join(frame)
                words[w] = bases[i]
                words[w + 1] = size + hlen
                w += 2
                counts[i] = 1
                continue
            pieces = [p for p in frame if len(p)]
            if len(pieces) > VNET_TX_PIECES:
                pieces = [b"".join(pieces)]
            pinned = [ffi.from_buffer(header), *map(ffi.from_buffer, pieces)]
            keep = pinned if keep is None else [*keep, *pinned]
            for p in pinned:
                words[w] = int(ffi.cast("uintptr_t", p))
                words[w + 1] = len(p)
                w += 2
            counts[i] = len(pinned)
        return keep

    def close(self) -> None:
        """Close the descriptor; idempotent."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, fd={self.fd}, mtu={self.mtu})"
