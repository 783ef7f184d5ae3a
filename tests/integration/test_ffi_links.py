"""TapLink, PacketLink and the Loop against the real kernel, each test in namespaces of its own.

Every test body runs in a forked child that first enters the test's namespace(s), so nothing is
ever created in the root namespace; the parent deletes the namespaces even when the child fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import select
import signal
import socket
import struct
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.integration

if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
    pytest.skip("needs root and /dev/net/tun", allow_module_level=True)

from pyroute2 import IPRoute, netns  # noqa: E402
from scapy.layers import inet as sc_inet  # noqa: E402
from scapy.layers import l2 as sc_l2  # noqa: E402

from netstack.io.link import (  # noqa: E402
    LinkBusyError,
    LinkError,
    LinkNotFoundError,
    LinkPermissionError,
)
from netstack.io.loop import Loop  # noqa: E402
from netstack.io.packet import PacketLink, RingGeometry  # noqa: E402
from netstack.io.tap import TapLink  # noqa: E402

KERNEL_IP = "192.0.2.1"
STACK_IP = "192.0.2.2"
STACK_MAC = bytes.fromhex("020000000002")
ETHERTYPE_TEST = 0x88B5  # IEEE local experimental: nothing else on the wire uses it
NUD_PERMANENT = 0x80
UDP_SEGMENT = 103  # linux/udp.h: the socket option for UDP GSO
_counter = itertools.count()


# -- namespaces and children ------------------------------------------------------------------
@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Creates fresh namespaces on demand; all are removed at teardown, pass or fail."""
    created: list[str] = []

    def make() -> str:
        name = f"nst-{os.getpid()}-{next(_counter)}"
        netns.create(name)
        created.append(name)
        return name

    yield make
    for name in created:
        with contextlib.suppress(OSError):
            netns.remove(name)


