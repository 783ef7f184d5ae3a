"""DHCPv4 client (RFC 2131 §4.4, RFC 2132 options, RFC 5227 address probe): a pure state machine.

Messages and `now` come in (`receive`, `arp_seen`, `poll`); messages go out through the host
(`DhcpHost.dhcp_send`, `dhcp_probe`) and the lease is applied or withdrawn through
`dhcp_configure`. No sockets, clock or files: the lease file lives in the runtime, which hands
a remembered lease to `start`.

States (RFC 2131 figure 5, plus CHECKING for the §4.4.1 / RFC 5227 ARP probe of an address
between its DHCPACK and its use):

    INIT -> SELECTING -offer-> REQUESTING -ack-> CHECKING -quiet-> BOUND -T1-> RENEWING
    INIT_REBOOT -> REBOOTING -ack-> CHECKING          RENEWING -T2-> REBINDING -expiry-> INIT
    NAK anywhere -> INIT; an ARP conflict while CHECKING -> DECLINE, INIT after 10 s

Choices, where the RFCs leave room: the first acceptable offer is taken; the start delay is
0..`init_delay` s (RFC 2131 suggests 1..10 s to spread a power-cut's worth of clients, too
slow for one stack starting); a REQUEST (selecting/rebooting) is sent `request_attempts` times
with the §4.1 backoff, then the client restarts from INIT (for INIT-REBOOT, RFC 2131 §3.2 would
let it keep the old address until expiry: we do not, the server did not confirm it).

Covered: RFC 2131 §3.1 (allocation), §3.2 and §4.4.2 (INIT-REBOOT), §4.1 (backoff, xid, secs;
broadcast flag never set: replies unicast to the offered address are taken while unbound),
§4.3.2 (the three REQUEST forms), §4.4.1 (first offer, ARP check, DECLINE, lease counted from
the REQUEST), §4.4.5 (T1/T2 defaults, renew/rebind and their retransmission), §4.4.6 (RELEASE);
RFC 2132 options 1, 3, 26, 50, 51, 53-56, 58, 59, 61; RFC 3396 concatenation; RFC 5227 §2.1.1
probe, §2.3's two announcements ANNOUNCE_INTERVAL apart (the second skipped when T1 is already
due) and the MAX_CONFLICTS rate limit; defence (§2.4) is the ARP engine's. Left out: DHCPINFORM
(§4.4.3), option overload (RFC 2132 §9.3), RFC 3442 classless routes, DNS and other options the
stack has no use for, RFC 4361 DUID client ids, and choosing between several offers.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Callable
from typing import Protocol

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.deadlines import Announce, unannounced
from netstack.wire import dhcp as wdhcp
from netstack.wire.errors import Malformed

BROADCAST = 0xFFFFFFFF
# What we ask for (option 55): subnet mask, router, interface MTU, lease time, T1, T2.
PARAMETER_REQUEST_LIST = (
    wdhcp.OPT_SUBNET_MASK,
    wdhcp.OPT_ROUTER,
    wdhcp.OPT_INTERFACE_MTU,
    wdhcp.OPT_LEASE_TIME,
    wdhcp.OPT_RENEWAL_TIME,
    wdhcp.OPT_REBINDING_TIME,
)


class DhcpState(enum.Enum):
    INIT = "init"
    SELECTING = "selecting"
    REQUESTING = "requesting"
    CHECKING = "checking"  # ARP-probing the acknowledged address (RFC 5227 §2.1.1)
    BOUND = "bound"
    RENEWING = "renewing"
    REBINDING = "rebinding"
    INIT_REBOOT = "init_reboot"
    REBOOTING = "rebooting"


# The states in which the lease's address is ours to use.
CONFIGURED = frozenset({DhcpState.BOUND, DhcpState.RENEWING, DhcpState.REBINDING})


@dataclasses.dataclass(slots=True)
class DhcpConfig:
    """Timings (seconds). Defaults are the RFCs' unless the module docstring says otherwise."""

    init_delay: float = 1.0  # first DISCOVER after uniform(0, init_delay)
    retransmit_initial: float = 4.0  # RFC 2131 §4.1: 4 s, doubling ...
    retransmit_max: float = 64.0  # ... up to 64 s, each randomized by uniform(-1, +1)
    request_attempts: int = 4  # REQUESTs in REQUESTING/REBOOTING before restarting
    renew_retransmit_min: float = 60.0  # RFC 2131 §4.4.5: half the time left, down to 60 s
    decline_wait: float = 10.0  # RFC 2131 §3.1 (5): wait at least 10 s after a DECLINE
    probe_wait: float = 1.0  # RFC 5227 §1.1 PROBE_WAIT
    probe_num: int = 3  # PROBE_NUM
    probe_min: float = 1.0  # PROBE_MIN
    probe_max: float = 2.0  # PROBE_MAX
    announce_wait: float = 2.0  # ANNOUNCE_WAIT
    announce_interval: float = 2.0  # ANNOUNCE_INTERVAL: the second of ANNOUNCE_NUM (2)
    max_conflicts: int = 10  # MAX_CONFLICTS: after this many, ...
    rate_limit_interval: float = 60.0  # ... one attempt per RATE_LIMIT_INTERVAL
    client_id: bytes | None = None  # option 61; default: type 1 (Ethernet) + our MAC


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """An acknowledged lease. Times are loop-clock seconds; `acquired` is when the REQUEST
    that got it was sent (RFC 2131 §4.4.1 counts the lease from there)."""

    address: int
    prefix_len: int
    gateway: int | None
    server_id: int
    lease_time: int  # seconds; wdhcp.INFINITE_LEASE for ever
    renewal_time: float  # T1, seconds after `acquired`
    rebinding_time: float  # T2
    mtu: int | None
    acquired: float

    @property
    def infinite(self) -> bool:
        return self.lease_time == wdhcp.INFINITE_LEASE

    @property
    def expires(self) -> float:
        return float("inf") if self.infinite else self.acquired + self.lease_time

    @property
    def t1(self) -> float:
        return float("inf") if self.infinite else self.acquired + self.renewal_time

    @property
    def t2(self) -> float:
        return float("inf") if self.infinite else self.acquired + self.rebinding_time


