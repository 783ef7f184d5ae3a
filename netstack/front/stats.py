"""The front's counters: plain ints the loop bumps, read by metrics.FrontCollector at scrape
time. Label values are bounded: forward names come from the config, reasons from the closed
tuples below."""

from __future__ import annotations

import dataclasses

# Why a forwarded session failed or ended abnormally (netstack_forward_errors_total{reason}).
FORWARD_ERRORS = (
    "refused",  # the target refused the connection (RST / ECONNREFUSED)
    "unreachable",  # no route / host unreachable / network unreachable
    "connect_timeout",  # the target did not answer in time
    "target_reset",  # the target reset an established connection
    "client_reset",  # the stack-side peer reset
    "limit",  # max_connections reached: the new session was refused
    "idle_timeout",  # no byte either way for idle_timeout seconds
    "send_failed",  # a datagram could not be sent (buffer full, no route)
    "removed",  # the forward was removed by a reload and its sessions outlived shutdown_timeout
    "other",  # any other socket error
)

# SOCKS failures (netstack_socks_errors_total{reason}).
SOCKS_ERRORS = (
    "bad_version",
    "truncated",  # the client closed mid-handshake
    "bad_address_type",
    "bad_command",
    "oversized",
    "no_acceptable_method",
    "auth_failed",
    "hostname_refused",
    "not_allowed",  # destination outside socks.allow (reply 2)
    "refused",
    "unreachable",
    "connect_timeout",
    "bind_timeout",  # no connection came to a BIND's port in time (reply 6)
    "unexpected_peer",  # a connection to a BIND's port from another host: reset
    "handshake_timeout",
    "idle_timeout",
    "limit",
    "reset",
    "other",
)


@dataclasses.dataclass
class ForwardStats:
    """One forward's counters (kept after the forward is removed, so counters never go back)."""

    proto: str
    sessions: int = 0  # accepted connections / new UDP flows
    active: int = 0
    bytes_to_target: int = 0
    bytes_from_target: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)

    def error(self, reason: str) -> None:
        if reason not in FORWARD_ERRORS:  # labels stay a closed set
            reason = "other"
        self.errors[reason] = self.errors.get(reason, 0) + 1


@dataclasses.dataclass
class SocksStats:
    sessions: int = 0
    active: int = 0
    connects: int = 0
    binds: int = 0  # BINDs whose connection came (the second reply sent)
    udp_associations: int = 0
    bytes_to_target: int = 0
    bytes_from_target: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)

    def error(self, reason: str) -> None:
        if reason not in SOCKS_ERRORS:
            reason = "other"
        self.errors[reason] = self.errors.get(reason, 0) + 1


@dataclasses.dataclass
class FrontStats:
    forwards: dict[str, ForwardStats] = dataclasses.field(default_factory=dict)
    socks: SocksStats = dataclasses.field(default_factory=SocksStats)

    def forward(self, name: str, proto: str) -> ForwardStats:
        stats = self.forwards.get(name)
        if stats is None:
            stats = self.forwards[name] = ForwardStats(proto)
        return stats
