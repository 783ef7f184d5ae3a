"""The `host` fuzz target: a whole Host's receive path, with listeners and live connections.

Input format (so that a corpus of real frames is meaningful): records of a 2-byte big-endian
length followed by that many bytes of frame; a length with the top bit set is no frame but
"advance the clock by (length & 0x7FFF) ms and run the timers". A short last record takes
what is left.

The host is built afresh for every input, deterministic (fixed ISNs, secret and rng):
services on TCP/UDP 7, 9 and 19, the peer's MAC learnt, three connections established by the
peer (echo with every option, discard and chargen without), and one active open in SYN_SENT.
IPv6 is on beside IPv4, with the addresses of the integration world (so captured frames fit):
a static 2001:db8::2/64 and the RFC 7217 link-local of test_ipv6.py's secret, both past DAD,
the peer's MAC learnt for both of its v6 addresses by its Neighbor Solicitations; UDP over v6
reaches the same services, TCP included (one engine, listeners for both families).
Checked for every input:
  - no exception from the receive path or the timers;
  - every frame is accounted for: a drop counted with its reason, or something handled;
  - every frame the host sends parses, checksums verified (our own output is never malformed),
    IPv6 with its extension headers, ICMPv6 and UDP over v6 included;
  - the TCP engine runs in checked mode: no TCP invariant (netstack/proto/tcp/invariants.py)
    is broken, whatever the peer sends.
"""

from __future__ import annotations

import random

from netstack.api.services import start_services
from netstack.counters import Counters
from netstack.proto.addr6 import LINK_LOCAL_PREFIX, AddrState, stable_iid
from netstack.proto.host import Host, HostConfig
from netstack.proto.tcp import isn as isnmod
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.v6 import Ipv6HostConfig
from netstack.wire import arp as warp
from netstack.wire import ethernet as weth
from netstack.wire import icmp as wicmp
from netstack.wire import icmpv6 as wicmp6
from netstack.wire import ipv4 as wipv4
from netstack.wire import ipv6 as wipv6
from netstack.wire import tcp as wtcp
from netstack.wire import udp as wudp
from netstack.wire.checksum import checksum

OUR_MAC = bytes.fromhex("02aabbccdd01")
PEER_MAC = bytes.fromhex("02aabbccdd02")
OUR_IP = wipv4.ip_from_str("192.0.2.2")
PEER_IP = wipv4.ip_from_str("192.0.2.1")
OUR_ISN = 0x10000000
PEER_ISN = 0x20000000
SERVICES = {"udp_echo": 7, "udp_discard": 9, "tcp_echo": 7, "tcp_discard": 9, "tcp_chargen": 19}
# (peer port, our port, peer's SYN options): the connections the peer opens at setup.
PEER_OPENS = (
    (40007, 7, wtcp.TcpOptions(1460, 7, True, (), (1000, 0))),
    (40009, 9, wtcp.TcpOptions(1460)),
    (40019, 19, None),
)
ACTIVE_REMOTE = (PEER_IP, 5555)
ACTIVE_LOCAL_PORT = 50000
START = 100.0
# IPv6: the integration world's addresses (tests/integration/test_ipv6.py) and secret.
SECRET6 = bytes.fromhex("00112233445566778899aabbccddeeff")
OUR_IP6 = wipv6.from_str("2001:db8::2")
PEER_IP6 = wipv6.from_str("2001:db8::1")
OUR_LL6 = LINK_LOCAL_PREFIX[:8] + stable_iid(LINK_LOCAL_PREFIX, "tap0", SECRET6)
PEER_LL6 = wipv6.from_str("fe80::2")
CLOCK = 0x8000


def peer_tcp(
    sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"",
    window: int = 65535, options: wtcp.TcpOptions | None = None,
) -> bytes:  # fmt: skip
    """A frame from the peer carrying one TCP segment."""
    header = wtcp.build(PEER_IP, OUR_IP, sport, dport, seq, ack, flags, window, payload,
                        options=options)  # fmt: skip
    return ip_frame(header + payload, wipv4.PROTO_TCP)


