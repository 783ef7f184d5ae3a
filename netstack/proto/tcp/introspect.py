"""The TCP engine's connections as plain data, for `netstack ss` (like Linux's `ss -ti`).

Must run on the loop thread (it walks the engine's dicts and each connection's scoreboard);
the metrics server's /connections endpoint asks the loop for it through a LoopDoor
(api/admin.py) and serves the JSON the loop returns.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from netstack.proto.tcp.timewait import TimeWait
from netstack.wire.ipv4 import ip_to_str

if TYPE_CHECKING:
    from netstack.proto.tcp.engine import TcpEngine


def address_str(address: int | bytes) -> str:
    """An IPv4 int or 16-byte IPv6 address as text (RFC 5952 for IPv6)."""
    if type(address) is bytes:
        return str(ipaddress.IPv6Address(address))
    return ip_to_str(address)


def endpoint(address: int | bytes, port: int) -> str:
    """address:port, the IPv6 address bracketed as `ss` prints it ([2001:db8::1]:9)."""
    if type(address) is bytes:
        return f"[{address_str(address)}]:{port}"
    return f"{ip_to_str(address)}:{port}"


def listen_address(engine: TcpEngine) -> str:
    """Where a listener listens, as `ss` prints it. A listener is a port on every address of
    the engine: with IPv6 attached it takes both families, which Linux's `ss` shows as `*`
    (a socket on `::` without IPV6_V6ONLY); IPv4 only, the stack's one address."""
    if engine.net6 is not None:
        return "*"
    return ip_to_str(engine.local_ip) if engine.local_ip else "0.0.0.0"


def connection_table(engine: TcpEngine, now: float) -> dict[str, object]:
    """{"now": ..., "listeners": [...], "connections": [...]}: JSON-ready values only."""
    local = listen_address(engine)
    listeners = [
        {
            "state": "listen",
            "local": f"{local}:{port}",
            "peer": "*:*",
            "recv_q": len(listener.accept_queue),  # as ss: the accept queue and its limit
            "send_q": listener.backlog,
            "syn_queue": len(listener.syn_queue),
        }
        for port, listener in sorted(engine.listeners.items())
    ]
    connections = []
    for conn in engine.conns.values():
        info = conn.info()
        info["tcp_info"] = conn.tcp_info(now)
        for key in [k for k in info if k.startswith("tcpi_")]:
            del info[key]  # kept once, under tcp_info
        connections.append(
            {
                "local": endpoint(conn.local_ip, conn.local_port),
                "peer": endpoint(conn.remote_ip, conn.remote_port),
                **_queues(conn),
                **info,
            }
        )
    connections.sort(key=lambda c: (c["local"], c["peer"]))
    return {"now": now, "listeners": listeners, "connections": connections}


def _queues(conn) -> dict[str, int]:
    """Recv-Q and Send-Q as ss shows them: unread bytes; unacknowledged plus unsent ones
    (a TIME_WAIT record, timewait.py, has neither)."""
    if type(conn) is TimeWait:
        return {"recv_q": 0, "send_q": 0}
    return {
        "recv_q": conn.rcvbuf.queued,
        "send_q": conn.snd_base + conn.sndbuf.end - conn.snd_una,
    }