def in_child(body: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
    """Run body(*args) in a forked child (which enters namespaces itself); return its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(r)
            try:
                payload = pickle.dumps(("ok", body(*args)))
            except BaseException:
                payload = pickle.dumps(("error", traceback.format_exc()))
            view = memoryview(payload)
            while view:
                view = view[os.write(w, view) :]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"child did not finish within {timeout} s")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if not chunks:
        pytest.fail("child died without a result")
    status, value = pickle.loads(b"".join(chunks))
    if status == "error":
        pytest.fail(f"in child:\n{value}")
    return value


def kernel_side_tap(ns: str, *, mtu: int | None = None, max_batch: int = 64) -> TapLink:
    """In the child: enter ns, open the TAP, give the kernel side 192.0.2.1/24 and a static
    neighbour 192.0.2.2 -> STACK_MAC, bring it up."""
    netns.setns(ns)
    link = TapLink("nst0", max_batch=max_batch, mac=STACK_MAC)
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=link.name)[0]
        with open(f"/proc/sys/net/ipv6/conf/{link.name}/disable_ipv6", "w") as f:
            f.write("1")  # no router solicitations or MLD in the way
        ipr.addr("add", index=idx, address=KERNEL_IP, prefixlen=24)
        if mtu is not None:
            ipr.link("set", index=idx, mtu=mtu)
        ipr.link("set", index=idx, state="up")
        ipr.neigh(
            "add",
            dst=STACK_IP,
            lladdr=":".join(f"{b:02x}" for b in STACK_MAC),
            ifindex=idx,
            state=NUD_PERMANENT,
        )
    return link


def wait_readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def udp_payloads(frames: list[memoryview], port: int) -> list[bytes]:
    """Payloads of IPv4/UDP frames to `port` (no options: the kernel sends none)."""
    out = []
    for f in frames:
        if len(f) >= 42 and f[12:14] == b"\x08\x00" and f[23] == 17:
            ihl = (f[14] & 0x0F) * 4
            if struct.unpack_from("!H", f, 14 + ihl + 2)[0] == port:
                out.append(bytes(f[14 + ihl + 8 :]))
    return out


def arp_request(sender_mac: bytes, sender_ip: str, target_ip: str) -> tuple[bytes, ...]:
    """An ARP request as three pieces (Ethernet header, ARP body, padding) for writev."""
    eth = b"\xff" * 6 + sender_mac + b"\x08\x06"
    body = struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        0x0800,
        6,
        4,
        1,
        sender_mac,
        socket.inet_aton(sender_ip),
        b"\0" * 6,
        socket.inet_aton(target_ip),
    )
    return (eth, body, b"\0" * 18)


def arp_replies(frames: list[memoryview]) -> list[tuple[bytes, str, str]]:
    """(sender MAC, sender IP, target IP) of every ARP reply."""
    out = []
    for f in frames:
        if len(f) >= 42 and f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02":
            out.append(
                (
                    bytes(f[22:28]),
                    socket.inet_ntoa(bytes(f[28:32])),
                    socket.inet_ntoa(bytes(f[38:42])),
                )
            )
    return out


# -- TAP ----------------------------------------------------------------------------------------
def _tap_receives_batches(ns: str, count: int) -> dict:
    link = kernel_side_tap(ns)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        sock.sendto(struct.pack("!I", i) + b"x" * 100, (STACK_IP, 9999))
    got: list[bytes] = []
    batches = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        if not wait_readable(link.fd, 0.5):
            continue
        frames = link.receive_batch()
        batches.append(len(frames))
        got.extend(udp_payloads(frames, 9999))
    link.close()
    return {"got": got, "batches": batches, "mtu": link.mtu, "peer_mac": link.peer_mac}


def test_tap_receive_batch_gets_kernel_datagrams(make_netns) -> None:
    count = 200
    result = in_child(_tap_receives_batches, make_netns(), count)
    assert [struct.unpack("!I", p[:4])[0] for p in result["got"]] == list(range(count))
    assert all(p[4:] == b"x" * 100 for p in result["got"])
    assert max(result["batches"]) > 1
    assert result["mtu"] == 1500
    assert len(result["peer_mac"]) == 6 and result["peer_mac"] != STACK_MAC


def _tap_send_batch_arp(ns: str) -> dict:
    link = kernel_side_tap(ns)
    senders = [(STACK_MAC, STACK_IP), (bytes.fromhex("020000000003"), "192.0.2.3")]
    # a frame larger than a tx slot goes out by reference (nobody handles its ethertype)
    big = (link.peer_mac + STACK_MAC + struct.pack("!H", ETHERTYPE_TEST), b"j" * 12000)
    frames = [arp_request(mac, ip, KERNEL_IP) for mac, ip in senders]
    written = link.send_batch([frames[0], big, frames[1]])
    replies = []
    deadline = time.monotonic() + 5
    while len(replies) < len(senders) and time.monotonic() < deadline:
        if wait_readable(link.fd, 0.5):
            replies.extend(arp_replies(link.receive_batch()))
    link.close()
    return {"written": written, "replies": replies, "peer_mac": link.peer_mac}


def test_tap_send_batch_arp_request_gets_reply(make_netns) -> None:
    result = in_child(_tap_send_batch_arp, make_netns())
    assert result["written"] == 3
    assert sorted(result["replies"]) == sorted(
        [(result["peer_mac"], KERNEL_IP, STACK_IP), (result["peer_mac"], KERNEL_IP, "192.0.2.3")]
    )


def _tap_oversize(ns: str) -> dict:
    link = kernel_side_tap(ns, mtu=9500)  # the arena was sized at open time, for 9000
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(b"big" * 3100, (STACK_IP, 9999))  # 9300 bytes: frame larger than a slot
    sock.sendto(b"small", (STACK_IP, 9999))
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        if wait_readable(link.fd, 0.5):
            got.extend(udp_payloads(link.receive_batch(), 9999))
    link.close()
    return {"got": got, "oversize": link.rx_oversize, "slot": link.slot_size}


def test_tap_frame_larger_than_slot_is_reported_not_truncated(make_netns) -> None:
    result = in_child(_tap_oversize, make_netns())
    assert result["got"] == [b"small"]
    assert result["oversize"] == 1


def _loop_round_trip(ns: str) -> dict:
    link = kernel_side_tap(ns)
    replies: list = []
    with Loop() as loop:
        queue = loop.add_link(link, lambda frames, now: replies.extend(arp_replies(frames)))
        observed: list[str] = []
        loop.frame_observers.append(lambda direction, frame, now: observed.append(direction))
        queue.append(arp_request(STACK_MAC, STACK_IP, KERNEL_IP))
        loop.call_later(5.0, lambda now: loop.stop())
        loop.add_deadline_source(lambda: 0.0 if replies else None, lambda now: loop.stop())
        loop.run()
        result = {
            "replies": replies,
            "tx": loop.counters.tx_packets,
            "tx_bytes": loop.counters.tx_bytes,
            "observed": observed,
        }
    link.close()
    return result


def test_loop_sends_queue_and_dispatches_reply(make_netns) -> None:
    result = in_child(_loop_round_trip, make_netns())
    assert [r[1:] for r in result["replies"]] == [(KERNEL_IP, STACK_IP)]
    assert result["tx"] == 1
    assert result["tx_bytes"] == 60
    assert result["observed"][0] == "tx" and "rx" in result["observed"]


def _tap_errors(ns: str) -> dict:
    netns.setns(ns)
    out = {}
    first = TapLink("nst0")
    try:
        TapLink("nst0")
    except LinkBusyError as err:
        out["busy"] = str(err)
    try:
        TapLink("a-name-that-is-far-too-long")
    except LinkError as err:
        out["long"] = str(err)
    try:
        PacketLink("nosuch0")
    except LinkNotFoundError as err:
        out["missing"] = str(err)
    first.close()
    first.close()
    os.setgid(65534)
    os.setuid(65534)  # an unprivileged user cannot open /dev/net/tun
    try:
        TapLink("nst1")
    except LinkPermissionError as err:
        out["perm"] = str(err)
    return out


def test_open_errors_are_one_line_and_typed(make_netns) -> None:
    result = in_child(_tap_errors, make_netns())
    assert result["busy"] == "interface nst0 is in use"
    assert "bad interface name" in result["long"]
    assert result["missing"] == "interface nosuch0 does not exist"
    assert "needs root or CAP_NET_ADMIN" in result["perm"]
    assert all("\n" not in message for message in result.values())


# -- AF_PACKET over a veth pair between two namespaces -----------------------------------------
def _veth_between(ns_a: str, ns_b: str) -> None:
    """In the child: veth va (in ns_a) <-> vb (moved to ns_b), both up, IPv6 off."""
    netns.setns(ns_a)
    with IPRoute() as ipr:
        ipr.link("add", ifname="va", kind="veth", peer="vb")
        vb = ipr.link_lookup(ifname="vb")[0]
        fd = os.open(f"/var/run/netns/{ns_b}", os.O_RDONLY)
        try:
            ipr.link("set", index=vb, net_ns_fd=fd)
        finally:
            os.close(fd)
        for path in ("/proc/sys/net/ipv6/conf/va/disable_ipv6",):
            with open(path, "w") as f:
                f.write("1")
        ipr.link("set", index=ipr.link_lookup(ifname="va")[0], state="up")
    netns.setns(ns_b)
    with IPRoute() as ipr:
        with open("/proc/sys/net/ipv6/conf/vb/disable_ipv6", "w") as f:
            f.write("1")
        ipr.link("set", index=ipr.link_lookup(ifname="vb")[0], state="up")


def _wait_oper_up(name: str, timeout: float = 5.0) -> None:
    """A veth end says UP only once its peer is up too; frames sent before that are lost."""
    deadline = time.monotonic() + timeout
    with IPRoute() as ipr:
        while time.monotonic() < deadline:
            (link,) = ipr.get_links(ipr.link_lookup(ifname=name)[0])
            if link.get_attr("IFLA_OPERSTATE") == "UP":
                return
            time.sleep(0.02)
    raise TimeoutError(f"{name} did not come up")


def _packet_link_over_veth(
    ns_a: str,
    ns_b: str,
    count: int,
    ring: str = "off",
    geometry: RingGeometry | None = None,
    pad: int = 46,
) -> dict:
    _veth_between(ns_a, ns_b)
    _wait_oper_up("vb")
    receiver = PacketLink("vb", max_batch=32, ring=ring, geometry=geometry)  # opened in ns_b
    netns.setns(ns_a)
    _wait_oper_up("va")
    sender = PacketLink("va", max_batch=32)  # sockets keep the namespace they were made in
    header = receiver.mac + sender.mac + struct.pack("!H", ETHERTYPE_TEST)
    frames = [
        (header, struct.pack("!I", i), memoryview(bytes([i % 256]) * (pad + i)))
        for i in range(count)
    ]
    written = 0
    deadline = time.monotonic() + 5
    while written < count and time.monotonic() < deadline:
        written += sender.send_batch(frames[written:])
    got: list[bytes] = []
    batches = []
    while len(got) + receiver.rx_kernel_dropped < count and time.monotonic() < deadline:
        if not wait_readable(receiver.fd, 0.5):
            continue
        batch = receiver.receive_batch()
        batches.append(len(batch))
        got.extend(bytes(f) for f in batch if f[12:14] == struct.pack("!H", ETHERTYPE_TEST))
    time.sleep(0.05)
    echoed = [f for f in sender.receive_batch() if f[12:14] == struct.pack("!H", ETHERTYPE_TEST)]
    result = {
        "written": written,
        "got": got,
        "expected": [b"".join(f) for f in frames],
        "batches": batches,
        "echoed": len(echoed),
        "macs": (sender.mac, receiver.mac),
        "mtu": sender.mtu,
        "rx_mode": receiver.rx_mode,
        "ring": receiver.ring_stats(),
        "oversize": receiver.rx_oversize,
        "kernel_dropped": receiver.rx_kernel_dropped,
    }
    sender.close()
    receiver.close()
    return result


@pytest.mark.parametrize("ring", ["off", "auto"])
def test_packet_link_send_and_receive_batches_over_veth(make_netns, ring: str) -> None:
    result = in_child(_packet_link_over_veth, make_netns(), make_netns(), 100, ring)
    assert result["rx_mode"] == ("recvmmsg" if ring == "off" else "tpacket_v3 ring")
    assert result["written"] == 100
    assert result["got"] == result["expected"]
    assert max(result["batches"]) > 1
    assert result["echoed"] == 0  # PACKET_IGNORE_OUTGOING: our own frames are not read back
    assert result["mtu"] == 1500
    assert len(set(result["macs"])) == 2


def test_packet_ring_walks_blocks_across_batches_in_order(make_netns) -> None:
    """Page-sized blocks hold a dozen or two of these frames, and a batch (32) stops inside a
    block: 300 frames, 46 to 345 bytes (about 80 KB with their tpacket headers, within the
    128 KB ring: the sender does not wait), come out whole and in order across many blocks."""
    tiny = RingGeometry(block_size=4096, block_nr=32)
    result = in_child(_packet_link_over_veth, make_netns(), make_netns(), 300, "auto", tiny)
    assert result["rx_mode"] == "tpacket_v3 ring"
    assert result["written"] == 300
    assert result["got"] == result["expected"]
    assert result["oversize"] == 0
    assert result["ring"]["blocks"] >= 15  # frames from many blocks
    assert result["kernel_dropped"] == 0


def test_packet_ring_overflow_is_counted_as_kernel_drops(make_netns) -> None:
    """A 16 KiB ring cannot hold 300 frames sent before the receiver reads: the kernel drops
    the rest and PACKET_STATISTICS says how many; every frame is either read, whole and in
    order, or counted."""
    tiny = RingGeometry(block_size=4096, block_nr=4)
    result = in_child(_packet_link_over_veth, make_netns(), make_netns(), 300, "auto", tiny)
    assert result["written"] == 300
    got, expected = result["got"], result["expected"]
    assert result["kernel_dropped"] > 0
    assert len(got) + result["kernel_dropped"] == 300
    it = iter(expected)
    assert all(frame in it for frame in got)  # a subsequence: in order, none altered


def test_packet_ring_never_walks_a_block_twice_in_one_batch(make_netns) -> None:
    """Two page-sized blocks hold two 1.4 KB frames each, a batch may take 32: one batch
    walks both blocks and must stop there (both wait to be given back by the next batch), not
    wrap around and hand out the first block's frames again."""
    tiny = RingGeometry(block_size=4096, block_nr=2)
    result = in_child(_packet_link_over_veth, make_netns(), make_netns(), 8, "auto", tiny, 1400)
    got, expected = result["got"], result["expected"]
    assert len(got) + result["kernel_dropped"] == 8, (len(got), result["kernel_dropped"])
    it = iter(expected)
    assert all(frame in it for frame in got)  # no frame twice, in order


def _partial_checksums_over_veth(ns_a: str, ns_b: str, ring: str) -> dict:
    """The kernel's UDP datagrams and TCP SYN from ns_a (veth tx checksumming on, as by
    default: CHECKSUM_PARTIAL) and one raw frame with a wrong UDP checksum, read in ns_b by a
    PacketLink without the virtio-net header."""
    _veth_between(ns_a, ns_b)
    _wait_oper_up("vb")
    receiver = PacketLink("vb", max_batch=32, ring=ring)  # offload "off": plain frames
    netns.setns(ns_a)
    _wait_oper_up("va")
    with IPRoute() as ipr:
        va = ipr.link_lookup(ifname="va")[0]
        ipr.addr("add", index=va, address=KERNEL_IP, prefixlen=24)
        ipr.neigh("add", dst=STACK_IP, lladdr=receiver.mac.hex(":"), ifindex=va,
                  state=NUD_PERMANENT)  # fmt: skip
    sender = PacketLink("va", max_batch=4)
    bad = sc_l2.Ether(dst=receiver.mac, src=sender.mac) / sc_inet.IP(src=KERNEL_IP, dst=STACK_IP)
    bad = bytes(bad / sc_inet.UDP(sport=4000, dport=9, chksum=0x1234) / b"corrupt")
    assert sender.send_batch([(bad,)]) == 1
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for size in (1, 100, 1400):
        udp.sendto(b"x" * size, (STACK_IP, 9))
    gso = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gso.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 1000)
    gso.sendto(b"g" * 3000, (STACK_IP, 9))  # three datagrams as one super-datagram
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setblocking(False)
    tcp.connect_ex((STACK_IP, 9))  # its SYN; nothing answers
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(got) < 6 and time.monotonic() < deadline:
        if wait_readable(receiver.fd, 0.2):
            got += [bytes(f) for f in receiver.receive_batch() if f[12:14] == b"\x08\x00"]
    result = {"frames": got, "completed": receiver.rx_csum_completed, "bad": bad}
    for closing in (udp, gso, tcp, sender, receiver):
        closing.close()
    return result


