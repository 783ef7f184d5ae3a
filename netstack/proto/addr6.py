"""The host's IPv6 addresses (RFC 4862 §5.5.4 states and lifetimes) and how they are chosen.

Pure: `now` in. An address is TENTATIVE until DAD passes, then PREFERRED, DEPRECATED once its
preferred lifetime ends (still received on, chosen as a source only when nothing better is
there), and gone when its valid lifetime ends. Source selection applies the RFC 6724 §5 rules
that mean something on one interface: same address, appropriate scope, avoid deprecated,
longest matching prefix. Interface IDs for link-local and SLAAC addresses follow RFC 7217.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac

from netstack.wire import ipv6 as wipv6

LINK_LOCAL_PREFIX = bytes.fromhex("fe80") + bytes(6)
INFINITE = float("inf")
MAX_ADDRESSES = 16  # bounded: an RA flood cannot grow the table without limit


class AddrState(enum.Enum):
    TENTATIVE = "tentative"
    PREFERRED = "preferred"
    DEPRECATED = "deprecated"
    DUPLICATE = "duplicate"  # DAD failed: kept for status, never used (RFC 4862 5.4.5)


# The states an address is usable in (receive on it, send from it): Ipv6Interface.usable, and
# the IPv6 fast path's inline test. A tuple: `in` compares enum members by identity, where a
# set would call Enum.__hash__, a Python function.
USABLE_STATES = (AddrState.PREFERRED, AddrState.DEPRECATED)


class Origin(enum.Enum):
    STATIC = "static"
    LINK_LOCAL = "link_local"
    SLAAC = "slaac"


@dataclasses.dataclass(slots=True, eq=False)
class Ipv6Interface:
    address: bytes
    prefix_len: int
    origin: Origin
    state: AddrState = AddrState.TENTATIVE
    valid_until: float = INFINITE
    preferred_until: float = INFINITE
    dad_sent: int = 0  # DAD solicitations sent so far
    dad_deadline: float | None = None  # next DAD step
    dad_counter: int = 0  # RFC 7217 DAD_Counter the interface ID was made with

    @property
    def usable(self) -> bool:
        """We receive on it and may send from it (RFC 4862 5.5.4)."""
        return self.state in USABLE_STATES

    def __str__(self) -> str:
        return f"{wipv6.to_str(self.address)}/{self.prefix_len}"


def solicited_node(address: bytes) -> bytes:
    """RFC 4291 §2.7.1: ff02::1:ffXX:XXXX from the low 24 bits."""
    return bytes.fromhex("ff0200000000000000000001ff") + address[13:]


def multicast_mac(group: bytes) -> bytes:
    """RFC 2464 §7: 33:33 and the group's low 32 bits."""
    return b"\x33\x33" + group[12:]


def prefix_matches(address: bytes, prefix: bytes, prefix_len: int) -> bool:
    whole, bits = divmod(prefix_len, 8)
    if address[:whole] != prefix[:whole]:
        return False
    if bits:
        mask = (0xFF << (8 - bits)) & 0xFF
        return address[whole] & mask == prefix[whole] & mask
    return True


def common_prefix_len(a: bytes, b: bytes) -> int:
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return 128 - x.bit_length()


def stable_iid(prefix: bytes, interface: str, secret: bytes, dad_counter: int = 0) -> bytes:
    """RFC 7217 §5: F(Prefix, Net_Iface, Network_ID, DAD_Counter, secret_key) with F an HMAC
    over SHA-256, the low 64 bits taken. Stable per prefix and interface, opaque: the MAC
    is not in it, and it changes with the prefix (no tracking across networks)."""
    message = prefix[:8] + interface.encode() + dad_counter.to_bytes(4, "big")
    iid = bytearray(hmac.new(secret, message, hashlib.sha256).digest()[:8])
    if not any(iid[:7]) and iid[7] in (0, 1):  # RFC 5453 reserved IIDs: never chosen
        iid[7] = 2
    return bytes(iid)


