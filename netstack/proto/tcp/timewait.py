"""TIME_WAIT as a small record instead of the whole connection.

A connection in TIME_WAIT has nothing left to send or deliver: what it still does is answer
segments of the old incarnation for 2*MSL (RFC 9293 3.6: ACK a retransmitted FIN and restart
the timer), let a new SYN reopen the 4-tuple (RFC 6191, RFC 1122 4.2.2.13; engine._demux),
and keep the sequence and timestamp state those rules read. Holding the whole `Connection`
for that (its buffers, recovery, scoreboard, RACK, congestion control: ~5 KB) costs an
active closer its memory for a minute per connection, as Linux's tcp_timewait_sock avoids.

At the flush after a connection entered TIME_WAIT (its last ACK sent), the engine swaps it
for a `TimeWait` in its table. The record answers every segment exactly as the connection's
general path does in TIME_WAIT (tests/unit/tcp/test_timewait.py compares the two, segment
by segment): PAWS (RFC 7323 5), sequence acceptability, RST and SYN per RFC 5961 (an exact
RST closes it: the behaviour kept from the connection, as Linux without tcp_rfc1337),
challenge and out-of-window ACKs at their rates, D-SACK for old data (RFC 2883), the window
and TS.Recent updates. The application's `Connection` object is left in TIME_WAIT and turns
CLOSED with the record (a weak reference: the record never keeps it alive).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from netstack.drops import Drop
from netstack.proto.ratelimit import TokenBucket
from netstack.proto.tcp.connection import (
    LINUX_STATE,
    MAX_ACK_POINTS,
    OOW_ACK_INTERVAL,
    PAWS_IDLE,
)
from netstack.proto.tcp.seq import HALF, MASK, unwrap
from netstack.proto.tcp.state import State
from netstack.wire.tcp import ACK, FIN, RST, SYN, TcpHeader, TcpOptions

if TYPE_CHECKING:
    from netstack.proto.tcp.connection import Connection

S = State
LINUX_TIME_WAIT = LINUX_STATE[S.TIME_WAIT]


class TimeWait:
    """What remains of a connection in TIME_WAIT; the engine treats it as a connection
    (state, key, timers, segment, output, info) wherever its table is walked."""

    __slots__ = (
        "ack_now",
        "ack_points",
        "challenge",
        "close_at",
        "config",
        "counters",
        "csum",
        "engine",
        "heap_at",
        "ip_send",
        "irs",
        "iss",
        "key",
        "last_ack_sent",
        "local_ip",
        "local_port",
        "max_snd_wnd",
        "mss",
        "net",
        "oow_at",
        "owner",
        "pmtu_df",
        "rcv_adv",
        "rcv_free",
        "rcv_mss",
        "rcv_nxt",
        "rcv_seg_mss",
        "rcv_wscale",
        "remote_ip",
        "remote_port",
        "rtt",
        "sack_ok",
        "snd_nxt",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "snd_wscale",
        "state",
        "stats",
        "ts_offset",
        "ts_ok",
        "ts_recent",
        "ts_recent_at",
        "tx_sum",
        "window",
        "wscale_ok",
    )
    listener = None  # never a listener's: its SYN_RECEIVED days are over
    recovery = None  # (for the invariant checker's accessors: `rtt` is the estimator)
    rexmt_at = None

    def __init__(self, conn: Connection) -> None:
        self.engine = conn.engine
        self.config = conn.config
        self.counters = conn.counters
        self.state = S.TIME_WAIT
        self.key = conn.key
        self.local_ip, self.local_port = conn.local_ip, conn.local_port
        self.remote_ip, self.remote_port = conn.remote_ip, conn.remote_port
        self.csum, self.tx_sum, self.ip_send = conn.csum, conn.tx_sum, conn.ip_send
        self.net, self.pmtu_df = conn.net, conn.pmtu_df
        self.iss, self.irs = conn.iss, conn.irs
        self.snd_una, self.snd_nxt = conn.snd_una, conn.snd_nxt
        self.snd_wnd, self.max_snd_wnd = conn.snd_wnd, conn.max_snd_wnd
        self.snd_wl1, self.snd_wl2 = conn.snd_wl1, conn.snd_wl2
        self.snd_wscale, self.rcv_wscale, self.wscale_ok = (
            conn.snd_wscale, conn.rcv_wscale, conn.wscale_ok,
        )  # fmt: skip
        self.rcv_nxt, self.last_ack_sent = conn.rcv_nxt, conn.last_ack_sent
        # The window field its ACKs carry (nothing is accepted any more, so it never moves;
        # as Linux's tw_rcv_wnd), and the right edge and free space behind it.
        self.window = conn._window_field()
        self.rcv_adv = conn.rcv_adv
        self.rcv_free = conn.rcv_buf_size - conn.rcvbuf.queued
        self.ts_ok, self.ts_recent, self.ts_recent_at, self.ts_offset = (
            conn.ts_ok, conn.ts_recent, conn.ts_recent_at, conn.ts_offset,
        )  # fmt: skip
        self.sack_ok = conn.sack_ok
        self.mss, self.rcv_mss, self.rcv_seg_mss = conn.mss, conn.rcv_mss, conn.rcv_seg_mss
        self.rtt = conn.recovery.rtt  # the RTO bounds PAWS' disordered-ACK allowance
        self.stats = conn.stats
        self.close_at = conn.close_at
        self.heap_at: float | None = None
        self.oow_at = conn.oow_at
        self.challenge = conn.challenge
        self.ack_now = False
        self.ack_points: list[tuple[int, tuple[tuple[int, int], ...]]] | None = None
        self.owner = weakref.ref(conn)

    def __repr__(self) -> str:
        from netstack.proto.tcp.introspect import endpoint

        return (
            f"<TimeWait {self.local_port} -> {endpoint(self.remote_ip, self.remote_port)} "
            f"{self.state.value}>"
        )

    # -- segments (Connection.segment's general path, for TIME_WAIT) --------------------------
    def segment(self, h: TcpHeader, payload: memoryview, now: float) -> None:
        if self.state is not S.TIME_WAIT:  # a stale reference, as Connection.segment
            self.counters.drop(Drop.TCP_CLOSED)
            return
        stats = self.stats
        stats[0] += 1
        plen = len(payload)
        if plen:
            stats[2] += 1
        flags = h.flags
        rst = flags & RST
        rcv_nxt = self.rcv_nxt
        seq = unwrap(h.seq, rcv_nxt)
        ts = h.options.timestamp
        # RFC 7323 5.3 R1: PAWS. RSTs are exempt (RFC 7323 5.2).
        if (
            ts is not None
            and self.ts_ok
            and not rst
            and 0 < ((self.ts_recent - ts[0]) & MASK) < HALF
            and now - self.ts_recent_at <= PAWS_IDLE
            and not self._disordered_ack(h, seq, plen, ts[0])
        ):
            self._oow_ack(now, plen, seq, plen)
            self.counters.drop(Drop.TCP_PAWS)
            return
        seg_len = plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        wnd = self.rcv_adv - rcv_nxt
        if wnd < 0:
            wnd = 0
        if seg_len == 0:
            ok = seq == rcv_nxt if wnd == 0 else rcv_nxt <= seq < rcv_nxt + wnd
        elif wnd == 0:
            ok = seq == rcv_nxt
        else:
            ok = seq < rcv_nxt + wnd and seq + seg_len > rcv_nxt
        if not ok:
            if rst:
                self.counters.drop(Drop.TCP_RST_OUT_OF_WINDOW)
                return
            if flags & SYN:
                self._challenge_ack(now)  # RFC 5961 4.2
                self.counters.drop(Drop.TCP_SYN_CHALLENGED)
                return
            if flags & FIN:
                self.close_at = now + self.config.time_wait  # a retransmitted FIN: re-ACK
            self._oow_ack(now, seg_len, seq, plen)
            self.counters.drop(Drop.TCP_OUT_OF_WINDOW)
            return
        if rst:  # RFC 5961 3.2: only an exact RCV.NXT match resets; in window: challenge
            if seq == rcv_nxt:
                self.counters.tcp_resets_rx += 1
                self._close()
            else:
                self._challenge_ack(now)
                self.counters.drop(Drop.TCP_RST_CHALLENGED)
            return
        if flags & SYN:
            self._challenge_ack(now)
            self.counters.drop(Drop.TCP_SYN_CHALLENGED)
            return
        if not flags & ACK:
            self.counters.drop(Drop.TCP_NO_ACK)
            return
        ack = unwrap(h.ack, self.snd_una)
        if ack > self.snd_nxt:
            self._challenge_ack(now)
            self.counters.drop(Drop.TCP_ACK_UNSENT)
            return
        if ack < self.snd_una - self.max_snd_wnd:
            self._challenge_ack(now)
            self.counters.drop(Drop.TCP_ACK_TOO_OLD)
            return
        if (
            ts is not None
            and self.ts_ok
            and seq <= self.last_ack_sent
            and (((ts[0] - self.ts_recent) & MASK) < HALF or now - self.ts_recent_at > PAWS_IDLE)
        ):
            self.ts_recent = ts[0]
            self.ts_recent_at = now
        # The ACK: only the window can change (everything of ours is acknowledged).
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            wnd = h.window << self.snd_wscale
            if wnd != self.snd_wnd:
                self.snd_wnd = wnd
                if wnd > self.max_snd_wnd:
                    self.max_snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
        if plen:  # the peer's FIN came before: text is ignored
            self.counters.drop(Drop.TCP_DATA_AFTER_FIN)

    def _disordered_ack(self, h: TcpHeader, seq: int, plen: int, tsval: int) -> bool:
        """Connection._disordered_ack (Linux's tcp_disordered_ack)."""
        if (
            plen
            or h.flags & (SYN | FIN | RST)
            or seq != self.rcv_nxt
            or unwrap(h.ack, self.snd_una) != self.snd_una
        ):
            return False
        wnd = h.window << self.snd_wscale
        if seq > self.snd_wl1 or (seq == self.snd_wl1 and (wnd > self.snd_wnd or wnd == 0)):
            return False
        return ((self.ts_recent - tsval) & MASK) <= self.rtt.rto * 1024

    def _oow_ack(self, now: float, seg_len: int, seq: int, plen: int) -> None:
        """Connection._oow_ack: an ACK for an unacceptable segment, rate-limited when it is
        empty; old data gets a D-SACK block (RFC 2883)."""
        if plen and self.sack_ok and seq < self.rcv_nxt:
            points = self.ack_points
            if points is None:
                points = self.ack_points = []
            elif len(points) >= MAX_ACK_POINTS:
                del points[0]
            rcv_nxt = self.rcv_nxt
            block = (seq & MASK, min(seq + plen, rcv_nxt) & MASK)
            points.append((rcv_nxt, (block,)))
            return
        if seg_len == 0:
            if now - self.oow_at < OOW_ACK_INTERVAL:
                return
            self.oow_at = now
        self.ack_now = True

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 3.2/4.2/5.2 at the connection's rate (its token bucket carries over)."""
        bucket = self.challenge
        if bucket is None:
            cfg = self.config
            bucket = self.challenge = TokenBucket(cfg.challenge_ack_rate, cfg.challenge_ack_burst)
        if bucket.allow(now):
            self.counters.tcp_challenge_acks += 1
            self.ack_now = True
            self.engine.touch(self)

    # -- what the engine's flush and timers call ------------------------------------------------
    def dispatch(self) -> None:
        """Nothing to tell an application: it heard of the close when TIME_WAIT began."""

    def output(self, now: float) -> None:
        if self.state is not S.TIME_WAIT:
            return
        points = self.ack_points
        if points:
            self.ack_points = None
            for ack, blocks in points:
                self._send_ack(now, ack, blocks)
        if self.ack_now:
            self._send_ack(now, self.rcv_nxt, ())

    def _send_ack(self, now: float, rcv_nxt: int, blocks: tuple[tuple[int, int], ...]) -> None:
        """<SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>, as Connection._xmit builds it."""
        ts = ((int(now * 1000) + self.ts_offset) & MASK, self.ts_recent) if self.ts_ok else None
        self.last_ack_sent = rcv_nxt
        if rcv_nxt == self.rcv_nxt:
            self.ack_now = False
        self.stats[1] += 1
        engine = self.engine
        if blocks:
            options = TcpOptions(timestamp=ts, sack_blocks=blocks)
            engine.transmit(
                self, self.snd_nxt & MASK, rcv_nxt & MASK, ACK, self.window, b"", options
            )
        else:
            engine.transmit_fast(
                self, self.snd_nxt & MASK, rcv_nxt & MASK, ACK, self.window, b"", ts
            )

    def next_timer(self) -> float | None:
        return self.close_at

    def on_timer(self, now: float) -> None:
        if self.close_at is not None and now >= self.close_at:
            self.close_at = None
            self._close()

    def time_wait_reopened(self) -> None:
        """A new SYN takes this 4-tuple (RFC 6191): close now."""
        self.close_at = None
        self._close()

    def abort(self) -> None:
        """Forget it (the application aborted its connection, or an internal error)."""
        self._close()

    def _close(self) -> None:
        if self.state is S.CLOSED:
            return
        self.state = S.CLOSED
        self.close_at = None
        self.ack_now = False
        self.ack_points = None
        conn = self.owner()
        if conn is not None and conn.state is S.TIME_WAIT:
            conn.state = S.CLOSED  # the application's object follows (its timers are off)
        self.engine.state_changed(self, S.TIME_WAIT, S.CLOSED)

    # -- ICMP: nothing of ours is in flight -----------------------------------------------------
    def quotes_in_flight(self, seq_wire: int) -> bool:
        return False

    def icmp_error(self, hard: bool, error: OSError, seq_wire: int) -> bool:
        return False

    # -- introspection (netstack ss) --------------------------------------------------------
    def info(self) -> dict[str, object]:
        """Connection.info's fields: what a TIME_WAIT entry still knows, the rest empty."""
        rtt = self.rtt
        return {
            "state": self.state.value,
            "mss": self.mss,
            "srtt": rtt.srtt,
            "rto": rtt.rto,
            "cwnd": None,
            "ssthresh": None,
            "snd_wnd": self.snd_wnd,
            "rcv_wnd": max(0, self.rcv_adv - self.rcv_nxt),
            "unacked": 0,
            "send_buffered": 0,
            "recv_buffered": 0,
            "sack": self.sack_ok,
            "timestamps": self.ts_ok,
            "wscale": (self.snd_wscale, self.rcv_wscale),
            "congestion_control": None,
            "ca_state": "open",
            "reordering": 0,
            "reordering_seen": False,
            "reo_wnd_mult": 0,
            "loss_probes": 0,
            "undos": 0,
            **self.tcp_info(),
        }

    def tcp_info(self, now: float | None = None) -> dict[str, int]:
        """Connection.tcp_info's fields; the congestion and loss ones are 0 (gone)."""
        if now is None:
            now = self.engine.now
        rtt = self.rtt
        stats = self.stats
        opts = (1 if self.ts_ok else 0) | (2 if self.sack_ok else 0) | (4 if self.wscale_ok else 0)

        def us(t: float | None) -> int:
            return int(t * 1_000_000) if t is not None else 0

        rcv_wnd = max(0, self.rcv_adv - self.rcv_nxt)
        return {
            "tcpi_state": LINUX_TIME_WAIT,
            "tcpi_ca_state": 0,
            "tcpi_retransmits": 0,
            "tcpi_probes": 0,
            "tcpi_backoff": rtt.backoff,
            "tcpi_options": opts,
            "tcpi_snd_wscale": self.snd_wscale,
            "tcpi_rcv_wscale": self.rcv_wscale,
            "tcpi_rto": us(rtt.rto),
            "tcpi_ato": us(self.config.delayed_ack),
            "tcpi_snd_mss": self.mss,
            "tcpi_rcv_mss": self.rcv_seg_mss,
            "tcpi_unacked": 0,
            "tcpi_sacked": 0,
            "tcpi_lost": 0,
            "tcpi_retrans": 0,
            "tcpi_last_data_sent": 0,
            "tcpi_last_data_recv": 0,
            "tcpi_last_ack_recv": 0,
            "tcpi_pmtu": self.net.pmtu.path_mtu(self.remote_ip, self.net.link_mtu, now),
            "tcpi_rcv_ssthresh": rcv_wnd,
            "tcpi_rtt": us(rtt.srtt),
            "tcpi_rttvar": us(rtt.rttvar),
            "tcpi_snd_ssthresh": 0,
            "tcpi_snd_cwnd": 0,
            "tcpi_advmss": self.rcv_mss,
            "tcpi_reordering": 0,
            "tcpi_rcv_space": 0,
            "tcpi_total_retrans": stats[6],
            "tcpi_bytes_acked": max(0, self.snd_una - self.iss - 1),
            "tcpi_bytes_received": max(0, self.rcv_nxt - self.irs - 2),  # less SYN and FIN
            "tcpi_segs_out": stats[1],
            "tcpi_segs_in": stats[0],
            "tcpi_notsent_bytes": 0,
            "tcpi_min_rtt": 0,
            "tcpi_data_segs_in": stats[2],
            "tcpi_data_segs_out": stats[3],
            "tcpi_bytes_sent": stats[4],
            "tcpi_bytes_retrans": stats[5],
            "tcpi_reord_seen": 0,
            "tcpi_snd_wnd": self.snd_wnd,
            "tcpi_rcv_wnd": rcv_wnd,
        }
