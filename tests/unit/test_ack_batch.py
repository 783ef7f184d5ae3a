"""A receive batch's pure ACKs taken from their fields (Host._ack_batch, ns_ack_runs,
TcpEngine.take_ack_run) against the per-frame path.

A bulk sender (the chargen service) on one Host, its peer on another, frames crossing as
bytes. The peer's ACKs - one per two segments, as each of its receive batches has one segment
- are handed to the sender in batches laid in an arena as a link lays them, with seeded
perturbations (ACKs lost, duplicated, swapped, a stale or a future one, a bad checksum, SACK
blocks, a window change, frames of other kinds and flows between them). Two such worlds, one
with ACK_BATCH on and one with it off, must put the same bytes on the wire in every step and
end with the same counters, TCB and congestion state: the batch path saves the parse, nothing
else. And it must have been taken.
"""

from __future__ import annotations

import dataclasses
import random
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from netstack._ffi import ffi, lib

from netstack.api.services import start_services
from netstack.api.tcp import Protocol, connect
from netstack.counters import Counters
from netstack.proto import host as host_mod
from netstack.proto.host import Host, HostConfig
from netstack.proto.tcp import isn as isnmod
from netstack.proto.tcp.config import TcpConfig
from netstack.wire import ethernet as weth
from netstack.wire import icmp as wicmp
from netstack.wire import ipv4 as wipv4
from netstack.wire import tcp as wtcp
from netstack.wire.checksum import checksum, pseudo_header_sum
from tests.unit.tcp.test_slim import TCB_FIELDS
from tests.unit.test_echo_batch import Arena

PEER_MAC, STACK_MAC = bytes.fromhex("02aabbccdd01"), bytes.fromhex("02aabbccdd02")
PEER_IP, STACK_IP = wipv4.ip_from_str("192.0.2.1"), wipv4.ip_from_str("192.0.2.2")
OTHER_IP = wipv4.ip_from_str("192.0.2.9")


class Sink(Protocol):
    """The peer's reader: takes everything (so it ACKs as a reading client does)."""

    def __init__(self) -> None:
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)


def _host(mac: bytes, ip: int, seed: int, sack: bool) -> Host:
    config = HostConfig(mac=mac, address=ip, prefix_len=24, tcp=TcpConfig(sack=sack))
    host = Host(config, Counters(), random.Random(seed))
    host.tcp.secrets = isnmod.Secrets(bytes([seed]) * 32)
    return host


def _frames(host: Host) -> list[bytes]:
    out = [b"".join(bytes(p) for p in f) for f in host.tx]
    host.tx.clear()
    return out


def _fix_tcp(frame: bytearray) -> bytes:
    """Recompute a hand-edited 66-byte segment's checksums (IPv4 header, TCP), for the
    addresses it now carries."""
    src = int.from_bytes(frame[26:30], "big")
    dst = int.from_bytes(frame[30:34], "big")
    frame[24:26] = b"\0\0"
    frame[24:26] = checksum(bytes(frame[14:34])).to_bytes(2, "big")
    frame[50:52] = b"\0\0"
    csum = checksum(bytes(frame[34:]), initial=pseudo_header_sum(src, dst, 6, 32))
    frame[50:52] = csum.to_bytes(2, "big")
    return bytes(frame)


