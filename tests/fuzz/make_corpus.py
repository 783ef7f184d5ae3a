"""Write the seed corpora (tests/fuzz/corpus/<target>/) from frames scapy builds.

    python tests/fuzz/make_corpus.py

Scapy is the independent builder (the wire tests cross-check against it too), so the seeds
are real frames in the shapes peers send: Linux's SYN option layout, SACK blocks, IP options,
fragments, ICMP errors quoting TCP and UDP. Each seed is cut to the layer its target parses.
The `host` seeds are conversations with the fuzz host's live connections (hostfuzz.py): in
sequence, so the fuzzer starts deep inside the TCP state machine. File names are the SHA-1 of
the content, as libFuzzer names its own.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from scapy.layers import inet6 as s6  # noqa: E402
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402

from netstack.wire import ipv6 as wipv6  # noqa: E402
from tests.fuzz import hostfuzz as hf  # noqa: E402

PEER, OURS = "192.0.2.1", "192.0.2.2"
PEER6, OURS6 = wipv6.to_str(hf.PEER_IP6), wipv6.to_str(hf.OUR_IP6)
PEER_LL6, OUR_LL6 = wipv6.to_str(hf.PEER_LL6), wipv6.to_str(hf.OUR_LL6)
PEER_MAC, OUR_MAC = "02:aa:bb:cc:dd:02", "02:aa:bb:cc:dd:01"
LINUX_SYN_OPTS = [
    ("MSS", 1460),
    ("SAckOK", b""),
    ("Timestamp", (12345, 0)),
    ("NOP", None),
    ("WScale", 7),
]


def eth(payload, dst: str = OUR_MAC):
    return Ether(dst=dst, src=PEER_MAC) / payload


def scapy_frames() -> list[bytes]:
    ip = IP(src=PEER, dst=OURS)
    tcp_seg = TCP(sport=40000, dport=80, seq=1000, ack=2000, flags="A")
    packets = [
        eth(ARP(op=1, hwsrc=PEER_MAC, psrc=PEER, pdst=OURS), "ff:ff:ff:ff:ff:ff"),
        eth(ARP(op=2, hwsrc=PEER_MAC, psrc=PEER, hwdst=OUR_MAC, pdst=OURS)),
        eth(ip / ICMP(type=8, id=0x1234, seq=1) / (b"ping" * 14)),
        eth(ip / ICMP(type=0, id=1, seq=2) / b"pong"),
        eth(ip / ICMP(type=3, code=3) / IP(src=OURS, dst=PEER) / UDP(sport=7, dport=5000)),
        eth(
            ip
            / ICMP(type=3, code=4, nexthopmtu=1200)
            / IP(src=OURS, dst=PEER)
            / TCP(sport=7, dport=40007, seq=hf.OUR_ISN + 1)
        ),
        eth(ip / ICMP(type=11, code=0) / IP(src=OURS, dst=PEER) / TCP(sport=9, dport=40009)),
        eth(ip / UDP(sport=5000, dport=7) / b"udp echo"),
        eth(ip / UDP(sport=5000, dport=9) / b"discard"),
        eth(ip / UDP(sport=5000, dport=19) / b""),
        eth(ip / UDP(sport=5000, dport=999) / b"nobody"),
        eth(IP(src=PEER, dst=OURS, options=[b"\x07\x07\x04\x00\x00\x00\x00"]) / UDP(dport=7)),
        eth(ip / TCP(sport=40000, dport=7, seq=1000, flags="S", options=LINUX_SYN_OPTS)),
        eth(ip / TCP(sport=40000, dport=7, seq=1000, flags="S", options=[("MSS", 536)])),
        eth(ip / TCP(sport=40000, dport=19, seq=1000, ack=5, flags="SA", options=LINUX_SYN_OPTS)),
        eth(ip / tcp_seg),
        eth(
            ip
            / TCP(
                sport=40000,
                dport=7,
                seq=1000,
                ack=2000,
                flags="PA",
                options=[("NOP", None), ("NOP", None), ("Timestamp", (5, 6))],
            )
            / b"data"
        ),
        eth(
            ip
            / TCP(
                sport=40000,
                dport=7,
                seq=1000,
                ack=2000,
                flags="A",
                options=[
                    ("NOP", None),
                    ("NOP", None),
                    ("Timestamp", (5, 6)),
                    ("NOP", None),
                    ("NOP", None),
                    ("SAck", (3000, 4000, 5000, 6000, 7000, 8000)),
                ],
            )
        ),
        eth(
            ip
            / TCP(
                sport=40000,
                dport=7,
                seq=1000,
                ack=2000,
                flags="A",
                options=[("SAck", (3000, 4000, 5000, 6000, 7000, 8000, 9000, 9500))],
            )
        ),
        eth(ip / TCP(sport=40000, dport=7, seq=1000, ack=2000, flags="FA")),
        eth(ip / TCP(sport=40000, dport=7, seq=1000, flags="R")),
        eth(ip / TCP(sport=40000, dport=7, seq=1000, ack=2000, flags="RA")),
        eth(ip / TCP(sport=40000, dport=7, seq=1000, ack=2000, flags="UA", urgptr=3) / b"urg"),
        eth(ip / TCP(sport=40000, dport=999, seq=1, flags="S")),
    ]
    frames = [bytes(p) for p in packets]
    big = ip / UDP(sport=5000, dport=7) / (bytes(range(256)) * 12)
    frames += [bytes(eth(f)) for f in fragment(big, fragsize=1000)]
    return frames


def eth6(packet, dst: str = OUR_MAC):
    """An IPv6 frame from the peer; to a group, the group's MAC (RFC 2464 §7)."""
    ip = packet[s6.IPv6]
    if ip.dst.startswith("ff"):
        dst = "33:33:" + wipv6.from_str(ip.dst)[12:].hex(":")
    return Ether(dst=dst, src=PEER_MAC) / packet


