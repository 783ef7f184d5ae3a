"""The DHCP client state machine on a fake clock: messages in, messages out, no I/O."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.dhcp import DhcpClient, DhcpConfig, DhcpState, Lease
from netstack.wire import dhcp as wdhcp
from tests.wire.reference import ip

MAC = bytes.fromhex("02aabbccdd01")
OTHER_MAC = bytes.fromhex("02aabbccdd99")
SERVER = ip("192.0.2.1")
OFFERED = ip("192.0.2.50")
ROUTER = ip("192.0.2.254")
BROADCAST = 0xFFFFFFFF


class FakeHost:
    """Records what the client asks of its host."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, wdhcp.DhcpMessage, float]] = []
        self.probes: list[tuple[int, float]] = []
        self.configured: list[Lease | None] = []
        self.last_xid = 0  # of the last message sent, taken or not
        self.announced: list[tuple[int, float]] = []

    def dhcp_send(self, dst: int, payload: bytes, now: float) -> None:
        assert len(payload) >= wdhcp.MIN_MESSAGE_LEN
        msg = wdhcp.parse(payload)
        self.sent.append((dst, msg, now))
        self.last_xid = msg.xid

    def dhcp_probe(self, address: int, now: float) -> None:
        self.probes.append((address, now))

    def dhcp_configure(self, lease: Lease | None, now: float) -> None:
        self.configured.append(lease)

    def dhcp_announce(self, address: int, now: float) -> None:
        self.announced.append((address, now))

    def take(self) -> list[tuple[int, wdhcp.DhcpMessage, float]]:
        out, self.sent = self.sent, []
        return out


class Run:
    """A client, its fake host and a clock that only moves when told."""

    def __init__(self, seed: int = 1, **config) -> None:
        self.host = FakeHost()
        self.counters = Counters()
        self.client = DhcpClient(
            MAC, self.host, self.counters, random.Random(seed), DhcpConfig(**config)
        )
        self.now = 100.0

    def advance_to(self, when: float) -> None:
        """Run every timer up to `when`, one deadline at a time, as the loop would."""
        while True:
            deadline = self.client.next_deadline()
            if deadline is None or deadline > when:
                break
            self.now = max(self.now, deadline)
            self.client.poll(self.now)
        self.now = when

    def run_timers(self) -> None:
        """Advance exactly to the next deadline and run it."""
        deadline = self.client.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        self.client.poll(self.now)

    def reply(self, kind: int, xid: int | None = None, **fields) -> None:
        fields.setdefault("server_id", SERVER)
        msg = wdhcp.DhcpMessage(
            op=wdhcp.OP_REPLY,
            xid=self.xid() if xid is None else xid,
            chaddr=fields.pop("chaddr", MAC),
            message_type=kind,
            **fields,
        )
        self.client.receive(memoryview(wdhcp.build(msg)), SERVER, self.now)

    def xid(self) -> int:
        return self.host.last_xid

    def offer(self, **fields) -> None:
        self.reply(wdhcp.OFFER, yiaddr=OFFERED, lease_time=3600, **fields)

    def ack(self, **fields) -> None:
        fields.setdefault("lease_time", 3600)
        fields.setdefault("subnet_mask", 0xFFFFFF00)
        fields.setdefault("routers", (ROUTER,))
        self.reply(wdhcp.ACK, yiaddr=OFFERED, **fields)

    def finish_probe(self) -> None:
        """Let the RFC 5227 probe run to its end without conflict."""
        while self.client.state is DhcpState.CHECKING:
            self.run_timers()

    def bind(self, **ack) -> Lease:
        self.client.start(self.now)
        self.run_timers()  # the start delay: DISCOVER
        self.offer()
        self.ack(**ack)
        self.finish_probe()
        assert self.client.state is DhcpState.BOUND
        lease = self.client.lease
        assert lease is not None
        self.host.take()
        return lease


def types(sent) -> list[int]:
    return [msg.message_type for _, msg, _ in sent]