def _other(kind: int, r: random.Random, like: bytes) -> list[bytes]:
    """A frame the perturbation puts into the batch (kind: see _perturb)."""
    if kind == 0:  # the ACK again: a duplicate (never a replacement: it says nothing more)
        return [like]
    f = bytearray(like)
    if kind == 1:  # a bad TCP checksum: dropped by either path
        f[50] ^= 0x40
        return [bytes(f)]
    if kind == 2:  # another window
        f[48:50] = r.randrange(0, 1 << 16).to_bytes(2, "big")
        return [_fix_tcp(f)]
    if kind == 3:  # an older TSval (PAWS within the batch)
        ts = int.from_bytes(f[58:62], "big")
        f[58:62] = ((ts - r.randrange(1, 5)) & 0xFFFFFFFF).to_bytes(4, "big")
        return [_fix_tcp(f)]
    if kind == 4:  # an ACK of data not yet sent (beyond SND.NXT): an ACK is owed back
        ack = int.from_bytes(f[42:46], "big")
        f[42:46] = ((ack + r.randrange(1, 1 << 20)) & 0xFFFFFFFF).to_bytes(4, "big")
        return [_fix_tcp(f)]
    if kind == 5:  # an older ACK (a reordered one)
        ack = int.from_bytes(f[42:46], "big")
        f[42:46] = ((ack - r.randrange(1, 3000)) & 0xFFFFFFFF).to_bytes(4, "big")
        return [_fix_tcp(f)]
    if kind == 6:  # an ICMP echo request to the stack (answered; no TCP effect)
        icmp = wicmp.build(wicmp.TYPE_ECHO_REQUEST, 0, r.randrange(1 << 16), b"ping")
        ip = wipv4.build(PEER_IP, STACK_IP, 1, len(icmp))
        return [weth.build(STACK_MAC, PEER_MAC, weth.ETHERTYPE_IPV4) + ip + icmp]
    if kind == 7:  # the same segment from another address (no connection: a RST)
        f[26:30] = OTHER_IP.to_bytes(4, "big")
        return [_fix_tcp(f)]
    if kind == 9:  # the ACK again with PSH: another segment of the flow (ends a run)
        f[47] = 0x18
        return [_fix_tcp(f)]
    if kind == 10:  # a sequence number one further (acceptable, never held)
        seq = int.from_bytes(f[38:42], "big")
        f[38:42] = ((seq + 1) & 0xFFFFFFFF).to_bytes(4, "big")
        return [_fix_tcp(f)]
    # kind 8: the ACK to another MAC (not for us)
    f[0:6] = bytes.fromhex("02aabbccdd77")
    return [bytes(f)]


def _perturb(batch: list[bytes], r: random.Random, rate: float) -> list[bytes]:
    """The peer's frames of a step as the stack reads them: some lost, some followed (or
    preceded, anywhere in the batch) by a frame _other makes of them, two swapped."""
    out: list[bytes] = []
    for frame in batch:
        roll = r.random()
        if roll < rate / 4:
            continue  # lost
        if len(frame) == 66 and roll > 1 - rate:  # its window changed where it stands
            frame = _other(2, r, frame)[0]
        out.append(frame)
        if len(frame) == 66 and roll < rate:
            at = r.randrange(len(out) + 1)
            out[at:at] = _other(r.randrange(11), r, frame)
    if len(out) > 2 and r.random() < rate:
        i = r.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


@dataclasses.dataclass
class World:
    peer: Host
    stack: Host
    wire: list[list[bytes]]
    taken: int = 0  # pure ACKs taken one by one from their fields
    runs: int = 0  # runs of pure ACKs taken whole


# A frame that, handed to the stack, moves its address (as a DHCPACK or NAK would) before
# the rest of its batch is read: _world(move_at=...) puts one amid a step's ACKs.
MOVE = weth.build(STACK_MAC, PEER_MAC, 0x88B5) + b"move the address"


