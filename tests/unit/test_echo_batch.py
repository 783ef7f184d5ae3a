"""The UDP echo per receive batch (Host._echo_batch, ns_udp_echo_batch) against the per-frame
path: the same random batches, laid in an arena as a link lays them, fed to two hosts, one
with the batch path on, one with it off, must give the same frames out (byte for byte, in the
same order, in the same pieces), the same counters and drops, the same socket statistics, the
same ARP cache (its LRU order too) and the same IPv4 ident."""

from __future__ import annotations

import dataclasses
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netstack._ffi import ffi, lib

from netstack.api.services import start_services
from netstack.io.link import BatchLink
from netstack.proto import host as host_mod
from netstack.proto.host import Host
from netstack.wire import arp as warp
from netstack.wire import ethernet as weth
from netstack.wire import ipv4 as wipv4
from netstack.wire import udp as wudp
from netstack.wire import vnet as wvnet
from netstack.wire.checksum import checksum, pseudo_header_sum
from tests.unit.hosttools import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, learn_peer, make_host

PEER2_IP = wipv4.ip_from_str("192.0.2.7")
PEER2_MAC = bytes.fromhex("02aabbccdd07")
UNKNOWN_IP = wipv4.ip_from_str("192.0.2.9")  # on-link, never ARPed: replies wait for ARP
FAR_IP = wipv4.ip_from_str("198.51.100.9")  # off-link: replies go to the gateway (PEER_IP)
OTHER_IP = wipv4.ip_from_str("192.0.2.3")  # an address the host moves to and back
PEERS = (PEER_IP, PEER2_IP, UNKNOWN_IP, FAR_IP)
MACS = {PEER_IP: PEER_MAC, PEER2_IP: PEER2_MAC, UNKNOWN_IP: bytes.fromhex("02aabbccdd09")}
SLOT = 2048
HLEN = wvnet.HEADER_LEN
_U16 = struct.Struct("!H")


def _udp(src: int, dst: int, sport: int, dport: int, data: bytes, *, csum: bool = True) -> bytes:
    udp = wudp.build(src, dst, sport, dport, data) + data
    return udp if csum else udp[:6] + b"\0\0" + udp[8:]


def _ip(src: int, dst: int, proto: int, payload: bytes, **kw) -> bytes:
    mac = MACS.get(src, PEER_MAC) if src != FAR_IP else PEER_MAC
    dst_mac = kw.pop("dst_mac", OUR_MAC)
    header = wipv4.build(src, dst, proto, len(payload), **kw)
    return weth.build(dst_mac, mac, weth.ETHERTYPE_IPV4) + header + payload


def _arp(sender_ip: int, sender_mac: bytes, op: int = warp.OP_REQUEST) -> bytes:
    pkt = warp.build(op, sender_mac, sender_ip, b"\0" * 6, OUR_IP)
    return weth.build(weth.BROADCAST, sender_mac, weth.ETHERTYPE_ARP) + pkt


# One frame of a batch: (kind, peer index, payload size, a random int for the rest)
KINDS = (
    *["echo"] * 16, "echo_nocsum", "echo_badcsum", "udp_other",
    "udp_closed", "fragment", "tcp", "arp", "arp_newmac", "ipv6", "bad_ipcsum", "truncated",
    "not_for_us", "big_echo", "broadcast_echo",
)  # fmt: skip


