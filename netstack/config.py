"""Settings: one table drives defaults, TOML keys, CLI flags, validation and `check-config`.

A setting's TOML key is its dotted name (`services.udp_echo` lives in a `[services]` table);
its CLI flag, where it has one, is `--` plus the last part with dashes. Unknown keys and bad
values raise `ConfigError` with a one-line message naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from netstack.front.spec import (
    ForwardSpec,
    is_loopback_host,
    parse_forwards,
    parse_networks,
    parse_secret,
)
from netstack.io.fault import FaultSpec, parse_fault
from netstack.proto.tcp.config import TcpConfig
from netstack.wire.ethernet import mac_from_str, mac_to_str

LOG_LEVELS = ("debug", "info", "warning", "error")
TCP_CONGESTION_CONTROLS = ("cubic", "reno")  # netstack/proto/tcp/cc.py ALGORITHMS
LINKS = ("tap", "packet")
OFFLOADS = ("auto", "off")  # netstack/io/offload.py
SOFT_OFFLOADS = ("auto", "off")  # netstack/io/softoffload.py
TAP_TX = ("auto", "uring", "writev")  # netstack/io/tap.py: how frames go into the TAP
PACKET_RINGS = ("auto", "off")  # netstack/io/packet.py
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_NONE_WORDS = ("none", "off", "false", "")


class ConfigError(ValueError):
    """A bad setting; str() is the one line shown to the user."""


def _is_none(value: Any) -> bool:
    return (
        value is None
        or value is False
        or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)
    )


def _interface_address(value: Any) -> ipaddress.IPv4Interface:
    if not isinstance(value, str) or "/" not in value:
        raise ValueError("expected an address with a prefix length, like 192.0.2.2/24")
    iface = ipaddress.IPv4Interface(value)
    if iface.network.prefixlen > 30:
        raise ValueError("prefix length must be 30 or shorter")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise ValueError("address is the network or broadcast address of its subnet")
    if iface.ip.is_multicast or iface.ip.is_loopback or iface.ip.is_unspecified:
        raise ValueError("address must be a unicast address")
    return iface


DHCP = "dhcp"  # `address = "dhcp"`: the address comes from a DHCP server
STATE_DIRECTORY = Path("/var/lib/netstack")  # the systemd unit's StateDirectory=


def _address(value: Any) -> ipaddress.IPv4Interface | str:
    """The stack's address: ADDR/PREFIX, or "dhcp"."""
    if isinstance(value, str) and value.strip().lower() == DHCP:
        return DHCP
    return _interface_address(value)


AUTO6 = "auto"  # `address6 = "auto"`: link-local plus SLAAC


def _interface6(value: Any) -> ipaddress.IPv6Interface:
    if not isinstance(value, str) or "/" not in value:
        raise ValueError("expected an IPv6 address with a prefix length, like 2001:db8::2/64")
    iface = ipaddress.IPv6Interface(value)
    if iface.ip.is_multicast or iface.ip.is_unspecified or iface.ip.is_loopback:
        raise ValueError("address must be a unicast address")
    return iface


def _address6(value: Any) -> ipaddress.IPv6Interface | str | None:
    """The stack's IPv6 address: ADDR/PREFIX, "auto" or "none" (None)."""
    if _is_none(value):
        return None
    if isinstance(value, str) and value.strip().lower() == AUTO6:
        return AUTO6
    return _interface6(value)


