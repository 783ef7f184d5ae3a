"""An existing interface (veth, NIC) as a Link through an AF_PACKET raw socket.

Unlike a TAP, the stack shares the interface with the kernel and answers with the
interface's own MAC. Outgoing frames are not looped back (PACKET_IGNORE_OUTGOING).
"""

from __future__ import annotations

import os

from netstack._ffi import lib
from netstack.io.link import BatchLink, check_ifname, link_error, read_hwaddr, read_mtu


class PacketLink(BatchLink):
    """Ethernet frames through an AF_PACKET socket: recvmmsg in, sendmmsg out."""

    _rx_fn = staticmethod(lib.ns_recv_batch)
    _tx_fn = staticmethod(lib.ns_send_batch)

    def __init__(self, name: str, *, max_batch: int = 64) -> None:
        encoded = check_ifname(name)
        fd = lib.ns_packet_open(encoded)
        if fd < 0:
            raise link_error(fd, name, "opening a packet socket on", "CAP_NET_RAW")
        try:
            mac = read_hwaddr(name)
            mtu = read_mtu(name)
            super().__init__(name, fd, mac, mtu, max_batch)
        except BaseException:
            os.close(fd)
            raise