def _frame(kind: str, peer: int, size: int, r: int, dst: int) -> bytes:
    src = PEERS[peer]
    data = bytes((r + i) & 0xFF for i in range(size))
    sport = 1024 + r % 60000
    if kind == "echo":
        return _ip(src, dst, 17, _udp(src, dst, sport, 7, data), ident=r & 0xFFFF)
    if kind == "big_echo":  # a reply above a lowered MTU (or not): fragmentation's business
        data = bytes(600 + r % 800)
        return _ip(src, dst, 17, _udp(src, dst, sport, 7, data))
    if kind == "echo_nocsum":  # no checksum: the echo service's sendto, not a reflection
        return _ip(src, dst, 17, _udp(src, dst, sport, 7, data, csum=False))
    if kind == "echo_badcsum":
        udp = bytearray(_udp(src, dst, sport, 7, data))
        udp[6] ^= 0x10
        return _ip(src, dst, 17, bytes(udp))
    if kind == "udp_other":  # the discard service
        return _ip(src, dst, 17, _udp(src, dst, sport, 9, data))
    if kind == "udp_closed":  # ICMP port unreachable
        return _ip(src, dst, 17, _udp(src, dst, sport, 4000 + r % 100, data))
    if kind == "fragment":
        udp = _udp(src, dst, sport, 7, data + bytes(8))
        return _ip(src, dst, 17, udp[:16], more_fragments=True, ident=r & 0xFFFF)
    if kind == "tcp":  # a SYN to the TCP echo: a SYN-ACK from the general TCP path
        tcp = struct.pack("!HHIIBBHHH", sport, 7, r, 0, 5 << 4, 0x02, 65535, 0, 0)
        csum = checksum(tcp, initial=pseudo_header_sum(src, dst, 6, len(tcp)))
        return _ip(src, dst, 6, tcp[:16] + _U16.pack(csum) + tcp[18:])
    if kind == "arp":
        return _arp(src if src in MACS else PEER_IP, MACS.get(src, PEER_MAC))
    if kind == "arp_newmac":  # a neighbour's MAC changes mid-batch
        mac = bytes.fromhex("02aabbccdd") + bytes([0x40 + r % 16])
        return _arp(PEER_IP if r & 1 else PEER2_IP, mac, warp.OP_REPLY)
    if kind == "ipv6":
        return weth.build(OUR_MAC, PEER_MAC, 0x86DD) + bytes(40 + size)
    if kind == "bad_ipcsum":
        frame = bytearray(_ip(src, dst, 17, _udp(src, dst, sport, 7, data)))
        frame[24] ^= 0x01
        return bytes(frame)
    if kind == "truncated":  # the IPv4 total length says more than the frame holds
        return _ip(src, dst, 17, _udp(src, dst, sport, 7, data))[:-1]
    if kind == "not_for_us":
        return _ip(src, dst, 17, _udp(src, dst, sport, 7, data), dst_mac=PEER2_MAC)
    if kind == "broadcast_echo":
        bcast = wipv4.ip_from_str("192.0.2.255")
        return _ip(src, bcast, 17, _udp(src, bcast, sport, 7, data), dst_mac=weth.BROADCAST)
    raise AssertionError(kind)


class Arena:
    """Frames laid as BatchLink lays them: slot i at i * SLOT, after a vnet header or not."""

    def __init__(self, n: int, vnet: bool) -> None:
        self.hlen = HLEN if vnet else 0
        self.arena = ffi.new("uint8_t[]", SLOT * max(n, 1))
        self.lens = ffi.new("uint32_t[]", max(n, 1))
        self.valid = ffi.new("uint8_t[]", max(n, 1))
        self.view = memoryview(ffi.buffer(self.arena)).toreadonly()
        self.vnet = vnet

    def lay(self, frames: list[bytes], valid: list[bool]) -> tuple:
        views, metas = [], []
        for i, (f, v) in enumerate(zip(frames, valid, strict=True)):
            off = i * SLOT
            ffi.memmove(self.arena + off + self.hlen, f, len(f))
            self.lens[i] = len(f) + self.hlen
            self.valid[i] = wvnet.F_DATA_VALID if v and self.vnet else 0
            views.append(self.view[off + self.hlen : off + self.hlen + len(f)])
            metas.append(self.valid[i])
        arena = (self.arena, SLOT, self.hlen, self.lens, self.valid if self.vnet else ffi.NULL)
        return views, (metas if self.vnet else None), arena


def _host() -> Host:
    host = make_host(gateway=PEER_IP)
    services = start_services(host.udp, {"udp_echo": 7, "udp_discard": 9, "tcp_echo": 7}, host.tcp)
    host.echo_service = services["udp_echo"]  # type: ignore[attr-defined]
    host.tcp.choose_isn = lambda conn, now: 1000  # (the secret's ISN differs per host)
    learn_peer(host)
    host.receive_batch([memoryview(_arp(PEER2_IP, PEER2_MAC))], 0.0)
    host.tx.clear()
    host.ipv4._ident = 0xFFF0  # wraps within a test
    return host