def ip_frame(payload: bytes, protocol: int, ident: int = 1) -> bytes:
    header = wipv4.build(PEER_IP, OUR_IP, protocol, len(payload), ident=ident)
    return weth.build(OUR_MAC, PEER_MAC, weth.ETHERTYPE_IPV4) + header + payload


def arp_request() -> bytes:
    return weth.build(weth.BROADCAST, PEER_MAC, weth.ETHERTYPE_ARP) + warp.build(
        warp.OP_REQUEST, PEER_MAC, PEER_IP, b"\0" * 6, OUR_IP
    )


def handled(c: Counters) -> int:
    """Frames accounted for: drops plus everything some engine took."""
    return (
        c.total_drops()
        + c.arp_requests_rx
        + c.arp_replies_rx
        + sum(n for (direction, _), n in c.icmp.items() if direction == "rx")
        + c.udp_rx
        + c.tcp_segments_rx
        + c.ipv4_fragments_rx
        + sum(n for (direction, _), n in c.icmp6.items() if direction == "rx")
        + c.ipv6_fragments_rx
    )


def peer_ip6(payload: bytes, next_header: int, src: bytes = PEER_IP6, dst: bytes = OUR_IP6,
             hop_limit: int = 64) -> bytes:  # fmt: skip
    """A frame from the peer carrying one IPv6 packet (to a group: the group's MAC)."""
    mac = b"\x33\x33" + dst[12:] if dst[0] == 0xFF else OUR_MAC
    header = wipv6.build(src, dst, next_header, len(payload), hop_limit)
    return weth.build(mac, PEER_MAC, wipv6.ETHERTYPE_IPV6) + header + payload


def peer_icmp6(icmp_type: int, body: bytes, src: bytes = PEER_IP6, dst: bytes = OUR_IP6,
               hop_limit: int = 64, code: int = 0) -> bytes:  # fmt: skip
    message = wicmp6.build(src, dst, icmp_type, code, body)
    return peer_ip6(message, wipv6.ICMPV6, src, dst, hop_limit)


def neighbor_solicit(src: bytes, target: bytes) -> bytes:
    """The peer asks for `target` from `src`, giving its MAC (so the host learns it)."""
    msg = wicmp6.NdMessage(wicmp6.TYPE_NEIGHBOR_SOLICIT, target=target, source_lla=PEER_MAC)
    group = bytes.fromhex("ff0200000000000000000001ff") + target[13:]
    return peer_icmp6(msg.type, wicmp6.nd_body(msg), src, group, hop_limit=255)


def build_host() -> Host:
    v6 = Ipv6HostConfig(interface="tap0", secret=SECRET6, static=((OUR_IP6, 64),))
    config = HostConfig(mac=OUR_MAC, address=OUR_IP, prefix_len=24, tcp=TcpConfig(checked=True),
                        ipv6=v6)  # fmt: skip
    host = Host(config, Counters(), random.Random(7))
    host.tcp.secrets = isnmod.Secrets(b"fuzz-secret")
    host.tcp.choose_isn = lambda conn, now: OUR_ISN
    start_services(host.udp, dict(SERVICES), host.tcp)
    # IPv6 first, two seconds early: DAD over (RFC 4862 §5.4) before the TCP clock starts.
    host.start(START - 2.0)
    host.poll(START - 2.0)
    host.poll(START - 0.5)
    assert host.v6 is not None
    assert all(e.state is AddrState.PREFERRED for e in host.v6.addresses), list(host.v6.addresses)
    for src, target in ((PEER_LL6, OUR_LL6), (PEER_IP6, OUR_IP6)):
        host.receive_batch([memoryview(neighbor_solicit(src, target))], START - 0.5)
    host.tx.clear()
    host.receive_batch([memoryview(arp_request())], START)
    for sport, dport, options in PEER_OPENS:
        host.receive_batch(
            [memoryview(peer_tcp(sport, dport, PEER_ISN, 0, wtcp.SYN, options=options))], START
        )
        ts = (1001, 0) if options is not None and options.timestamp else None
        final = wtcp.TcpOptions(timestamp=ts) if ts else None
        host.receive_batch(
            [memoryview(peer_tcp(sport, dport, PEER_ISN + 1, OUR_ISN + 1, wtcp.ACK,
                                 options=final))],
            START,
        )  # fmt: skip
    host.tcp.connect(ACTIVE_REMOTE, local_port=ACTIVE_LOCAL_PORT)
    host.tcp.flush(START)
    check_output(host)
    return host