def _world(
    ack_batch: bool,
    seed: int,
    rate: float,
    steps: int,
    sack: bool,
    *,
    vnet: bool = False,
    move_at: int | None = None,
    conns: int = 1,
) -> World:
    """`vnet`: the arena holds a virtio-net header before each frame, and the link vouches
    for some frames' checksums (DATA_VALID), as a TAP with offloads hands them over."""
    peer, stack = _host(PEER_MAC, PEER_IP, 1, sack), _host(STACK_MAC, STACK_IP, 2, sack)
    start_services(stack.udp, {"tcp_chargen": 19}, stack.tcp)
    world = World(peer, stack, [])
    real_take = stack.tcp.take_ack_run

    def counted(frame, more, window, now):  # one ACK alone (more 1), or a run's members
        taken = real_take(frame, more, window, now)
        if more == 1:
            world.taken += taken
        else:
            world.runs += taken
        return taken

    stack.tcp.take_ack_run = counted  # type: ignore[method-assign]
    real_receive = stack.receive

    def receive(frame, now, l4_valid=False):
        if bytes(frame) == MOVE:
            stack.set_address(OTHER_IP, 24, PEER_IP)
        real_receive(frame, now, l4_valid)

    stack.receive = receive  # type: ignore[method-assign]
    r = random.Random(seed)
    arena = Arena(512, vnet)
    now = 10.0
    peer.start(now)
    stack.start(now)
    for _ in range(conns):  # several: their ACKs interleave in the stack's batches
        connect(peer.tcp, ("192.0.2.2", 19), Sink)
    old = host_mod.ACK_BATCH
    host_mod.ACK_BATCH = ack_batch
    try:
        for step in range(steps):
            now += 0.0005
            batch = _perturb(_frames(peer), r, rate)[:511]
            if step == move_at:
                batch.insert(len(batch) // 3, MOVE)
            if batch:
                valid = [vnet and r.random() < 0.5 for _ in batch]
                views, metas, arena_t = arena.lay(batch, valid)
                stack.receive_batch(views, now, metas, arena_t)
            deadline = stack.next_deadline()
            if deadline is not None and deadline <= now:
                stack.poll(now)
            out = _frames(stack)
            world.wire.append(out)
            for frame in out:  # one segment per peer batch: it ACKs every other one
                peer.receive_batch([memoryview(frame)], now)
            deadline = peer.next_deadline()
            if deadline is not None and deadline <= now:
                peer.poll(now)
    finally:
        host_mod.ACK_BATCH = old
    return world


def _state(host: Host) -> tuple:
    c = host.counters
    counters = {
        f.name: getattr(c, f.name)
        for f in dataclasses.fields(c)
        if isinstance(getattr(c, f.name), int | dict)
    }
    conns = []
    for conn in host.tcp.conns.values():
        tcb = tuple(getattr(conn, f, None) for f in (*TCB_FIELDS, "max_snd_wnd", "snd_wnd"))
        rec = getattr(conn, "recovery", None)
        cc = None if rec is None else rec.cc
        rtt = None if rec is None else (rec.rtt.srtt, rec.rtt.rttvar)
        conns.append((tcb, None if cc is None else (cc.cwnd, cc.ssthresh), rtt))
    return counters, conns


@pytest.mark.parametrize(
    ("sack", "vnet", "conns"),
    [(True, False, 1), (False, False, 1), (True, True, 1), (True, False, 3)],
)
def test_clean_transfer_same_wire_and_state(sack: bool, vnet: bool, conns: int) -> None:
    on = _world(True, 1, 0.0, 300, sack, vnet=vnet, conns=conns)
    off = _world(False, 1, 0.0, 300, sack, vnet=vnet, conns=conns)
    assert on.wire == off.wire
    assert _state(on.stack) == _state(off.stack)
    assert on.taken > 20 and on.runs > 20 and off.taken == off.runs == 0
    assert on.stack.counters.tcp_acks_filtered > on.taken + on.runs


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1 << 30), rate=st.sampled_from([0.02, 0.1, 0.3]), sack=st.booleans())
def test_perturbed_batches_same_wire_and_state(seed: int, rate: float, sack: bool) -> None:
    on, off = _world(True, seed, rate, 100, sack), _world(False, seed, rate, 100, sack)
    assert on.wire == off.wire
    assert _state(on.stack) == _state(off.stack)
    assert _state(on.peer) == _state(off.peer)
    event(f"pure ACKs taken from their fields: {'some' if on.taken else 'none'}")
    event(f"runs of pure ACKs taken whole: {'some' if on.runs else 'none'}")


@pytest.mark.parametrize(("seed", "rate", "conns"), [(4, 0.05, 1), (5, 0.02, 1), (5, 0.02, 2)])
def test_perturbed_batches_take_the_batch_path(seed: int, rate: float, conns: int) -> None:
    """Fixed seeds whose runs of ACKs the perturbations break but do not end (duplicate ACKs,
    those with PSH among them, start loss recovery, where no ACK is held): the batch path
    is taken (and still changes nothing)."""
    on = _world(True, seed, rate, 150, True, conns=conns)
    off = _world(False, seed, rate, 150, True, conns=conns)
    assert on.wire == off.wire
    assert _state(on.stack) == _state(off.stack)
    assert on.taken > 20


