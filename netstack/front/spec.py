"""The front's settings, parsed and checked without I/O: forwards and the SOCKS front.

A forward comes from a TOML table or from `--forward PROTO:PORT=HOST:PORT`:

    [[forward]]
    proto = "tcp"              # or "udp"
    listen = 80                # port on the stack's address
    to = "127.0.0.1:8080"      # a kernel socket address in the stack's own namespace
    max_connections = 256      # optional: TCP connections / UDP flows at once
    idle_timeout = 3600        # optional: seconds without a byte before the session ends

`to` must be an IP literal: the forward never resolves names (a resolver would block the loop).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

PROTOS = ("tcp", "udp")
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_IDLE_TIMEOUT = {"tcp": 3600.0, "udp": 60.0}
MAX_SESSIONS_LIMIT = 65536
_FORWARD_KEYS = {"proto", "listen", "to", "max_connections", "idle_timeout"}


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class ForwardSpec:
    """One forward: the stack's `proto` port `listen` relays to the kernel address `to`."""

    proto: str
    listen: int
    to_host: str
    to_port: int
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = 0.0  # 0: the protocol's default (DEFAULT_IDLE_TIMEOUT)

    @property
    def name(self) -> str:
        """The metric label and log name: `tcp:80`. Unique per config (checked)."""
        return f"{self.proto}:{self.listen}"

    @property
    def target(self) -> tuple[str, int]:
        return self.to_host, self.to_port

    @property
    def idle(self) -> float:
        return self.idle_timeout or DEFAULT_IDLE_TIMEOUT[self.proto]

    def __str__(self) -> str:
        host = f"[{self.to_host}]" if ":" in self.to_host else self.to_host
        return f"{self.name}={host}:{self.to_port}"

    __repr__ = __str__


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{what} must be a port number")
    text = str(value).strip()
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"{what} must be a port between 1 and 65535, not {value!r}")
    return int(text)


def parse_address(value: Any, what: str = "to") -> tuple[str, int]:
    """IP:PORT or [IPv6]:PORT, IP literals only."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be IP:PORT, like 127.0.0.1:8080")
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what} must be IP:PORT, like 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{what}: {host!r} is not an IP address (no name lookups)") from None
    return str(ip), _port(port, f"{what} port")


def parse_forward_flag(text: str) -> ForwardSpec:
    """`PROTO:PORT=HOST:PORT`, e.g. `tcp:80=127.0.0.1:8080`."""
    left, sep, right = text.strip().partition("=")
    proto, colon, port = left.partition(":")
    if not sep or not colon:
        raise ValueError(f"expected PROTO:PORT=HOST:PORT like tcp:80=127.0.0.1:8080, not {text!r}")
    return parse_forward_table({"proto": proto, "listen": port, "to": right})


def parse_forward_table(table: dict[str, Any]) -> ForwardSpec:
    unknown = set(table) - _FORWARD_KEYS
    if unknown:
        raise ValueError(f"unknown forward key(s) {', '.join(sorted(unknown))}")
    for key in ("proto", "listen", "to"):
        if key not in table:
            raise ValueError(f"a forward needs '{key}'")
    proto = str(table["proto"]).strip().lower()
    if proto not in PROTOS:
        raise ValueError(f"forward proto must be tcp or udp, not {table['proto']!r}")
    host, port = parse_address(table["to"])
    max_conns = table.get("max_connections", DEFAULT_MAX_CONNECTIONS)
    if isinstance(max_conns, bool) or not isinstance(max_conns, int):
        raise ValueError("max_connections must be a number")
    if not 1 <= max_conns <= MAX_SESSIONS_LIMIT:
        raise ValueError(f"max_connections must be between 1 and {MAX_SESSIONS_LIMIT}")
    idle = table.get("idle_timeout", 0)
    if isinstance(idle, bool) or not isinstance(idle, int | float) or not 0 <= idle <= 86400:
        raise ValueError("idle_timeout must be seconds between 0 (default) and 86400")
    return ForwardSpec(proto, _port(table["listen"], "listen"), host, port, max_conns, float(idle))


def parse_forwards(value: Any) -> tuple[ForwardSpec, ...]:
    """The `forward` setting: a list of tables and/or flag strings; no port twice."""
    if value is None or value == "" or value == ():
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    specs: list[ForwardSpec] = []
    for item in items:
        if isinstance(item, ForwardSpec):
            specs.append(item)
        elif isinstance(item, dict):
            specs.append(parse_forward_table(item))
        elif isinstance(item, str):
            specs.append(parse_forward_flag(item))
        else:
            raise ValueError(f"a forward is a table or PROTO:PORT=HOST:PORT, not {item!r}")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"{spec.name} is forwarded twice")
        seen.add(spec.name)
    return tuple(specs)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: Any) -> tuple[Network, ...] | None:
    """`socks.allow`: a list of networks of either family (CIDR, e.g. "192.0.2.0/24",
    "2001:db8::/64"); None means the on-link networks."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError('expected a list of networks like ["192.0.2.0/24", "2001:db8::/64"]')
    nets = []
    for item in items:
        if isinstance(item, Network):
            nets.append(item)
            continue
        if not isinstance(item, str):
            raise ValueError(f"expected a network like 192.0.2.0/24 or 2001:db8::/64, not {item!r}")
        nets.append(ipaddress.ip_network(item.strip(), strict=False))
    return tuple(nets)


def parse_secret(value: Any) -> str:
    """A SOCKS username or password (RFC 1929: 1-255 bytes)."""
    if not isinstance(value, str) or not 1 <= len(value.encode()) <= 255:
        raise ValueError("must be 1 to 255 bytes")
    return value


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
