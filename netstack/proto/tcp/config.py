"""TCP tunables, with the defaults a Linux host would use unless a reason is given."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class TcpConfig:
    # Buffers (bytes). The receive buffer is the most we advertise; the window scale we offer
    # is the smallest that lets the whole buffer be advertised (RFC 7323 2.2).
    send_buffer: int = 512 * 1024
    receive_buffer: int = 512 * 1024
    ooo_max_pieces: int = 256  # out-of-order pieces held per connection (bounded memory)
    # Options (RFC 7323, 2018): offered on active opens, echoed on passive ones.
    window_scaling: bool = True
    timestamps: bool = True
    sack: bool = True
    # RFC 6298 retransmission timer. rto_min 200 ms like Linux (see rtt.py for why).
    rto_initial: float = 1.0
    rto_min: float = 0.2
    rto_max: float = 120.0
    syn_retries: int = 6  # SYN retransmissions before connect() fails with TimeoutError
    synack_retries: int = 5
    retries: int = 15  # data/FIN retransmissions (and unanswered window probes) before abort
    # Closing.
    time_wait: float = 60.0  # 2*MSL (MSL = 30 s, as Linux's TCP_TIMEWAIT_LEN)
    fin_wait2_timeout: float = 60.0  # an orphaned FIN_WAIT_2 (after close()) gives up
    max_time_wait: int = 16384  # TIME_WAIT connections kept; beyond, closed at once
    # TIME_WAIT kept as a small record (timewait.py) instead of the whole connection; off
    # only to compare the two (tests)
    compact_time_wait: bool = True
    # ACKs and small segments.
    delayed_ack: float = 0.040  # RFC 9293 3.8.6.3 / RFC 5681 4.2 (< 500 ms); Linux's minimum
    nagle: bool = True  # RFC 896; set_nodelay(True) turns it off per connection
    # Quick-ACK mode at the start and after idle (ackpolicy.py): at most this many immediate
    # ACKs (Linux's TCP_MAX_QUICKACKS); 0 turns it off (every ACK by the delayed-ACK rules).
    quick_acks: int = 16
    # Keepalive (RFC 9293 3.8.4 / RFC 1122 4.2.3.6): off unless asked for.
    keepalive: bool = False
    keepalive_idle: float = 7200.0
    keepalive_interval: float = 75.0
    keepalive_count: int = 9
    # Listening.
    default_backlog: int = 128  # accept queue
    syn_backlog: int = 256  # SYN_RECEIVED connections per listener before cookies
    syncookies: bool = True  # answer with a cookie once the SYN queue is full (RFC 4987)
    # RFC 5961 section 7: challenge ACKs per connection, a token bucket (rate/s, burst).
    challenge_ack_rate: float = 2.0
    challenge_ack_burst: int = 10
    # Congestion control (netstack/proto/tcp/cc.py): "cubic" or "reno".
    congestion_control: str = "cubic"
    # Ephemeral ports (RFC 6056 recommends the whole 1024-65535; IANA's range by default).
    ephemeral_first: int = 49152
    ephemeral_last: int = 65535
    # Segmentation offload seam: a link that segments in hardware/kernel sets this to the
    # largest segment it takes (e.g. 65535 - headers); 0 means every segment is <= MSS.
    tso_max: int = 0
    # The same for TCP over IPv6 (TSO6, gso_type TCPV6); 0: IPv6 segments are <= MSS.
    tso6_max: int = 0
    # RFC 1191 path MTU discovery: DF on every segment of a connection, and "fragmentation
    # needed" reports (validated, RFC 5927) lower its MSS (Linux: ip_no_pmtu_disc = 0).
    pmtu_discovery: bool = True
    # RFC 4821 / RFC 8899 packetization-layer PMTU discovery, for paths that drop ICMP: off by
    # default (Linux's tcp_mtu_probing = 0). On: black-hole detection as Linux's
    # tcp_mtu_probing = 1 — after plpmtud_retries RTOs in a row the MSS drops to base_mss,
    # then halves at each further one (not below mtu_probe_floor); the full size is tried
    # again after mtu_probe_interval (no probe segments: see connection._black_hole).
    plpmtud: bool = False
    plpmtud_retries: int = 3  # Linux: net.ipv4.tcp_retries1
    base_mss: int = 1024  # net.ipv4.tcp_base_mss
    mtu_probe_floor: int = 48  # net.ipv4.tcp_mtu_probe_floor
    mtu_probe_interval: float = 600.0  # net.ipv4.tcp_probe_interval
    # Checked mode: every segment sent and every flush/poll is checked against the TCP
    # invariants (invariants.py), a violation logged and raised. A debugging aid for tests
    # (NETSTACK_CHECKED=1 turns it on for `netstack run`); it costs a few microseconds a segment.
    checked: bool = False
