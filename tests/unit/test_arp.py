"""ArpEngine: frames in, frames out, on a fake clock (RFC 826 / 1122 2.3.2 / 5227 behaviour)."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.arp import ArpConfig, ArpEngine, ArpState
from netstack.wire import ethernet as weth

OUR_MAC = bytes.fromhex("020000000002")
OUR_IP = 0xC0000202  # 192.0.2.2
PEER_MAC = bytes.fromhex("020000000001")
PEER_IP = 0xC0000201  # 192.0.2.1
OTHER_MAC = bytes.fromhex("020000000003")
OTHER_IP = 0xC0000203  # 192.0.2.3
BCAST = b"\xff" * 6
ZERO = b"\x00" * 6
REQUEST, REPLY = 1, 2


def ip(n: int) -> int:
    """192.0.2.n"""
    return 0xC0000200 + n


def mac(n: int) -> bytes:
    return bytes((2, 0, 0, 0, 0, n))


def arp_frame(
    op: int,
    sender_mac: bytes,
    sender_ip: int,
    target_mac: bytes,
    target_ip: int,
    eth_dst: bytes = BCAST,
) -> bytes:
    """Encoded independently of netstack.wire, with the padding a real NIC adds."""
    arp = struct.pack(
        "!HHBBH6sI6sI", 1, 0x0800, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip
    )
    return (eth_dst + sender_mac + b"\x08\x06" + arp).ljust(60, b"\x00")


class Harness:
    def __init__(self, **config: object) -> None:
        self.counters = Counters()
        self.frames: list[tuple] = []
        self.unreachable: list[tuple[int, list[bytes], float]] = []
        self.engine = ArpEngine(
            OUR_MAC,
            OUR_IP,
            self.counters,
            self.frames.append,
            self._unreachable,
            dataclasses.replace(ArpConfig(), **config),
        )

    def _unreachable(self, dst: int, packets: list[tuple], now: float) -> None:
        self.unreachable.append((dst, [b"".join(p) for p in packets], now))

    def send(self, t: float, frame: bytes) -> list[bytes]:
        """Feed one frame at time t; return what came out."""
        eth, payload = weth.parse(memoryview(bytearray(frame)))
        self.engine.receive(eth, payload, t)
        return self.take()

    def poll(self, t: float) -> list[bytes]:
        self.engine.poll(t)
        return self.take()

    def send_ip(self, t: float, dst: int, *pieces: bytes) -> list[bytes]:
        self.engine.send_ipv4(dst, pieces, t)
        return self.take()

    def take(self) -> list[bytes]:
        out = [b"".join(bytes(p) for p in f) for f in self.frames]
        self.frames.clear()
        return out

    def learn(self, n: int, t: float = 0.0) -> None:
        """192.0.2.n asks for us, so we cache it (and answer)."""
        self.send(t, arp_frame(REQUEST, mac(n), ip(n), ZERO, OUR_IP))

    def drops(self) -> dict[Drop, int]:
        return dict(self.counters.drops)


def request_for(target_ip: int, eth_dst: bytes = BCAST) -> bytes:
    """What we emit when resolving target_ip."""
    return arp_frame(REQUEST, OUR_MAC, OUR_IP, ZERO, target_ip, eth_dst)


def ip_frame_to(dst_mac: bytes, packet: bytes) -> bytes:
    return dst_mac + OUR_MAC + b"\x08\x00" + packet


# -- answering ---------------------------------------------------------------------------------
def test_reply_to_request_for_our_ip_exact_bytes():
    h = Harness()
    out = h.send(0.0, arp_frame(REQUEST, PEER_MAC, PEER_IP, ZERO, OUR_IP))
    assert out == [
        bytes.fromhex(
            "020000000001"
            "020000000002"
            "0806"  # unicast to the requester
            "0001"
            "0800"
            "06"
            "04"
            "0002"  # Ethernet/IPv4, reply
            "020000000002"
            "c0000202"  # sender: us
            "020000000001"
            "c0000201"  # target: the requester
        )
        + b"\x00" * 18  # padded to 60 bytes
    ]
    assert (h.counters.arp_requests_rx, h.counters.arp_replies_tx) == (1, 1)
    assert h.engine.lookup(PEER_IP) == PEER_MAC  # RFC 826: the requester is cached
    assert h.drops() == {}


def test_request_for_someone_else_is_neither_answered_nor_cached():
    h = Harness()
    assert h.send(0.0, arp_frame(REQUEST, PEER_MAC, PEER_IP, ZERO, OTHER_IP)) == []
    assert h.engine.lookup(PEER_IP) is None
    assert h.drops() == {Drop.ARP_NOT_FOR_US: 1}
    assert h.counters.arp_requests_rx == 1


def test_unsolicited_reply_to_us_adds_sender_without_answer():
    h = Harness()
    assert h.send(0.0, arp_frame(REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP, OUR_MAC)) == []
    assert h.engine.lookup(PEER_IP) == PEER_MAC
    assert h.counters.arp_replies_rx == 1
    assert h.counters.arp_replies_tx == 0


def test_merge_updates_known_sender_even_when_not_targeted():
    h = Harness()
    h.learn(1)
    new_mac = mac(0x77)
    assert h.send(1.0, arp_frame(REQUEST, new_mac, ip(1), ZERO, OTHER_IP)) == []
    assert h.engine.lookup(ip(1)) == new_mac
    assert h.drops() == {}  # merged, so not counted as a drop
    # and traffic follows the new MAC
    assert h.send_ip(1.5, ip(1), b"pkt") == [ip_frame_to(new_mac, b"pkt")]


def test_gratuitous_arp_from_unknown_host_is_not_cached():
    h = Harness()
    h.send(0.0, arp_frame(REQUEST, PEER_MAC, PEER_IP, ZERO, PEER_IP))
    assert h.engine.cache_entries() == 0


@pytest.mark.parametrize(
    ("sender_mac", "sender_ip"),
    [
        (BCAST, PEER_IP),
        (bytes.fromhex("01005e000001"), PEER_IP),  # multicast MAC
        (PEER_MAC, 0xFFFFFFFF),
        (PEER_MAC, 0xE0000001),  # 224.0.0.1
        (PEER_MAC, 0x7F000001),  # 127.0.0.1
    ],
)
def test_bad_sender_is_dropped_not_cached_not_answered(sender_mac, sender_ip):
    h = Harness()
    assert h.send(0.0, arp_frame(REQUEST, sender_mac, sender_ip, ZERO, OUR_IP)) == []
    assert h.engine.cache_entries() == 0
    assert h.drops() == {Drop.ARP_BAD_SENDER: 1}


def test_bad_opcode_and_truncated():
    h = Harness()
    h.send(0.0, arp_frame(3, PEER_MAC, PEER_IP, ZERO, OUR_IP))
    h.send(0.0, arp_frame(REQUEST, PEER_MAC, PEER_IP, ZERO, OUR_IP)[: 14 + 27])
    assert h.drops() == {Drop.ARP_BAD_OPCODE: 1, Drop.ARP_TRUNCATED: 1}
    assert h.engine.cache_entries() == 0


def test_probe_for_our_address_is_answered_not_cached():
    """RFC 5227: a probe (sender IP 0.0.0.0) for our address gets a reply, defending it."""
    h = Harness()
    out = h.send(0.0, arp_frame(REQUEST, PEER_MAC, 0, ZERO, OUR_IP))
    assert out == [arp_frame(REPLY, OUR_MAC, OUR_IP, PEER_MAC, 0, PEER_MAC)]
    assert h.engine.cache_entries() == 0
    assert h.counters.arp_replies_tx == 1


def test_probe_for_other_address_and_reply_from_zero_are_dropped():
    h = Harness()
    assert h.send(0.0, arp_frame(REQUEST, PEER_MAC, 0, ZERO, OTHER_IP)) == []
    assert h.send(0.0, arp_frame(REPLY, PEER_MAC, 0, OUR_MAC, OUR_IP, OUR_MAC)) == []
    assert h.drops() == {Drop.ARP_NOT_FOR_US: 1, Drop.ARP_BAD_SENDER: 1}
    assert h.engine.cache_entries() == 0


def test_conflict_is_counted_not_cached_and_defended_at_most_every_10s():
    h = Harness()
    claim = arp_frame(REQUEST, PEER_MAC, OUR_IP, ZERO, OUR_IP)  # someone announces our IP
    assert h.send(0.0, claim) == [request_for(OUR_IP)]  # our own announcement defends it
    assert h.send(5.0, claim) == []
    assert h.send(10.0, claim) == [request_for(OUR_IP)]
    assert h.counters.arp_conflicts == 3
    assert h.drops() == {Drop.ARP_BAD_SENDER: 3}
    assert h.engine.lookup(OUR_IP) is None
    assert h.engine.cache_entries() == 0


def test_our_own_frame_looped_back_is_not_a_conflict():
    h = Harness()
    assert h.send(0.0, request_for(OUR_IP)) == []
    assert h.counters.arp_conflicts == 0
    assert h.drops() == {Drop.ARP_BAD_SENDER: 1}


# -- announcing --------------------------------------------------------------------------------
def test_gratuitous_arp_exact_bytes():
    h = Harness()
    h.engine.announce(0.0)
    assert h.take() == [
        bytes.fromhex(
            "ffffffffffff02000000000208060001080006040001020000000002c0000202000000000000c0000202"
        )
        + b"\x00" * 18
    ]
    assert h.counters.arp_requests_tx == 1


# -- resolving ---------------------------------------------------------------------------------
def test_broadcast_next_hop_needs_no_resolution():
    h = Harness()
    assert h.send_ip(0.0, 0xFFFFFFFF, b"hdr", b"data") == [
        BCAST + OUR_MAC + b"\x08\x00" + b"hdrdata"
    ]
    assert h.engine.cache_entries() == 0


def test_multicast_next_hop_maps_to_rfc1112_mac():
    h = Harness()
    assert h.send_ip(0.0, 0xE0010203, b"x") == [
        bytes.fromhex("01005e010203") + OUR_MAC + b"\x08\x00x"
    ]


def test_resolution_queues_a_copy_and_flushes_on_reply():
    h = Harness()
    payload = bytearray(b"first")
    assert h.send_ip(0.0, PEER_IP, b"hdr", payload) == [request_for(PEER_IP)]
    assert h.engine.state(PEER_IP) is ArpState.INCOMPLETE
    payload[:] = b"XXXXX"  # the caller's buffer is reused: we must have copied
    h.send_ip(0.1, PEER_IP, b"second")
    out = h.send(0.2, arp_frame(REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP, OUR_MAC))
    assert out == [ip_frame_to(PEER_MAC, b"hdrfirst"), ip_frame_to(PEER_MAC, b"second")]
    assert h.engine.state(PEER_IP) is ArpState.REACHABLE
    assert h.engine.queued_packets() == 0
    # resolved now: sent straight away, header built once
    assert h.send_ip(0.3, PEER_IP, b"third") == [ip_frame_to(PEER_MAC, b"third")]
    assert h.counters.arp_requests_tx == 1


def test_pending_entry_is_resolved_by_any_packet_from_it():
    """RFC 826 merge: the entry exists (INCOMPLETE), so a request to someone else fills it."""
    h = Harness()
    h.send_ip(0.0, PEER_IP, b"p")
    out = h.send(0.5, arp_frame(REQUEST, PEER_MAC, PEER_IP, ZERO, OTHER_IP))
    assert out == [ip_frame_to(PEER_MAC, b"p")]
    assert h.drops() == {}


def test_retries_at_retry_interval_then_unreachable():
    h = Harness(retry_interval=1.0, max_retries=3)
    assert h.send_ip(0.0, PEER_IP, b"a") == [request_for(PEER_IP)]
    h.send_ip(0.5, PEER_IP, b"b")
    assert h.engine.next_deadline() == 1.0
    assert h.poll(0.99) == []
    for t in (1.0, 2.0, 3.0):  # three retries
        assert h.poll(t) == [request_for(PEER_IP)]
        assert h.engine.next_deadline() == t + 1.0
    assert h.poll(3.99) == []
    assert h.unreachable == []
    assert h.poll(4.0) == []
    assert h.unreachable == [(PEER_IP, [b"a", b"b"], 4.0)]
    assert h.counters.arp_resolution_failures == 1
    assert h.counters.arp_requests_tx == 4
    assert h.drops() == {Drop.ARP_RESOLUTION_FAILED: 2}
    assert h.engine.cache_entries() == 0
    assert h.engine.queued_packets() == 0
    assert h.engine.next_deadline() is None
    # a later send starts a fresh resolution
    assert h.send_ip(5.0, PEER_IP, b"c") == [request_for(PEER_IP)]


def test_late_poll_catches_up_one_step_at_a_time():
    h = Harness(retry_interval=1.0, max_retries=1)
    h.send_ip(0.0, PEER_IP, b"a")
    assert h.poll(10.0) == [request_for(PEER_IP)]  # the retry that was due
    assert h.unreachable == []
    h.poll(11.0)
    assert [u[0] for u in h.unreachable] == [PEER_IP]


def test_queue_per_destination_drops_oldest():
    h = Harness(queue_per_destination=2)
    for i in range(3):
        h.send_ip(0.0, PEER_IP, b"p%d" % i)
    assert h.drops() == {Drop.ARP_QUEUE_FULL: 1}
    out = h.send(0.1, arp_frame(REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP, OUR_MAC))
    assert out == [ip_frame_to(PEER_MAC, b"p1"), ip_frame_to(PEER_MAC, b"p2")]


def test_queue_total_drops_oldest_of_any_destination():
    h = Harness(queue_per_destination=10, queue_total=3)
    h.send_ip(0.0, ip(1), b"a1")
    h.send_ip(0.0, ip(1), b"a2")
    h.send_ip(0.0, ip(3), b"b1")
    h.send_ip(0.0, ip(3), b"b2")  # total full: a1, the oldest overall, goes
    assert h.drops() == {Drop.ARP_QUEUE_FULL: 1}
    assert h.engine.queued_packets() == 3
    out = h.send(0.1, arp_frame(REPLY, mac(1), ip(1), OUR_MAC, OUR_IP, OUR_MAC))
    assert out == [ip_frame_to(mac(1), b"a2")]
    out = h.send(0.1, arp_frame(REPLY, mac(3), ip(3), OUR_MAC, OUR_IP, OUR_MAC))
    assert out == [ip_frame_to(mac(3), b"b1"), ip_frame_to(mac(3), b"b2")]


def test_cache_is_lru_bounded():
    h = Harness(cache_size=2)
    h.learn(1)
    h.learn(3)
    h.send_ip(1.0, ip(1), b"x")  # 192.0.2.1 is now the most recently used
    h.learn(4, t=2.0)  # full: evicts 192.0.2.3
    assert h.engine.cache_entries() == 2
    assert h.engine.lookup(ip(3)) is None
    assert h.engine.lookup(ip(1)) == mac(1)
    assert h.engine.lookup(ip(4)) == mac(4)


def test_evicting_a_pending_entry_drops_its_queue():
    h = Harness(cache_size=1)
    h.send_ip(0.0, ip(1), b"a")
    h.send_ip(0.0, ip(1), b"b")
    h.learn(3)
    assert h.engine.lookup(ip(3)) == mac(3)
    assert h.engine.state(ip(1)) is None
    assert h.drops() == {Drop.ARP_QUEUE_FULL: 2}
    assert h.engine.queued_packets() == 0
    h.poll(100.0)  # the evicted entry's timers are dead
    assert h.unreachable == []


# -- aging -------------------------------------------------------------------------------------
def test_reachable_turns_stale_then_refresh_succeeds():
    h = Harness(reachable_time=30.0, stale_time=60.0, retry_interval=1.0, max_retries=3)
    h.learn(1, t=0.0)
    assert h.engine.next_deadline() == 30.0
    h.poll(29.9)
    assert h.engine.state(ip(1)) is ArpState.REACHABLE
    h.poll(30.0)
    assert h.engine.state(ip(1)) is ArpState.STALE
    # still used, and the first use sends a unicast refresh to the cached MAC
    out = h.send_ip(31.0, ip(1), b"pkt")
    assert out == [ip_frame_to(mac(1), b"pkt"), request_for(ip(1), eth_dst=mac(1))]
    assert h.engine.state(ip(1)) is ArpState.PROBE
    assert h.send_ip(31.5, ip(1), b"pkt2") == [ip_frame_to(mac(1), b"pkt2")]  # no 2nd request
    h.send(31.6, arp_frame(REPLY, mac(1), ip(1), OUR_MAC, OUR_IP, OUR_MAC))
    assert h.engine.state(ip(1)) is ArpState.REACHABLE
    assert h.poll(40.0) == []  # no more refresh requests
    h.poll(61.5)
    assert h.engine.state(ip(1)) is ArpState.REACHABLE
    h.poll(61.6)
    assert h.engine.state(ip(1)) is ArpState.STALE


def test_refresh_unanswered_deletes_entry():
    h = Harness(reachable_time=30.0, stale_time=60.0, retry_interval=1.0, max_retries=3)
    h.learn(1)
    h.poll(30.0)
    h.send_ip(35.0, ip(1), b"pkt")
    for t in (36.0, 37.0, 38.0):
        assert h.poll(t) == [request_for(ip(1), eth_dst=mac(1))]
        assert h.engine.lookup(ip(1)) == mac(1)  # still used while probing
    assert h.poll(39.0) == []
    assert h.engine.lookup(ip(1)) is None
    assert h.unreachable == []  # nothing was waiting
    assert h.counters.arp_resolution_failures == 0


def test_stale_entry_unused_is_removed_after_stale_time():
    h = Harness(reachable_time=30.0, stale_time=60.0)
    h.learn(1, t=0.0)
    h.poll(30.0)
    assert h.engine.next_deadline() == 60.0
    h.poll(59.9)
    assert h.engine.state(ip(1)) is ArpState.STALE
    h.poll(60.0)
    assert h.engine.cache_entries() == 0
    assert h.engine.next_deadline() is None


def test_confirmation_extends_reachable_time():
    h = Harness(reachable_time=30.0)
    h.learn(1, t=0.0)
    h.learn(1, t=20.0)
    h.poll(30.0)
    assert h.engine.state(ip(1)) is ArpState.REACHABLE
    assert h.engine.next_deadline() == 50.0
    h.poll(50.0)
    assert h.engine.state(ip(1)) is ArpState.STALE


def test_timer_heap_stays_bounded_under_repeated_confirmations():
    h = Harness()
    for i in range(1000):
        h.learn(1, t=i * 0.01)
    assert len(h.engine._timers) <= 2


def test_timer_heap_is_compacted_when_evictions_leave_dead_timers():
    h = Harness(cache_size=1)
    for i in range(1000):
        h.learn(1 + i % 200, t=i * 0.01)
    assert len(h.engine._timers) <= 4 * 1 + 64 + 1
    last = 1 + 999 % 200
    assert h.engine.next_deadline() == pytest.approx(9.99 + 30.0)
    h.poll(9.99 + 30.0)
    assert h.engine.state(ip(last)) is ArpState.STALE