def scope(address: bytes) -> int:
    """RFC 6724 §3.1 scope values (link-local 2, global 14; multicast: its scope nibble)."""
    if wipv6.is_multicast(address):
        return address[1] & 0x0F
    if wipv6.is_link_local(address) or address == wipv6.LOOPBACK:
        return 2
    return 14


class AddressTable:
    """The host's addresses, with lifetimes; `poll` ages them."""

    def __init__(self) -> None:
        self.addresses: list[Ipv6Interface] = []
        # The same entries by address, for the receive fast path's one lookup per address
        # (proto/fast6.py); kept by add/remove/poll, the only places the list changes.
        self.by_address: dict[bytes, Ipv6Interface] = {}

    def __iter__(self):
        return iter(self.addresses)

    def __len__(self) -> int:
        return len(self.addresses)

    def find(self, address: bytes) -> Ipv6Interface | None:
        for entry in self.addresses:
            if entry.address == address:
                return entry
        return None

    def add(self, entry: Ipv6Interface) -> bool:
        """False when the table is full or the address is there already."""
        if len(self.addresses) >= MAX_ADDRESSES or self.find(entry.address) is not None:
            return False
        self.addresses.append(entry)
        self.by_address[entry.address] = entry
        return True

    def remove(self, entry: Ipv6Interface) -> None:
        self.addresses.remove(entry)
        self.by_address.pop(entry.address, None)

    def is_ours(self, address: bytes) -> bool:
        """Usable (not tentative, not duplicate): what we receive on and answer NS for."""
        entry = self.find(address)
        return entry is not None and entry.usable

    def link_local(self) -> Ipv6Interface | None:
        for entry in self.addresses:
            if entry.origin is Origin.LINK_LOCAL and entry.usable:
                return entry
        return None

    def on_link(self, dst: bytes) -> bool:
        """Inside one of our own prefixes (static or from the RA's prefix with the L bit)."""
        for e in self.addresses:  # a plain loop: every reply to a global peer asks this
            if (
                e.origin is not Origin.LINK_LOCAL
                and prefix_matches(dst, e.address, e.prefix_len)
                and e.state in USABLE_STATES
            ):
                return True
        return False

    def select_source(self, dst: bytes) -> bytes | None:
        """RFC 6724 §5 rules 1, 2, 3, 8 (one interface: 4-7 do not apply). None: no candidate."""
        candidates = [e for e in self.addresses if e.usable]
        if not candidates:
            return None
        dst_scope = scope(dst)

        def rank(e: Ipv6Interface) -> tuple:
            s = scope(e.address)
            return (
                e.address == dst,  # rule 1
                # rule 2: the smallest scope that still reaches dst; a too-small one is last
                (s >= dst_scope, -s if s >= dst_scope else s),
                e.state is AddrState.PREFERRED,  # rule 3
                common_prefix_len(e.address, dst),  # rule 8
            )

        return max(candidates, key=rank).address

    def poll(self, now: float) -> list[Ipv6Interface]:
        """Deprecate and expire by lifetimes; returns the entries removed."""
        gone = []
        for entry in list(self.addresses):
            if now >= entry.valid_until:
                self.addresses.remove(entry)
                self.by_address.pop(entry.address, None)
                gone.append(entry)
            elif entry.state is AddrState.PREFERRED and now >= entry.preferred_until:
                entry.state = AddrState.DEPRECATED
        return gone

    def next_deadline(self) -> float | None:
        best = None
        for e in self.addresses:  # asked every loop turn: no tuple per address
            d = e.valid_until
            if d is not None and d != INFINITE and (best is None or d < best):
                best = d
            if e.state is AddrState.PREFERRED:
                d = e.preferred_until
                if d is not None and d != INFINITE and (best is None or d < best):
                    best = d
            d = e.dad_deadline
            if d is not None and (best is None or d < best):
                best = d
        return best