def test_full_exchange() -> None:
    run = Run()
    run.client.start(run.now)
    assert run.client.state is DhcpState.INIT and not run.host.sent
    assert run.client.next_deadline() <= run.now + 1.0  # init_delay
    run.run_timers()
    ((dst, discover, _),) = run.host.take()
    assert dst == BROADCAST and discover.message_type == wdhcp.DISCOVER
    assert discover.op == wdhcp.OP_REQUEST and discover.chaddr == MAC and discover.ciaddr == 0
    assert discover.client_id == b"\x01" + MAC
    assert {wdhcp.OPT_SUBNET_MASK, wdhcp.OPT_ROUTER, wdhcp.OPT_INTERFACE_MTU} <= set(
        discover.parameter_request_list
    )
    assert run.client.state is DhcpState.SELECTING

    run.reply(wdhcp.OFFER, xid=discover.xid, yiaddr=OFFERED, lease_time=3600)
    ((dst, request, sent_at),) = run.host.take()
    assert dst == BROADCAST and request.message_type == wdhcp.REQUEST
    assert request.xid == discover.xid  # the REQUEST answering an OFFER keeps its xid
    assert request.server_id == SERVER and request.requested_ip == OFFERED
    assert request.ciaddr == 0
    assert run.client.state is DhcpState.REQUESTING

    run.now += 0.5
    run.reply(
        wdhcp.ACK, xid=request.xid, yiaddr=OFFERED, lease_time=3600, subnet_mask=0xFFFFFF00,
        routers=(ip("198.51.100.1"), ROUTER), mtu=1400,
    )  # fmt: skip
    assert run.client.state is DhcpState.CHECKING and not run.host.configured
    run.finish_probe()
    # RFC 5227: three probes for the address, then ANNOUNCE_WAIT of silence
    assert [a for a, _ in run.host.probes] == [OFFERED] * 3
    times = [t for _, t in run.host.probes]
    assert all(1.0 <= b - a <= 2.0 for a, b in itertools.pairwise(times))
    assert run.now - times[-1] == pytest.approx(2.0)
    (lease,) = run.host.configured
    assert run.client.state is DhcpState.BOUND
    assert lease.address == OFFERED and lease.prefix_len == 24 and lease.server_id == SERVER
    assert lease.gateway == ROUTER  # the first router inside the subnet
    assert lease.mtu == 1400 and lease.lease_time == 3600
    assert lease.acquired == sent_at  # the lease counts from the REQUEST (RFC 2131 4.4.1)
    assert lease.t1 == sent_at + 1800 and lease.t2 == sent_at + 3150
    bound_at = run.now
    assert run.client.next_deadline() == bound_at + 2.0  # RFC 5227: the second announcement
    run.run_timers()
    assert run.host.announced == [(OFFERED, bound_at + 2.0)]
    assert run.client.next_deadline() == lease.t1 and run.client.state is DhcpState.BOUND
    assert run.counters.dhcp_messages == {
        ("tx", "discover"): 1,
        ("tx", "request"): 1,
        ("rx", "offer"): 1,
        ("rx", "ack"): 1,
    }
    assert run.client.seconds_left(run.now) == pytest.approx(lease.expires - run.now)


def test_discover_retransmission_backoff() -> None:
    """RFC 2131 4.1: 4, 8, 16, 32, 64, 64 s, each randomized by -1..+1 s, same xid."""
    run = Run()
    run.client.start(run.now)
    run.run_timers()
    for _ in range(7):
        run.run_timers()
    sent = run.host.take()
    assert types(sent) == [wdhcp.DISCOVER] * 8
    assert len({msg.xid for _, msg, _ in sent}) == 1
    gaps = [b[2] - a[2] for a, b in itertools.pairwise(sent)]
    for gap, base in zip(gaps, (4, 8, 16, 32, 64, 64, 64), strict=True):
        assert base - 1 <= gap <= base + 1
    assert [msg.secs for _, msg, _ in sent][-1] == int(sent[-1][2] - sent[0][2])


def test_discover_for_ever_without_a_server() -> None:
    """Days without a server: still 64 +/- 1 s apart (and no float overflow in 2**n)."""
    run = Run()
    run.client.start(run.now)
    run.run_timers()
    run.client._attempt = 5000  # as after ~3.7 days of DISCOVERs
    run.run_timers()
    run.run_timers()
    (_, _, first), (_, _, second) = run.host.take()[-2:]
    assert 63 <= second - first <= 65


def test_request_retransmitted_then_restart() -> None:
    run = Run(request_attempts=3)
    run.client.start(run.now)
    run.run_timers()
    run.offer()
    for _ in range(2):
        run.run_timers()
    assert types(run.host.sent) == [wdhcp.DISCOVER] + [wdhcp.REQUEST] * 3
    run.run_timers()  # no answer to the last: back to INIT, at once a new DISCOVER
    assert run.client.state is DhcpState.SELECTING
    assert types(run.host.sent)[-1] == wdhcp.DISCOVER
    assert run.host.sent[-1][1].xid != run.host.sent[0][1].xid