def _state(host: Host) -> dict:
    c = host.counters
    fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    state = {k: v for k, v in fields.items() if isinstance(v, int | dict)}
    sock = host.echo_service.socket  # type: ignore[attr-defined]
    state["reflected"] = sock.reflected
    state["ident"] = host.ipv4._ident
    state["arp"] = [(ip, e.state, e.mac) for ip, e in host.arp._cache.items()]
    return state


def _drain(host: Host) -> list[tuple[int, bytes, list[bytes]]]:
    """Each frame sent: its pieces' count (USO runs: 0, their payloads are laid out in other
    pieces, the same bytes), its bytes, its virtio-net header if it has one."""
    uso = host.udp.gso_max
    out = [
        (
            0 if uso else len(f),
            b"".join(bytes(p) for p in f),
            [bytes(p.header) for p in f if isinstance(p, wvnet.VnetMark)],
        )
        for f in host.tx
    ]
    host.tx.clear()
    return out


Batch = list[tuple[str, int, int, int, bool]]
frame_st = st.tuples(
    st.sampled_from(KINDS), st.integers(0, len(PEERS) - 1), st.integers(0, 80),
    st.integers(0, 1 << 30), st.booleans(),
)  # fmt: skip
# between batches: advance time (ARP entries go STALE / expire), change the address or MTU
step_st = st.sampled_from(("none", "none", "none", "tick", "stale", "move", "back", "mtu"))


def _between(host: Host, step: str, now: float) -> float:
    if step == "tick":
        now += 1.0
    elif step == "stale":
        now += 45.0  # past reachable_time: entries STALE (a use then PROBEs)
    elif step == "move":
        host.set_address(OTHER_IP, 24, PEER_IP)
    elif step == "back":
        host.set_address(OUR_IP, 24, PEER_IP)
    elif step == "mtu":
        host.set_address(host.ipv4.config.address, 24, PEER_IP, mtu=576 + int(now) % 900)
    host.poll(now)
    return now


def _run(batches: list[tuple[str, Batch]], vnet: bool, on: bool, uso: int = 0) -> tuple[list, list]:
    host = _host()
    host.udp.gso_max = uso
    arena = Arena(max((len(b) for _, b in batches), default=1), vnet)
    outs, states = [], []
    now = 1.0
    old = host_mod.ECHO_BATCH
    host_mod.ECHO_BATCH = on
    try:
        for step, batch in batches:
            now = _between(host, step, now)
            outs.append(_drain(host))
            dst = host.ipv4.config.address
            frames = [_frame(k, p, s, r, dst) for k, p, s, r, _ in batch]
            views, metas, arena_t = arena.lay(frames, [v for *_, v in batch])
            host.receive_batch(views, now, metas, arena_t)
            outs.append(_drain(host))
            states.append(_state(host))
    finally:
        host_mod.ECHO_BATCH = old
    return outs, states


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(step_st, st.lists(frame_st, min_size=1, max_size=40)), min_size=1,
             max_size=6),
    st.booleans(),
    st.sampled_from((0, 0, 64, 3)),
)  # fmt: skip
def test_batch_path_is_the_per_frame_path(batches: list, vnet: bool, uso: int) -> None:
    """`uso`: echo runs of up to that many replies per UDP super-frame (0: none)."""
    on_out, on_state = _run(batches, vnet, True, uso)
    off_out, off_state = _run(batches, vnet, False, uso)
    assert on_out == off_out
    assert on_state == off_state


def _echo_batch(n: int, peer: int = 0, size: int = 64) -> Batch:
    return [("echo", peer, size, i * 7919, False) for i in range(n)]


