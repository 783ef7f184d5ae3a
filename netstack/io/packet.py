"""An existing interface (veth, NIC) as a Link through an AF_PACKET raw socket.

Unlike a TAP, the stack shares the interface with the kernel and answers with the
interface's own MAC. Outgoing frames are not looped back (PACKET_IGNORE_OUTGOING).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from netstack._ffi import ffi, lib
from netstack.io import offload as offmod
from netstack.io import softoffload
from netstack.io.link import (
    _PARTIAL_NOT_GSO,
    BatchLink,
    check_ifname,
    link_error,
    read_hwaddr,
    read_mtu,
)
from netstack.wire import vnet as wvnet

PACKET_VNET_HDR: int = lib.PACKET_VNET_HDR
PACKET_QDISC_BYPASS: int = lib.PACKET_QDISC_BYPASS
PACKET_AUXDATA: int = lib.PACKET_AUXDATA

log = logging.getLogger(__name__)

RING_MODES = ("auto", "off")
RX_RECVMMSG = "recvmmsg"
RX_RING = "tpacket_v3 ring"


@dataclasses.dataclass(frozen=True, slots=True)
class RingGeometry:
    """A TPACKET_V3 ring's shape. A frame never spans blocks, so with the virtio-net header a
    block must hold a 64 KiB super-frame (plus tpacket3_hdr and the header); smaller blocks
    retire sooner under light load. `tov_ms` is the kernel's retire timer: a block that is not
    full is handed over that long after its first frame, the ring's added latency at low rates."""

    block_size: int
    block_nr: int
    tov_ms: int = 1
    frame_size: int = 2048  # only checked by the kernel in V3 (block_size % frame_size == 0)

    @property
    def size(self) -> int:
        return self.block_size * self.block_nr


RING_BYTES = 8 << 20
# Per block and frame beside the frame itself: the block descriptor (48), tpacket3_hdr and
# sockaddr_ll (68), alignment, a VLAN tag and the virtio-net header, rounded up.
RING_OVERHEAD = 256