def test_nak_restarts() -> None:
    run = Run()
    run.client.start(run.now)
    run.run_timers()
    run.offer()
    run.reply(wdhcp.NAK)
    assert run.client.state is DhcpState.INIT and not run.host.configured
    run.run_timers()
    assert types(run.host.sent)[-1] == wdhcp.DISCOVER


def test_nak_from_another_server_is_ignored_while_requesting() -> None:
    run = Run()
    run.client.start(run.now)
    run.run_timers()
    run.offer()
    run.reply(wdhcp.NAK, server_id=ip("192.0.2.9"))
    assert run.client.state is DhcpState.REQUESTING
    assert run.counters.drops[Drop.DHCP_NOT_FOR_US] == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"xid": 12345}, Drop.DHCP_NOT_FOR_US),
        ({"chaddr": OTHER_MAC}, Drop.DHCP_NOT_FOR_US),
        ({"yiaddr": 0}, Drop.DHCP_BAD_LEASE),
        ({"yiaddr": ip("224.0.0.1")}, Drop.DHCP_BAD_LEASE),
        ({"server_id": None}, Drop.DHCP_BAD_LEASE),
    ],
)
def test_bad_offers_are_counted_drops(change: dict, reason: Drop) -> None:
    run = Run()
    run.client.start(run.now)
    run.run_timers()
    fields = {"yiaddr": OFFERED, "lease_time": 3600, **change}
    run.reply(wdhcp.OFFER, **fields)
    assert run.client.state is DhcpState.SELECTING
    assert run.counters.drops[reason] == 1


def test_unexpected_and_malformed_replies() -> None:
    run = Run()
    run.client.start(run.now)
    run.run_timers()
    run.ack()  # an ACK while selecting
    assert run.counters.drops[Drop.DHCP_UNEXPECTED] == 1
    run.client.receive(memoryview(b"\x02" * 100), SERVER, run.now)
    assert run.counters.drops[Drop.DHCP_TRUNCATED] == 1
    request = wdhcp.DhcpMessage(op=wdhcp.OP_REQUEST, xid=run.xid(), chaddr=MAC, message_type=1)
    run.client.receive(memoryview(wdhcp.build(request)), SERVER, run.now)  # another client
    assert run.counters.drops[Drop.DHCP_NOT_FOR_US] == 1
    assert run.client.state is DhcpState.SELECTING


def test_ack_without_lease_time_is_refused() -> None:
    run = Run()
    run.client.start(run.now)
    run.run_timers()
    run.offer()
    run.reply(wdhcp.ACK, yiaddr=OFFERED)
    assert run.client.state is DhcpState.REQUESTING
    assert run.counters.drops[Drop.DHCP_BAD_LEASE] == 1


@pytest.mark.parametrize("conflict", ["reply", "probe"])
def test_arp_conflict_declines(conflict: str) -> None:
    """RFC 5227 2.1.1: an ARP from the address, or another probe for it -> DECLINE, 10 s."""
    run = Run()
    run.client.start(run.now)
    run.run_timers()
    run.offer()
    run.ack()
    run.run_timers()  # PROBE_WAIT: the first probe
    assert run.host.probes == [(OFFERED, run.now)]
    run.client.arp_seen(1, MAC, 0, OFFERED, run.now)  # our own probe echoed: no conflict
    assert run.client.state is DhcpState.CHECKING
    if conflict == "reply":
        run.client.arp_seen(2, OTHER_MAC, OFFERED, 0, run.now)
    else:
        run.client.arp_seen(1, OTHER_MAC, 0, OFFERED, run.now)
    (dst, decline, _) = run.host.sent[-1]
    assert dst == BROADCAST and decline.message_type == wdhcp.DECLINE
    assert decline.requested_ip == OFFERED and decline.server_id == SERVER
    assert decline.ciaddr == 0
    assert run.client.state is DhcpState.INIT and not run.host.configured
    assert run.client.next_deadline() == pytest.approx(run.now + 10.0)
    assert run.counters.dhcp_declines == 1
    run.run_timers()
    assert types(run.host.sent)[-1] == wdhcp.DISCOVER
    assert run.host.sent[-1][1].requested_ip is None  # not the declined address again


def test_arp_unrelated_while_checking_is_no_conflict() -> None:
    run = Run()
    run.client.start(run.now)
    run.run_timers()
    run.offer()
    run.ack()
    run.client.arp_seen(1, OTHER_MAC, ip("192.0.2.7"), ip("192.0.2.8"), run.now)
    run.finish_probe()
    assert run.client.state is DhcpState.BOUND