def test_a_batch_of_echoes_is_one_c_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first reply (per frame: it learns the peer), a batch of 64 echo requests is
    one C call and no per-frame receive; the replies are the per-frame path's."""
    calls: list[tuple[int, int]] = []
    real = host_mod._echo_run

    def spy(*args):
        stop = real(*args)
        calls.append((args[5], stop))
        return stop

    monkeypatch.setattr(host_mod, "_echo_run", spy)
    batches = [("none", _echo_batch(1)), ("none", _echo_batch(64)), ("none", _echo_batch(64, 1))]
    host = _host()
    arena = Arena(64, False)
    per_frame: list[int] = []
    real_receive = host.receive
    host.receive = lambda frame, now, valid=False: (
        per_frame.append(1),
        real_receive(frame, now, valid),
    )  # type: ignore[method-assign]
    out = []
    for i, (_, batch) in enumerate(batches):
        frames = [_frame(k, p, s, r, OUR_IP) for k, p, s, r, _ in batch]
        views, metas, arena_t = arena.lay(frames, [False] * len(frames))
        host.receive_batch(views, 2.0 + i, metas, arena_t)
        out.append(_drain(host))
    # batch 1: per frame (no peer known yet); batch 2: one C call took all 64; batch 3: a new
    # peer: its first frame per frame (learned), then C takes the other 63
    assert calls == [(0, 64), (0, 0), (1, 64)]
    assert len(per_frame) == 2
    assert [len(o) for o in out] == [1, 64, 64]
    assert host.echo_service.socket.reflected == 129  # type: ignore[attr-defined]
    off_out, _ = _run(batches, False, False)
    assert [o for o in off_out if o] == out


@pytest.mark.parametrize("vnet", [False, True])
def test_a_stale_neighbour_is_never_bypassed(vnet: bool) -> None:
    """A neighbour whose entry went STALE (time) is not used by C: the reply goes through
    ARP as the per-frame path sends it (PROBE, then C again)."""
    batches = [
        ("none", _echo_batch(8)),
        ("stale", _echo_batch(8)),
        ("none", _echo_batch(8)),
    ]
    on_out, on_state = _run(batches, vnet, True)
    off_out, off_state = _run(batches, vnet, False)
    assert on_out == off_out
    assert on_state == off_state
    assert on_state[1]["arp"][0][1] is not on_state[0]["arp"][0][1]  # the entry did change


def test_a_fault_link_offers_no_arena() -> None:
    from netstack.io.fault import FaultLink

    assert FaultLink.rx_arena is None  # not the inner link's, through __getattr__


def test_off_without_an_arena_or_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """No arena (a fault link, the TPACKET ring) or ECHO_BATCH off: the per-frame path."""
    host = _host()
    arena = Arena(8, False)
    frames = [_frame("echo", 0, 64, i, OUR_IP) for i in range(8)]
    views, _, arena_t = arena.lay(frames, [False] * 8)
    host.receive_batch(views[:1], 1.0, None, arena_t)  # learns the peer
    called: list = []
    for name in ("_echo_run", "_echo_uso"):
        real = getattr(host_mod, name)
        monkeypatch.setattr(host_mod, name, lambda *a, real=real: called.append(a) or real(*a))
    for uso in (0, 64):
        host.udp.gso_max = uso
        host.receive_batch(views, 1.0, None, None)
        monkeypatch.setattr(host_mod, "ECHO_BATCH", False)
        host.receive_batch(views, 1.0, None, arena_t)
        monkeypatch.setattr(host_mod, "ECHO_BATCH", True)
    assert called == []
    assert host.echo_service.socket.reflected == 33  # type: ignore[attr-defined]
    host.receive_batch(views, 1.0, None, arena_t)  # the switch on again: C
    assert len(called) == 1


def test_uso_runs_of_a_batch() -> None:
    """With USO, batches of echo requests from two peers: C takes them all once the echo
    socket is known (any peer: the runs' headers are made at their flush, in Python), and
    the runs, their limit, and their super-frames are the per-frame path's."""

    def flow(n: int, peer: int = 0) -> Batch:  # one source port, payloads differ
        return [("echo", peer, 64, 5 + 60000 * i, False) for i in range(n)]

    batch = [*flow(10), *flow(10, 1), *flow(5), ("echo", 0, 30, 5, False)]
    batches = [("none", _echo_batch(1)), ("none", batch), ("none", batch)]
    on_out, on_state = _run(batches, False, True, uso=8)
    off_out, off_state = _run(batches, False, False, uso=8)
    assert on_out == off_out
    assert on_state == off_state
    marks = [m for _, _, m in on_out[-1]]
    # 8 + 2, 8 + 2, 5 (each change of peer or size flushes), 1 (a plain datagram)
    assert [len(m) for m in marks] == [1, 1, 1, 1, 1, 0]


