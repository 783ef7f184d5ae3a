"""The front over IPv6, without a TAP: `socks.allow` of both families (config, check-config), the
SOCKS allow check against the stack's on-link networks of both families, and UDP replies that
leave from the address of ours the peer wrote to (forwards; UdpSocket.sendto's `src`)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from scapy.layers import inet6 as s6

from netstack.cli import main
from netstack.config import ConfigError, build_config
from netstack.front.forward import UdpForward
from netstack.front.port import StackPort
from netstack.front.socks import SocksServer
from netstack.front.spec import parse_forward_flag
from netstack.front.stats import ForwardStats, SocksStats
from netstack.io.loop import Loop
from netstack.wire import ipv6 as wipv6
from tests.unit.tcp.test_tcp6 import v6_host
from tests.unit.test_host_ipv6 import OUR_LL_S, STATIC_S, feed, frames, peer

V4 = ipaddress.IPv4Interface("192.0.2.2/24")
V6 = (ipaddress.IPv6Interface("2001:db8::2/64"), ipaddress.IPv6Interface("fe80::1234/64"))
ip = ipaddress.ip_address


def test_socks_allow_takes_networks_of_both_families(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = build_config({"socks.allow": ["192.0.2.0/24", "2001:db8:5::/48", "fe80::/10"]})
    assert config.socks_allow == (
        ipaddress.IPv4Network("192.0.2.0/24"),
        ipaddress.IPv6Network("2001:db8:5::/48"),
        ipaddress.IPv6Network("fe80::/10"),
    )
    with pytest.raises(ConfigError, match=r"socks\.allow"):
        build_config({"socks.allow": ["2001:db8::/129"]})
    good = tmp_path / "good.toml"
    good.write_text(
        '[socks]\nlisten = "127.0.0.1:1080"\nallow = ["2001:db8::/64", "192.0.2.0/24"]\n'
    )
    assert main(["check-config", str(good)]) == 0
    assert 'socks.allow = ["2001:db8::/64", "192.0.2.0/24"]' in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[socks]\nallow = ["2001:db8::zz/64"]\n')
    assert main(["check-config", str(bad)]) == 2


def test_forward_targets_take_bracketed_ipv6() -> None:
    spec = parse_forward_flag("tcp:80=[::1]:8080")
    assert spec.target == ("::1", 8080) and str(spec) == "tcp:80=[::1]:8080"
    assert parse_forward_flag("udp:53=[2001:db8::1]:5353").target == ("2001:db8::1", 5353)


def socks_server(allow=None, v6=V6) -> SocksServer:
    loop = Loop()
    port = StackPort(loop, None, None, lambda: V4, lambda: None, lambda: v6)
    config = SimpleNamespace(
        socks_max_sessions=4, socks_handshake_timeout=1.0, socks_idle_timeout=1.0,
        socks_bind_timeout=1.0,
        socks_allow=allow, socks_username=None, socks_listen=("127.0.0.1", 0),
    )  # fmt: skip
    return SocksServer(port, config, SocksStats())


def test_socks_default_allow_is_the_on_link_networks_of_both_families() -> None:
    server = socks_server()
    try:
        assert server.allow == (
            ipaddress.IPv4Network("192.0.2.0/24"),
            ipaddress.IPv6Network("2001:db8::/64"),
            ipaddress.IPv6Network("fe80::/64"),
        )
        for yes in ("192.0.2.1", "2001:db8::1", "2001:db8::ffff:1", "fe80::99"):
            assert server.allowed(ip(yes)), yes
        # beyond the prefixes, ours, multicast, unspecified, the IPv4 broadcast
        for no in ("198.51.100.1", "2001:db8:1::1", "2001:db8::2", "fe80::1234", "ff02::1",
                   "::", "192.0.2.2", "192.0.2.255", "::ffff:192.0.2.1"):  # fmt: skip
            assert not server.allowed(ip(no)), no
    finally:
        server.close()


def test_socks_configured_allow_of_both_families() -> None:
    nets = (ipaddress.IPv6Network("2001:db8:9::/48"), ipaddress.IPv4Network("198.51.100.0/24"))
    server = socks_server(allow=nets)
    try:
        assert server.allowed(ip("2001:db8:9:1::5")) and server.allowed(ip("198.51.100.7"))
        assert not server.allowed(ip("2001:db8::1")) and not server.allowed(ip("192.0.2.1"))
    finally:
        server.close()
    off = socks_server(v6=())  # IPv6 off: the on-link IPv4 network only
    try:
        assert off.allow == (ipaddress.IPv4Network("192.0.2.0/24"),)
        assert not off.allowed(ip("2001:db8::1"))
    finally:
        off.close()


def test_udp_sendto_from_a_chosen_address() -> None:
    host = v6_host()  # the peer 2001:db8::1 resolved
    sock = host.udp.bind(5000, lambda *a: None)
    dst = (wipv6.from_str("2001:db8::1"), 6000)
    host.udp.now = 2.0
    assert sock.sendto(b"a", dst)
    assert sock.sendto(b"b", dst, wipv6.from_str(OUR_LL_S))
    assert sock.sendto(b"c", dst, wipv6.from_str("2001:db8::77"))  # not ours: RFC 6724's
    sent = [(f[s6.IPv6].src, bytes(f[s6.UDP].payload)) for f in frames(host) if f.haslayer(s6.UDP)]
    assert sent == [(STATIC_S, b"a"), (OUR_LL_S, b"b"), (STATIC_S, b"c")]


def test_udp_forward_replies_from_the_address_the_peer_wrote_to() -> None:
    """One peer port writing to our static and link-local addresses makes two flows; each
    reply leaves from the address its request went to (a connected peer socket needs that)."""
    host = v6_host()  # the peer 2001:db8::1 resolved
    loop = Loop()
    echo = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    echo.bind(("::1", 0))
    echo.settimeout(5)
    port = StackPort(loop, host.tcp, host.udp, lambda: V4, lambda: None)
    spec = parse_forward_flag(f"udp:5353=[::1]:{echo.getsockname()[1]}")
    forward = UdpForward(port, spec, ForwardStats("udp"))
    try:
        replies = []
        for i, ours in enumerate((STATIC_S, OUR_LL_S)):
            request = peer(ours, src="2001:db8::1") / s6.UDP(sport=40000, dport=5353) / (b"q%d" % i)
            feed(host, request, 2.0 + i)
            data, addr = echo.recvfrom(100)
            assert data == b"q%d" % i
            echo.sendto(b"r%d" % i, addr)
            for _ in range(50):  # the forward's kernel socket becomes readable
                loop.run_once(0.05)
                if host.tx:
                    break
            replies += [
                (f[s6.IPv6].src, f[s6.IPv6].dst, f[s6.UDP].sport, f[s6.UDP].dport, f[s6.UDP].load)
                for f in frames(host)
                if f.haslayer(s6.UDP)
            ]
        assert replies == [
            (STATIC_S, "2001:db8::1", 5353, 40000, b"r0"),
            (OUR_LL_S, "2001:db8::1", 5353, 40000, b"r1"),
        ]
        assert len(forward.flows) == 2
    finally:
        forward.stop_listening()
        loop.close()
        echo.close()


def socks_connect(server: SocksServer, loop: Loop, host_text: str, port: int) -> bytes:
    """A kernel client: greeting, CONNECT to [host_text]:port (ATYP 4); the reply it gets."""
    client = socket.create_connection(server.sock.getsockname(), timeout=5)  # type: ignore[union-attr]
    with client:
        client.sendall(b"\x05\x01\x00")
        client.sendall(
            b"\x05\x01\x00\x04" + ipaddress.IPv6Address(host_text).packed + port.to_bytes(2, "big")
        )
        for _ in range(40):
            loop.run_once(0.02)
        got = b""
        while len(got) < 4 and (chunk := client.recv(100)):
            got += chunk
        assert got[:2] == b"\x05\x00"  # the method: no authentication
        return got[2:]


def stack_socks(host, allow=None) -> tuple[SocksServer, Loop]:
    loop = Loop()
    port = StackPort(loop, host.tcp, host.udp, lambda: V4, lambda: None, lambda: V6)
    config = SimpleNamespace(
        socks_max_sessions=4, socks_handshake_timeout=5.0, socks_idle_timeout=5.0,
        socks_bind_timeout=5.0,
        socks_allow=allow, socks_username=None, socks_listen=("127.0.0.1", 0),
    )  # fmt: skip
    return SocksServer(port, config, SocksStats()), loop


def test_socks_connect_to_ipv6_with_ipv6_off_gets_reply_8() -> None:
    from tests.unit.hosttools import make_host

    host = make_host()  # IPv4 only
    nets = (ipaddress.IPv6Network("2001:db8::/64"),)
    server, loop = stack_socks(host, allow=nets)
    try:
        reply = socks_connect(server, loop, "2001:db8::1", 80)
        assert reply[:2] == b"\x05\x08"  # address type not supported
        assert server.stats.errors == {"bad_address_type": 1}
    finally:
        server.close()
        loop.close()


def test_socks_connect_beyond_any_route_gets_reply_3() -> None:
    host = v6_host()  # no router advertised: only the on-link /64 is reachable
    server, loop = stack_socks(host, allow=(ipaddress.IPv6Network("2001:db8:99::/48"),))
    try:
        reply = socks_connect(server, loop, "2001:db8:99::1", 80)
        assert reply[:2] == b"\x05\x03"  # network unreachable
        assert server.stats.errors == {"unreachable": 1}
        assert not host.tcp.conns
    finally:
        server.close()
        loop.close()