class DhcpHost(Protocol):
    """What the client needs from the host it configures."""

    def dhcp_send(self, dst: int, payload: bytes, now: float) -> None:
        """A UDP datagram from port 68 to dst:67, from the host's current address (0.0.0.0
        while it has none); dst 255.255.255.255 goes out as an Ethernet broadcast."""

    def dhcp_probe(self, address: int, now: float) -> None:
        """An RFC 5227 ARP probe (sender IP 0.0.0.0) for `address`."""

    def dhcp_configure(self, lease: Lease | None, now: float) -> None:
        """Use this lease (again, after a renewal), or stop using any address (None); a new
        address is announced (gratuitous ARP) by the host as it takes it."""

    def dhcp_announce(self, address: int, now: float) -> None:
        """Announce `address` again (RFC 5227 §2.3's second announcement)."""


def classful_prefix(address: int) -> int:
    """The prefix an address had before CIDR: what we assume when the server sends no mask."""
    first = address >> 24
    return 8 if first < 128 else 16 if first < 192 else 24


def mask_to_prefix(mask: int) -> int | None:
    """255.255.255.0 -> 24; None for a non-contiguous mask."""
    prefix = bin(mask).count("1")
    return prefix if mask == (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF else None


def usable_address(ip: int) -> bool:
    """A unicast address a host may own: not 0/8, loopback, multicast, class E or broadcast."""
    return ip >> 24 not in (0, 127) and ip < 0xE0000000


class DhcpClient:
    """One interface's DHCP client. Drive it with start/receive/arp_seen/poll/release."""

    def __init__(
        self,
        mac: bytes,
        host: DhcpHost,
        counters: Counters,
        rng: random.Random,
        config: DhcpConfig | None = None,
    ) -> None:
        self.mac = bytes(mac)
        self.host = host
        self.counters = counters
        self.rng = rng
        self.config = config if config is not None else DhcpConfig()
        self.client_id = self.config.client_id or bytes((1,)) + self.mac  # RFC 2132 §9.14
        self.state = DhcpState.INIT
        self.lease: Lease | None = None  # the lease in use (CONFIGURED states)
        self.stopped = False
        self.on_state: Callable[[DhcpState, DhcpState], None] | None = None  # for logging
        self._xid: int | None = None  # the exchange we expect replies to
        self.deadline_moved: Announce = unannounced
        self._at: float | None = None  # the next timer (see _deadline)
        self._attempt = 0  # transmissions of the current message
        self._began = 0.0  # start of the current exchange (the `secs` field)
        self._sent_at = 0.0  # when the current REQUEST first went out (lease start)
        self._offer: wdhcp.DhcpMessage | None = None  # the offer being requested
        self._candidate: Lease | None = None  # acknowledged, being probed (CHECKING)
        self._probes = 0
        self._conflicts = 0  # consecutive declines (RFC 5227 MAX_CONFLICTS)
        self._requested_hint: int | None = None  # requested-IP option for DISCOVER
        self._remembered: Lease | None = None  # INIT-REBOOT's lease
        self._announce_at: float | None = None  # the second announcement, once newly bound

    # -- public API ------------------------------------------------------------------------
    def start(self, now: float, remembered: Lease | None = None) -> None:
        """Begin: INIT-REBOOT with a remembered, unexpired lease; else INIT (asking for the
        remembered address, if any, in the DISCOVER)."""
        self.stopped = False
        if remembered is not None and remembered.expires > now:
            self._remembered = remembered
            self._set_state(DhcpState.INIT_REBOOT)
            self._deadline = now + self.rng.uniform(0, self.config.init_delay)
        else:
            self._requested_hint = remembered.address if remembered is not None else None
            self._restart(now, delay=self.rng.uniform(0, self.config.init_delay))

    def receive(self, payload: memoryview, src: int, now: float) -> None:
        """A UDP datagram that arrived on port 68."""
        c = self.counters
        try:
            msg = wdhcp.parse(payload)
        except Malformed as bad:
            c.drop(bad.reason)
            return
        if (
            msg.op != wdhcp.OP_REPLY
            or self._xid is None
            or msg.xid != self._xid
            or msg.htype != wdhcp.HTYPE_ETHERNET
            or msg.chaddr != self.mac
        ):
            c.drop(Drop.DHCP_NOT_FOR_US)
            return
        kind = msg.message_type
        c.dhcp_messages["rx", wdhcp.TYPE_NAMES.get(kind or 0, "other")] += 1
        handler = _HANDLERS.get((self.state, kind))
        if handler is None:
            c.drop(Drop.DHCP_UNEXPECTED)
            return
        handler(self, msg, now)

    def arp_seen(
        self, op: int, sender_mac: bytes, sender_ip: int, target_ip: int, now: float
    ) -> None:
        """Every valid ARP packet the host receives; a conflict matters only while CHECKING.

        RFC 5227 §2.1.1: another host owns the address if it sends any ARP with it as the
        sender address, or is probing for it too (sender 0.0.0.0, target it).
        """
        cand = self._candidate
        if self.state is not DhcpState.CHECKING or cand is None or sender_mac == self.mac:
            return
        if sender_ip == cand.address or (sender_ip == 0 and target_ip == cand.address and op == 1):
            self._decline(now)

    def release(self, now: float) -> bool:
        """Give the lease back (DHCPRELEASE, RFC 2131 §4.4.6) and stop. The host keeps the
        address configured: this is for shutdown, and frames still queued may need it.
        Returns whether a RELEASE was sent."""
        lease = self.lease
        sent = False
        if self.state in CONFIGURED and lease is not None:
            self._xid = self.rng.getrandbits(32)
            self._send(
                lease.server_id,
                wdhcp.RELEASE,
                now,
                ciaddr=lease.address,
                server_id=lease.server_id,
                parameter_request_list=(),
            )
            sent = True
        self.stop()
        return sent

    def stop(self) -> None:
        """No more messages or timers (the stack is stopping)."""
        self.stopped = True
        self._xid = None
        self._deadline = None

    @property
    def _deadline(self) -> float | None:
        return self._at

    @_deadline.setter
    def _deadline(self, when: float | None) -> None:
        """Every timer the client sets goes through here: the loop hears of it."""
        self._at = when
        if when is not None:
            self.deadline_moved(when)

    def announce_deadlines(self, moved: Announce) -> None:
        """Tell `moved` whenever the client sets its timer (proto/deadlines.py)."""
        self.deadline_moved = moved

    def next_deadline(self) -> float | None:
        return self._at

    def poll(self, now: float) -> None:
        while self._deadline is not None and self._deadline <= now:
            self._deadline = None
            _TIMERS[self.state](self, now)

    def seconds_left(self, now: float) -> float:
        """Lease time remaining (0 when there is no lease, inf for an infinite one)."""
        lease = self.lease
        if lease is None or self.state not in CONFIGURED:
            return 0.0
        return max(0.0, lease.expires - now)

    # -- timers ----------------------------------------------------------------------------
    def _on_init(self, now: float) -> None:
        """Start (or restart) acquisition: DISCOVER."""
        self._xid = self.rng.getrandbits(32)
        self._began = now
        self._attempt = 0
        self._set_state(DhcpState.SELECTING)
        self._discover(now)

    def _on_selecting(self, now: float) -> None:
        self._attempt += 1
        self._discover(now)

    def _on_requesting(self, now: float) -> None:
        if self._attempt >= self.config.request_attempts:
            self._restart(now)  # no answer: begin again
            return
        assert self._offer is not None
        self._request_selected(now)

    def _on_init_reboot(self, now: float) -> None:
        self._xid = self.rng.getrandbits(32)
        self._began = self._sent_at = now
        self._attempt = 0
        self._set_state(DhcpState.REBOOTING)
        self._request_reboot(now)

    def _on_rebooting(self, now: float) -> None:
        if self._attempt >= self.config.request_attempts:
            assert self._remembered is not None
            self._requested_hint = self._remembered.address
            self._remembered = None
            self._restart(now)
            return
        self._request_reboot(now)

    def _on_checking(self, now: float) -> None:
        cand = self._candidate
        assert cand is not None
        cfg = self.config
        if self._probes < cfg.probe_num:
            self.host.dhcp_probe(cand.address, now)
            self._probes += 1
            if self._probes < cfg.probe_num:
                self._deadline = now + self.rng.uniform(cfg.probe_min, cfg.probe_max)
            else:
                self._deadline = now + cfg.announce_wait
            return
        self._conflicts = 0  # quiet for ANNOUNCE_WAIT after the last probe: the address is ours
        self._candidate = None
        self._bind(cand, now)
        self._announce_at = now + cfg.announce_interval
        if self._deadline is None or self._deadline > now:  # unless T1 is already due
            self._deadline = min(self._announce_at, self._deadline or float("inf"))

    def _on_bound(self, now: float) -> None:
        """The second announcement, then T1: renew with the server that gave us the lease
        (unicast)."""
        lease = self.lease
        assert lease is not None
        if self._announce_at is not None and now >= self._announce_at:
            self._announce_at = None
            self.host.dhcp_announce(lease.address, now)
        if now < lease.t1:
            next_at = min(lease.t1, self._announce_at or float("inf"))
            self._deadline = None if next_at == float("inf") else next_at
            return
        self._announce_at = None  # T1 came first: renewing talks to the server anyway
        self._xid = self.rng.getrandbits(32)
        self._began = now
        self._set_state(DhcpState.RENEWING)
        self._renew(now)

    def _on_renewing(self, now: float) -> None:
        lease = self.lease
        assert lease is not None
        if now >= lease.t2:  # T2: any server may extend it now (broadcast)
            self._xid = self.rng.getrandbits(32)
            self._set_state(DhcpState.REBINDING)
        self._renew(now)

    def _on_rebinding(self, now: float) -> None:
        lease = self.lease
        assert lease is not None
        if now >= lease.expires:
            self._expire(now)
            return
        self._renew(now)

    # -- message handlers (state, type) --------------------------------------------------
    def _on_offer(self, msg: wdhcp.DhcpMessage, now: float) -> None:
        if not usable_address(msg.yiaddr) or msg.server_id is None:
            self.counters.drop(Drop.DHCP_BAD_LEASE)
            return
        self._offer = msg
        self._attempt = 0
        self._set_state(DhcpState.REQUESTING)
        self._request_selected(now)

    def _on_ack(self, msg: wdhcp.DhcpMessage, now: float) -> None:
        lease = self._lease_from(msg, now)
        if lease is None:
            self.counters.drop(Drop.DHCP_BAD_LEASE)
            return
        if self.state in (DhcpState.REQUESTING, DhcpState.REBOOTING):
            self._offer = None
            self._remembered = None
            self._xid = None
            self._candidate = lease
            self._probes = 0
            self._set_state(DhcpState.CHECKING)
            self._deadline = now + self.rng.uniform(0, self.config.probe_wait)
            return
        # RENEWING / REBINDING: the lease goes on (maybe from another server when rebinding)
        self.counters.dhcp_renewals += 1
        self._xid = None
        self._bind(lease, now)

    def _on_nak(self, msg: wdhcp.DhcpMessage, now: float) -> None:
        offer = self._offer
        if (
            self.state is DhcpState.REQUESTING
            and offer is not None
            and msg.server_id is not None
            and msg.server_id != offer.server_id
        ):
            self.counters.drop(Drop.DHCP_NOT_FOR_US)  # another server's NAK, not ours
            return
        self._remembered = None
        self._requested_hint = None
        self._withdraw(now)
        self._restart(now, delay=self.rng.uniform(0, self.config.init_delay))

    # -- internals -------------------------------------------------------------------------
    def _set_state(self, state: DhcpState) -> None:
        old, self.state = self.state, state
        if old is not state and self.on_state is not None:
            self.on_state(old, state)

    def _restart(self, now: float, delay: float = 0.0) -> None:
        self._xid = None
        self._offer = None
        self._candidate = None
        self._set_state(DhcpState.INIT)
        self._deadline = now + delay

    def _backoff(self) -> float:
        """RFC 2131 §4.1: 4, 8, 16, ... 64 s, each +/- a uniform second."""
        cfg = self.config
        doublings = min(self._attempt, 30)  # DISCOVER retries for ever: keep 2**n a small int
        base = min(cfg.retransmit_initial * 2**doublings, cfg.retransmit_max)
        return max(0.0, base + self.rng.uniform(-1.0, 1.0))

    def _secs(self, now: float) -> int:
        return max(0, min(int(now - self._began), 0xFFFF))

    def _send(self, dst: int, kind: int, now: float, **fields: object) -> None:
        assert self._xid is not None
        fields.setdefault("parameter_request_list", PARAMETER_REQUEST_LIST)
        msg = wdhcp.DhcpMessage(
            op=wdhcp.OP_REQUEST,
            xid=self._xid,
            chaddr=self.mac,
            message_type=kind,
            secs=self._secs(now),
            client_id=self.client_id,
            **fields,  # type: ignore[arg-type]
        )
        self.counters.dhcp_messages["tx", wdhcp.TYPE_NAMES[kind]] += 1
        self.host.dhcp_send(dst, wdhcp.build(msg), now)

    def _discover(self, now: float) -> None:
        self._send(BROADCAST, wdhcp.DISCOVER, now, requested_ip=self._requested_hint)
        self._deadline = now + self._backoff()

    def _request_selected(self, now: float) -> None:
        """REQUEST in SELECTING (§4.3.2): server id + requested IP, ciaddr 0, broadcast."""
        offer = self._offer
        assert offer is not None
        if self._attempt == 0:
            self._sent_at = now
        self._send(
            BROADCAST, wdhcp.REQUEST, now, server_id=offer.server_id, requested_ip=offer.yiaddr
        )
        self._deadline = now + self._backoff()
        self._attempt += 1

    def _request_reboot(self, now: float) -> None:
        """REQUEST in INIT-REBOOT: requested IP, no server id, ciaddr 0, broadcast."""
        assert self._remembered is not None
        self._send(BROADCAST, wdhcp.REQUEST, now, requested_ip=self._remembered.address)
        self._deadline = now + self._backoff()
        self._attempt += 1

    def _renew(self, now: float) -> None:
        """REQUEST in RENEWING (unicast to the server) or REBINDING (broadcast): ciaddr set,
        no server id or requested IP (§4.3.2); next try after half the time left to T2 or
        expiry, at least `renew_retransmit_min` (§4.4.5)."""
        lease = self.lease
        assert lease is not None
        self._sent_at = now
        renewing = self.state is DhcpState.RENEWING
        dst = lease.server_id if renewing else BROADCAST
        self._send(dst, wdhcp.REQUEST, now, ciaddr=lease.address)
        limit = lease.t2 if renewing else lease.expires
        wait = max((limit - now) / 2, self.config.renew_retransmit_min)
        self._deadline = min(now + wait, limit)

    def _lease_from(self, msg: wdhcp.DhcpMessage, now: float) -> Lease | None:
        """The lease an ACK grants, or None when it is unusable."""
        lease_time = msg.lease_time
        if lease_time is None or lease_time == 0 or not usable_address(msg.yiaddr):
            return None
        server_id = msg.server_id
        if server_id is None:  # a renewal ACK may omit it; keep the server we knew
            server_id = self.lease.server_id if self.lease is not None else None
        if server_id is None:
            return None
        prefix = mask_to_prefix(msg.subnet_mask) if msg.subnet_mask is not None else None
        if prefix is None or prefix > 30:
            prefix = classful_prefix(msg.yiaddr)
        mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
        gateway = next(
            (r for r in msg.routers if r & mask == msg.yiaddr & mask and r != msg.yiaddr), None
        )
        t1 = 0.5 * lease_time if msg.renewal_time is None else float(msg.renewal_time)
        t2 = 0.875 * lease_time if msg.rebinding_time is None else float(msg.rebinding_time)
        if not 0 < t1 < t2 < lease_time:  # inconsistent: the RFC 2131 §4.4.5 defaults
            t1, t2 = 0.5 * lease_time, 0.875 * lease_time
        return Lease(
            address=msg.yiaddr,
            prefix_len=prefix,
            gateway=gateway,
            server_id=server_id,
            lease_time=lease_time,
            renewal_time=t1,
            rebinding_time=t2,
            mtu=msg.mtu,
            acquired=self._sent_at,
        )

    def _bind(self, lease: Lease, now: float) -> None:
        self.lease = lease
        self._set_state(DhcpState.BOUND)
        self.host.dhcp_configure(lease, now)
        self._deadline = None if lease.infinite else max(lease.t1, now)

    def _decline(self, now: float) -> None:
        """Someone else has the acknowledged address: DECLINE it (§4.4.1), start again later."""
        cand = self._candidate
        assert cand is not None
        self.counters.dhcp_declines += 1
        self._xid = self.rng.getrandbits(32)
        self._send(
            BROADCAST,
            wdhcp.DECLINE,
            now,
            requested_ip=cand.address,
            server_id=cand.server_id,
            parameter_request_list=(),
        )
        self._conflicts += 1
        self._requested_hint = None
        cfg = self.config
        wait = cfg.rate_limit_interval if self._conflicts >= cfg.max_conflicts else cfg.decline_wait
        self._restart(now, delay=wait)

    def _expire(self, now: float) -> None:
        """The lease ran out without an answer: stop using the address, start from INIT."""
        self._requested_hint = self.lease.address if self.lease is not None else None
        self._withdraw(now)
        self._restart(now)

    def _withdraw(self, now: float) -> None:
        if self.lease is not None:
            configured = self.state in CONFIGURED
            self.lease = None
            if configured:
                self.host.dhcp_configure(None, now)


_HANDLERS: dict[
    tuple[DhcpState, int | None], Callable[[DhcpClient, wdhcp.DhcpMessage, float], None]
]
_HANDLERS = {
    (DhcpState.SELECTING, wdhcp.OFFER): DhcpClient._on_offer,
    (DhcpState.REQUESTING, wdhcp.ACK): DhcpClient._on_ack,
    (DhcpState.REQUESTING, wdhcp.NAK): DhcpClient._on_nak,
    (DhcpState.REBOOTING, wdhcp.ACK): DhcpClient._on_ack,
    (DhcpState.REBOOTING, wdhcp.NAK): DhcpClient._on_nak,
    (DhcpState.RENEWING, wdhcp.ACK): DhcpClient._on_ack,
    (DhcpState.RENEWING, wdhcp.NAK): DhcpClient._on_nak,
    (DhcpState.REBINDING, wdhcp.ACK): DhcpClient._on_ack,
    (DhcpState.REBINDING, wdhcp.NAK): DhcpClient._on_nak,
}

_TIMERS: dict[DhcpState, Callable[[DhcpClient, float], None]] = {
    DhcpState.INIT: DhcpClient._on_init,
    DhcpState.SELECTING: DhcpClient._on_selecting,
    DhcpState.REQUESTING: DhcpClient._on_requesting,
    DhcpState.CHECKING: DhcpClient._on_checking,
    DhcpState.BOUND: DhcpClient._on_bound,
    DhcpState.RENEWING: DhcpClient._on_renewing,
    DhcpState.REBINDING: DhcpClient._on_rebinding,
    DhcpState.INIT_REBOOT: DhcpClient._on_init_reboot,
    DhcpState.REBOOTING: DhcpClient._on_rebooting,
}