def test_the_neighbours_lru_order_is_kept() -> None:
    """A reply sent by C marks its neighbour used, in order with the per-frame path's sends
    (here an ICMP port unreachable to the other neighbour between two echo requests)."""
    batches = [
        ("none", _echo_batch(2)),
        ("none", [*_echo_batch(2), ("udp_closed", 1, 8, 5, False), *_echo_batch(2)]),
        ("none", [("udp_closed", 1, 8, 5, False), *_echo_batch(2)]),
    ]
    on_out, on_state = _run(batches, False, True)
    off_out, off_state = _run(batches, False, False)
    assert on_out == off_out
    assert on_state == off_state
    assert [ip for ip, *_ in on_state[-1]["arp"]] == [PEER2_IP, PEER_IP]


# -- through a link: what BatchLink offers as rx_arena ---------------------------------------
class PairLink(BatchLink):
    """A BatchLink over one end of an AF_UNIX datagram socketpair (a frame per datagram)."""

    _rx_fn = staticmethod(lib.ns_read_batch)
    _tx_fn = staticmethod(lib.ns_write_batch)


def _partial(frame: bytes) -> bytes:
    """The frame's UDP checksum left partial, as a local kernel socket hands it to a TAP."""
    udp = bytearray(frame[34:])
    src, dst = struct.unpack_from("!II", frame, 26)
    udp[6:8] = _U16.pack(pseudo_header_sum(src, dst, 17, len(udp)) % 0xFFFF)
    header = wvnet.VnetHeader(wvnet.F_NEEDS_CSUM, wvnet.GSO_NONE, 0, 0, 34, 6).emit()
    return header + frame[:34] + bytes(udp)


@pytest.mark.parametrize("mode", ["plain", "vnet", "gro"])
def test_through_a_link(mode: str) -> None:
    """Frames read by a BatchLink (plain, virtio-net header with partial checksums, software
    GRO) go through the batch path with the link's rx_arena, the same as per frame; a batch
    with a frame the link does not hand on as read (truncated; a header with GSO) has none."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        a.setblocking(False)
        vnet = mode == "vnet"
        link = PairLink("pair", a.fileno(), OUR_MAC, 1500, 64, vnet=vnet, gro=mode == "gro")
        batches: list = [
            _echo_batch(1),
            [*_echo_batch(20), ("tcp", 0, 0, 3, False), ("arp", 1, 0, 0, False), *_echo_batch(9)],
        ]
        hosts = (_host(), _host())
        for batch in batches:
            for k, p, s, r, _ in batch:
                frame = _frame(k, p, s, r, OUR_IP)
                if vnet:
                    frame = _partial(frame) if k == "echo" else wvnet.PLAIN + frame
                b.send(frame)
            frames = link.receive_batch()
            assert link.rx_arena is not None and len(frames) == len(batch)
            outs = []
            for host, on in zip(hosts, (True, False), strict=True):
                host_mod.ECHO_BATCH = on
                try:
                    host.receive_batch(frames, 3.0, link.rx_meta, link.rx_arena)
                finally:
                    host_mod.ECHO_BATCH = True
                outs.append((_drain(host), _state(host)))
            assert outs[0] == outs[1]
        assert hosts[0].echo_service.socket.reflected == 30  # type: ignore[attr-defined]
        if vnet:
            gso = wvnet.VnetHeader(0, wvnet.GSO_TCPV4, 54, 1448, 0, 0).emit()
            b.send(gso + _frame("tcp", 0, 0, 3, OUR_IP))
        else:
            b.send(bytes(link.slot_size + 10))
        b.send((wvnet.PLAIN if vnet else b"") + _frame("echo", 0, 8, 1, OUR_IP))
        link.receive_batch()
        assert link.rx_arena is None
    finally:
        a.close()
        b.close()