@pytest.mark.parametrize("ring", ["off", "auto"])
def test_packet_link_completes_the_kernels_partial_checksums(make_netns, ring: str) -> None:
    """--link packet --offload off over a veth: the peer kernel leaves TCP/UDP checksums to a
    NIC the veth does not have; PACKET_AUXDATA (recvmmsg) or the ring's frame status says
    so, and the link completes them as that NIC would. A frame whose checksum is wrong (not
    partial) passes as it came, to be dropped as the wire showed it; so does a UDP
    super-datagram (UDP_SEGMENT), whose one checksum would make its datagrams one."""
    result = in_child(_partial_checksums_over_veth, make_netns(), make_netns(), ring)
    frames = [sc_l2.Ether(f) for f in result["frames"]]
    assert result["bad"] in result["frames"]  # untouched, byte for byte
    (big,) = [f for f in frames if sc_inet.UDP in f and len(f[sc_inet.UDP].payload) == 3000]
    given = big[sc_inet.UDP].chksum
    del big[sc_inet.UDP].chksum
    assert sc_l2.Ether(bytes(big))[sc_inet.UDP].chksum != given  # left partial
    kernel = [f for f in frames if bytes(f) != result["bad"] and f is not big]
    assert sorted(len(f[sc_inet.UDP].payload) for f in kernel if sc_inet.UDP in f) == [1, 100, 1400]
    assert sum(1 for f in kernel if sc_inet.TCP in f and f[sc_inet.TCP].flags == "S") == 1
    for frame in kernel:
        l4 = frame[sc_inet.UDP] if sc_inet.UDP in frame else frame[sc_inet.TCP]
        given = l4.chksum
        del l4.chksum
        assert sc_l2.Ether(bytes(frame))[type(l4)].chksum == given, frame.summary()
    assert result["completed"] == 4
