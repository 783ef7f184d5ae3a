"""Quick-ACK mode and the interactive ("ping-pong") guess: when a receiver ACKs at once
instead of delaying (RFC 9293 3.8.6.3 and RFC 5681 4.2 allow an ACK to wait up to 500 ms and
SHOULD ACK every second full segment; when to ACK sooner is the implementation's choice).

Linux profile (net/ipv4/tcp_input.c tcp_event_data_recv / tcp_incr_quickack, tcp_output.c
tcp_event_data_sent / tcp_event_ack_sent, tcp_timer.c tcp_delack_timer_handler):
- The first data of a connection, and data after a silence longer than the RTO, enter quick-ACK
  mode: the next `rcv_wnd / (2 * rcv_mss)` ACKs (at least 2, at most TCP_MAX_QUICKACKS = 16)
  go out at once, so a sender in slow start (or restarting after idle, RFC 5681 4.1) gets its
  ACK clock going without waiting 40 ms per round.
- Each ACK that acknowledges new data uses one up.
- Sending data within the delayed-ACK time of the last data received marks the connection
  interactive (ping-pong): then ACKs wait, to ride on the reply; a delayed-ACK timeout that
  finds an ACK owed ends the guess (nothing rode on it).
- Otherwise the delayed ACK (40 ms, TcpConfig.delayed_ack, Linux's TCP_DELACK_MIN) applies.

Deviation kept: Linux adapts its ACK timeout (ato) between 40 ms and the RTO from the gaps
between arrivals; here it stays at `delayed_ack` — RFC 1122 4.2.3.2 only bounds it (< 0.5 s),
and a fixed timer keeps the "every second full segment" rule (what drives bulk senders) the
same while costing an interactive peer at most 40 ms.
"""

from __future__ import annotations

MAX_QUICKACKS = 16  # Linux's TCP_MAX_QUICKACKS


class QuickAck:
    __slots__ = ("limit", "lrcvtime", "pingpong", "quick")

    def __init__(self, limit: int = MAX_QUICKACKS) -> None:
        self.limit = limit  # TcpConfig.quick_acks; 0: never quick
        self.quick = 0  # immediate ACKs left
        self.pingpong = False  # the connection looks interactive: delay ACKs for replies
        self.lrcvtime: float | None = None  # when data last arrived (None: never yet)

    def on_data(self, now: float, rto: float, rcv_wnd: int, rcv_mss: int) -> None:
        """In-sequence data arrived (Linux's tcp_event_data_recv)."""
        last = self.lrcvtime
        if last is None or now - last > rto:  # the start, or after idle
            quick = min(max(rcv_wnd // (2 * rcv_mss), 2), self.limit)
            if quick > self.quick:
                self.quick = quick
        self.lrcvtime = now

    def active(self) -> bool:
        """ACK this segment at once (Linux's tcp_in_quickack_mode)?"""
        return self.quick > 0 and not self.pingpong

    def on_ack_sent(self) -> None:
        """An ACK of new data went out (Linux's tcp_dec_quickack_mode)."""
        if self.quick:
            self.quick -= 1

    def on_data_sent(self, now: float, ato: float) -> None:
        """We sent data: a reply within the ACK timeout of the last arrival is ping-pong."""
        if self.lrcvtime is not None and now - self.lrcvtime < ato:
            self.pingpong = True

    def on_delack_timeout(self) -> None:
        """The delayed-ACK timer fired with an ACK owed: no reply rode on it."""
        self.pingpong = False
