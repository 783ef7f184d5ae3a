"""An existing interface (veth, NIC) as a Link through an AF_PACKET raw socket.

Unlike a TAP, the stack shares the interface with the kernel and answers with the
interface's own MAC. Outgoing frames are not looped back (PACKET_IGNORE_OUTGOING).
"""

from __future__ import annotations

import os

from netstack._ffi import lib
from netstack.io import offload as offmod
from netstack.io.link import BatchLink, check_ifname, link_error, read_hwaddr, read_mtu
from netstack.wire import vnet as wvnet

PACKET_VNET_HDR: int = lib.PACKET_VNET_HDR
PACKET_QDISC_BYPASS: int = lib.PACKET_QDISC_BYPASS


class PacketLink(BatchLink):
    """Ethernet frames through an AF_PACKET socket: recvmmsg in, sendmmsg out.

    offload="auto": PACKET_VNET_HDR, so GSO super-frames (a veth passes the kernel's TSO
    segments through whole; a NIC with GRO merges) arrive as one frame with their header, and
    ours leave as super-frames the kernel cuts. There is nothing to negotiate: the socket
    option alone means checksum offload and GSO both ways. PACKET_QDISC_BYPASS always: frames
    go straight to the driver (we keep our own bounded queue). Receive stays recvmmsg
    (`rx_mode`); a TPACKET_V3 ring is not built.
    """

    rx_mode = "recvmmsg"

    _rx_fn = staticmethod(lib.ns_recv_batch)
    _tx_fn = staticmethod(lib.ns_send_batch)

    def __init__(self, name: str, *, max_batch: int = 64, offload: str = "off") -> None:
        if offload not in offmod.MODES:
            raise ValueError(f"offload must be one of {offmod.MODES}")
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
            super().__init__(name, fd, mac, mtu, max_batch, vnet=self.offloads.vnet)
        except BaseException:
            os.close(fd)
            raise