def check_output(host: Host) -> None:
    """Every frame the host sent parses with its checksums verified; no TCP invariant broke
    (a violation inside a connection's output is caught by the engine, which resets the
    connection: the checker's record is what tells)."""
    violations = host.tcp.invariants.violations  # type: ignore[attr-defined]
    assert not violations, violations
    for pieces in host.tx:
        frame = memoryview(b"".join(bytes(p) for p in pieces))
        eth, payload = weth.parse(frame)
        if eth.ethertype == weth.ETHERTYPE_ARP:
            warp.parse(payload)
            continue
        if eth.ethertype == wipv6.ETHERTYPE_IPV6:
            check_ipv6(payload)
            continue
        assert eth.ethertype == weth.ETHERTYPE_IPV4, eth
        ip, body = wipv4.parse(payload)
        if ip.more_fragments or ip.frag_offset:
            continue
        if ip.protocol == wipv4.PROTO_TCP:
            wtcp.parse(body, ip.src, ip.dst)
        elif ip.protocol == wipv4.PROTO_UDP:
            wudp.parse(body, ip.src, ip.dst)
        elif ip.protocol == wipv4.PROTO_ICMP:
            wicmp.parse(body)
    host.tx.clear()


def check_ipv6(packet: memoryview) -> None:
    """One IPv6 packet we sent: header, extension headers, and (unless a fragment) ICMPv6,
    UDP or TCP with its checksum verified."""
    ip, payload = wipv6.parse(packet)
    chain = wipv6.walk(payload, ip.next_header, wipv6.is_multicast(ip.dst))
    if chain.fragment is not None:  # as for IPv4: the headers checked, the data not rejoined
        return
    body = payload[chain.offset :]
    if chain.upper == wipv6.ICMPV6:
        wicmp6.parse(body, ip.src, ip.dst)
    elif chain.upper == wipv6.UDP:
        pseudo = wipv6.pseudo_header(ip.src, ip.dst, wipv6.UDP, len(body))
        assert body[6:8] != b"\0\0" and not checksum(pseudo, body), bytes(packet).hex()
    elif chain.upper == wipv6.TCP:  # RSTs, SYN-ACKs and cookies over IPv6
        pseudo = wipv6.pseudo_header(ip.src, ip.dst, wipv6.TCP, len(body))
        assert len(body) >= wtcp.HEADER_LEN and not checksum(pseudo, body), bytes(packet).hex()
    else:
        raise AssertionError(f"we sent next header {chain.upper}")


def records(data: bytes):
    """(frame bytes, None) or (None, milliseconds to advance), per the input format."""
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            yield data[i:], None
            return
        n = int.from_bytes(data[i : i + 2], "big")
        i += 2
        if n & CLOCK:
            yield None, n & 0x7FFF
            continue
        yield data[i : i + n], None
        i += n


def encode(*items: bytes | int) -> bytes:
    """The input format from frames (bytes) and clock steps (int milliseconds)."""
    out = b""
    for item in items:
        if isinstance(item, int):
            out += (CLOCK | item).to_bytes(2, "big")
        else:
            out += len(item).to_bytes(2, "big") + item
    return out


def host_target(data: bytes) -> None:
    host = build_host()
    now = START
    for frame, advance in records(data):
        if frame is None:
            now += advance / 1000.0
            host.poll(now)
        else:
            before = handled(host.counters)
            host.receive_batch([memoryview(frame)], now)
            assert handled(host.counters) > before, frame.hex()
        check_output(host)
    for later in (0.5, 5.0, 130.0):  # the timers: delayed ACKs, retransmissions, TIME_WAIT
        host.poll(now + later)
        check_output(host)