def test_many_conflicts_rate_limited() -> None:
    run = Run(max_conflicts=2)
    run.client.start(run.now)
    for _ in range(2):
        run.run_timers()  # (re)start: DISCOVER
        run.offer()
        run.ack()
        run.client.arp_seen(2, OTHER_MAC, OFFERED, 0, run.now)
    assert run.client.next_deadline() == pytest.approx(run.now + 60.0)


def test_renew_at_t1_unicast_then_bound_again() -> None:
    run = Run()
    lease = run.bind()
    run.advance_to(lease.t1)
    ((dst, request, _),) = run.host.take()
    assert run.client.state is DhcpState.RENEWING
    assert dst == SERVER  # unicast to the server (RFC 2131 4.4.5)
    assert request.message_type == wdhcp.REQUEST and request.ciaddr == OFFERED
    assert request.server_id is None and request.requested_ip is None
    run.now += 1
    run.ack(lease_time=7200, renewal_time=100, rebinding_time=200)
    assert run.client.state is DhcpState.BOUND
    assert run.counters.dhcp_renewals == 1
    new = run.client.lease
    assert new is not None and new.acquired == lease.t1 and new.t1 == lease.t1 + 100
    assert run.host.configured[-1] == new
    assert run.client.next_deadline() == new.t1


def test_t1_before_the_second_announcement() -> None:
    """T1 already past when the probe ends (a short T1): renew at once, no late announcement."""
    run = Run()
    run.client.start(run.now)
    run.run_timers()
    run.offer()
    run.ack(renewal_time=1, rebinding_time=2000)
    run.finish_probe()
    assert run.client.state is DhcpState.RENEWING and not run.host.announced
    assert run.host.configured[-1].address == OFFERED
    assert run.host.sent[-1][1].ciaddr == OFFERED  # the renewal went out at once


def test_renewing_retransmits_then_rebinds_then_expires() -> None:
    """No answer: REQUESTs at half the time to T2 (>= 60 s), broadcast from T2, expiry -> INIT."""
    run = Run()
    lease = run.bind()  # T1 1800 s, T2 3150 s, lease 3600 s after `acquired`
    run.advance_to(lease.t2 - 0.001)
    renewing = run.host.take()
    assert {dst for dst, _, _ in renewing} == {SERVER}
    times = [t for _, _, t in renewing]
    assert times[0] == lease.t1
    assert times[1] - times[0] == pytest.approx((lease.t2 - lease.t1) / 2)
    assert all(b - a >= 60 - 1e-9 for a, b in itertools.pairwise(times))
    assert run.client.state is DhcpState.RENEWING
    run.advance_to(lease.t2)
    assert run.client.state is DhcpState.REBINDING
    ((dst, request, _),) = run.host.take()
    assert dst == BROADCAST and request.ciaddr == OFFERED and request.server_id is None
    run.advance_to(lease.expires - 0.001)
    assert all(dst == BROADCAST for dst, _, _ in run.host.take())
    assert run.host.configured == [lease]
    run.advance_to(lease.expires)
    assert run.host.configured[-1] is None  # the address is given up
    assert run.client.lease is None and run.client.seconds_left(run.now) == 0
    run.advance_to(run.now)
    assert run.client.state is DhcpState.SELECTING
    assert run.host.sent[-1][1].requested_ip == OFFERED  # asks for it back


def test_rebinding_ack_from_another_server() -> None:
    run = Run()
    lease = run.bind()
    run.advance_to(lease.t2)
    run.host.take()
    run.ack(server_id=ip("192.0.2.3"))
    assert run.client.state is DhcpState.BOUND
    assert run.client.lease is not None and run.client.lease.server_id == ip("192.0.2.3")


def test_nak_while_renewing_drops_the_address() -> None:
    run = Run()
    lease = run.bind()
    run.advance_to(lease.t1)
    run.reply(wdhcp.NAK)
    assert run.host.configured == [lease, None]
    assert run.client.state is DhcpState.INIT


def test_t1_t2_defaults_and_inconsistent_values() -> None:
    run = Run()
    lease = run.bind(lease_time=1000, renewal_time=900, rebinding_time=800)
    assert (lease.renewal_time, lease.rebinding_time) == (500, 875)


def test_infinite_lease_has_no_timers() -> None:
    run = Run()
    lease = run.bind(lease_time=wdhcp.INFINITE_LEASE)
    run.run_timers()  # the second announcement
    assert lease.infinite and run.client.next_deadline() is None and run.host.announced
    assert run.client.seconds_left(run.now) == float("inf")


def test_no_mask_means_classful_and_offlink_router_is_ignored() -> None:
    run = Run()
    lease = run.bind(subnet_mask=None, routers=(ip("198.51.100.1"),))
    assert lease.prefix_len == 24 and lease.gateway is None  # 192/8..223/8 were class C