def ring_geometry(mtu: int, vnet: bool) -> RingGeometry:
    """RING_BYTES in the smallest blocks (pages, doubled) that hold the largest frame: a
    64 KiB super-frame with the header, else an MTU-sized frame. A frame never spans blocks,
    and a small block fills (so reaches the reader without waiting for the retire timer)
    sooner. An MTU raised after opening past what a block holds gets frames clamped, counted
    as oversize drops."""
    largest = (65536 + wvnet.HEADER_LEN if vnet else max(mtu, 1500) + 14) + RING_OVERHEAD
    block = 4096
    while block < largest:
        block *= 2
    return RingGeometry(block_size=block, block_nr=max(RING_BYTES // block, 2))


class PacketLink(BatchLink):
    """Ethernet frames through an AF_PACKET socket: recvmmsg (or a TPACKET_V3 ring) in,
    sendmmsg out.

    offload="auto": PACKET_VNET_HDR, so GSO super-frames (a veth passes the kernel's TSO
    segments through whole; a NIC with GRO merges) arrive as one frame with their header, and
    ours leave as super-frames the kernel cuts. There is nothing to negotiate: the socket
    option alone means checksum offload and GSO both ways. PACKET_QDISC_BYPASS always: frames
    go straight to the driver (we keep our own bounded queue). Receive: ring="auto" maps a
    TPACKET_V3 ring (PACKET_RX_RING) and reads frames where the kernel put them, falling back
    to recvmmsg if the kernel refuses it; `rx_mode` says which is in use.
    """

    rx_mode = RX_RECVMMSG
    _ring = None
    rcvbuf = 0  # the socket's receive queue in bytes as the kernel reports it (recvmmsg)
    # Frames the kernel dropped before we read them (the loop counts and zeroes it), looked
    # up at the end of a drain, at most every STATS_EVERY seconds: one getsockopt.
    rx_kernel_dropped = 0
    STATS_EVERY = 0.5
    _stats_due = 0.0

    _rx_fn = staticmethod(lib.ns_recv_batch)
    _tx_fn = staticmethod(lib.ns_send_batch)
    _gso_mmsg = True  # software GSO writes a super-segment's pieces with sendmmsg

    def __init__(
        self,
        name: str,
        *,
        max_batch: int = 64,
        offload: str = "off",
        ring: str = "off",
        geometry: RingGeometry | None = None,
        gso: str = "off",
        gro: str = "off",
    ) -> None:
        """`gso`/`gro` "auto": in software (io/softoffload.py) when the socket has no
        virtio-net header; software GRO merges in the recvmmsg arena, not in the ring."""
        if gso not in softoffload.MODES or gro not in softoffload.MODES:
            raise ValueError(f"gso and gro must be one of {softoffload.MODES}")
        if offload not in offmod.MODES:
            raise ValueError(f"offload must be one of {offmod.MODES}")
        if ring not in RING_MODES:
            raise ValueError(f"ring must be one of {RING_MODES}")
        encoded = check_ifname(name)
        fd = lib.ns_packet_open(encoded)
        if fd < 0:
            raise link_error(fd, name, "opening a packet socket on", "CAP_NET_RAW")
        try:
            self.qdisc_bypass = lib.ns_packet_set_option(fd, PACKET_QDISC_BYPASS, 1) == 0
            self.offloads = offmod.OFF
            if offload == "auto":
                rc = lib.ns_packet_set_option(fd, PACKET_VNET_HDR, 1)
                if rc == 0:
                    bits = offmod.TUN_F_CSUM | offmod.TUN_F_TSO4 | offmod.TUN_F_TSO6
                    self.offloads = offmod.Offloads(True, bits, bits, wvnet.HEADER_LEN)
                else:
                    self.offloads = offmod.Offloads(note=f"PACKET_VNET_HDR: {os.strerror(-rc)}")
            mac = read_hwaddr(name)
            mtu = read_mtu(name)
            vnet = self.offloads.vnet
            super().__init__(
                name, fd, mac, mtu, max_batch, vnet=vnet,
                gso=gso == "auto" and not vnet, gro=gro == "auto" and not vnet and ring == "off",
            )  # fmt: skip
            self.ring_note = ""
            if not vnet:
                self._take_partial_checksums(fd)
            if ring == "auto":
                self._open_ring(geometry or ring_geometry(mtu, self.vnet))
            if self._ring is None:
                # recvmmsg's queue is the socket's: as much room as the ring would have (the
                # default, ~200 KB, is three super-frames; a burst beyond it is lost). The
                # kernel doubles the figure asked for.
                self.rcvbuf = lib.ns_socket_set_rcvbuf(fd, RING_BYTES // 2)
            self._receive_frames = self.receive_batch
            self.receive_batch = self._receive_and_count  # type: ignore[method-assign]
        except BaseException:
            self._close_ring()
            os.close(fd)
            raise

    _completed = None  # ns_recv_batch_aux's count of checksums it completed

    def _take_partial_checksums(self, fd: int) -> None:
        """Without the virtio-net header, a frame a local socket sent over a veth carries a
        partial checksum (CHECKSUM_PARTIAL: the peer's TCP and UDP leave the sum to a NIC that
        a veth does not have), which only PACKET_AUXDATA (TP_STATUS_CSUMNOTREADY) tells
        apart from a corrupt one. Such frames are completed where they lie, in C, as the NIC
        would have: the stack then sees what a wire carries (the ring's frame status says the
        same, see ns_ring_recv). A UDP super-datagram (the peer's UDP_SEGMENT) is left partial:
        completed, its several datagrams would pass as one. A kernel that refuses the option
        leaves them as they are."""
        if lib.ns_packet_set_option(fd, PACKET_AUXDATA, 1) != 0:
            return
        completed = self._completed = ffi.new("uint64_t *")
        aux, mtu = lib.ns_recv_batch_aux, self.mtu

        def receive(fd: int, arena, slot_size: int, max_frames: int, lens) -> int:
            return aux(fd, arena, slot_size, max_frames, lens, completed, mtu)

        self._rx_fn = receive  # type: ignore[method-assign]

    @property
    def rx_csum_completed(self) -> int:
        """Partial checksums completed so far (recvmmsg and ring; 0 with the vnet header)."""
        done = 0 if self._completed is None else int(self._completed[0])
        return done + (0 if self._ring is None else int(self._ring.completed))

    def _receive_and_count(self) -> list[memoryview]:
        """The receive in use (recvmmsg or ring); a short batch ends a drain: then, now and
        then, ask the kernel how many frames it dropped meanwhile."""
        frames = self._receive_frames()
        if len(frames) < self.max_batch:
            now = time.monotonic()
            if now >= self._stats_due:
                self._stats_due = now + self.STATS_EVERY
                dropped = lib.ns_packet_drops(self.fd)
                if dropped > 0:
                    self.rx_kernel_dropped += dropped
        return frames

    # -- TPACKET_V3 receive ring --------------------------------------------------------------
    def _open_ring(self, geometry: RingGeometry) -> None:
        """Map the ring and read from it, or say why not and stay on recvmmsg. The vnet
        header must be decided first: the kernel refuses PACKET_VNET_HDR once a ring exists."""
        hlen = wvnet.HEADER_LEN if self.vnet else 0
        state = ffi.new("struct ns_ring *")
        rc = lib.ns_ring_open(
            self.fd,
            state,
            geometry.block_size,
            geometry.block_nr,
            geometry.frame_size,
            geometry.tov_ms,
            hlen,
        )
        if rc < 0:
            self.ring_note = f"TPACKET_V3 ring refused ({os.strerror(-rc)}), recvmmsg instead"
            log.info("%s: %s", self.name, self.ring_note)
            return
        state.mtu = self.mtu  # ns_ring_open zeroed it: UDP super-datagrams stay partial
        self._ring = state
        self.geometry = geometry
        self.rx_mode = RX_RING
        base = ffi.cast("uint8_t *", state.base)
        self._ring_base = base
        self._ring_view = memoryview(ffi.buffer(base, geometry.size)).toreadonly()
        self._offs = ffi.new("uint32_t[]", self.max_batch)
        self._ring_lens = ffi.new("uint32_t[]", self.max_batch)
        # The arena recvmmsg would fill is never used: give its memory back.
        self._arena = ffi.new("uint8_t[]", 1)
        self._slots = []
        self.receive_batch = self._receive_ring_vnet if hlen else self._receive_ring  # type: ignore[method-assign]

    def _ring_batch(self) -> tuple[list[int], list[int]]:
        """Offsets and lengths of the next frames in the ring (the previous batch's blocks
        are given back first: its views are dead by contract)."""
        state = self._ring
        n = lib.ns_ring_recv(state, self.max_batch, self._offs, self._ring_lens)
        if state.truncated:
            self.rx_oversize += state.truncated
            state.truncated = 0
        if n <= 0:
            if n == 0:
                return [], []
            raise link_error(n, self.name, "reading the ring of")
        return ffi.unpack(self._offs, n), ffi.unpack(self._ring_lens, n)

    def _receive_ring(self) -> list[memoryview]:
        offs, lens = self._ring_batch()
        view = self._ring_view
        return [view[off : off + length] for off, length in zip(offs, lens, strict=True)]

    def _receive_ring_vnet(self) -> list[memoryview]:
        """As BatchLink._receive_vnet, for frames in the ring: strip the header into rx_meta,
        complete the kernel's partial checksums on ordinary frames where they lie."""
        offs, lens = self._ring_batch()
        n = len(offs)
        view = self._ring_view
        hlen = wvnet.HEADER_LEN
        if not n:
            self.rx_meta = []
            return []
        if not lib.ns_vnet_rx_plain_at(self._ring_base, self._offs, self._ring_lens, n, hlen):
            self.rx_meta = [0] * n
            return [view[off + hlen : off + length] for off, length in zip(offs, lens, strict=True)]
        meta_of = wvnet.meta_of
        metas = []
        for off, length in zip(offs, lens, strict=True):
            meta = meta_of(view[off : off + hlen])
            if meta & _PARTIAL_NOT_GSO == wvnet.F_NEEDS_CSUM:
                start, where = (meta >> 32) & 0xFFFF, (meta >> 48) & 0xFFFF
                frame = self._ring_base + (off + hlen)
                meta &= ~0xFF  # positions outside the frame: vouch for nothing, verify it
                if lib.ns_csum_complete(frame, length - hlen, start, where) == 0:
                    meta |= wvnet.F_DATA_VALID
            metas.append(meta)
        self.rx_meta = metas
        return [view[off + hlen : off + length] for off, length in zip(offs, lens, strict=True)]

    def ring_stats(self) -> dict[str, int]:
        """Blocks the ring handed over so far, and its shape (empty without a ring)."""
        if self._ring is None:
            return {}
        return {
            "blocks": int(self._ring.blocks),
            "block_size": self.geometry.block_size,
            "block_nr": self.geometry.block_nr,
        }

    def _close_ring(self) -> None:
        if self._ring is not None:
            self._ring_view.release()
            lib.ns_ring_close(self._ring)
            self._ring = None

    def close(self) -> None:
        """Unmap the ring (views into it must be dead), then close the socket."""
        if self.fd >= 0:
            self._close_ring()
        super().close()
