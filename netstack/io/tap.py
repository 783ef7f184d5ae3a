"""A TAP device as a Link: the kernel on one side, this stack on the other.

The TAP's own MAC (`peer_mac`) belongs to the kernel side of the wire; the stack answers with a
MAC of its own (`mac`), given or a random locally administered one.
"""

from __future__ import annotations

import errno
import os

from netstack._ffi import ffi, lib
from netstack.io import offload as offmod
from netstack.io import softoffload
from netstack.io import uring as uringmod
from netstack.io.link import (
    IFNAMSIZ,
    BatchLink,
    LinkError,
    LinkUnavailableError,
    check_ifname,
    link_error,
    read_hwaddr,
    read_mtu,
)
from netstack.wire import vnet as wvnet

IFF_TAP: int = lib.IFF_TAP
IFF_TUN: int = lib.IFF_TUN
IFF_NO_PI: int = lib.IFF_NO_PI
IFF_VNET_HDR: int = lib.IFF_VNET_HDR
IFF_MULTI_QUEUE: int = lib.IFF_MULTI_QUEUE
DEFAULT_FLAGS = IFF_TAP | IFF_NO_PI
TX_MODES = ("auto", "uring", "writev")


def random_mac() -> bytes:
    """A random unicast, locally administered MAC (02:xx:xx:xx:xx:xx family)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return bytes(raw)


def open_tap(name: str, flags: int = DEFAULT_FLAGS) -> tuple[int, str]:
    """Open /dev/net/tun attached to `name` (created if missing); returns (fd, actual name)."""
    encoded = check_ifname(name)
    name_out = ffi.new("char[]", IFNAMSIZ)
    fd = lib.ns_tap_open(encoded, flags, name_out)
    if fd >= 0:
        return fd, ffi.string(name_out).decode()
    err = -fd
    if err == errno.ENOENT:
        raise LinkUnavailableError(
            "/dev/net/tun does not exist: TUN/TAP is unavailable (try: modprobe tun)", err
        )
    if err == errno.EINVAL:
        raise LinkError(f"interface {name} exists and is not a TAP device", err)
    raise link_error(err, name, "opening TAP")


class TapLink(BatchLink):
    """Ethernet frames through a TAP fd: a read() loop in, one writev() per frame out.

    offload="auto" opens it with IFF_VNET_HDR and negotiates checksum offload and TSO
    (io/offload.py); `offloads` says what was agreed. "off" (the default here; the product's
    default comes from the config) resets any offload a persistent TAP kept from an earlier
    reader, or the kernel would hand us super-frames we cannot tell apart.
    gso/gro="auto" (off here, the config's default auto): without the virtio-net header, TCP
    super-segments are cut and received segments merged in software (io/softoffload.py).
    tx="auto"/"uring" (writev here; the config's default auto): batches of frames and the
    pieces of a cut super-segment go in one io_uring_enter (io/uring.py); auto falls back to
    writev where io_uring is unavailable, uring refuses to start. `tx_mode` says which.
    """

    tx_mode = "writev"
    _ring: uringmod.Ring | None = None

    _rx_fn = staticmethod(lib.ns_read_batch)
    _tx_fn = staticmethod(lib.ns_write_batch)

    def __init__(
        self,
        name: str,
        *,
        max_batch: int = 64,
        flags: int = DEFAULT_FLAGS,
        mac: bytes | None = None,
        offload: str = "off",
        gso: str = "off",
        gro: str = "off",
        tx: str = "writev",
    ) -> None:
        if tx not in TX_MODES:
            raise ValueError(f"tx must be one of {TX_MODES}")
        if gso not in softoffload.MODES or gro not in softoffload.MODES:
            raise ValueError(f"gso and gro must be one of {softoffload.MODES}")
        if flags & (IFF_TUN | IFF_VNET_HDR) or not flags & IFF_TAP or not flags & IFF_NO_PI:
            raise ValueError("TapLink handles IFF_TAP|IFF_NO_PI frames (no TUN, no vnet header)")
        if mac is not None and len(mac) != 6:
            raise ValueError("mac must be 6 bytes")
        if offload not in offmod.MODES:
            raise ValueError(f"offload must be one of {offmod.MODES}")
        if offload == "auto":
            flags |= IFF_VNET_HDR
        fd, actual = open_tap(name, flags)
        try:
            self.offloads = _negotiate(fd) if offload == "auto" else _no_offloads(fd)
            self.peer_mac = read_hwaddr(actual)
            mtu = read_mtu(actual)
            vnet = self.offloads.vnet
            super().__init__(
                actual,
                fd,
                mac if mac is not None else random_mac(),
                mtu,
                max_batch,
                vnet=vnet,
                gso=gso == "auto" and not vnet,  # software: the link has no TSO
                gro=gro == "auto" and not vnet,
            )
            if tx != "writev":
                self._open_ring(tx)
        except BaseException:
            os.close(fd)
            raise
        self.flags = flags

    def _open_ring(self, tx: str) -> None:
        ring, why = uringmod.open_ring(self.fd)
        if ring is None:
            if tx == "uring":
                raise LinkUnavailableError(f"tap_tx uring on {self.name}: {why}")
            self.tx_mode = f"writev (io_uring unavailable: {why})"
            return
        self._ring = ring
        self.tx_mode = "io_uring"
        # frames the ring let go behind one that went (ns_uring_submit): the loop counts them
        # as LINK_TX_ERROR drops and zeroes this
        self.tx_refused = ffi.new("int[1]")
        lib.ns_uring_count_refused(ring.handle, self.tx_refused)
        self._tx_fn = ring.write_batch_fn()  # type: ignore[method-assign]
        if self.soft_gso is not None:
            self.soft_gso.ring = ring.handle

    def close(self) -> None:
        """Close the descriptor and the ring; idempotent."""
        super().close()
        ring, self._ring = self._ring, None
        if ring is not None:
            if self.soft_gso is not None:
                self.soft_gso.ring = None
            # back to the class's writev: a send after close gets EBADF (a LinkTxError), not
            # the freed ring's memory
            self.__dict__.pop("_tx_fn", None)
            ring.close()


def _negotiate(fd: int) -> offmod.Offloads:
    """Header size first (the kernel's default is the same 10 bytes: said, not assumed)."""
    rc = lib.ns_tap_set_vnet_hdr_sz(fd, wvnet.HEADER_LEN)
    if rc < 0:
        raise LinkError(f"TUNSETVNETHDRSZ: {os.strerror(-rc)}", -rc)
    features, available = offmod.negotiate(lambda bits: lib.ns_tap_set_offload(fd, bits))
    note = "" if features else "the kernel refused checksum offload"
    return offmod.Offloads(True, features, available, wvnet.HEADER_LEN, note)


def _no_offloads(fd: int) -> offmod.Offloads:
    lib.ns_tap_set_offload(fd, 0)  # errors ignored: a kernel without offloads has none on
    return offmod.OFF