def test_an_address_moved_mid_batch_stops_the_batch_path() -> None:
    """A frame amid the ACKs moves the stack's address (a DHCPACK or NAK would): the pure ACKs
    after it are no longer for us, as the per-frame path finds; C marked them with the
    address the batch started with, so the batch path must look again."""
    on = _world(True, 1, 0.0, 120, True, move_at=100)
    off = _world(False, 1, 0.0, 120, True, move_at=100)
    assert on.wire == off.wire
    assert _state(on.stack) == _state(off.stack)
    assert on.taken > 20 and on.runs > 0


def _pure_ack(fix: bool = False, **edit: int) -> bytes:
    """A valid 66-byte pure ACK from the peer (NOP NOP Timestamps), bytes edited (`b47=0x18`:
    byte 47 set to 0x18); `fix`: both checksums made right again after the edits."""
    opts = wtcp.TcpOptions(timestamp=(5, 6))
    tcp = bytearray(wtcp.build(PEER_IP, STACK_IP, 4000, 19, 100, 200, wtcp.ACK, 500, options=opts))
    ip = wipv4.build(PEER_IP, STACK_IP, 6, len(tcp))
    frame = bytearray(weth.build(STACK_MAC, PEER_MAC, weth.ETHERTYPE_IPV4) + ip + tcp)
    for at, value in edit.items():
        frame[int(at[1:])] = value
    return _fix_tcp(frame) if fix else bytes(frame)


@pytest.mark.parametrize(
    ("frame", "marked"),
    [
        (_pure_ack(), True),
        (_pure_ack(b47=0x18), False),  # PSH too
        (_pure_ack(b47=0x11), False),  # FIN
        (_pure_ack(b54=0x08), False),  # options not NOP NOP TS
        (_pure_ack(b50=0x00, b51=0x00), False),  # TCP checksum wrong (or absent)
        (_pure_ack(b24=0x00), False),  # IPv4 header checksum wrong
        (_pure_ack(b5=0x77), False),  # another MAC
        (_pure_ack()[:-1], False),  # 65 bytes
        (_pure_ack() + b"x", False),  # 67 bytes (a byte of payload, or padding)
        (_pure_ack(True, b47=0x18), False),  # PSH too, checksums right
        (_pure_ack(True, b46=0x70), False),  # a 28-byte TCP header
        (_pure_ack(True, b20=0x20), False),  # more fragments
        (_pure_ack(True, b33=0x09), False),  # to another address
        (_pure_ack(True, b29=0xFF), False),  # from the subnet's broadcast address (bcast)
        (_pure_ack(True, b26=0x7F), False),  # from a loopback address
        (_pure_ack(True, b23=0x11), False),  # UDP
        (_pure_ack(True, b15=0x01), True),  # TOS/ECN bits: still a pure ACK as parse sees it
    ],
)
def test_c_marks_only_valid_pure_acks(frame: bytes, marked: bool) -> None:
    arena = Arena(2, False)
    good = _pure_ack()
    _views, _, (arena_c, slot, hlen, lens, _) = arena.lay([frame, good], [False, False])
    out, head, member, wnd = _run_arrays(2)
    bcast = wipv4.ip_from_str("192.0.2.255")
    n = lib.ns_ack_runs(arena_c, slot, hlen, lens, 2, STACK_MAC, STACK_IP, bcast, out, head,
                        member, wnd)  # fmt: skip
    assert list(out) == [int(marked), 1] and n == 1 + marked
    header, _ = wtcp.parse(memoryview(good)[34:], PEER_IP, STACK_IP)
    fields = struct.unpack_from("!IIHHIIBBHHH4xII", good, 26)
    assert fields[4:6] == (header.seq, header.ack) and fields[-2:] == header.options.timestamp


