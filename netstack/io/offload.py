"""What the kernel agreed to carry for us: the virtio-net header and the offloads behind it.

A TAP negotiates with TUNSETOFFLOAD (TUN_F_* bits). The kernel answers EINVAL to a bit it does
not know, or a combination it refuses, so features are probed one at a time, in order, each
on top of those already accepted: an unknown one is left out and the others kept. Some the
kernel has are not taken because the stack cannot receive them (USO: a UDP super-frame would
have to be cut into datagrams); the log line names them. TSO6 is taken: TCP over IPv6 receives
TCPV6 super-frames whole and sends them (proto/tcp/net.py).
AF_PACKET has no negotiation: PACKET_VNET_HDR alone means checksum offload and GSO both ways.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from netstack._ffi import lib

TUN_F_CSUM: int = lib.TUN_F_CSUM
TUN_F_TSO4: int = lib.TUN_F_TSO4
TUN_F_TSO6: int = lib.TUN_F_TSO6
TUN_F_USO = lib.TUN_F_USO4 | lib.TUN_F_USO6  # the kernel takes them only together

# Probe order: each needs the ones before it (TSO and USO need CSUM).
FEATURES: tuple[tuple[str, int], ...] = (
    ("csum", TUN_F_CSUM),
    ("tso4", TUN_F_TSO4),
    ("tso6", TUN_F_TSO6),
    ("uso", TUN_F_USO),
)
# What this stack can take from the kernel (and so asks for).
WANTED = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
# The largest TCP payload of one super-frame: an IPv4 datagram of 65535 bytes with a 20-byte
# IP header and the largest TCP header (60 bytes).
TSO_MAX = 65535 - 20 - 60
MODES = ("auto", "off")


@dataclasses.dataclass(frozen=True, slots=True)
class Offloads:
    """The outcome of negotiation on one link."""

    vnet: bool = False  # frames carry the virtio-net header
    features: int = 0  # TUN_F_* bits in force
    available: int = 0  # bits the kernel accepted while probing (a superset of features)
    header_len: int = 0
    note: str = ""  # why something is off, for the log line

    @property
    def csum(self) -> bool:
        return bool(self.features & TUN_F_CSUM)

    @property
    def tso4(self) -> bool:
        return bool(self.features & TUN_F_TSO4)

    @property
    def tso6(self) -> bool:
        return bool(self.features & TUN_F_TSO6)

    def names(self, bits: int) -> list[str]:
        return [name for name, bit in FEATURES if bits & bit == bit]

    def describe(self, link: str, send_only: tuple[str, ...] = ()) -> str:
        """The log line. `send_only`: features the stack uses only for what it sends (uso:
        UDP echo replies as super-frames), never asked of the kernel for receiving."""
        if not self.vnet:
            return f"offload on {link}: off{f' ({self.note})' if self.note else ''}"
        have = " ".join(self.names(self.features)) or "none"
        extra = self.names(self.available & ~self.features)
        used = [name for name in extra if name in send_only]
        unused = [name for name in extra if name not in send_only]
        also = f" (kernel also has: {' '.join(unused)}, not used)" if unused else ""
        sending = f"; {' '.join(used)} for sending only" if used else ""
        note = f"; {self.note}" if self.note else ""
        return (
            f"offload on {link}: vnet header {self.header_len} bytes, {have}{also}{sending}{note}"
        )


OFF = Offloads()


def negotiate(set_offload: Callable[[int], int], wanted: int = WANTED) -> tuple[int, int]:
    """Probe FEATURES one by one through set_offload(bits) -> 0 | -errno; leave `wanted`'s
    accepted part in force. Returns (features in force, every feature the kernel took)."""
    available = 0
    for _name, bit in FEATURES:
        if set_offload(available | bit) == 0:
            available |= bit
    features = available & wanted
    if not features & TUN_F_CSUM:
        features = 0  # nothing rides without checksum offload
    if set_offload(features) != 0:  # cannot happen after the probes; be safe
        set_offload(0)
        features = 0
    return features, available
