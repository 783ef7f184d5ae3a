"""Plain integer counters owned by the loop.

The packet path only does `counters.x += 1`; nothing here locks or calls a library. The
Prometheus exporter reads these at scrape time from another thread: reading an int attribute or
copying a small dict is atomic enough under the GIL for monotonically increasing counters.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from netstack.drops import Drop
from netstack.histogram import (
    BATCH_FRAMES_BOUNDS,
    ITERATION_SECONDS_BOUNDS,
    RTT_SECONDS_BOUNDS,
    Histogram,
)


@dataclasses.dataclass(slots=True)
class Counters:
    """Every counter of one stack instance; field names map onto metric names."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0

    arp_requests_rx: int = 0
    arp_requests_tx: int = 0
    arp_replies_rx: int = 0
    arp_replies_tx: int = 0
    arp_resolution_failures: int = 0

    ipv4_rx: int = 0
    ipv4_tx: int = 0
    ipv4_fragments_rx: int = 0
    ipv4_fragments_tx: int = 0
    ipv4_reassembled: int = 0
    ipv4_reassembly_failures: int = 0

    udp_rx: int = 0
    udp_tx: int = 0

    loop_wakeups: int = 0
    arp_conflicts: int = 0  # someone else claimed our IPv4 address (RFC 5227)

    # TCP (filled in by the TCP engine; exported from the start so rate() works at once).
    tcp_segments_rx: int = 0
    tcp_segments_tx: int = 0
    tcp_retransmitted_segments: int = 0
    tcp_fast_retransmits: int = 0
    tcp_timeouts: int = 0  # retransmission timer expiries
    tcp_active_opens: int = 0  # connect(): SYN sent
    tcp_passive_opens: int = 0  # SYN accepted by a listener
    tcp_resets_rx: int = 0
    tcp_resets_tx: int = 0
    tcp_syn_queue_overflows: int = 0
    tcp_accept_queue_overflows: int = 0
    tcp_syn_cookies_sent: int = 0
    tcp_syn_cookies_validated: int = 0
    tcp_syn_cookies_failed: int = 0  # an ACK to a listener that was not a valid cookie
    tcp_challenge_acks: int = 0  # RFC 5961 challenge ACKs sent (after rate limiting)

    # DHCP client (netstack/proto/dhcp.py)
    dhcp_renewals: int = 0  # leases extended by an ACK while renewing or rebinding
    dhcp_declines: int = 0  # acknowledged addresses another host answered for (RFC 5227)
    # Offloads: super-frames (virtio-net GSO) and the wire segments they stand for.
    gso_frames_rx: int = 0
    gso_frames_tx: int = 0
    gso_segments_rx: int = 0
    gso_segments_tx: int = 0

    # Path MTU (proto/pmtu.py): estimates lowered by validated reports.
    pmtu_updates: int = 0
    tcp_plpmtud_black_holes: int = 0  # MSS lowered by black-hole detection (RFC 4821/8899)
    # IPv6 (netstack/proto/ipv6.py, icmpv6.py, nd.py)
    ipv6_rx: int = 0
    ipv6_tx: int = 0
    ipv6_fragments_rx: int = 0
    ipv6_fragments_tx: int = 0
    ipv6_reassembled: int = 0
    ipv6_reassembly_failures: int = 0
    nd_solicitations_rx: int = 0
    nd_solicitations_tx: int = 0
    nd_advertisements_rx: int = 0
    nd_advertisements_tx: int = 0
    nd_router_solicitations_tx: int = 0
    nd_router_advertisements_rx: int = 0
    nd_resolution_failures: int = 0
    nd_dad_conflicts: int = 0  # an address of ours another node holds (RFC 4862 5.4.5)
    mld_reports_tx: int = 0
    loop_busy_polls: int = 0  # frames found by busy polling (Loop.busy_poll), not a wakeup
    loop_busy_poll_spins: int = 0  # busy-poll spins begun (fixed or auto: those it allowed)
    tcp_acks_filtered: int = 0  # pure ACKs superseded within a receive batch (ACK_HOLD)
    # ICMPv6 messages keyed by (direction, type name)
    icmp6: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)

    # Fixed-bucket histograms of plain ints (netstack/histogram.py): the loop and TCP observe.
    loop_batch_frames: Histogram = dataclasses.field(
        default_factory=lambda: Histogram(BATCH_FRAMES_BOUNDS)
    )
    loop_iteration_seconds: Histogram = dataclasses.field(
        default_factory=lambda: Histogram(ITERATION_SECONDS_BOUNDS)
    )
    tcp_rtt_seconds: Histogram = dataclasses.field(
        default_factory=lambda: Histogram(RTT_SECONDS_BOUNDS)
    )

    # ICMP messages keyed by (direction, type name), e.g. ("rx", "echo_request").
    icmp: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    # DHCP messages keyed by (direction, type name), e.g. ("tx", "discover").
    dhcp_messages: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    # Every drop, keyed by its reason; the reason carries its layer.
    drops: Counter[Drop] = dataclasses.field(default_factory=Counter)

    def drop(self, reason: Drop, count: int = 1) -> None:
        self.drops[reason] += count

    def total_drops(self) -> int:
        return sum(self.drops.values())

    def summary(self) -> str:
        """A few human lines for the end of a run."""
        lines = [
            f"rx {self.rx_packets} frames / {self.rx_bytes} bytes, "
            f"tx {self.tx_packets} frames / {self.tx_bytes} bytes",
            f"arp: requests rx {self.arp_requests_rx} tx {self.arp_requests_tx}, "
            f"replies rx {self.arp_replies_rx} tx {self.arp_replies_tx}, "
            f"resolution failures {self.arp_resolution_failures}",
            f"ipv4: rx {self.ipv4_rx} tx {self.ipv4_tx}, fragments rx {self.ipv4_fragments_rx} "
            f"tx {self.ipv4_fragments_tx}, reassembled {self.ipv4_reassembled}",
            f"udp: rx {self.udp_rx} tx {self.udp_tx}",
        ]
        if self.icmp:
            icmp = ", ".join(f"{d} {t} {n}" for (d, t), n in sorted(self.icmp.items()))
            lines.append(f"icmp: {icmp}")
        if self.drops:
            drops = ", ".join(
                f"{r.layer}/{r.reason} {n}"
                for r, n in sorted(self.drops.items(), key=lambda kv: kv[0].value)
            )
            lines.append(f"drops ({self.total_drops()}): {drops}")
        else:
            lines.append("drops: none")
        return "\n".join(lines)