def scapy_frames6() -> list[bytes]:
    """What a v6 peer sends the fuzz host: echo (whole and in fragments), ND both ways, an RA,
    MLD, UDP to the services and a closed port, errors quoting our packets, odd chains."""
    ip = s6.IPv6(src=PEER6, dst=OURS6)
    ll = s6.IPv6(src=PEER_LL6, dst=OUR_LL6)
    nd = s6.IPv6(src=PEER_LL6, dst=OUR_LL6, hlim=255)
    solicited = "ff02::1:ff" + OUR_LL6[-7:]
    all_nodes = s6.IPv6(src=PEER_LL6, dst="ff02::1", hlim=255)
    lla = s6.ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC)
    ours_udp = s6.IPv6(src=OURS6, dst=PEER6) / s6.UDP(sport=7, dport=5000) / b"echoed"
    alert = s6.IPv6ExtHdrHopByHop(options=[s6.RouterAlert()])
    packets = [
        ip / s6.ICMPv6EchoRequest(id=1, seq=1, data=b"ping6" * 11),
        ll / s6.ICMPv6EchoRequest(id=2, seq=1, data=b"link-local"),
        s6.IPv6(src=PEER_LL6, dst="ff02::1") / s6.ICMPv6EchoRequest(id=3, seq=1),
        ip / s6.ICMPv6EchoReply(id=9, seq=9),
        s6.IPv6(src=PEER_LL6, dst=solicited, hlim=255) / s6.ICMPv6ND_NS(tgt=OUR_LL6) / lla,
        s6.IPv6(src="::", dst=solicited, hlim=255) / s6.ICMPv6ND_NS(tgt=OUR_LL6),  # DAD
        nd / s6.ICMPv6ND_NS(tgt=OUR_LL6) / lla,  # NUD probe, unicast
        nd / s6.ICMPv6ND_NS(tgt="2001:db8::77") / lla,  # not ours
        nd / s6.ICMPv6ND_NA(tgt=PEER_LL6, R=0, S=1, O=1) / s6.ICMPv6NDOptDstLLAddr(lladdr=PEER_MAC),
        all_nodes / s6.ICMPv6ND_NA(tgt=OURS6, S=0, O=1) / s6.ICMPv6NDOptDstLLAddr(lladdr=PEER_MAC),
        all_nodes
        / s6.ICMPv6ND_RA(routerlifetime=1800, chlim=64)
        / s6.ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC)
        / s6.ICMPv6NDOptMTU(mtu=1400)
        / s6.ICMPv6NDOptPrefixInfo(
            prefix="2001:db8:1::", prefixlen=64, validlifetime=86400, preferredlifetime=14400
        ),
        s6.IPv6(src=PEER_LL6, dst="ff02::2", hlim=255) / s6.ICMPv6ND_RS() / lla,
        nd / s6.ICMPv6ND_Redirect(tgt="fe80::99", dst=PEER6),
        s6.IPv6(src=PEER_LL6, dst=OUR_LL6, hlim=64) / s6.ICMPv6ND_NS(tgt=OUR_LL6),  # hop limit
        s6.IPv6(src=PEER_LL6, dst="ff02::1", hlim=1) / alert / s6.ICMPv6MLQuery2(),
        s6.IPv6(src=PEER_LL6, dst="ff02::16", hlim=1)
        / alert
        / s6.ICMPv6MLReport2(records=[s6.ICMPv6MLDMultAddrRec(dst="ff02::1:ff00:1")]),
        ip / s6.UDP(sport=5000, dport=7) / b"udp6 echo",
        ip / s6.UDP(sport=5000, dport=9) / b"discard",
        ip / s6.UDP(sport=5000, dport=19) / b"",
        ip / s6.UDP(sport=5000, dport=999) / b"nobody",
        ip / s6.UDP(sport=5000, dport=7, chksum=0) / b"zero sum",
        ip / s6.ICMPv6PacketTooBig(mtu=1280) / bytes(ours_udp),
        ip / s6.ICMPv6DestUnreach(code=4) / bytes(ours_udp),
        ip / s6.ICMPv6TimeExceeded(code=0) / bytes(ours_udp),
        ip / s6.ICMPv6ParamProblem(code=0, ptr=6) / bytes(ours_udp),
        ip / s6.IPv6ExtHdrFragment(id=5, m=0, offset=0) / s6.ICMPv6EchoRequest(),  # atomic
        ip / s6.IPv6ExtHdrHopByHop() / s6.IPv6ExtHdrDestOpt() / s6.UDP(dport=7) / b"chain",
        ip / s6.IPv6ExtHdrRouting(type=0, segleft=1, addresses=[PEER6]) / s6.UDP(dport=7),
        ip
        / s6.IPv6ExtHdrDestOpt(options=[s6.HBHOptUnknown(otype=0x87, optdata=b"x")])
        / s6.UDP(dport=7),
        ip / s6.IPv6ExtHdrDestOpt(nh=59),
        ip / s6.TCP(sport=40000, dport=7, flags="S"),  # no TCP over v6 yet: param problem
        ip / s6.IPv6ExtHdrFragment(id=6, m=1, offset=0, nh=60) / bytes((58, 1)) / bytes(6),
    ]
    frames = [bytes(eth6(p)) for p in packets]
    big = ip / s6.IPv6ExtHdrFragment(id=0x77) / s6.ICMPv6EchoRequest(id=4, seq=1, data=bytes(3000))
    frames += [bytes(eth6(f)) for f in s6.fragment6(big, 1280)]
    return frames