def _run_arrays(n: int) -> tuple:
    return (
        ffi.new("uint8_t[]", n), ffi.new("int32_t[]", n), ffi.new("int32_t[]", n),
        ffi.new("uint16_t[]", n),
    )  # fmt: skip


def _ack_of(port: int = 4000, ack: int = 200, ts: int = 5, window: int = 500, **edit: int) -> bytes:
    """_pure_ack from `port`, with this ACK, TSval and window, checksums right."""
    f = bytearray(_pure_ack(**edit))
    f[34:36] = port.to_bytes(2, "big")
    f[42:46] = (ack & 0xFFFFFFFF).to_bytes(4, "big")
    f[48:50] = window.to_bytes(2, "big")
    f[58:62] = ts.to_bytes(4, "big")
    return _fix_tcp(f)


def _runs(frames: list[bytes]) -> tuple[list[int], list[tuple[int, int]], list[int], list[int]]:
    """ns_ack_runs over frames: (pure, (last, length) per frame or None, member, wnd)."""
    n = len(frames)
    _, _, (arena_c, slot, hlen, lens, _) = Arena(n, False).lay(frames, [False] * n)
    pure, head, member, wnd = _run_arrays(n)
    lib.ns_ack_runs(arena_c, slot, hlen, lens, n, STACK_MAC, STACK_IP, 0, pure, head, member, wnd)
    heads = [None if h < 0 else (h & 0xFFFF, h >> 16) for h in head]
    return list(pure), heads, list(member), list(wnd)


def test_c_runs_per_flow_interleaved_with_their_windows() -> None:
    a = [_ack_of(4000, 100 * k, ts=k, window=500 + k) for k in range(1, 5)]
    b = [_ack_of(4001, 100 * k, ts=k, window=900 - k) for k in range(1, 4)]
    pure, heads, member, wnd = _runs([a[0], b[0], a[1], b[1], a[2], b[2], a[3]])
    assert pure == [1] * 7
    assert heads == [(6, 4), (5, 3), None, None, None, None, None]
    assert member == [0, 0, 1, 2, 1, 2, 1]
    assert wnd[:2] == [503, 899]  # all but the last member's: a1..a3, b1..b2


def test_c_runs_end_where_they_must() -> None:
    acks = [_ack_of(ack=100 * k, ts=k) for k in range(1, 7)]
    psh = _ack_of(ack=250, ts=3, b47=0x18)
    udp = bytearray(acks[0])
    udp[23] = 17  # not a TCP segment: every run ends
    # another segment of the flow ends its run: two runs of three
    _, heads, member, _ = _runs([*acks[:3], psh, *acks[3:]])
    assert heads == [(2, 3), None, None, None, (6, 3), None, None]
    assert member == [0, 1, 1, 0, 0, 5, 5]
    # a frame that is not TCP ends every run; a run of two is no run
    _, heads, member, _ = _runs([*acks[:2], bytes(udp), *acks[2:]])
    assert heads == [None, None, None, (6, 4), None, None, None]
    assert member == [0, 0, 0, 0, 4, 4, 4]
    # the ACK must rise and TSval not fall; the same seq throughout
    falls = _ack_of(ack=50, ts=9)
    old_ts = _ack_of(ack=700, ts=0)
    other_seq = _ack_of(ack=800, ts=9, b41=0x65)
    _, heads, _, _ = _runs([*acks[:3], falls, acks[3], old_ts, other_seq])
    assert heads[0] == (2, 3) and heads[3:] == [None, None, None, None]
    # 2^31 bounds: a step of 2^31 is no rise
    far = _ack_of(ack=100 + (1 << 31), ts=2)
    _, heads, _, _ = _runs([acks[0], far, acks[2]])
    assert heads == [None, None, None]


def test_c_runs_take_eight_flows_at_once() -> None:
    frames = [_ack_of(5000 + f, 100 * k, ts=k) for k in range(1, 4) for f in range(9)]
    _, heads, member, _ = _runs(frames)
    assert [h for h in heads if h] == [(18 + f, 3) for f in range(8)]  # the ninth: none
    assert member[8] == member[17] == member[26] == 0