def _secret(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected a hex string")
    secret = bytes.fromhex(value)
    if len(secret) < 16:
        raise ValueError("at least 16 bytes (32 hex digits), RFC 7217 section 5")
    return secret


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_optional(value: Any) -> Any:
        return None if _is_none(value) else parse(value)

    return parse_optional


def _ipv4(value: Any) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise ValueError("expected an IPv4 address like 192.0.2.1")
    return ipaddress.IPv4Address(value)


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse_int(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number

    return parse_int


BUSY_POLL_AUTO_US = 50  # busy_poll = "auto": the adaptive policy's budget (io/busypoll.py)


def _busy_poll(value: Any) -> int | str:
    """busy_poll: microseconds (0-1000) or "auto"."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _int_range(0, 1000)(value)
    except ValueError as err:
        raise ValueError(f"microseconds (0-1000) or auto: {err}") from None


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse_choice(value: Any) -> str:
        text = str(value).lower()
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse_choice


def _ifname(value: Any) -> str:
    if not isinstance(value, str) or not _IFNAME.match(value):
        raise ValueError("interface names are 1-15 characters of letters, digits, _ . : -")
    return value


def _mac(value: Any) -> bytes:
    mac = mac_from_str(str(value))
    if mac[0] & 1:
        raise ValueError("must be a unicast MAC address")
    return mac


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a file path")
    return Path(value)


def _port(value: Any) -> int:
    return _int_range(1, 65535)(value)


def _float_range(low: float, high: float) -> Callable[[Any], float]:
    def parse_float(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        number = float(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number

    return parse_float


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError("expected true or false")


class HostPort(NamedTuple):
    """A listening address; str() gives it back as HOST:PORT (IPv6 in brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def parse_host_port(value: Any) -> HostPort:
    """HOST:PORT with an IPv4 address, a hostname or a [bracketed] IPv6 address; port 1-65535."""
    if not isinstance(value, str):
        raise ValueError("expected HOST:PORT, like 127.0.0.1:9464")
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("expected HOST:PORT, like 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = str(ipaddress.IPv6Address(host[1:-1]))
    elif host.replace(".", "").isdigit():  # dotted digits: must be an IPv4 address
        host = str(ipaddress.IPv4Address(host))
    elif not _HOSTNAME.match(host):
        raise ValueError(f"bad host {host!r} (IPv6 addresses go in brackets: [::1]:9464)")
    return HostPort(host, _port(int(port)))


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    cli: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.key.rsplit(".", 1)[-1].replace("_", "-")

    @property
    def attr(self) -> str:
        return self.key.replace(".", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "link",
        _choice(LINKS),
        "tap",
        "tap: a TAP device; packet: AF_PACKET on an existing interface",
    ),
    Setting("interface", _ifname, "tap0", "interface to create or attach to"),
    Setting("address", _address, "192.0.2.2/24", "the stack's own address/prefix, or 'dhcp'"),
    Setting(
        "host_address",
        _optional(_interface_address),
        "192.0.2.1/24",
        "address given to the kernel side of the TAP, or 'none'",
    ),
    Setting("gateway", _optional(_ipv4), None, "default gateway for off-link destinations"),
    Setting("mtu", _optional(_int_range(576, 65535)), None, "link MTU (default: the interface's)"),
    Setting(
        "mac", _optional(_mac), None, "the stack's MAC (default: stable, locally administered)"
    ),
    Setting("pcap", _optional(_path), None, "write every frame to this pcap file"),
    Setting(
        "pcap_max_bytes",
        _int_range(4096, 2**40),
        64 * 2**20,
        "rotate the pcap at this size",
        cli=False,
    ),
    Setting("pcap_max_files", _int_range(1, 1000), 5, "pcap files kept when rotating", cli=False),
    Setting(
        "fault",
        parse_fault,
        None,
        "inject faults for testing: drop=0.05,dup=0.01,reorder=0.25,corrupt=0.001,delay=2ms,"
        "jitter=1ms,limit=4096,seed=N; 'rx:'/'tx:' before a key: that direction only",
    ),
    Setting("log_level", _choice(LOG_LEVELS), "info", "debug, info, warning or error"),
    Setting(
        "shutdown_timeout",
        _int_range(0, 600),
        5,
        "seconds connections get to close on SIGTERM before they are reset",
    ),
    Setting(
        "metrics_address",
        _optional(parse_host_port),
        "127.0.0.1:9464",
        "serve Prometheus metrics at http://HOST:PORT/metrics, or 'none'",
    ),
    Setting("services.udp_echo", _optional(_port), 7, "UDP echo port, or false", cli=False),
    Setting("services.udp_discard", _optional(_port), 9, "UDP discard port, or false", cli=False),
    Setting("services.tcp_echo", _optional(_port), 7, "TCP echo port, or false", cli=False),
    Setting("services.tcp_discard", _optional(_port), 9, "TCP discard port, or false", cli=False),
    Setting("services.tcp_chargen", _optional(_port), 19, "TCP chargen port, or false", cli=False),
    Setting(
        "tcp.congestion_control",
        _choice(TCP_CONGESTION_CONTROLS),
        "cubic",
        "TCP congestion control: cubic or reno",
        cli=False,
    ),
    Setting(
        "tcp.send_buffer",
        _int_range(4096, 64 << 20),
        512 * 1024,
        "TCP send buffer (bytes)",
        cli=False,
    ),
    Setting(
        "tcp.receive_buffer",
        _int_range(4096, 64 << 20),
        512 * 1024,
        "TCP receive buffer, the largest window offered (bytes)",
        cli=False,
    ),
    Setting(
        "tcp.rto_min",
        _float_range(0.001, 60.0),
        0.2,
        "TCP minimum retransmission timeout, seconds (RFC 6298 says 1.0; Linux uses 0.2)",
        cli=False,
    ),
    Setting(
        "tcp.syncookies",
        _bool,
        True,
        "answer SYNs with cookies when a SYN queue is full",
        cli=False,
    ),
    Setting(
        "tcp.pmtu_discovery",
        _bool,
        True,
        "RFC 1191 path MTU discovery: DF on TCP segments, frag-needed lowers the MSS",
        cli=False,
    ),
    Setting(
        "tcp.plpmtud",
        _bool,
        False,
        "RFC 4821 black-hole detection: lower the MSS after repeated timeouts (Linux's "
        "tcp_mtu_probing = 1)",
        cli=False,
    ),
    Setting(
        "dhcp_release",
        _bool,
        True,
        "with address = dhcp: give the lease back (DHCPRELEASE) on a clean shutdown",
    ),
    Setting(
        "dhcp_lease_file",
        _optional(_path),
        None,
        "with address = dhcp: where the lease is remembered for INIT-REBOOT; "
        f"none means {STATE_DIRECTORY}/dhcp-INTERFACE.json",
    ),
    # -- the front (netstack/front): kernel programs in, out and through the stack -------------
    Setting(
        "forward",
        parse_forwards,
        (),
        "[[forward]] tables (proto, listen, to, max_connections, idle_timeout); the flag "
        "--forward PROTO:PORT=HOST:PORT adds one (repeatable)",
        cli=False,  # cli.py adds the repeatable --forward itself
    ),
    Setting(
        "socks.listen",
        _optional(parse_host_port),
        None,
        "SOCKS5 front on this kernel HOST:PORT (flag --socks), or none (off)",
        cli=False,  # cli.py adds --socks
    ),
    Setting(
        "socks.allow",
        _optional(parse_networks),
        None,
        "networks of either family SOCKS may reach (default: the stack's on-link networks)",
        cli=False,
    ),
    Setting("socks.username", _optional(parse_secret), None, "SOCKS user (RFC 1929)", cli=False),
    Setting("socks.password", _optional(parse_secret), None, "SOCKS password", cli=False),
    Setting("socks.max_sessions", _int_range(1, 65536), 256, "SOCKS sessions at once", cli=False),
    Setting(
        "socks.handshake_timeout",
        _float_range(0.1, 600.0),
        10.0,
        "seconds a SOCKS client gets to finish its handshake",
        cli=False,
    ),
    Setting(
        "socks.idle_timeout",
        _float_range(1.0, 86400.0),
        3600.0,
        "seconds a SOCKS session may stay silent",
        cli=False,
    ),
    Setting(
        "socks.bind_timeout",
        _float_range(0.1, 86400.0),
        120.0,
        "seconds a SOCKS BIND waits for its one connection (then reply 6)",
        cli=False,
    ),
    Setting(
        "offload",
        _choice(OFFLOADS),
        "auto",
        "auto: virtio-net header with checksum offload and TSO/GSO super-frames where the "
        "kernel agrees; off: plain frames",
    ),
    Setting(
        "address6",
        _address6,
        AUTO6,
        "the stack's IPv6 address ADDR/PREFIX (plus a link-local one), 'auto' (link-local and "
        "SLAAC from router advertisements) or 'none' (no IPv6)",
    ),
    Setting(
        "host_address6",
        _optional(_interface6),
        "2001:db8::1/64",
        "IPv6 address given to the kernel side of the TAP, or 'none'",
    ),
    Setting(
        "ipv6_secret",
        _optional(_secret),
        None,
        "RFC 7217 secret (hex, 16+ bytes) for stable IPv6 interface IDs; none: kept in "
        f"{STATE_DIRECTORY}/ipv6-secret",
        cli=False,
    ),
    Setting(
        "packet_ring",
        _choice(PACKET_RINGS),
        "off",
        "--link packet receive: auto: a TPACKET_V3 mmap ring where the kernel allows it "
        "(recvmmsg otherwise); off: recvmmsg",
    ),
    Setting(
        "busy_poll",
        _busy_poll,
        "auto",
        "microseconds the loop keeps looking for the next frame after a turn that received "
        "some, before it sleeps (0: off; as Linux's net.core.busy_poll); auto (default): up to "
        f"{BUSY_POLL_AUTO_US} us, only while recent looks found frames with the CPU to themselves",
    ),
    Setting(
        "gso",
        _choice(SOFT_OFFLOADS),
        "auto",
        "auto: TCP sends 64 KB super-segments the link writer cuts into MSS frames in software "
        "when the link has no TSO (offload off or refused); off: one frame per segment",
    ),
    Setting(
        "gro",
        _choice(SOFT_OFFLOADS),
        "auto",
        "auto: the link reader merges one TCP flow's in-order segments of a receive batch in "
        "software when the link has no offloads; off: one segment per frame",
    ),
    Setting(
        "tap_tx",
        _choice(TAP_TX),
        "auto",
        "--link tap: how frames are written: uring: a batch (a cut super-segment) per "
        "io_uring_enter, so the receiver woken on our CPU runs once per batch, not per frame; "
        "writev: one writev each; auto: uring where the kernel allows io_uring, else writev",
    ),
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    link: str
    interface: str
    address: ipaddress.IPv4Interface | str  # or DHCP
    host_address: ipaddress.IPv4Interface | None
    gateway: ipaddress.IPv4Address | None
    mtu: int | None
    mac: bytes | None
    pcap: Path | None
    pcap_max_bytes: int
    pcap_max_files: int
    fault: FaultSpec | None
    log_level: str
    shutdown_timeout: int
    metrics_address: HostPort | None
    services_udp_echo: int | None
    services_udp_discard: int | None
    services_tcp_echo: int | None
    services_tcp_discard: int | None
    services_tcp_chargen: int | None
    tcp_congestion_control: str
    tcp_send_buffer: int
    tcp_receive_buffer: int
    tcp_rto_min: float
    tcp_syncookies: bool
    tcp_pmtu_discovery: bool
    tcp_plpmtud: bool
    dhcp_release: bool
    dhcp_lease_file: Path | None
    forward: tuple[ForwardSpec, ...]
    socks_listen: HostPort | None
    socks_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None
    socks_username: str | None
    socks_password: str | None
    socks_max_sessions: int
    socks_handshake_timeout: float
    socks_idle_timeout: float
    socks_bind_timeout: float
    offload: str
    address6: ipaddress.IPv6Interface | str | None  # or AUTO6; None: no IPv6
    host_address6: ipaddress.IPv6Interface | None
    ipv6_secret: bytes | None
    packet_ring: str
    busy_poll: int | str  # microseconds, or "auto"
    gso: str
    gro: str
    tap_tx: str

    @property
    def dhcp(self) -> bool:
        return self.address == DHCP

    def lease_file(self) -> Path:
        """Where the DHCP lease is remembered."""
        if self.dhcp_lease_file is not None:
            return self.dhcp_lease_file
        return STATE_DIRECTORY / f"dhcp-{self.interface}.json"

    def stack_mac(self) -> bytes:
        """The configured MAC, or a stable locally administered one derived from our identity."""
        if self.mac is not None:
            return self.mac
        ip = DHCP if isinstance(self.address, str) else self.address.ip
        digest = hashlib.sha256(f"netstack {self.interface} {ip}".encode()).digest()
        return bytes([(digest[0] & 0xFC) | 0x02]) + digest[1:6]

    def service_ports(self) -> dict[str, int | None]:
        return {"udp_echo": self.services_udp_echo, "udp_discard": self.services_udp_discard}

    def tcp_service_ports(self) -> dict[str, int | None]:
        return {
            "tcp_echo": self.services_tcp_echo,
            "tcp_discard": self.services_tcp_discard,
            "tcp_chargen": self.services_tcp_chargen,
        }

    def tcp_config(self) -> TcpConfig:
        """The TCP engine's tunables: the defaults, with what the settings name."""
        return TcpConfig(
            congestion_control=self.tcp_congestion_control,
            send_buffer=self.tcp_send_buffer,
            receive_buffer=self.tcp_receive_buffer,
            rto_min=self.tcp_rto_min,
            syncookies=self.tcp_syncookies,
            pmtu_discovery=self.tcp_pmtu_discovery,
            plpmtud=self.tcp_plpmtud,
            checked=os.environ.get("NETSTACK_CHECKED", "0") not in ("", "0"),  # tests' debug aid
        )

    def describe(self) -> str:
        """The effective settings, one `key = value` per line, TOML-like."""
        lines = []
        for setting in SETTINGS:
            value = getattr(self, setting.attr)
            if isinstance(value, bytes):
                value = mac_to_str(value)
            if setting.key == "socks.allow" and value is not None:
                value = "[" + ", ".join(f'"{net}"' for net in value) + "]"  # as written in TOML
            if setting.key in ("socks.password", "ipv6_secret") and value is not None:
                value = "(set)"  # check-config output lands in logs and tickets
            lines.append(f"{setting.key} = {'none' if value is None else value}")
        lines.append(f"# mac in use = {mac_to_str(self.stack_mac())}")
        if self.dhcp:
            lines.append(f"# dhcp lease file in use = {self.lease_file()}")
        return "\n".join(lines)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config into a flat {dotted key: raw value} dict."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    return _flatten(data)


def build_config(*layers: dict[str, Any], source: str = "config") -> Config:
    """Merge raw layers (later wins) over the defaults, validating every key and value."""
    raw: dict[str, Any] = {s.key: s.default for s in SETTINGS}
    for layer in layers:
        for key, value in layer.items():
            if key not in SETTINGS_BY_KEY:
                raise ConfigError(f"{source}: unknown setting '{key}'")
            raw[key] = value
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        value = raw[setting.key]
        try:
            values[setting.attr] = setting.parse(value) if value is not None else None
        except (ValueError, TypeError) as err:
            raise ConfigError(
                f"{source}: bad value for '{setting.key}' ({value!r}): {err}"
            ) from None
    config = Config(**values)
    if config.dhcp:
        if config.gateway is not None:
            raise ConfigError(f"{source}: bad value for 'gateway': with address = dhcp, "
                              "the gateway comes from the DHCP server")  # fmt: skip
        _check_ipv6(config, source)
        return config
    if config.gateway is not None and config.gateway not in config.address.network:
        raise ConfigError(
            f"{source}: bad value for 'gateway' ({config.gateway}): not in {config.address.network}"
        )
    if config.host_address is not None and config.host_address.ip == config.address.ip:
        raise ConfigError(f"{source}: bad value for 'host_address': same as 'address'")
    _check_ipv6(config, source)
    _check_front(config, source)
    return config


def _check_ipv6(config: Config, source: str) -> None:
    a6, h6 = config.address6, config.host_address6
    if isinstance(a6, ipaddress.IPv6Interface) and h6 is not None and a6.ip == h6.ip:
        raise ConfigError(f"{source}: bad value for 'host_address6': same as 'address6'")


def _check_front(config: Config, source: str) -> None:
    """Forwards must not take a service's port; SOCKS off loopback needs a password."""
    taken = {("udp", p) for p in config.service_ports().values() if p is not None} | {
        ("tcp", p) for p in config.tcp_service_ports().values() if p is not None
    }
    for spec in config.forward:
        if (spec.proto, spec.listen) in taken:
            raise ConfigError(
                f"{source}: bad value for 'forward' ({spec}): {spec.proto} port {spec.listen} "
                "is a built-in service's (turn it off in [services])"
            )
    has_user = config.socks_username is not None
    if has_user != (config.socks_password is not None):
        raise ConfigError(f"{source}: socks.username and socks.password go together")
    listen = config.socks_listen
    if listen is not None and not is_loopback_host(listen.host) and not has_user:
        raise ConfigError(
            f"{source}: bad value for 'socks.listen' ({listen}): listening beyond loopback "
            "needs socks.username and socks.password"
        )