def layer_seeds(frames: list[bytes]) -> dict[str, list[bytes]]:
    seeds: dict[str, list[bytes]] = {
        name: []
        for name in (
            "ethernet",
            "arp",
            "ipv4",
            "icmp",
            "udp",
            "tcp",
            "checksum",
            "ipv6",
            "icmpv6",
            "mldv2",
        )
    }
    for raw in frames:
        p = Ether(raw)
        seeds["ethernet"].append(raw)
        seeds["checksum"].append(b"\0\0\0\0\x03\x07" + raw[14:])
        if ARP in p:
            seeds["arp"].append(bytes(p[ARP]))
            continue
        if s6.IPv6 in p:
            ip6 = bytes(p[s6.IPv6])
            seeds["ipv6"].append(ip6)
            icmp6 = _icmpv6_message(ip6)
            if icmp6 is not None:
                seeds["icmpv6"].append(ip6[8:40] + icmp6)
                if icmp6[0] == 143:  # an MLDv2 report: its groups, as mldv2_target reads them
                    count = int.from_bytes(icmp6[6:8], "big")
                    groups = [icmp6[8 + 20 * i + 4 : 8 + 20 * i + 20] for i in range(count)]
                    seeds["mldv2"].append(bytes((icmp6[8],)) + b"".join(groups))
            continue
        ipb = bytes(p[IP])
        seeds["ipv4"].append(ipb)
        ihl = (ipb[0] & 0x0F) * 4
        body = ipb[ihl:]
        ips = ipb[12:20]
        proto = ipb[9]
        if p[IP].frag or p[IP].flags.MF:
            continue
        if proto == 1:
            seeds["icmp"].append(body)
        elif proto == 17:
            seeds["udp"].append(ips + body)
        elif proto == 6:
            seeds["tcp"].append(ips + body)
    return seeds