def test_init_reboot_from_remembered_lease() -> None:
    run = Run()
    remembered = Lease(
        address=OFFERED, prefix_len=24, gateway=ROUTER, server_id=SERVER, lease_time=3600,
        renewal_time=1800, rebinding_time=3150, mtu=None, acquired=run.now - 100,
    )  # fmt: skip
    run.client.start(run.now, remembered)
    assert run.client.state is DhcpState.INIT_REBOOT
    run.run_timers()
    ((dst, request, _),) = run.host.take()
    assert run.client.state is DhcpState.REBOOTING
    assert dst == BROADCAST and request.message_type == wdhcp.REQUEST
    assert request.requested_ip == OFFERED and request.server_id is None and request.ciaddr == 0
    run.ack()
    assert run.client.state is DhcpState.CHECKING  # probed again before use
    run.finish_probe()
    assert run.client.state is DhcpState.BOUND and run.host.configured[-1].address == OFFERED


def test_init_reboot_nak_and_silence() -> None:
    remembered = Lease(OFFERED, 24, None, SERVER, 3600, 1800, 3150, None, 50.0)
    run = Run()
    run.client.start(run.now, remembered)
    run.run_timers()
    run.reply(wdhcp.NAK)
    assert run.client.state is DhcpState.INIT
    run.run_timers()
    assert run.host.sent[-1][1].requested_ip is None  # the NAKed address is forgotten

    quiet = Run(request_attempts=2)
    quiet.client.start(quiet.now, remembered)
    for _ in range(3):
        quiet.run_timers()
    assert types(quiet.host.sent) == [wdhcp.REQUEST, wdhcp.REQUEST, wdhcp.DISCOVER]
    assert quiet.host.sent[-1][1].requested_ip == OFFERED  # still worth asking for


def test_expired_remembered_lease_means_init_with_a_hint() -> None:
    run = Run()
    old = Lease(OFFERED, 24, None, SERVER, 60, 30, 50, None, run.now - 61)
    run.client.start(run.now, old)
    run.run_timers()
    ((_, discover, _),) = run.host.take()
    assert discover.message_type == wdhcp.DISCOVER and discover.requested_ip == OFFERED


def test_release() -> None:
    run = Run()
    lease = run.bind()
    assert run.client.release(run.now)
    ((dst, release, _),) = run.host.take()
    assert dst == SERVER and release.message_type == wdhcp.RELEASE
    assert release.ciaddr == lease.address and release.server_id == SERVER
    assert run.client.next_deadline() is None and run.client.stopped
    run.ack()  # nothing is expected any more
    assert run.counters.drops[Drop.DHCP_NOT_FOR_US] == 1


def test_release_without_lease_sends_nothing() -> None:
    run = Run()
    run.client.start(run.now)
    run.run_timers()
    run.host.take()
    assert not run.client.release(run.now)
    assert not run.host.sent and run.client.next_deadline() is None


# -- fuzz: any datagram on port 68, in any state, is handled or a counted drop -------------------
def _client_in(state: str) -> Run:
    run = Run()
    if state == "bound":
        run.bind()
        return run
    run.client.start(run.now)
    run.run_timers()
    if state in ("requesting", "checking"):
        run.offer()
    if state == "checking":
        run.ack()
    return run


def _accounted(run: Run) -> int:
    c = run.counters
    return c.total_drops() + sum(n for (d, _), n in c.dhcp_messages.items() if d == "rx")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["selecting", "requesting", "checking", "bound"]),
    st.sampled_from(range(1, 9)),
    st.lists(st.tuples(st.integers(0, 299), st.integers(0, 255)), max_size=8),
    st.integers(0, 300),
)
def test_mutated_replies_never_raise(state: str, kind: int, flips: list, cut: int) -> None:
    run = _client_in(state)
    msg = wdhcp.DhcpMessage(
        op=wdhcp.OP_REPLY, xid=run.xid(), chaddr=MAC, message_type=kind, yiaddr=OFFERED,
        server_id=SERVER, lease_time=600, subnet_mask=0xFFFFFF00, routers=(ROUTER,), mtu=1400,
    )  # fmt: skip
    raw = bytearray(wdhcp.build(msg))
    for position, value in flips:
        raw[position] = value
    before = _accounted(run)
    run.client.receive(memoryview(bytes(raw[:cut])), SERVER, run.now)
    assert _accounted(run) > before  # counted: a message of its type, a drop, or both
    run.advance_to(run.now + 10_000)  # and the timers still run