def _icmpv6_message(packet: bytes) -> bytes | None:
    """The ICMPv6 message of an unfragmented IPv6 packet, after its extension headers."""
    view = memoryview(packet)
    try:
        header, payload = wipv6.parse(view)
        chain = wipv6.walk(payload, header.next_header)
    except wipv6.Malformed:
        return None
    if chain.fragment is not None or chain.upper != wipv6.ICMPV6:
        return None
    return bytes(payload[chain.offset :])


def host_seeds(frames: list[bytes]) -> list[bytes]:
    """Single frames, and conversations with the fuzz host's established connections."""
    echo_port, our_echo = hf.PEER_OPENS[0][:2]
    disc_port, our_disc = hf.PEER_OPENS[1][:2]
    seq, ack = hf.PEER_ISN + 1, hf.OUR_ISN + 1
    A, P, F, R, S = hf.wtcp.ACK, hf.wtcp.PSH, hf.wtcp.FIN, hf.wtcp.RST, hf.wtcp.SYN

    def ts(v: int):
        return hf.wtcp.TcpOptions(timestamp=(v, 0))

    def echo(seq_: int, flags: int, data: bytes = b"", ack_: int = ack, **kw) -> bytes:
        return hf.peer_tcp(echo_port, our_echo, seq_, ack_, flags, data, **kw)

    def disc(seq_: int, flags: int, data: bytes = b"", **kw) -> bytes:
        return hf.peer_tcp(disc_port, our_disc, seq_, ack, flags, data, **kw)

    data = bytes(range(256)) * 4
    sack = hf.wtcp.TcpOptions(timestamp=(2000, 0), sack_blocks=((ack + 10, ack + 20),))
    conversations = [
        # echo: data in order, the echo comes back, the peer ACKs it, closes
        [
            echo(seq, A | P, b"hello", options=ts(1100)),
            40,
            echo(seq + 5, A, ack_=ack + 5, options=ts(1200)),
            echo(seq + 5, A | F, ack_=ack + 5, options=ts(1300)),
            500,
        ],
        # echo: out of order, then the hole filled; a duplicate; a window of zero
        [
            echo(seq + 1000, A, data, options=ts(1100)),
            echo(seq, A, data, options=ts(1101)),
            echo(seq, A, data, options=ts(1102)),
            300,
            echo(seq + 2024, A, ack_=ack + 2024, window=0, options=ts(1200)),
            5000,
            echo(seq + 2024, A, ack_=ack + 2024, window=100, options=ts(1300)),
        ],
        # echo: SACK from the peer, old and future segments, RST in and out of window
        [
            echo(seq, A | P, data[:100], options=ts(1100)),
            1,
            echo(seq + 100, A, ack_=ack, options=sack),
            echo(seq - 5000, A, b"old", options=ts(1)),
            echo(seq + 10**6, A, b"future", options=ts(1200)),
            echo(seq + 7, R),
            echo(seq + 100, R),
        ],
        # discard: data, a SYN on the live connection (challenge ACK), FIN, time passes
        [disc(seq, A | P, data), disc(seq, S), disc(seq + len(data), A | F), 2000, 60000],
        # a new connection to chargen, then its ACKs as the data flows
        [
            hf.peer_tcp(41019, 19, 7, 0, S, options=hf.wtcp.TcpOptions(1460, 2, True)),
            hf.peer_tcp(41019, 19, 8, hf.OUR_ISN + 1, A),
            100,
            hf.peer_tcp(41019, 19, 8, hf.OUR_ISN + 1 + 1460, A, window=3000),
            1000,
        ],
        # the active open's SYN-ACK, then data
        [
            hf.peer_tcp(
                5555,
                hf.ACTIVE_LOCAL_PORT,
                900,
                hf.OUR_ISN + 1,
                S | A,
                options=hf.wtcp.TcpOptions(1460, 3, True, (), (77, 0)),
            ),
            hf.peer_tcp(
                5555,
                hf.ACTIVE_LOCAL_PORT,
                901,
                hf.OUR_ISN + 1,
                A | P,
                b"hi there",
                options=hf.wtcp.TcpOptions(timestamp=(80, 0)),
            ),
        ],
    ]
    seeds = [hf.encode(f) for f in frames]
    seeds += [hf.encode(*conv) for conv in conversations]
    # IPv6: a fragmented echo in order and reversed, with a timeout after a lost piece; ping,
    # RA then a ping to the SLAAC address, and the RA's prefix withdrawn
    v6 = [f for f in frames if f[12:14] == b"\x86\xdd"]
    pieces = [f for f in v6 if Ether(f).haslayer(s6.IPv6ExtHdrFragment)][-3:]
    ra = next(f for f in v6 if Ether(f).haslayer(s6.ICMPv6ND_RA))
    slaac = wipv6.to_str(b"\x20\x01\x0d\xb8\x00\x01" + bytes(2) + hf.OUR_LL6[8:])
    withdraw = Ether(ra)
    withdraw[s6.ICMPv6NDOptPrefixInfo].preferredlifetime = 0
    del withdraw[s6.ICMPv6ND_RA].cksum
    seeds += [
        hf.encode(*pieces),
        hf.encode(*reversed(pieces)),
        hf.encode(pieces[0], pieces[2], 31000, 31000),  # a clock step is 32.767 s at most
        hf.encode(
            v6[0],
            10,
            v6[1],
            10,
            ra,
            1500,
            bytes(eth6(s6.IPv6(src=PEER6, dst=slaac) / s6.ICMPv6EchoRequest(id=7, seq=1))),
            bytes(withdraw),
            1000,
        ),
    ]
    return seeds


def reassembly_seeds() -> list[bytes]:
    """Fragment sequences in reasmfuzz.py's format: whole datagrams of both families in
    order, reversed and shuffled, with header parts, the largest ones, an overlap, a timeout,
    evictions."""
    import random

    rec = struct.Struct("!BHH2x")

    def frag(six: int, more: int, which: int, head: int, offset: int, size: int) -> bytes:
        return rec.pack((six << 7) | (more << 6) | (which << 4) | head, offset // 8, size)

    def whole(six: int, which: int, total: int, step: int, head: int = 0, order: str = "") -> bytes:
        recs = [frag(six, int(off + step < total), which, head, off, min(step, total - off))
                for off in range(0, total, step)]  # fmt: skip
        if order == "reversed":
            recs.reverse()
        elif order == "shuffled":
            random.Random(which).shuffle(recs)
        return b"".join(recs)

    return [
        whole(0, 0, 4000, 1480),
        whole(1, 1, 4000, 1232, order="reversed"),
        whole(0, 2, 9000, 1480, head=3, order="shuffled"),
        whole(1, 3, 3000, 1232, head=2, order="shuffled"),
        whole(0, 0, 65515, 16000),
        whole(1, 0, 65535, 16000),
        frag(0, 1, 0, 0, 0, 1480) + frag(0, 1, 0, 0, 1472, 1480) + frag(0, 0, 0, 0, 1480, 100),
        frag(1, 1, 0, 0, 0, 1232) + rec.pack(0xCF, 6000, 0) + frag(1, 0, 0, 0, 1232, 10),
        whole(0, 0, 60000, 16000, order="reversed")[:-7]
        + whole(0, 1, 60000, 16000)[:-7]
        + whole(1, 2, 60000, 16000)
        + whole(0, 3, 100, 8),
    ]


def write(name: str, items: list[bytes]) -> None:
    out = HERE / "corpus" / name
    out.mkdir(parents=True, exist_ok=True)
    for item in items:
        (out / hashlib.sha1(item).hexdigest()).write_bytes(item)


def main() -> None:
    frames = scapy_frames() + scapy_frames6()
    for name, items in layer_seeds(frames).items():
        write(name, items)
    write("host", host_seeds(frames))
    write("reassembly", reassembly_seeds())
    # the reports nd.py sends: change-to-exclude (join) and -include (leave) for
    # solicited-node groups, one and two at a time
    groups = [bytes.fromhex("ff0200000000000000000001ff") + hf.OUR_IP6[13:],
              bytes.fromhex("ff0200000000000000000001ff") + hf.OUR_LL6[13:]]  # fmt: skip
    write("mldv2", [b"\x04" + groups[0], b"\x04" + b"".join(groups), b"\x03" + groups[1]])
    for d in sorted((HERE / "corpus").iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} seeds")


if __name__ == "__main__":
    main()
