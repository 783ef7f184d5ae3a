"""One TCP connection (the TCB): segment arrival, output, timers and application events.

Pure: the engine hands it parsed segments and `now`; it answers by transmitting through the
engine and by flags the engine acts on at the end of the batch. Reading the code against
RFC 9293 3.10.7 ("SEGMENT ARRIVES"): `segment()` is the dispatcher, `_rx_syn_sent()` the
SYN-SENT branch, and for the synchronized states the checks run in the RFC's order — PAWS
(RFC 7323 5.3), sequence acceptability, RST (RFC 5961 3.2), SYN (RFC 5961 4.2), ACK (RFC 5961
5.2 range check, then `_process_ack`), then text and FIN (`_process_data`).

Sequence numbers are unwrapped ints (see seq.py): SND.UNA <= SND.NXT, RCV.NXT <= RCV.ADV, all
compared with plain `<`. The send buffer is indexed by stream offset: the byte with sequence
number s sits at offset s - snd_base, where snd_base = ISS + 1.

Application calls (send, shutdown_write, close, abort, pause/resume_reading) never transmit on
the spot (abort's RST excepted): they set state and ask the engine to flush this connection,
which it does at the end of the current receive batch or timer run, or — when the call came
from outside the engine — at the next loop turn (the engine's next_deadline() is "now").
That one output point is also where delayed ACKs, window updates and Nagle are decided, so
application writes made while handling a batch piggyback on its ACK. Segments that need an
ACK of their own (every second full-sized one, out-of-order ones, duplicates: RFC 5681 4.2)
leave an "ACK point" with the ACK number and SACK blocks of their moment; the flush sends
them in order, with the window as it is after the application read (see AckPoint). When
to ACK at once beyond those rules (Linux's quick-ACK mode and ping-pong guess) is ackpolicy.py.

Loss recovery (RTT, scoreboard, RACK-TLP, NewReno, congestion control, undo, and the RTO,
reordering and probe timers) lives in recovery.py: the connection reports ACKs and timer
expiries to it, asks it how much cwnd lets out, and resends what it marked lost first. cwnd
is never written here. The receiver sends D-SACKs.

Application events go to `handler` (see Handler) from `dispatch()`, which the engine calls
after each batch — never from the middle of segment processing, so a callback can do anything
(close, abort, write to another connection) without finding a half-updated TCB.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Protocol

from netstack.drops import Drop
from netstack.proto.ratelimit import TokenBucket
from netstack.proto.tcp.ackpolicy import QuickAck
from netstack.proto.tcp.buffers import ReceiveBuffer, SendBuffer
from netstack.proto.tcp.recovery import Recovery
from netstack.proto.tcp.scoreboard import Sent
from netstack.proto.tcp.seq import HALF, MASK, unwrap
from netstack.proto.tcp.state import (
    RECEIVING,
    TRANSITIONS,
    TRANSMITTING,
    Event,
    IllegalTransition,
    State,
)
from netstack.wire import tcp as wtcp
from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, URG, TcpHeader, TcpOptions

if TYPE_CHECKING:
    from netstack.proto.tcp.engine import Listener, TcpEngine
    from netstack.proto.tcp.net import Address

DEFAULT_MSS = 536  # RFC 9293 3.7.1: the send MSS when the peer's SYN has no MSS option
INF = float("inf")
MIN_MSS = 48  # a floor on the peer's MSS (Linux's tcp_min_snd_mss): no 1-byte segments
MAX_WSCALE = 14  # RFC 7323 2.3
TS_OPTION_LEN = 12  # NOP NOP TS(10), carried by every segment once timestamps are on
SACK_BLOCK_LEN = 8
PAWS_IDLE = 24 * 24 * 3600.0  # RFC 7323 5.5: TS.Recent is stale after 24 days idle
SYN_RTO_AFTER_RETRY = 3.0  # RFC 6298 5.7
OOW_ACK_INTERVAL = 0.5  # Linux's tcp_invalid_ratelimit
MIN_BUFFER = 4608  # smallest SO_SNDBUF/SO_RCVBUF taken (Linux's SOCK_MIN_SNDBUF)
KEEPALIVE_STATES = (State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_2)
# tcp_info's numbering (include/net/tcp_states.h, tcp_ca_state in include/uapi/linux/tcp.h).
LINUX_STATE = {
    State.ESTABLISHED: 1, State.SYN_SENT: 2, State.SYN_RECEIVED: 3, State.FIN_WAIT_1: 4,
    State.FIN_WAIT_2: 5, State.TIME_WAIT: 6, State.CLOSED: 7, State.CLOSE_WAIT: 8,
    State.LAST_ACK: 9, State.LISTEN: 10, State.CLOSING: 11,
}  # fmt: skip
LINUX_CA_STATE = {"open": 0, "recovery": 3, "loss": 4}
# States in which the peer's FIN has been received (it counts in RCV.NXT, not as a byte).
FIN_SEEN = (State.CLOSE_WAIT, State.LAST_ACK, State.CLOSING, State.TIME_WAIT)

# An ACK owed to one arriving segment, sent at the flush point (after the application read,
# so that its window is current): (ACK number, its SACK blocks as on the wire). The blocks
# are those of the moment the segment arrived, as an immediate ACK would have carried: later
# arrivals reported with an older ACK number would make the sender think the data between
# the two ACK numbers was lost (RACK would retransmit it).
AckPoint = tuple[int, tuple[tuple[int, int], ...]]
MAX_ACK_POINTS = 256  # per flush; a receive batch is shorter than that

S = State
# The slim path for the common ESTABLISHED segment (Connection._segment_slim) and the idle
# output pass (_send_data with nothing to send); False makes every segment and every output
# pass take the general path (tests/unit/tcp/test_slim.py compares the two).
SLIM = True
SLIM_EXCLUDED = SYN | FIN | RST | URG
# The slim path's fused ACK (Recovery.ack_fast / ack_nothing_out) for an ACK in the open state
# with nothing SACKed or lost; False takes recovery's general per-ACK calls (test_slim.py).
FAST_ACK = True
# Connection._window_field's memo; False recomputes every time (its differential test).
WINDOW_MEMO = True
# _send_segment's lean form for a plain data segment (one MSS or less, no FIN, no urgent
# pointer, no SACK blocks): _xmit's and Recovery.sent's work inline; False takes the general
# calls (tests/unit/tcp/test_lean.py and test_slim.py compare the two).
LEAN_TX = True
# The pure ACK (no text, no SYN/FIN/RST/URG) in a synchronized state other than ESTABLISHED
# and TIME_WAIT: the handshake's final ACK (SYN_RECEIVED), LAST_ACK's, and the closing
# states' ACKs (Connection._segment_pure_ack); False takes the general path for them
# (tests/unit/tcp/test_slim.py compares the two).
PURE_ACK = True
# ACK filtering within one receive batch (RFC 3449 4.3 / 5.2.1's ACK filtering, done by the
# receiver of the ACKs): a pure ACK of new data in ESTABLISHED is held until the batch's flush
# point (or anything else that reads or changes this TCB: Connection.release_ack's callers);
# a later pure ACK of the same batch that acknowledges more replaces it, when processing only
# the later one leaves every TCB field as processing both would except the RTT estimator's
# (one sample weighted as both instead of two; RFC 6298 / RFC 7323 ask for no sample per
# ACK). Conditions:
# Connection._ack_supersedes. False processes every ACK as it arrives
# (tests/unit/tcp/test_ackhold.py compares the two).
ACK_HOLD = True
_NO_TEXT = memoryview(b"")
PURE_ACK_STATES = frozenset(
    {S.SYN_RECEIVED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT, S.CLOSING, S.LAST_ACK}
)


class Handler(Protocol):
    """Where a connection's application events go (netstack/api/tcp.py adapts these to an
    asyncio-style Protocol). Every call comes from the engine's dispatch point. A handler may
    also define on_urgent(mark) to hear of urgent data (see Connection._rcv_urgent)."""

    def on_established(self) -> None: ...
    def on_data(self, data: bytes) -> None: ...
    def on_eof(self) -> None: ...
    def on_closed(self, exc: Exception | None) -> None: ...
    def on_pause_writing(self) -> None: ...
    def on_resume_writing(self) -> None: ...


def _error(kind: type[OSError], code: int, detail: str = "") -> OSError:
    message = os.strerror(code)
    return kind(code, f"{message} ({detail})" if detail else message)


def refused() -> OSError:
    return _error(ConnectionRefusedError, errno.ECONNREFUSED)


def reset() -> OSError:
    return _error(ConnectionResetError, errno.ECONNRESET)


def timed_out(detail: str = "") -> OSError:
    return _error(TimeoutError, errno.ETIMEDOUT, detail)


class DetachedTcb:
    """What a CLOSED connection's recovery state keeps of it once the connection let go
    (Connection._detach): recovery.Tcb's fields as they were, frozen; no output pass follows."""

    __slots__ = ("iss", "mss", "sack_ok", "snd_nxt", "snd_una", "ts_offset", "ts_ok")

    def __init__(self, conn: Connection) -> None:
        self.iss = conn.iss
        self.snd_una = conn.snd_una
        self.snd_nxt = conn.snd_nxt
        self.mss = conn.mss
        self.sack_ok = conn.sack_ok
        self.ts_ok = conn.ts_ok
        self.ts_offset = conn.ts_offset

    def tsval(self, now: float) -> int:
        return (int(now * 1000) + self.ts_offset) & MASK

    def wake(self) -> None:
        pass


class Connection:
    """RFC 9293's TCB plus everything RFC 6298/5681/6582/6675/7323/2018/5961 add to it."""

    __slots__ = (
        "__weakref__",  # a TIME_WAIT record follows its connection weakly (timewait.py)
        "ack_held",
        "ack_now",
        "ack_pending",
        "ack_points",
        "app_closed",
        "challenge",
        "close_at",
        "config",
        "counters",
        "csum",
        "delack_at",
        "engine",
        "eof_delivered",
        "eof_pending",
        "error",
        "fin_queued",
        "fin_seq",
        "from_cookie",
        "handler",
        "heap_at",
        "ip_send",
        "irs",
        "iss",
        "ka_params",
        "ka_probes",
        "keepalive",
        "keepalive_at",
        "key",
        "last_ack_sent",
        "last_data",
        "last_rx",
        "last_send",
        "listener",
        "local_ip",
        "local_port",
        "lost_done",
        "lost_pending",
        "made_pending",
        "max_snd_wnd",
        "mss",
        "net",
        "nodelay",
        "ooo_run",
        "oow_at",
        "peer_mss",
        "persist_at",
        "persist_backoff",
        "pmtu_df",
        "pmtu_gen",
        "pmtu_until",
        "probe_mss",
        "probes_out",
        "quickack",
        "rcv_adv",
        "rcv_buf_size",
        "rcv_fin_seq",
        "rcv_mss",
        "rcv_nxt",
        "rcv_seg_mss",
        "rcv_up",
        "rcv_wscale",
        "rcvbuf",
        "reading_paused",
        "recovery",
        "remote_ip",
        "remote_port",
        "rexmt_count",
        "sack_ok",
        "snd_base",
        "snd_nxt",
        "snd_sml",
        "snd_una",
        "snd_up",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "snd_wscale",
        "sndbuf",
        "soft_error",
        "state",
        "stats",
        "syn_pending",
        "syn_retransmitted",
        "syn_sent_at",
        "syn_window",
        "ts_offset",
        "ts_ok",
        "ts_recent",
        "ts_recent_at",
        "tx_sum",
        "urgent_pending",
        "user",
        "window_check",
        "wnd_memo",
        "write_high",
        "write_low",
        "writing_paused",
        "wscale_ok",
    )

    def __init__(
        self,
        engine: TcpEngine,
        local_port: int,
        remote_ip: Address,
        remote_port: int,
        listener: Listener | None = None,
        local_ip: Address | None = None,
    ) -> None:
        cfg = self.config = engine.config
        self.engine = engine
        self.counters = engine.counters
        # The family's network (net.py), chosen once: addresses, send, PMTU, MSS.
        net = self.net = engine.net_for(remote_ip)
        self.local_ip = net.source(remote_ip) if local_ip is None else local_ip
        self.local_port = local_port
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.key = (self.local_ip, local_port, remote_ip, remote_port)  # engine.Key
        self.csum = net.csum_pair(self.local_ip, remote_ip)  # the pseudo-header, for wire/tcp
        self.tx_sum = wtcp.template_sum(*self.csum, local_port, remote_port)
        self.ip_send = net.sender(self.local_ip)
        self.state = S.CLOSED
        self.listener = listener  # passive opens: the listener until accepted
        self.handler: Handler | None = None
        self.user: object = None  # free for the API layer (the transport)
        # sequence space (unwrapped)
        self.iss = self.irs = 0
        self.snd_una = self.snd_nxt = self.snd_base = 0
        self.snd_sml = 0  # end of the last small segment sent (Minshall's Nagle)
        self.snd_wnd = self.snd_wl1 = self.snd_wl2 = self.max_snd_wnd = 0
        self.rcv_nxt = self.rcv_adv = 0
        self.last_ack_sent = 0
        self.syn_window = 0
        # Urgent data (RFC 9293 3.8.5, RFC 6093): the sequence number just after the urgent
        # data, ours to send (0: none) and the peer's (None: none seen); reported, not
        # separated: urgent bytes stay in the stream (inline, like Linux's SO_OOBINLINE).
        self.snd_up = 0
        self.rcv_up: int | None = None
        # options
        self.snd_wscale = self.rcv_wscale = 0
        self.wscale_ok = False
        self.ts_ok = False
        self.ts_recent = 0
        self.ts_recent_at = 0.0
        self.ts_offset = 0
        self.sack_ok = False
        self.peer_mss = DEFAULT_MSS
        self.mss = DEFAULT_MSS
        self.rcv_mss = DEFAULT_MSS
        self.rcv_seg_mss = DEFAULT_MSS  # the peer's segment size, as seen (for ACK pacing)
        # Path MTU (RFC 1191, pmtu.py): DF on our segments (off when the estimate is locked at
        # the floor); the cache generation and expiry the MSS was last computed from.
        self.pmtu_df = cfg.pmtu_discovery
        self.pmtu_gen = -1
        self.pmtu_until = 0.0
        # PLPMTUD black-hole fallback (config.plpmtud): the MSS cap it set and until when.
        self.probe_mss: tuple[int, float] | None = None
        # buffers
        self.sndbuf = SendBuffer(cfg.send_buffer)
        self.rcvbuf = ReceiveBuffer(cfg.ooo_max_pieces)
        self.rcv_buf_size = cfg.receive_buffer
        self.fin_queued = False  # the application is done sending: a FIN follows the data
        self.fin_seq: int | None = None  # sequence number of our FIN, once sent
        self.rcv_fin_seq: int | None = None  # where the peer's FIN sits, once seen
        # application-facing flags
        self.app_closed = False
        self.reading_paused = False
        self.writing_paused = False
        self.write_high = cfg.send_buffer
        self.write_low = cfg.send_buffer // 2
        self.nodelay = not cfg.nagle
        self.keepalive = cfg.keepalive
        self.ka_params = (cfg.keepalive_idle, cfg.keepalive_interval, cfg.keepalive_count)
        self.made_pending = False
        self.eof_pending = False
        self.eof_delivered = False
        self.lost_pending = False
        self.lost_done = False
        self.error: OSError | None = None
        self.soft_error: OSError | None = None
        # ACK generation
        self.ack_now = False
        self.ack_pending = False
        self.ack_points: list[AckPoint] = []  # ACKs owed by this batch's segments, in order
        self.ooo_run = (0, 0)  # this batch's run of contiguous out-of-order data: (ACKed to, end)
        self.window_check = False
        self.wnd_memo: tuple[tuple, int] | None = None  # see _window_field
        self.urgent_pending = False  # the peer's urgent pointer advanced: tell the handler
        self.quickack = QuickAck(cfg.quick_acks)  # Linux quick-ACK, ping-pong (ackpolicy.py)
        self.syn_pending = False
        # timers (absolute times, None when off) and their retry counts
        self.persist_at: float | None = None
        self.delack_at: float | None = None
        self.keepalive_at: float | None = None
        self.close_at: float | None = None  # TIME_WAIT, or an orphaned FIN_WAIT_2
        self.heap_at: float | None = None  # the engine's timer-heap bookkeeping
        self.rexmt_count = 0
        self.probes_out = 0
        self.ka_probes = 0
        self.persist_backoff = 0
        self.syn_retransmitted = False
        self.syn_sent_at = 0.0
        self.last_send = 0.0
        self.last_data = 0.0  # when data (not just an ACK) last went out
        self.last_rx = 0.0
        # ACK_HOLD: (pure ACK, its now, how many ACKs it stands for)
        self.ack_held: tuple[TcpHeader, float, int] | None = None
        # RTT, congestion, loss recovery, and their timers (the RTO's included)
        self.recovery = Recovery(self, cfg, engine.counters)
        self.challenge: TokenBucket | None = None
        self.oow_at = -1e9  # when we last answered an empty out-of-window segment
        self.from_cookie = False
        # tcp_info counters: segs_in, segs_out, data_segs_in, data_segs_out, bytes_sent,
        # bytes_retrans, total_retrans (a list: one slot, not seven, per connection)
        self.stats = [0, 0, 0, 0, 0, 0, 0]

    def __repr__(self) -> str:
        from netstack.proto.tcp.introspect import endpoint

        return (
            f"<Connection {self.local_port} -> {endpoint(self.remote_ip, self.remote_port)} "
            f"{self.state.value}>"
        )

    # =========================================================================================
    # opening
    # =========================================================================================
    def _our_wscale(self) -> int:
        """The smallest shift that lets the whole receive buffer be advertised."""
        shift = 0
        while (0xFFFF << shift) < self.rcv_buf_size and shift < MAX_WSCALE:
            shift += 1
        return shift

    def _start_send_space(self, iss: int) -> None:
        self.iss = iss
        self.snd_una = self.snd_nxt = iss
        self.snd_base = iss + 1
        self.recovery.start(iss)

    def open_active(self, iss: int, now: float) -> None:
        """connect(): SYN_SENT; the SYN goes out at the next flush."""
        self._start_send_space(iss)
        self.ts_offset = self.engine.ts_offset(self)
        cfg = self.config
        self.rcv_wscale = self._our_wscale() if cfg.window_scaling else 0
        self.last_rx = now
        self._event(Event.OPEN)
        self.syn_pending = True

    def open_passive(self, h: TcpHeader, iss: int, now: float) -> None:
        """A listener took this SYN: SYN_RECEIVED; the SYN-ACK goes out at the next flush."""
        self.irs = h.seq
        self.rcv_nxt = h.seq + 1
        self._start_send_space(iss)
        self.ts_offset = self.engine.ts_offset(self)
        self._negotiate(h.options, now)
        self.snd_wnd = self.max_snd_wnd = h.window  # never scaled in a SYN
        self.snd_wl1 = self.irs
        self.last_rx = now
        self._event(Event.RCV_SYN)
        self.syn_pending = True

    def open_from_cookie(
        self,
        h: TcpHeader,
        mss: int,
        wscale: int | None,
        sack: bool,
        now: float,
    ) -> None:
        """The final ACK of a handshake answered with a SYN cookie: ESTABLISHED at once."""
        self.from_cookie = True
        iss = (h.ack - 1) & MASK
        self.irs = (h.seq - 1) & MASK
        self.rcv_nxt = self.irs + 1
        self._start_send_space(iss)
        self.snd_una = self.snd_nxt = iss + 1
        self.ts_offset = self.engine.ts_offset(self)
        cfg = self.config
        ts = h.options.timestamp
        self.peer_mss = mss
        if wscale is not None and cfg.window_scaling:
            self.wscale_ok = True
            self.snd_wscale = min(wscale, MAX_WSCALE)
            self.rcv_wscale = self._our_wscale()
        self.sack_ok = sack and cfg.sack
        if ts is not None and cfg.timestamps:
            self.ts_ok = True
            self.ts_recent = ts[0]
            self.ts_recent_at = now
        self._set_mss()
        self.snd_wnd = self.max_snd_wnd = h.window << self.snd_wscale
        self.snd_wl1, self.snd_wl2 = self.rcv_nxt, self.snd_una
        # The SYN-ACK advertised min(buffer, 65535) unscaled (engine.cookie_window).
        self.rcv_adv = self.rcv_nxt + min(self.rcv_buf_size, 0xFFFF)
        self.last_ack_sent = self.rcv_nxt
        self.last_rx = now
        self._event(Event.RCV_SYN)  # the SYN the cookie stood for
        self._established(now, Event.SYN_ACKED)

    def _negotiate(self, opts: TcpOptions, now: float) -> None:
        """Options from the peer's SYN (or SYN-ACK): on only when both sides offer them."""
        cfg = self.config
        self.peer_mss = opts.mss if opts.mss else DEFAULT_MSS
        if cfg.window_scaling and opts.window_scale is not None:
            self.wscale_ok = True
            self.snd_wscale = min(opts.window_scale, MAX_WSCALE)
            self.rcv_wscale = self._our_wscale()
        else:
            self.wscale_ok = False
            self.snd_wscale = self.rcv_wscale = 0
        self.sack_ok = cfg.sack and opts.sack_permitted
        ts = opts.timestamp
        if cfg.timestamps and ts is not None:
            self.ts_ok = True
            self.ts_recent = ts[0]
            self.ts_recent_at = now
        else:
            self.ts_ok = False
        self._set_mss()

    def _set_mss(self) -> None:
        """RFC 9293 3.7.1 / RFC 6691: payload per segment = min(MSS's) - option bytes; the
        sending side also within the path MTU (RFC 1191 6.1, see _path_mss)."""
        opts = TS_OPTION_LEN if self.ts_ok else 0
        self.mss = max(MIN_MSS, min(self.peer_mss, self._path_mss(self.engine.now)) - opts)
        self.rcv_mss = max(MIN_MSS, self.net.mss - opts)
        self.rcv_seg_mss = min(self.rcv_mss, DEFAULT_MSS)
        if self.recovery.cc is None:
            self.recovery.cc = self.engine.make_cc(self.mss)

    def _path_mss(self, now: float) -> int:
        """The largest TCP payload (before options) the path MTU estimate lets through, and
        remember which estimate that was (pmtu_gen / pmtu_until, see _sync_pmtu)."""
        net = self.net
        cache = net.pmtu
        self.pmtu_gen = cache.updates
        entry = cache.lookup(self.remote_ip, now) if self.config.pmtu_discovery else None
        mss = net.mss
        if entry is None:
            self.pmtu_until = INF
            self.pmtu_df = self.config.pmtu_discovery
        else:
            self.pmtu_until = entry.expires
            self.pmtu_df = not entry.locked
            mss = min(mss, entry.mtu - net.header_len - wtcp.HEADER_LEN)
        probe = self.probe_mss
        if probe is not None:
            if now >= probe[1]:
                self.probe_mss = None  # the interval is over: the full size again
            else:
                mss = min(mss, probe[0])
                self.pmtu_until = min(self.pmtu_until, probe[1])
        return mss

    def _sync_pmtu(self, now: float) -> bool:
        """RFC 1191 6.1 / 6.3: the estimate changed (a report for this destination, maybe
        validated by another connection) or aged out: recompute the MSS (Linux's
        tcp_current_mss compares dst_mtu with icsk_pmtu_cookie on every send)."""
        old = self.mss
        opts = TS_OPTION_LEN if self.ts_ok else 0
        mss = max(MIN_MSS, min(self.peer_mss, self._path_mss(now)) - opts)
        if mss == old:
            return False
        self.mss = mss
        self.recovery.mtu_changed(mss)
        return mss < old

    def _established(self, now: float, event: Event) -> None:
        """Into ESTABLISHED: RCV_SYN_ACK from SYN_SENT, SYN_ACKED from SYN_RECEIVED."""
        rec = self.recovery
        rec.rto_at = None
        self.rexmt_count = 0
        # Our SYN is acknowledged: a SYN-ACK still pending for the flush (a copy of the
        # peer's SYN in the same batch, before its ACK) would go out at ISS, below SND.UNA.
        self.syn_pending = False
        if self.syn_retransmitted and rec.rtt.srtt is None:
            rec.rtt.reset_to(SYN_RTO_AFTER_RETRY)
        if self.keepalive:
            self.keepalive_at = now + self.ka_params[0]
        self._event(event)
        self.made_pending = True
        if self.fin_queued:  # close()/write_eof() arrived before the handshake finished
            self._event(Event.CLOSE)

    # =========================================================================================
    # state changes
    # =========================================================================================
    def _set_state(self, new: State) -> None:
        old = self.state
        if new is old:
            return
        self.state = new
        if new is S.TIME_WAIT:
            self._enter_time_wait()
        elif new is S.CLOSED:
            self._release()
            self.lost_pending = True
        elif new is S.FIN_WAIT_2 and self.app_closed:
            # Orphaned: the application will read nothing more; give the peer a while to
            # close (Linux's tcp_fin_timeout), and tell the application we are done.
            self.close_at = self.engine.now + self.config.fin_wait2_timeout
            self.lost_pending = True
        elif new is S.FIN_WAIT_2 and not self.keepalive:
            # Half-closed, the application still reading: the peer may send for as long as
            # it likes, but nothing of ours is in flight to notice that it has gone. Linux
            # waits forever here unless SO_KEEPALIVE is on. Our choice: after
            # fin_wait2_timeout of silence, keepalive probes (keepalive_interval, _count),
            # on even when keepalive is off; a live peer answers them (RFC 9293 3.8.4) and
            # keeps the connection, a gone one is reclaimed with ETIMEDOUT.
            self.keepalive_at = self.engine.now + self.config.fin_wait2_timeout
        self.engine.state_changed(self, old, new)
        if new is S.CLOSED and self.lost_done:  # (TIME_WAIT or orphaned: the end was told)
            self._detach()

    def _event(self, event: Event) -> None:
        # state.next_state inlined (five events per connection): the same table, the same error
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise IllegalTransition(self.state, event)
        self._set_state(new)

    def _detach(self) -> None:
        """CLOSED, and the application told (on_closed) with nothing left to deliver: drop
        the references that close cycles (the handler and `user`, i.e. the transport, which
        holds this connection; the recovery state's `tcb`, which is this connection), so
        that the connection is freed by reference counting when its last holder lets go,
        not by the cyclic garbage collector: ~26 objects per connection, whose collection
        cost ~12-17 us per connection under bench/tcpclient.c's connection load. Nothing
        calls the handler or the recovery state's connection-facing methods after CLOSED;
        the recovery state keeps a frozen copy of what it reads (DetachedTcb)."""
        if self.rcvbuf.queued or self.eof_pending:  # still to be delivered (reading paused)
            return
        self.handler = None
        self.user = None
        self.recovery.tcb = DetachedTcb(self)

    def _enter_time_wait(self) -> None:
        self.persist_at = self.keepalive_at = None
        self.recovery.stop()
        self.close_at = self.engine.now + self.config.time_wait
        self.sndbuf.clear()
        self.lost_pending = True

    def _release(self) -> None:
        """CLOSED: stop every timer, free the buffers (queued input stays for delivery)."""
        self.persist_at = self.delack_at = None
        self.keepalive_at = self.close_at = None
        self.recovery.stop()
        self.sndbuf.clear()
        self.rcvbuf.drop_ooo()
        self.syn_pending = False
        self.ack_now = self.ack_pending = False
        self.ack_points.clear()

    def time_wait_reopened(self) -> None:
        """A new SYN takes this TIME_WAIT connection's 4-tuple (RFC 6191): close now."""
        self.close_at = None
        self._fail(None)

    def _fail(self, exc: OSError | None) -> None:
        """The connection is over with `exc` for the application (None: no error)."""
        if exc is not None and self.error is None:
            self.error = exc
        self._event(Event.RESET)

    # =========================================================================================
    # segment arrival (RFC 9293 3.10.7)
    # =========================================================================================
    def segment(self, h: TcpHeader, payload: memoryview, now: float) -> None:
        self.last_rx = now
        self.ka_probes = 0
        stats = self.stats
        stats[0] += 1
        if len(payload):
            stats[2] += 1
        held = self.ack_held
        if held is not None:
            if h.flags == ACK and not len(payload) and self._ack_supersedes(h, now, held):
                self._replace_held(h, now, held)
                return
            self.release_ack()
        state = self.state
        if state is S.ESTABLISHED and SLIM:
            if (
                ACK_HOLD
                and h.flags == ACK
                and not len(payload)
                and self.engine.flush_follows
                and self._ack_holdable(h)
            ):
                self.ack_held = (h, now, 1)
                return
            if self._segment_slim(h, payload, now):
                return
        if state in PURE_ACK_STATES and PURE_ACK and self._segment_pure_ack(h, payload, now):
            return
        if state is S.SYN_SENT:
            self._rx_syn_sent(h, payload, now)
            return
        if state is S.CLOSED:  # a stale reference; the engine normally never routes here
            self.counters.drop(Drop.TCP_CLOSED)
            return
        flags = h.flags
        rst = flags & RST
        seq = unwrap(h.seq, self.rcv_nxt)
        plen = len(payload)
        ts = h.options.timestamp
        if state is S.SYN_RECEIVED and flags & (SYN | ACK | RST) == SYN and seq + 1 == self.rcv_nxt:
            self.syn_pending = True  # the peer's SYN again: our SYN-ACK was lost
            self.counters.drop(Drop.TCP_SYN_RETRANSMIT)
            return
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
        # Sequence acceptability (RFC 9293 3.10.7.4 "first").
        seg_len = plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        rcv_nxt = self.rcv_nxt
        wnd = self.rcv_adv - rcv_nxt
        if wnd < 0:
            wnd = 0
        if seg_len == 0:
            ok = seq == rcv_nxt if wnd == 0 else rcv_nxt <= seq < rcv_nxt + wnd
        elif wnd == 0:
            # RFC 9293: with a zero window "special allowance should be made to accept valid
            # ACKs, URGs, and RSTs": a segment at RCV.NXT is processed, its text trimmed off.
            ok = seq == rcv_nxt
        else:
            ok = seq < rcv_nxt + wnd and seq + seg_len > rcv_nxt
        if not ok:
            if rst:
                self.counters.drop(Drop.TCP_RST_OUT_OF_WINDOW)
                return
            if flags & SYN:
                self._challenge_ack(now)  # RFC 5961 4.2 applies to any SYN
                self.counters.drop(Drop.TCP_SYN_CHALLENGED)
                return
            if state is S.TIME_WAIT and flags & FIN:
                self.close_at = now + self.config.time_wait  # a retransmitted FIN: re-ACK
            self._oow_ack(now, seg_len, seq, plen)
            self.counters.drop(Drop.TCP_OUT_OF_WINDOW)
            return
        # RST (RFC 5961 3.2): only an exact RCV.NXT match resets; in window: challenge.
        if rst:
            if seq == rcv_nxt:
                self._reset_by_peer()
            else:
                self._challenge_ack(now)
                self.counters.drop(Drop.TCP_RST_CHALLENGED)
            return
        # SYN in a synchronized state (RFC 5961 4.2): challenge ACK, drop.
        if flags & SYN:
            self._challenge_ack(now)
            self.counters.drop(Drop.TCP_SYN_CHALLENGED)
            return
        if not flags & ACK:
            self.counters.drop(Drop.TCP_NO_ACK)
            return
        ack = unwrap(h.ack, self.snd_una)
        if state is S.SYN_RECEIVED:
            if not self.snd_una < ack <= self.snd_nxt:
                self.engine.send_reset(
                    self.remote_ip, self.remote_port, self.local_port, h.ack, self.local_ip
                )
                self.counters.drop(Drop.TCP_BAD_ACK)
                return
            if not self.engine.accept_ready(self):
                self.counters.tcp_accept_queue_overflows += 1
                self.counters.drop(Drop.TCP_ACCEPT_QUEUE_FULL)
                return
            self._syn_acked(h, ack, seq, now)
        else:
            # RFC 5961 5.2: SND.UNA - MAX.SND.WND <= SEG.ACK <= SND.NXT, else ACK and drop.
            if ack > self.snd_nxt:
                # RFC 9293 3.10.7.4 and RFC 5961 5.2: "send an ACK, drop the segment". Linux
                # drops it silently (tcp_ack: ACK_UNSENT_DATA); we stay with the RFCs, since
                # the ACK lets a peer that lost sync (or a middlebox's mangled ACK) recover,
                # and it is rate-limited like every RFC 5961 ACK (section 7).
                self._challenge_ack(now)
                self.counters.drop(Drop.TCP_ACK_UNSENT)
                return
            if ack < self.snd_una - self.max_snd_wnd:
                self._challenge_ack(now)
                self.counters.drop(Drop.TCP_ACK_TOO_OLD)
                return
        # RFC 7323 4.3: remember TSval of a segment covering the left edge of our window.
        if (
            ts is not None
            and self.ts_ok
            and seq <= self.last_ack_sent
            and (((ts[0] - self.ts_recent) & MASK) < HALF or now - self.ts_recent_at > PAWS_IDLE)
        ):
            self.ts_recent = ts[0]
            self.ts_recent_at = now
        self._process_ack(h, ack, seq, plen, now)
        if self.state is S.CLOSED:
            return
        if flags & URG and self.state in RECEIVING:
            self._rcv_urgent(seq + h.urgent)  # RFC 9293 3.10.7.4 sixth: the URG bit
        if plen or flags & FIN:
            self._process_data(h, seq, payload, now)

    def _segment_pure_ack(self, h: TcpHeader, payload: memoryview, now: float) -> bool:
        """A pure ACK in SYN_RECEIVED or a closing state (PURE_ACK_STATES): the general
        path's steps for it, with its decisions already known (a connection's handshake ACK
        and its last ACK, two of the four segments a short connection brings). Returns
        False, having changed nothing, for anything else: flags other than ACK (PSH allowed),
        text, SEQ other than RCV.NXT, an ACK outside SND.UNA..SND.NXT (SND.UNA excluded in
        SYN_RECEIVED, where the general path answers it with a RST), a full accept queue, and
        with timestamps on a segment without one or with a TSval older than TS.Recent.
        Why each general check is decided: SEQ = RCV.NXT with no text is acceptable in any
        window; a TSval not older than TS.Recent fails PAWS's test (0 < TS.Recent - TSval <
        2^31) and passes 4.3's freshness test; no RST, SYN, URG or FIN: their branches are
        off. tests/unit/tcp/test_slim.py runs exchanges through both and compares."""
        flags = h.flags
        if flags & SLIM_EXCLUDED or not flags & ACK or len(payload):
            return False
        rcv_nxt = self.rcv_nxt
        if h.seq != rcv_nxt & MASK:
            return False
        ts = h.options.timestamp
        ts_ok = self.ts_ok
        if ts_ok and (ts is None or ((ts[0] - self.ts_recent) & MASK) >= HALF):
            return False
        snd_una = self.snd_una
        ack = unwrap(h.ack, snd_una)
        if ack > self.snd_nxt or ack < snd_una:
            return False
        if self.state is S.SYN_RECEIVED:
            if ack == snd_una or not self.engine.accept_ready(self):
                return False
            self._syn_acked(h, ack, rcv_nxt, now)
        # -- from here on, the general path's steps for this segment, in its order --------
        # RFC 7323 4.3: TS.Recent (the segment starts at RCV.NXT, the left edge).
        if ts_ok and rcv_nxt <= self.last_ack_sent:
            self.ts_recent = ts[0]  # type: ignore[index]
            self.ts_recent_at = now
        self._process_ack(h, ack, rcv_nxt, 0, now)
        return True

    def _ack_holdable(self, h: TcpHeader) -> bool:
        """May this pure ACK (flags exactly ACK, no text) wait for the flush point? Only one
        that _segment_slim takes through Recovery.ack_fast, acknowledging new data, with no
        zero-window probing under way and congestion control not to be called for it (so
        that a later ACK of the batch can stand for it: _ack_supersedes)."""
        if h.seq != self.rcv_nxt & MASK or self.fin_seq is not None or self.persist_backoff:
            return False
        opts = h.options
        if opts.sack_blocks and self.sack_ok:
            return False
        if self.ts_ok:
            ts = opts.timestamp
            if ts is None or ((ts[0] - self.ts_recent) & MASK) >= HALF:
                return False
        snd_una = self.snd_una
        ack = unwrap(h.ack, snd_una)
        snd_nxt = self.snd_nxt
        if ack <= snd_una or ack > snd_nxt or self.rcv_adv - self.rcv_nxt < 0:
            return False
        # Its window must be one SND.WL1/WL2 take (then the replacing ACK's is too, and the
        # largest window seen may take the held one's): not behind out-of-order data that
        # carried a newer window (SND.WL1 > RCV.NXT)
        wl1 = self.snd_wl1
        if wl1 > self.rcv_nxt or (wl1 == self.rcv_nxt and self.snd_wl2 > ack):
            return False
        rec = self.recovery
        if not (FAST_ACK and rec.fast_ok()) or rec.cwnd_limited:
            return False
        cc = rec.cc
        # Recovery.ack_fast grows cwnd only when this holds for the flight before the ACK
        return cc is not None and (cc.cwnd >= cc.ssthresh or cc.cwnd >= 2 * (snd_nxt - snd_una))

    def _ack_supersedes(self, h: TcpHeader, now: float, held: tuple[TcpHeader, float, int]) -> bool:
        """Does pure ACK `h` (flags exactly ACK, no text) make the held one redundant? It
        must arrive at the same `now`, start at RCV.NXT, carry no SACK blocks, acknowledge
        more than the held one and no more than SND.NXT, and carry a timestamp neither
        TS.Recent nor the held one would make it fail. What _ack_holdable asks of the TCB
        alone held for the held ACK and still holds: nothing has changed the TCB since.
        Then _segment_slim on `h` alone leaves the TCB as on both (the held one's window:
        SND.WL1/WL2 let both update it, so SND.WND ends as `h` sets it, the largest window
        seen is kept by the caller, and zero-window probing is not under way), save the RTT
        estimator (one sample instead of two, weighted as both: release_ack) and the per-ACK
        tallies of the last ACK."""
        first, at, _ = held
        if at != now or h.seq != first.seq:  # (the held one's: RCV.NXT)
            return False
        opts = h.options
        if opts.sack_blocks and self.sack_ok:
            return False
        snd_una = self.snd_una
        ack = unwrap(h.ack, snd_una)
        if ack <= unwrap(first.ack, snd_una) or ack > self.snd_nxt:
            return False
        if self.ts_ok:
            ts = opts.timestamp
            if ts is None or ((ts[0] - self.ts_recent) & MASK) >= HALF:
                return False
            # after `first`, TS.Recent would be its TSval (RFC 7323 4.3)
            if self.rcv_nxt <= self.last_ack_sent:
                ts0 = first.options.timestamp
                if ts0 is None or ((ts[0] - ts0[0]) & MASK) >= HALF:
                    return False
        return True

    def _replace_held(self, h: TcpHeader, now: float, held: tuple[TcpHeader, float, int]) -> None:
        """The held ACK is filtered out: `h` (which _ack_supersedes let replace it) says more.
        Of what the held one would have done only its window's share in the largest window
        seen remains to do (SND.WND ends as `h` sets it either way)."""
        wnd = held[0].window << self.snd_wscale
        if wnd > self.max_snd_wnd:
            self.max_snd_wnd = wnd
        self.ack_held = (h, now, held[2] + 1)
        self.counters.tcp_acks_filtered += 1

    def take_ack_run(self, h: TcpHeader, more: int, window: int, now: float) -> bool:
        """segment() for `more` pure ACKs (flags exactly ACK, no text) after the held one, `h`
        the last, when it replaces the held ACK, and nothing otherwise: False leaves them to
        segment() (TcpEngine.take_ack_run, for the host's batch of pure ACKs). With more > 1
        they are a run (Host._ack_batch): the same seq, the ACK rising and TSval not falling
        from member to member, both within 2^31 of the held one's, nothing else of the
        connection between them; when `h` replaces the held ACK, each member would have
        replaced the one before (every _ack_supersedes condition lies between the held
        one's, which held, and `h`'s). Then segment() on each in turn leaves what this does
        once: the ACKs counted, the largest window among all but the last (`window`, raw)
        folded in, `h` held for all."""
        held = self.ack_held
        if held is None or not self._ack_supersedes(h, now, held):
            return False
        self.last_rx = now
        self.ka_probes = 0
        self.stats[0] += more
        wnd = max(held[0].window, window) << self.snd_wscale
        if wnd > self.max_snd_wnd:
            self.max_snd_wnd = wnd
        self.ack_held = (h, now, held[2] + more)
        self.counters.tcp_acks_filtered += more
        return True

    def release_ack(self) -> None:
        """Process the held pure ACK now (ACK_HOLD), before anything reads or changes the
        TCB (every method the engine, the timers or the application call starts here).
        _ack_holdable checked it against this very state, so the slim path takes it."""
        held = self.ack_held
        if held is None:
            return
        self.ack_held = None
        h, now, merged = held
        rec = self.recovery
        rec.acks_merged = merged  # its RTT sample weighs as the ACKs it stands for
        if not self._segment_slim(h, _NO_TEXT, now):
            raise AssertionError("a held ACK left the slim path")  # _ack_holdable's promise
        rec.acks_merged = 1

    def _segment_slim(self, h: TcpHeader, payload: memoryview, now: float) -> bool:
        """The common ESTABLISHED segment in one pass: the general path's steps for it, with
        its decisions already known. Returns False, having changed nothing, for anything
        else (the general path takes it): the flags are ACK (PSH allowed); it starts at
        RCV.NXT and fits the window; its ACK is in SND.UNA..SND.NXT; the timestamp is present
        and not older than TS.Recent when they are on; no SACK blocks; and, for text, nothing
        out of order held, no FIN seen, the application still reading.
        tests/unit/tcp/test_slim.py runs scripted exchanges through both and compares."""
        flags = h.flags
        if flags & SLIM_EXCLUDED or not flags & ACK:
            return False
        rcv_nxt = self.rcv_nxt
        if h.seq != rcv_nxt & MASK:
            return False
        plen = len(payload)
        rcv_adv = self.rcv_adv
        if plen > rcv_adv - rcv_nxt:
            return False
        ts = h.options.timestamp
        ts_ok = self.ts_ok
        if ts_ok and (ts is None or ((ts[0] - self.ts_recent) & MASK) >= HALF):
            return False
        if h.options.sack_blocks and self.sack_ok:
            return False
        snd_una = self.snd_una
        ack = unwrap(h.ack, snd_una)
        acked = ack - snd_una
        if acked < 0 or ack > self.snd_nxt:
            return False
        rb = self.rcvbuf
        if plen and (rb.ooo or self.app_closed or self.rcv_fin_seq is not None):
            return False
        # -- from here on, the general path's steps for this segment, in its order --------
        # RFC 7323 4.3: TS.Recent (the segment starts at RCV.NXT, the left edge).
        if ts_ok and rcv_nxt <= self.last_ack_sent:
            self.ts_recent = ts[0]  # type: ignore[index]
            self.ts_recent_at = now
        # _process_ack: the window (RFC 9293: SND.WL1/SND.WL2 say whether it is newer).
        window_changed = False
        wl1 = self.snd_wl1
        if wl1 < rcv_nxt or (wl1 == rcv_nxt and self.snd_wl2 <= ack):
            wnd = h.window << self.snd_wscale
            if wnd != self.snd_wnd:
                window_changed = True
                if wnd > self.snd_wnd:
                    self.persist_backoff = 0
                self.snd_wnd = wnd
                if wnd > self.max_snd_wnd:
                    self.max_snd_wnd = wnd
            self.snd_wl1 = rcv_nxt
            self.snd_wl2 = ack
        self.probes_out = 0
        rec = self.recovery
        engine = self.engine
        if FAST_ACK and self.fin_seq is None and rec.fast_ok():
            # The common ACK (Linux's tcp_ack without FLAG_SLOWPATH): recovery's steps for it
            # fused (Recovery.ack_fast), then _new_ack's (no FIN of ours to acknowledge).
            if acked:
                flight = self.snd_nxt - snd_una
                self.snd_una = ack
                rec.ack_fast(ack, acked, flight, ts, now)
                sndbuf = self.sndbuf
                sndbuf.consume(min(ack - self.snd_base, sndbuf.end))
                self.rexmt_count = 0
                if self.writing_paused and len(sndbuf) <= self.write_low:
                    engine.touch(self)
            elif self.snd_nxt > snd_una:
                rec.take_sack((), ack)
                if not plen and not window_changed:
                    rec.on_dupack(now)
                if self.sack_ok:
                    rec.on_sack_ack(ts, ack, acked, 0, None, now)
            else:
                rec.ack_nothing_out()
        else:
            rec.take_sack((), ack)  # no blocks: it only resets the per-ACK tallies
            if acked:
                self._new_ack(ack, acked, ts, now)
            elif not plen and not window_changed and self.snd_nxt > snd_una:
                rec.on_dupack(now)  # RFC 5681's duplicate ACK (no SACK blocks: new_sacked 0)
            if self.sack_ok:
                rec.on_sack_ack(ts, ack, acked, 0, None, now)
        if window_changed or acked:
            engine.touch(self)
        if not plen:
            return True
        if self.state is not S.ESTABLISHED:  # our FIN acknowledged: the general steps
            self._process_data(h, rcv_nxt, payload, now)
            return True
        # _process_data for text at RCV.NXT with nothing out of order (RFC 9293 seventh).
        if plen > self.rcv_seg_mss:
            self.rcv_seg_mss = min(plen, self.rcv_mss)
        rb.push(bytes(payload))
        rcv_nxt += plen
        self.rcv_nxt = rcv_nxt
        self.ack_pending = True
        qa = self.quickack
        qa.on_data(now, rec.rtt.rto, rcv_adv - rcv_nxt + plen, self.rcv_mss)  # RCV.ADV - SEQ
        if qa.quick and not qa.pingpong:  # QuickAck.active()
            self.ack_now = True
        points = self.ack_points
        owed = points[-1][0] if points else self.last_ack_sent
        if rcv_nxt - owed > self.rcv_seg_mss:  # RFC 5681 4.2: every second full segment
            if len(points) >= MAX_ACK_POINTS:
                del points[0]
            points.append((rcv_nxt, ()))  # _ack_point(None, None): no SACK blocks to give
        engine.touch(self)
        return True

    def _disordered_ack(self, h: TcpHeader, seq: int, plen: int, tsval: int) -> bool:
        """A duplicate ACK overtaken by a later one (Linux's tcp_disordered_ack): its old
        TSval must not make PAWS drop it, or reordering would hide dupacks. As Linux: a pure
        ACK at RCV.NXT, of SND.UNA, that would not update the window by Linux's rule
        (tcp_may_update_window: a later SEQ, or the same SEQ with a larger or zero window;
        a reordered ACK usually carries a different window than the one taken already),
        with a TSval less than the RTO behind TS.Recent (Linux: icsk_rto * 1024 / HZ)."""
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
        return ((self.ts_recent - tsval) & MASK) <= self.recovery.rtt.rto * 1024

    def _oow_ack(self, now: float, seg_len: int, seq: int = 0, plen: int = 0) -> None:
        """RFC 9293: an unacceptable segment is answered with an ACK. Empty ones (pure ACKs,
        probes) at most every OOW_ACK_INTERVAL per connection, as Linux's
        tcp_invalid_ratelimit does, so two stacks cannot ping-pong ACKs forever. Old data
        (a needless retransmission, or a copy the network made) gets a D-SACK (RFC 2883)."""
        if plen and self.sack_ok and seq < self.rcv_nxt:
            self._ack_point(None, (seq, min(seq + plen, self.rcv_nxt)))
            return
        if seg_len == 0:
            if now - self.oow_at < OOW_ACK_INTERVAL:
                return
            self.oow_at = now
        self.ack_now = True

    # -- SYN-SENT (RFC 9293 3.10.7.3) ------------------------------------------------------
    def _rx_syn_sent(self, h: TcpHeader, payload: memoryview, now: float) -> None:
        flags = h.flags
        ack = 0
        if flags & ACK:
            ack = unwrap(h.ack, self.snd_una)
            if ack <= self.iss or ack > self.snd_nxt:
                if not flags & RST:
                    self.engine.send_reset(
                        self.remote_ip, self.remote_port, self.local_port, h.ack, self.local_ip
                    )
                self.counters.drop(Drop.TCP_BAD_ACK)
                return
        if flags & RST:
            if flags & ACK:  # RFC 5961 3.2: acceptable only when it acknowledges our SYN
                self.counters.tcp_resets_rx += 1
                self._fail(refused())
            else:
                self.counters.drop(Drop.TCP_RST_OUT_OF_WINDOW)
            return
        if not flags & SYN:
            self.counters.drop(Drop.TCP_NO_SYN)
            return
        self.irs = h.seq
        self.rcv_nxt = h.seq + 1
        self._negotiate(h.options, now)
        self.rcv_adv = self.rcv_nxt + self.syn_window
        self.snd_wnd = self.max_snd_wnd = h.window  # unscaled in a SYN
        self.snd_wl1 = self.irs
        if flags & ACK:
            self.snd_una = ack
            self.snd_wl2 = ack
            self._sample_syn_rtt(h, now)
            self.ack_now = True
            self._established(now, Event.RCV_SYN_ACK)
            if len(payload) or flags & FIN:  # text in a SYN-ACK: RFC 9293 step six
                self._process_data(h, self.irs + 1, payload, now)
        else:
            # Simultaneous open: SYN_RECEIVED, answer <SEQ=ISS><ACK=RCV.NXT><SYN,ACK>.
            self._event(Event.RCV_SYN)
            self.syn_pending = True

    def _sample_syn_rtt(self, h: TcpHeader, now: float) -> None:
        ts = h.options.timestamp
        if self.ts_ok and ts is not None and ts[1]:
            r = ((self.tsval(now) - ts[1]) & MASK) / 1000.0
        elif not self.syn_retransmitted:
            r = now - self.syn_sent_at
        else:
            return
        self.recovery.sample_rtt(r)

    def _syn_acked(self, h: TcpHeader, ack: int, seq: int, now: float) -> None:
        """SYN_RECEIVED and our SYN acknowledged: ESTABLISHED (RFC 9293 3.10.7.4 fifth).
        (A SYN-ACK still owed to a copy of the peer's SYN in this batch is dropped by
        _established, for this and the simultaneous open alike.)"""
        self.snd_una = ack
        self.snd_wnd = h.window << self.snd_wscale
        self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
        self.snd_wl1 = seq
        self.snd_wl2 = ack
        self._sample_syn_rtt(h, now)
        self._established(now, Event.SYN_ACKED)

    # -- ACK (RFC 9293 3.10.7.4 fifth; RFC 5681, 6582, 6675, 6298) ---------------------------
    def _process_ack(self, h: TcpHeader, ack: int, seq: int, plen: int, now: float) -> None:
        # Window update (RFC 9293 3.10.7.4: SND.WL1/SND.WL2 decide whether it is newer).
        # Kept against Linux, whose tcp_may_update_window takes a segment with the same SEQ
        # and ACK only if its window is larger (or zero): RFC 9293 makes any such segment
        # set SND.WND, and RFC 5681's dupack definition (same window) builds on that.
        window_changed = False
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            wnd = h.window << self.snd_wscale
            if wnd != self.snd_wnd:
                window_changed = True
                if wnd > self.snd_wnd:
                    self.persist_backoff = 0
                self.snd_wnd = wnd
                if wnd > self.max_snd_wnd:
                    self.max_snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
        self.probes_out = 0  # the peer answers: window probes are not going unanswered
        rec = self.recovery
        ts = h.options.timestamp
        new_sacked, dsack = rec.take_sack(h.options.sack_blocks if self.sack_ok else (), ack)
        acked = ack - self.snd_una
        if acked > 0:
            self._new_ack(ack, acked, ts, now)
        elif (
            ack == self.snd_una
            and self.snd_nxt > self.snd_una
            and (new_sacked or (plen == 0 and not h.flags & (SYN | FIN) and not window_changed))
        ):
            rec.on_dupack(now)
        if self.sack_ok and self.state in TRANSMITTING:
            rec.on_sack_ack(ts, ack, acked, new_sacked, dsack, now)
        if window_changed or acked > 0:
            self.engine.touch(self)

    def _new_ack(self, ack: int, acked: int, ts: tuple[int, int] | None, now: float) -> None:
        """SND.UNA < SEG.ACK <= SND.NXT: new data acknowledged."""
        flight = self.snd_nxt - self.snd_una
        self.snd_una = ack
        self.recovery.on_new_ack(ack, acked, flight, ts, now)
        self.sndbuf.consume(min(ack - self.snd_base, self.sndbuf.end))
        self.rexmt_count = 0
        # Our FIN acknowledged?
        if self.fin_seq is not None and ack > self.fin_seq:
            self._event(Event.FIN_ACKED)
        elif self.writing_paused and len(self.sndbuf) <= self.write_low:
            self.engine.touch(self)

    # -- text and FIN (RFC 9293 3.10.7.4 seventh and eighth) ---------------------------------
    def _process_data(self, h: TcpHeader, seq: int, payload: memoryview, now: float) -> None:
        state = self.state
        fin = bool(h.flags & FIN)
        plen = len(payload)
        if state not in RECEIVING:
            # The peer already sent its FIN (or we never synchronised): text is ignored.
            if plen:
                self.counters.drop(Drop.TCP_DATA_AFTER_FIN)
            return
        if plen and self.app_closed:
            # RFC 1122 4.2.2.13 (and Linux): data for an application that closed: reset.
            self.counters.drop(Drop.TCP_DATA_AFTER_CLOSE)
            self._send_rst_now(now)
            self._fail(None)
            return
        rcv_nxt = self.rcv_nxt
        dsack: tuple[int, int] | None = None
        if seq < rcv_nxt:  # the front was received already
            dsack = (seq, min(rcv_nxt, seq + plen))  # RFC 2883: report the duplicate
            cut = rcv_nxt - seq
            if cut >= plen:
                payload = payload[plen:]
                seq += plen
                if fin and seq < rcv_nxt:
                    fin = False
            else:
                payload = payload[cut:]
                seq = rcv_nxt
            plen = len(payload)
        right = self.rcv_adv
        if seq + plen > right:  # beyond the window we offered: trim (and lose the FIN)
            keep = max(0, right - seq)
            payload = payload[:keep]
            plen = keep
            fin = False
            self.ack_now = True  # tell the peer where the window really ends
            if not plen:
                self.counters.drop(Drop.TCP_ZERO_WINDOW)
        if fin and self.rcv_fin_seq is None:
            self.rcv_fin_seq = seq + plen
        rb = self.rcvbuf
        ack_at_once = False
        if seq == rcv_nxt:
            if plen:
                if plen > self.rcv_seg_mss:
                    self.rcv_seg_mss = min(plen, self.rcv_mss)
                # Taken whole, also when it spans data held out of order (a GRO super-frame,
                # a repacketized retransmission): take_ooo then lets go of what it covers and
                # keeps what reaches beyond, as Linux's tcp_data_queue and tcp_ofo_queue do.
                rb.push(bytes(payload))
                rcv_nxt += plen
                if rb.ooo:
                    rcv_nxt, pieces = rb.take_ooo(rcv_nxt)
                    for piece in pieces:
                        rb.push(piece)
                    ack_at_once = True  # RFC 5681 4.2: a segment that fills a hole
                self.rcv_nxt = rcv_nxt
                self.ack_pending = True
                qa = self.quickack
                qa.on_data(now, self.recovery.rtt.rto, self.rcv_adv - seq, self.rcv_mss)
                if qa.active():
                    # Quick-ACK mode (Linux; see ackpolicy.py): the ACK goes at this flush
                    # point, on the reply if the application writes one while handling the
                    # batch (Linux sends a pure ACK first: one segment more, same instant).
                    self.ack_now = True
                # RFC 5681 4.2 / RFC 1122 4.2.3.2: ACK at least every second full-sized
                # segment, also within one receive batch (as Linux's __tcp_ack_snd_check),
                # or a sender counting ACKs (RFC 3465) grows by 2 MSS per batch.
                if rcv_nxt - self._last_ack_owed() > self.rcv_seg_mss:
                    ack_at_once = True
            if self.rcv_fin_seq is not None and self.rcv_nxt == self.rcv_fin_seq:
                self._rcv_fin(now)
                ack_at_once = False  # the FIN's ACK follows at the flush (ack_now)
            if ack_at_once or dsack is not None:
                self._ack_point(None, dsack)
        elif plen:
            stored, refused = rb.add_ooo(seq, payload)
            if refused:
                self.counters.drop(Drop.TCP_OOO_QUEUE_FULL)
            if not stored and not refused and dsack is None:
                dsack = (seq, seq + plen)  # all of it was held already: RFC 2883 4.1.2
            # RFC 5681 4.2: out of order -> an immediate duplicate ACK. With SACK, a segment
            # that only extends this batch's run of out-of-order data adds nothing a SACK
            # sender counts by dupacks: such runs are ACKed like in-order data (the first
            # segment, then every second; the rest at the flush), as Linux's GRO would merge
            # them. Without SACK every one counts toward the sender's dupthresh.
            acked_to, end = self.ooo_run
            if self.sack_ok and dsack is None and seq == end and end - acked_to <= self.rcv_seg_mss:
                self.ack_now = True
            else:
                self._ack_point(seq, dsack)
                acked_to = seq + plen
            self.ooo_run = (acked_to, seq + plen)
        else:
            self.ack_now = True  # a FIN beyond a hole
        self.engine.touch(self)

    def _rcv_urgent(self, up: int) -> None:
        """RCV.UP <- max(RCV.UP, SEG.UP). SEG.UP points just past the urgent data (RFC 6093
        section 3, RFC 9293 MUST-31: sequence number + urgent pointer); the application
        hears of it when it advances (MUST-32), as the stream offset where urgent data
        ends, and reads the bytes inline (RFC 6093 4: new applications SHOULD NOT rely on
        urgent data; Linux's SO_OOBINLINE semantics, never one byte taken out-of-band)."""
        if up <= self.rcv_nxt - self.rcvbuf.queued:
            return  # already read past it: nothing urgent left
        if self.rcv_up is None or up > self.rcv_up:
            self.rcv_up = up
            self.urgent_pending = True
            self.engine.touch(self)

    def urgent_mark(self) -> int | None:
        """Stream offset (bytes from the start of the peer's data) just past the latest
        urgent data, or None when none was signalled."""
        return None if self.rcv_up is None else self.rcv_up - self.irs - 1

    def _last_ack_owed(self) -> int:
        points = self.ack_points
        return points[-1][0] if points else self.last_ack_sent

    def _ack_point(self, trigger: int | None, dsack: tuple[int, int] | None) -> None:
        """Owe an ACK for the segment just processed (RFC 5681 4.2 "immediate"). It goes out
        at the flush point, after the application read the batch, so its window is current;
        the ACK numbers of one batch's ACKs increase as the segments arrived."""
        points = self.ack_points
        if len(points) >= MAX_ACK_POINTS:
            del points[0]
        blocks: tuple[tuple[int, int], ...] = ()
        if self.sack_ok and (self.rcvbuf.ooo or dsack is not None):
            blocks = self._sack_option(3 if self.ts_ok else 4, trigger, dsack)
        points.append((self.rcv_nxt, blocks))

    def _rcv_fin(self, now: float) -> None:
        self.rcv_nxt += 1
        self.rcv_fin_seq = None
        self.ack_now = True
        self.eof_pending = True
        self._event(Event.RCV_FIN)

    # -- RST, challenge ACKs ------------------------------------------------------------------
    def _reset_by_peer(self) -> None:
        self.counters.tcp_resets_rx += 1
        state = self.state
        if state is S.SYN_RECEIVED:
            # Passive: back to LISTEN, i.e. forget it. Active (simultaneous open): refused.
            self._fail(None if self.listener is not None else refused())
        elif state in (S.CLOSING, S.LAST_ACK, S.TIME_WAIT):
            self._fail(None)
        else:
            self._fail(reset())

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 3.2/4.2/5.2: answer with an ACK, at a limited rate per connection."""
        bucket = self.challenge
        if bucket is None:
            cfg = self.config
            bucket = self.challenge = TokenBucket(cfg.challenge_ack_rate, cfg.challenge_ack_burst)
        if bucket.allow(now):
            self.counters.tcp_challenge_acks += 1
            self.ack_now = True
            self.engine.touch(self)

    # =========================================================================================
    # output
    # =========================================================================================
    def tsval(self, now: float) -> int:
        """Our TSval at `now` (RFC 7323: a millisecond clock with a per-connection offset)."""
        return (int(now * 1000) + self.ts_offset) & MASK

    def _window_field(self, ack: int | None = None) -> int:
        """The window to advertise, scaled; never moves the right edge left (RFC 9293
        3.8.6.2.2 receiver SWS avoidance: it moves right only by a worthwhile amount), but
        for less than one scale unit once the buffer is full (see `limit`).
        `ack`: an owed ACK below RCV.NXT, whose window must reach the same right edge.

        Memoised (`wnd_memo`): a computation that left RCV.ADV where it was is a fixed point,
        so with the same inputs (RCV.NXT, the queued bytes, RCV.ADV, the buffer size, the
        shift, RCV.MSS, the state) the next one gives the same field and again moves nothing:
        a bulk sender's segments, whose receive side is idle, reuse it."""
        rcv_nxt = self.rcv_nxt
        rcv_adv = self.rcv_adv
        key = (
            rcv_nxt, self.rcvbuf.queued, rcv_adv, self.rcv_buf_size, self.rcv_wscale,
            self.rcv_mss, self.state,
        )  # fmt: skip
        plain = ack is None or ack >= rcv_nxt  # no owed ACK below RCV.NXT
        memo = self.wnd_memo
        if plain and memo is not None and memo[0] == key and WINDOW_MEMO:
            return memo[1]
        field = self._window_compute(ack)
        if plain and self.rcv_adv == rcv_adv:
            self.wnd_memo = (key, field)
        return field

    def _window_compute(self, ack: int | None) -> int:
        """_window_field's computation, every time."""
        shift = self.rcv_wscale
        free = self.rcv_buf_size - self.rcvbuf.queued
        rcv_nxt = self.rcv_nxt
        cur = self.rcv_adv - rcv_nxt
        if cur < 0:
            cur = 0
        # In SYN_RECEIVED the SYN-ACK's window stands until the handshake completes (as
        # Linux's request sockets): a retransmitted SYN-ACK, whose window is never scaled
        # (RFC 7323 2.2), could not repeat a larger one that an ACK had offered meanwhile.
        opening = self.state is not S.SYN_RECEIVED
        if opening and free > cur and free - cur >= min(self.rcv_buf_size >> 1, self.rcv_mss):
            wnd = free
        else:
            wnd = cur
        field = wnd >> shift
        if field > 0xFFFF:
            field = 0xFFFF
        right = rcv_nxt + (field << shift)
        # Rounding down would shrink the window: round up instead, as far as the buffer backs
        # the edge (rounded up once: `limit`). Rounding up from wherever the last ACK left
        # the edge, at every ACK, would keep a window open forever to a peer sending segments
        # smaller than the scale's unit, and a paused reader's buffer would grow without
        # bound: past `limit` the edge moves left by less than one unit instead (RFC 7323
        # appendix F; Linux's tcp_shrink_window).
        limit = rcv_nxt + free + (1 << shift) - 1
        if right < self.rcv_adv:
            up = min(0xFFFF, -(-cur >> shift))
            if rcv_nxt + (up << shift) <= limit:
                field = up
                right = rcv_nxt + (field << shift)
        if right > self.rcv_adv:
            self.rcv_adv = right
        if ack is not None and ack < rcv_nxt:
            span = self.rcv_adv - ack
            field = min(0xFFFF, -(-span >> shift))
            if ack + (field << shift) > limit:
                field = min(0xFFFF, span >> shift)
            right = ack + (field << shift)
            if right > self.rcv_adv:
                self.rcv_adv = right
        return field

    def _xmit(
        self,
        flags: int,
        seq: int,
        payload,
        now: float,
        point: AckPoint | None = None,
        gso: int = 0,
    ) -> None:
        """Build and send one segment from the current TCB state (`point`: an owed ACK)."""
        ts = (self.tsval(now), self.ts_recent) if self.ts_ok else None
        blocks: tuple[tuple[int, int], ...] = ()
        if point is not None:
            blocks = point[1]
        elif self.sack_ok and flags & ACK and self.rcvbuf.ooo:
            blocks = self._sack_option(3 if ts else 4, None, None)
        window = 0 if flags & RST else self._window_field(None if point is None else point[0])
        if flags & ACK:
            rcv_nxt = self.rcv_nxt if point is None else point[0]
            ack = rcv_nxt & MASK
            if rcv_nxt > self.last_ack_sent:
                self.quickack.on_ack_sent()
            self.last_ack_sent = rcv_nxt
            if rcv_nxt == self.rcv_nxt:
                self.ack_now = self.ack_pending = False
                self.delack_at = None
            self.window_check = False
        else:
            ack = 0
        stats = self.stats
        stats[1] += 1
        urgent = 0
        if self.snd_up > seq and not flags & RST:
            # RFC 9293 3.8.5: URG on every segment sent before the urgent data's end, the
            # pointer = its offset from SEG.SEQ (past the urgent data, RFC 6093); beyond
            # what 16 bits hold, 0xFFFF (as Linux's tcp_options_write caller does).
            flags |= URG
            urgent = min(self.snd_up - seq, 0xFFFF)
        if payload:
            self.quickack.on_data_sent(now, self.config.delayed_ack)
            stats[3] += 1
            stats[4] += len(payload)
        if blocks or urgent or (gso and len(payload) > gso):
            options = TcpOptions(timestamp=ts, sack_blocks=blocks) if ts or blocks else None
            self.engine.transmit(
                self, seq & MASK, ack, flags, window, payload, options, urgent, gso
            )
        else:  # the per-segment case: header from the connection's template (wire/tcp.py)
            self.engine.transmit_fast(self, seq & MASK, ack, flags, window, payload, ts)
        self.last_send = now

    def _sack_option(
        self, limit: int, trigger: int | None, dsack: tuple[int, int] | None
    ) -> tuple[tuple[int, int], ...]:
        """SACK blocks: a D-SACK block first (RFC 2883), then the block holding the segment
        that triggered this ACK, then the most recently changed ones (RFC 2018 4)."""
        out: list[tuple[int, int]] = []
        held = self.rcvbuf.sack_blocks(limit + 1)
        if dsack is not None:
            out.append(dsack)
            if dsack[0] >= self.rcv_nxt:  # above the ACK: the block that holds it follows
                out.extend(b for b in held if b[0] <= dsack[0] and dsack[1] <= b[1])
        if trigger is not None:
            out.extend(b for b in held if b[0] <= trigger < b[1] and b not in out)
        out.extend(b for b in held if b not in out)
        return tuple((s & MASK, e & MASK) for s, e in out[:limit])

    def _send_syn(self, now: float) -> None:
        """SYN (SYN_SENT) or SYN-ACK (SYN_RECEIVED), with the options we offer or echo."""
        cfg = self.config
        active = self.state is S.SYN_SENT
        flags = SYN if active else SYN | ACK
        if active:  # offer what we are configured for
            wscale = self.rcv_wscale if cfg.window_scaling else None
            sack = cfg.sack
            ts = (self.tsval(now), 0) if cfg.timestamps else None
        else:  # echo what both sides agreed on
            wscale = self.rcv_wscale if self.wscale_ok else None
            sack = self.sack_ok
            ts = (self.tsval(now), self.ts_recent) if self.ts_ok else None
        options = TcpOptions(self.net.mss, wscale, sack, (), ts)
        window = min(self.rcv_buf_size, 0xFFFF)
        self.syn_window = window
        if active:
            ack = 0
        else:
            ack = self.rcv_nxt & MASK
            self.rcv_adv = self.rcv_nxt + window
            self.last_ack_sent = self.rcv_nxt
            self.ack_now = self.ack_pending = False
        self.stats[1] += 1
        self.engine.transmit(self, self.iss & MASK, ack, flags, window, b"", options)
        if self.snd_nxt == self.iss:
            self.snd_nxt = self.iss + 1
            self.syn_sent_at = now
        rec = self.recovery
        if rec.rto_at is None:
            rec.rto_at = now + rec.rtt.rto
        self.last_send = now

    def wake(self) -> None:
        """Ask the engine for an output pass at its flush point (recovery's way to send)."""
        self.engine.touch(self)

    def _send_ack(self, now: float) -> None:
        self._xmit(ACK, self.snd_nxt, b"", now)

    def _send_rst_now(self, now: float) -> None:
        """<SEQ=SND.NXT><ACK=RCV.NXT><CTL=RST,ACK>, as Linux sends for abort()."""
        self.counters.tcp_resets_tx += 1
        self._xmit(RST | ACK, self.snd_nxt, b"", now)

    def _send_probe(self, now: float) -> None:
        """A window or keepalive probe: <SEQ=SND.UNA-1><CTL=ACK>, no data (as Linux does).

        The peer finds it old, and RFC 9293 makes it answer with an ACK carrying its window.
        """
        self._xmit(ACK, self.snd_una - 1, b"", now)

    def _send_segment(
        self, seq: int, size: int, fin: bool, snd_end: int, now: float, gso: int = 0
    ) -> None:
        """`gso`: a TSO super-segment, cut by the kernel into pieces of this size; recovery
        records it piece by piece, so SACK, RACK and retransmission count those."""
        first = seq - self.snd_base
        if (
            LEAN_TX
            and size
            and not fin
            and not gso
            and self.snd_up <= seq
            and not (self.rcvbuf.ooo and self.sack_ok)
        ):
            # The plain data segment (an echo's reply, a bulk sender's MSS): what _xmit and
            # Recovery.sent would do for it, in their order (checked mode sees the same TCB
            # at transmit), without their generic branches and calls.
            sndbuf = self.sndbuf
            payload = sndbuf.view(first, size)
            end = seq + size
            psh = sndbuf.push_in(first, first + size)
            if size < self.mss:
                self.snd_sml = end
            ts = ((int(now * 1000) + self.ts_offset) & MASK, self.ts_recent) if self.ts_ok else None
            window = self._window_field(None)
            rcv_nxt = self.rcv_nxt
            if rcv_nxt > self.last_ack_sent:
                self.quickack.on_ack_sent()
            self.last_ack_sent = rcv_nxt
            self.ack_now = self.ack_pending = False
            self.delack_at = None
            self.window_check = False
            stats = self.stats
            stats[1] += 1
            quick = self.quickack  # QuickAck.on_data_sent: a reply soon after data is ping-pong
            if quick.lrcvtime is not None and now - quick.lrcvtime < self.config.delayed_ack:
                quick.pingpong = True
            stats[3] += 1
            stats[4] += size
            self.engine.transmit_fast(
                self, seq & MASK, rcv_nxt & MASK, ACK | PSH if psh else ACK, window, payload, ts
            )
            self.last_send = now
            self.recovery.sent_plain(seq, end, now, psh)
            self.snd_nxt = end
            self.last_data = now
            return
        payload = self.sndbuf.view(first, size) if size else b""
        flags = ACK
        end = seq + size
        if size and self.sndbuf.push_in(first, first + size):
            # PSH on the segment that ends an application write (SendBuffer.mark_push), also
            # when cwnd holds back what was written after it (Linux's tcp_push).
            flags |= PSH
        if size < self.mss or (gso and size % gso):  # its last wire segment is small
            self.snd_sml = end
        if fin:
            flags |= FIN
        self._xmit(flags, seq, payload, now, gso=gso)
        self.recovery.sent(seq, end, fin, now, bool(flags & PSH), gso)
        if fin:
            self.fin_seq = end
            end += 1
        self.snd_nxt = end
        self.last_data = now

    def _retransmit(self, r: Sent, now: float) -> None:
        if r.fin:
            self._xmit(ACK | FIN, r.start, b"", now)
        else:
            # The original's flags (Linux resends the skb as built): PSH only if it had it.
            payload = self.sndbuf.view(r.start - self.snd_base, r.end - r.start)
            self._xmit(ACK | PSH if r.psh else ACK, r.start, payload, now)
        self.recovery.retransmitted(r, now)
        self.last_data = now
        self.counters.tcp_retransmitted_segments += 1
        self.stats[5] += r.end - r.start
        self.stats[6] += 1

    def output(self, now: float) -> None:
        """Send what the state, the windows and the ACK rules allow."""
        if self.ack_held is not None:
            self.release_ack()
        state = self.state
        if state is S.CLOSED:
            return
        if self.syn_pending:
            self.syn_pending = False
            self._send_syn(now)
            return
        if state is S.SYN_SENT:
            return
        self.ooo_run = (0, 0)
        if self.ack_points:
            points = self.ack_points
            self.ack_points = []
            for point in points:
                if point[0] <= self.rcv_nxt:
                    self._xmit(ACK, self.snd_nxt, b"", now, point)
        sent = False
        if state in TRANSMITTING and state is not S.SYN_RECEIVED:
            sent = self._send_data(now)
        self.recovery.flight_mark = self.snd_nxt - self.snd_una
        if sent:
            return
        if (
            self.ack_now
            or (self.ack_pending and self.rcv_nxt - self.last_ack_sent > self.rcv_seg_mss)
            or (self.window_check and self._window_update_due())
        ):
            self._send_ack(now)
        elif self.ack_pending and self.delack_at is None:
            self.delack_at = now + self.config.delayed_ack
        self.window_check = False

    def _window_update_due(self) -> bool:
        """After the application read: is the window worth announcing (Linux's rule in
        tcp_cleanup_rbuf: it at least doubles and grows by a segment)?

        Compared as the header carries it: free space beyond 0xFFFF << RCV.WSCALE (a 512 KB
        buffer without window scaling) or below the scale's unit is invisible to the peer,
        and an ACK "announcing" it repeats the last one — a duplicate ACK to a sender with
        data in flight (RFC 5681 4.2), three of which make it retransmit for nothing."""
        shift = self.rcv_wscale
        free = min(self.rcv_buf_size - self.rcvbuf.queued, 0xFFFF << shift) >> shift << shift
        cur = self.rcv_adv - self.rcv_nxt
        return free - cur >= self.rcv_mss and free >= 2 * cur

    def _send_data(self, now: float) -> bool:
        """Retransmissions due, then new data and the FIN, within cwnd and the peer's window.

        Returns whether anything went out (every segment carries the ACK).
        """
        if self.net.pmtu.updates != self.pmtu_gen or now >= self.pmtu_until:
            self._sync_pmtu(now)  # RFC 1191 6.1/6.3: another connection's report, or aging
        rec = self.recovery
        if (
            SLIM
            and self.snd_nxt == self.snd_una
            and self.snd_nxt - self.snd_base == self.sndbuf.end
            and not self.fin_queued
            and not rec.probe_owed
            and rec.owed is None
        ):
            # Nothing in flight, nothing to send, nothing owed (a receiving connection's
            # flush): what the steps below would still do, and nothing else.
            if self.last_data and now - self.last_data > rec.rtt.rto:
                rec.on_idle(now)  # RFC 5681 4.1
                self.last_data = 0.0
            rec.cwnd_limited = False
            self.persist_at = None
            return False
        board = rec.board
        # 0. What recovery handed over: a tail loss probe, and the one retransmission that
        # goes whatever cwnd says (fast retransmit, RTO, recovery probe). Neither counts
        # as this pass's sending for the probe timer (recovery armed that itself).
        forced = False
        if rec.probe_owed:
            rec.probe_owed = False
            forced = self._send_loss_probe(now)
        owed = None if rec.owed is None else rec.take_owed(self.snd_una)
        if owed is not None:
            if owed.end - owed.start > self.mss:  # one segment of an offloaded one
                board.split(owed, owed.start + self.mss)
            self._retransmit(owed, now)
            forced = True
        sent = False
        mss = self.mss
        if self.sack_ok and self.rcvbuf.ooo:  # room for SACK blocks in the header
            mss -= 4 + SACK_BLOCK_LEN * min(len(self.rcvbuf.ooo), 3 if self.ts_ok else 4)
        flight = self.snd_nxt - self.snd_una
        if flight == 0 and self.last_data and now - self.last_data > rec.rtt.rto:
            rec.on_idle(now)  # RFC 5681 4.1: restart after an idle period longer than the RTO
            self.last_data = 0.0
        budget = rec.budget(flight)
        # 1. RFC 6675 NextSeg() rule 1 (and go-back-N after an RTO): lost records first.
        if board.lost_bytes and rec.resend_lost():  # (nothing lost: nothing to resend)
            while budget > 0:
                r = board.next_lost()
                if r is None:
                    break
                length = r.end - r.start
                if length > self.mss:
                    # A record larger than today's MSS (sent before the path MTU went down,
                    # RFC 1191 6.1): resent one MSS at a time, as Linux's tcp_retransmit_skb
                    # fragments an skb to the current MSS.
                    board.split(r, r.start + self.mss)
                    length = self.mss
                self._retransmit(r, now)
                budget -= length
                sent = True
        # 2. New data (rule 2), within the receive window and cwnd; Nagle; sender SWS.
        snd_end = self.snd_base + self.sndbuf.end
        wnd_right = self.snd_una + self.snd_wnd
        blocked = False  # the peer's window (not cwnd) is what stops us
        new_data = False
        rec.cwnd_limited = False
        # TSO matters only for more than an MSS of unsent data (it never grows in the loop).
        tso = self.net.tso_max if snd_end - self.snd_nxt > mss else 0
        while True:
            snd_nxt = self.snd_nxt
            unsent = snd_end - snd_nxt
            if unsent <= 0:
                break
            win = wnd_right - snd_nxt
            size = mss if unsent > mss else unsent
            if tso > mss and unsent > mss and self.snd_up <= snd_nxt:
                # TSO: one segment of whole MSS-sized pieces (and the tail of the data) that
                # the link's kernel cuts up; windows and cwnd still bound it. Not while urgent
                # data is pending: each segment's urgent pointer is its own (RFC 9293 3.8.5).
                big = min(unsent, tso - tso % mss, max(win, 0), max(budget, 0))
                if big < unsent:
                    big -= big % mss
                if big > mss:
                    size = big
            if win < size:
                # RFC 9293 3.8.6.2.1: send a partial segment only if it is at least half
                # the largest window the peer offered; else wait (persist timer overrides).
                if win <= 0 or (win < mss and win < self.max_snd_wnd >> 1):
                    blocked = True
                    break
                size = win
            if budget < size:
                rec.cwnd_limited = True
                break
            if (
                size < mss
                and size == unsent
                and not self.nodelay
                and self.snd_sml > self.snd_una
                and not self.fin_queued
            ):
                # RFC 896 Nagle, with Minshall's refinement (as Linux): a small segment waits
                # while an earlier small segment is unacknowledged, so one write larger than
                # the MSS goes out whole while keystroke-sized writes still coalesce.
                break
            fin = self.fin_queued and size == unsent and win > size
            self._send_segment(snd_nxt, size, fin, snd_end, now, mss if size > mss else 0)
            budget -= size
            sent = new_data = True
        # 3. A FIN on its own (all data sent before close()).
        if (
            self.fin_queued
            and self.fin_seq is None
            and self.snd_nxt == snd_end
            and self.state not in (S.ESTABLISHED, S.CLOSE_WAIT)
        ):
            if wnd_right - self.snd_nxt >= 1:
                self._send_segment(self.snd_nxt, 0, True, snd_end, now)
                # The FIN is new sequence space like data: the probe timer restarts from it
                # (RFC 8985 7.2; Linux's tcp_write_xmit schedules the probe for any send).
                sent = new_data = True
            else:
                blocked = True
        rec.after_output(new_data, sent, now)
        # Persist timer (RFC 9293 3.8.6.1): the window holds us back with nothing in flight.
        if blocked and self.snd_nxt == self.snd_una:
            if self.persist_at is None:
                self.persist_at = now + self._persist_interval()
        else:
            self.persist_at = None
        return sent or forced

    def _send_loss_probe(self, now: float) -> bool:
        """RFC 8985 7.3, asked for by recovery's PTO: new data if the peer's window takes
        it, else the last segment not SACKed again."""
        snd_end = self.snd_base + self.sndbuf.end
        unsent = snd_end - self.snd_nxt
        win = self.snd_una + self.snd_wnd - self.snd_nxt
        size = min(unsent, self.mss)
        if unsent > 0 and win >= size:
            fin = self.fin_queued and size == unsent and win > size
            self._send_segment(self.snd_nxt, size, fin, snd_end, now)
            retransmission = False
        else:
            board = self.recovery.board
            r = board.last_unsacked()
            if r is None:
                return False
            if r.end - r.start > self.mss and not r.fin:  # the last MSS of an offloaded one
                r = board.split(r, r.end - self.mss)  # (Linux's tcp_send_loss_probe)
            self._retransmit(r, now)
            retransmission = True
        self.recovery.probe_sent(retransmission, now)
        return True

    def _persist_interval(self) -> float:
        cfg = self.config
        base = max(self.recovery.rtt.rto, cfg.rto_min)
        return min(base * (1 << min(self.persist_backoff, 16)), cfg.rto_max)

    # =========================================================================================
    # timers
    # =========================================================================================
    def next_timer(self) -> float | None:
        """The earliest of recovery's timers (Recovery.next_timer) and ours. Unrolled, no
        tuples: the engine asks this for every flushed connection and every heap look."""
        if self.ack_held is not None:
            self.release_ack()
        rec = self.recovery
        best = rec.rto_at
        t = rec.rack_at
        if t is not None and (best is None or t < best):
            best = t
        t = rec.tlp_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.persist_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.delack_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.keepalive_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.close_at
        if t is not None and (best is None or t < best):
            best = t
        return best

    def on_timer(self, now: float) -> None:
        """Run whichever timers are due (the engine calls this when next_timer() passed)."""
        if self.ack_held is not None:
            self.release_ack()
        if self.close_at is not None and now >= self.close_at:
            self.close_at = None
            if self.state is S.FIN_WAIT_2:
                self._send_rst_now(now)  # Linux does the same when tcp_fin_timeout expires
            self._event(Event.TIMEOUT)
            return
        rec = self.recovery
        tlp_at = rec.tlp_at
        if tlp_at is not None and now >= tlp_at and (rec.rto_at is None or tlp_at <= rec.rto_at):
            # The probe timer was capped at the RTO (RFC 8985 7.2): it goes first, and a
            # probe postpones the RTO (as Linux, whose PTO and RTO share one timer).
            rec.on_pto(now, self.state in TRANSMITTING)
        if rec.rto_at is not None and now >= rec.rto_at:
            rec.rto_at = None
            self._on_rto(now)
        if self.state is S.CLOSED:
            return
        if rec.rack_at is not None and now >= rec.rack_at:
            rec.on_rack_timer(now)  # RACK's reordering timer
        if rec.tlp_at is not None and now >= rec.tlp_at:
            rec.on_pto(now, self.state in TRANSMITTING)
        if self.persist_at is not None and now >= self.persist_at:
            self.persist_at = None
            self._on_persist(now)
        if self.state is S.CLOSED:
            return
        if self.delack_at is not None and now >= self.delack_at:
            self.delack_at = None
            if self.ack_pending:
                self.ack_now = True
                self.quickack.on_delack_timeout()
        if self.keepalive_at is not None and now >= self.keepalive_at:
            self.keepalive_at = None
            self._on_keepalive(now)

    def _on_rto(self, now: float) -> None:
        """RFC 6298 5.4-5.6: retransmit the earliest unacknowledged segment, back off."""
        state = self.state
        cfg = self.config
        if state is S.SYN_SENT or state is S.SYN_RECEIVED:
            limit = cfg.syn_retries if state is S.SYN_SENT else cfg.synack_retries
            if self.rexmt_count >= limit:
                if self.listener is not None or self.from_cookie:
                    self._fail(None)  # a half-open passive connection just goes away
                else:
                    self._fail(self._timeout_error())
                return
            self.rexmt_count += 1
            self.counters.tcp_timeouts += 1
            self.counters.tcp_retransmitted_segments += 1
            self.syn_retransmitted = True
            self.recovery.rtt.back_off()
            self.recovery.rto_at = None
            self._send_syn(now)
            return
        if self.snd_una >= self.snd_nxt:
            return
        if self.snd_wnd == 0 and now - self.last_rx < 2 * cfg.rto_max:
            # The peer closed its window over data we had sent (RFC 9293 3.8.6 allows the
            # shrink). It still answers, so these retransmissions are window probes: they
            # must not use up the retries (MUST-26; Linux's tcp_retransmit_timer does this).
            pass
        elif self.rexmt_count >= cfg.retries:
            self._fail(self._timeout_error())
            return
        else:
            self.rexmt_count += 1
            if cfg.plpmtud and self.rexmt_count > cfg.plpmtud_retries:
                self._black_hole(now)
        self.counters.tcp_timeouts += 1
        self.recovery.on_rto(now, repeated=self.rexmt_count > 1)

    def _black_hole(self, now: float) -> None:
        """RFC 4821 / RFC 8899 black-hole detection, as Linux's tcp_mtu_probing with
        tcp_mtu_probing = 1: the RTO keeps firing, maybe because segments of this size vanish
        on a path that drops ICMP. The first time, cap the MSS at base_mss (1024); then halve
        it at each further RTO, not below mtu_probe_floor. The RTO's go-back-N resends at the
        new size (records are split to the MSS). Deviation from Linux and RFC 4821 7.4 / RFC
        8899 5.1: no upward probe segments — after mtu_probe_interval the full size is simply
        tried again (a lost probe then costs the RTOs that find the black hole again)."""
        cfg = self.config
        opts = TS_OPTION_LEN if self.ts_ok else 0
        # probe_mss caps the MSS before option bytes (as the path MTU does): base_mss and the
        # floor are payload sizes (Linux's tcp_mtu_to_mss / tcp_mss_to_mtu count options).
        if self.probe_mss is None:
            cap = cfg.base_mss + opts
        else:
            cap = max((self.probe_mss[0] - opts) >> 1, cfg.mtu_probe_floor, MIN_MSS) + opts
            cap = min(cap, cfg.base_mss + opts)
        self.probe_mss = (cap, now + cfg.mtu_probe_interval)
        self.counters.tcp_plpmtud_black_holes += 1
        self._sync_pmtu(now)

    def _timeout_error(self) -> OSError:
        soft = self.soft_error
        return timed_out(f"last error: {soft.strerror}" if soft is not None else "")

    def _on_persist(self, now: float) -> None:
        """Zero-window probe (backing off), or the SWS override for a small window."""
        if self.state not in TRANSMITTING:
            return
        if self.probes_out >= self.config.retries:
            self._fail(self._timeout_error())
            return
        window = self.snd_una + self.snd_wnd - self.snd_nxt
        snd_end = self.snd_base + self.sndbuf.end
        unsent = snd_end - self.snd_nxt
        if window > 0 and unsent > 0:
            # RFC 9293 3.8.6.2.1 override timeout: send what the small window takes.
            self._send_segment(self.snd_nxt, min(window, unsent, self.mss), False, snd_end, now)
            return
        self.probes_out += 1
        self.persist_backoff += 1
        self._send_probe(now)
        self.persist_at = now + self._persist_interval()

    def _on_keepalive(self, now: float) -> None:
        """RFC 9293 3.8.4: after `keepalive_idle` of silence, probe; give up after `count`.
        A half-closed FIN_WAIT_2 is probed with keepalive off too (see _set_state)."""
        state = self.state
        fin_wait_2 = state is S.FIN_WAIT_2 and not self.app_closed
        if not (self.keepalive or fin_wait_2) or state not in KEEPALIVE_STATES:
            return
        idle, interval, count = self.ka_params
        if not self.keepalive:
            idle = self.config.fin_wait2_timeout
        wake = self.last_rx + idle
        if self.ka_probes == 0 and wake > now:
            # Traffic since: wait on. Compared as the deadline itself: `now - last_rx < idle`
            # can hold while `last_rx + idle` rounds to `now`, a timer due again at once.
            self.keepalive_at = wake
            return
        if self.ka_probes >= count:
            self._fail(self._timeout_error())
            return
        if self.snd_nxt == self.snd_una:  # with data in flight the RTO does the probing
            self._send_probe(now)
        self.ka_probes += 1
        self.keepalive_at = now + interval

    # =========================================================================================
    # ICMP (RFC 5927 validation, RFC 1122 4.2.3.9)
    # =========================================================================================
    def quotes_in_flight(self, seq_wire: int) -> bool:
        """RFC 5927 4.1: does an ICMP error quote a segment of ours still in flight? In
        SYN_SENT only our SYN (ISS) is; else SND.UNA <= SEG.SEQ < SND.NXT. (Linux's
        tcp_v4_err accepts SEG.SEQ == SND.NXT too, its `between` being inclusive; we keep
        RFC 5927's half-open range: nothing at SND.NXT has been sent.)"""
        self.release_ack()
        seq = unwrap(seq_wire, self.snd_una)
        if self.state is S.SYN_SENT:
            return seq == self.iss
        return self.snd_una <= seq < self.snd_nxt

    def pmtu_reduced(self, now: float) -> None:
        """A validated "fragmentation needed" lowered the estimate for our destination (or
        another connection's did and we had not looked yet): a smaller MSS at once, and what
        is in flight at the old size is resent at the new one (Linux's tcp_v4_mtu_reduced:
        tcp_sync_mss + tcp_simple_retransmit)."""
        self.release_ack()
        if self._sync_pmtu(now):
            self.recovery.simple_retransmit(self.mss, now)

    def icmp_error(self, hard: bool, error: OSError, seq_wire: int) -> bool:
        """An ICMP error quoting one of our segments; False when it fails validation."""
        self.release_ack()
        seq = unwrap(seq_wire, self.snd_una)
        if self.state is S.SYN_SENT:
            if seq != self.iss:
                return False
            if hard:
                self._fail(refused())
                return True
        elif not self.snd_una <= seq < self.snd_nxt:
            return False
        self.soft_error = error
        return True

    # =========================================================================================
    # application side
    # =========================================================================================
    def send(self, data) -> int:
        """Queue bytes to send; returns how many fit in the send buffer (maybe fewer)."""
        if self.ack_held is not None:
            self.release_ack()
        if self.error is not None:
            raise self.error
        if self.fin_queued or self.state not in (
            S.SYN_SENT,
            S.SYN_RECEIVED,
            S.ESTABLISHED,
            S.CLOSE_WAIT,
        ):
            raise BrokenPipeError(errno.EPIPE, "the connection is closed for sending")
        taken = self.sndbuf.write(data)
        if taken:
            self.sndbuf.mark_push(max(0, self.snd_nxt - self.snd_base))
            self.engine.touch(self)
        if not self.writing_paused and len(self.sndbuf) >= self.write_high:
            self.writing_paused = True
            if self.handler is not None:
                self.handler.on_pause_writing()
        return taken

    def send_urgent(self, data) -> int:
        """Queue bytes as urgent data (RFC 9293 3.8.5; Linux's send(MSG_OOB)): the urgent
        pointer moves past them and every segment until then carries URG. Returns how many
        bytes the send buffer took; the pointer covers those."""
        taken = self.send(data)
        if taken:
            self.mark_urgent()
        return taken

    def mark_urgent(self, back: int = 0) -> None:
        """The urgent data ends `back` bytes before the end of what was written so far."""
        self.release_ack()
        self.snd_up = self.snd_base + self.sndbuf.end - back

    def shutdown_write(self) -> None:
        """Half-close (RFC 9293 CLOSE on the send side): a FIN after the queued data."""
        self.release_ack()
        if self.fin_queued or self.state is S.CLOSED:
            return
        self.fin_queued = True
        if self.state in (S.ESTABLISHED, S.CLOSE_WAIT):
            self._event(Event.CLOSE)
        self.engine.touch(self)

    def close(self) -> None:
        """Graceful close: no more reading or writing; FIN after the queued data.

        Unread received data makes it an abort instead (RFC 1122 4.2.2.13, as Linux does).
        """
        self.release_ack()
        if self.app_closed or self.state is S.CLOSED:
            return
        if self.rcvbuf.queued:
            self.abort()
            return
        self.app_closed = True
        if self.state is S.SYN_SENT:
            self._fail(None)  # RFC 9293 3.10.4: nothing synchronised, just delete
            self.engine.touch(self)
            return
        self.shutdown_write()
        if self.state is S.FIN_WAIT_2 or self.state is S.TIME_WAIT:
            self.lost_pending = True
            if self.state is S.FIN_WAIT_2 and self.close_at is None:
                self.close_at = self.engine.now + self.config.fin_wait2_timeout
        self.engine.touch(self)

    def abort(self) -> None:
        """RST now (RFC 9293 3.10.5 ABORT) and forget the connection."""
        self.release_ack()
        state = self.state
        if state is S.CLOSED:
            return
        if state not in (S.SYN_SENT, S.CLOSING, S.LAST_ACK, S.TIME_WAIT):
            self._send_rst_now(self.engine.now)
        self.app_closed = True
        self.rcvbuf.clear()
        self._fail(None)
        self.engine.touch(self)

    def pause_reading(self) -> None:
        self.release_ack()
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.release_ack()
        if self.reading_paused:
            self.reading_paused = False
            self.engine.touch(self)

    def set_nodelay(self, on: bool = True) -> None:
        self.release_ack()
        self.nodelay = bool(on)
        if on:
            self.engine.touch(self)

    def set_keepalive(
        self,
        on: bool = True,
        idle: float | None = None,
        interval: float | None = None,
        count: int | None = None,
    ) -> None:
        """SO_KEEPALIVE with TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT (None: the config's)."""
        cfg = self.config
        self.keepalive = bool(on)
        self.ka_params = (
            cfg.keepalive_idle if idle is None else idle,
            cfg.keepalive_interval if interval is None else interval,
            cfg.keepalive_count if count is None else count,
        )
        if on and self.state in (S.ESTABLISHED, S.CLOSE_WAIT):
            self.keepalive_at = self.last_rx + self.ka_params[0]
            self.ka_probes = 0
            self.engine.touch(self)
        elif not on:
            self.keepalive_at = None

    def set_buffer_sizes(self, send: int | None = None, receive: int | None = None) -> None:
        """SO_SNDBUF / SO_RCVBUF for this connection (None: leave as is), at least MIN_BUFFER.

        send: the most bytes written and not yet acknowledged; a write beyond it takes what
        fits (the blocking API then blocks). The write limits follow (pause at the size,
        resume at half). Unlike Linux we do not double the value for bookkeeping overhead:
        these are payload bytes.
        receive: the most we advertise. The window scale is chosen from it in the SYN, so a
        size set after that is advertised within the scale agreed (a larger buffer than
        0xFFFF << RCV.WSCALE shows as that); a smaller one never moves the right edge left.
        """
        self.release_ack()
        if send is not None:
            cap = max(send, MIN_BUFFER)
            self.sndbuf.capacity = cap
            self.write_high = cap
            self.write_low = cap // 2
        if receive is not None:
            self.rcv_buf_size = max(receive, MIN_BUFFER)
            if self.state is S.SYN_SENT and self.snd_nxt == self.iss and self.config.window_scaling:
                self.rcv_wscale = self._our_wscale()  # the SYN has not gone out yet

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.release_ack()
        if high is None:
            high = self.sndbuf.capacity
        if low is None:
            low = high // 2
        if not 0 <= low <= high:
            raise ValueError(f"need 0 <= low ({low}) <= high ({high})")
        self.write_high = min(high, self.sndbuf.capacity)
        self.write_low = min(low, self.write_high)

    # -- dispatch (the engine calls this at its flush point) -----------------------------------
    def dispatch(self) -> None:
        """Deliver pending events to the handler, in order: established, data, EOF,
        writable, lost. Data and EOF wait while reading is paused."""
        if self.ack_held is not None:
            self.release_ack()
        h = self.handler
        if h is None:
            return
        if self.made_pending:
            self.made_pending = False
            h.on_established()
        if self.urgent_pending:
            self.urgent_pending = False
            on_urgent = getattr(h, "on_urgent", None)  # optional in Handler
            mark = self.urgent_mark()
            if on_urgent is not None and mark is not None:
                on_urgent(mark)
        rb = self.rcvbuf
        if rb.queued and not self.app_closed:
            self.window_check = True
            while rb.queue and not self.reading_paused and not self.app_closed:
                h.on_data(rb.pop())
        if self.eof_pending and not rb.queued and not self.reading_paused and not self.app_closed:
            self.eof_pending = False
            self.eof_delivered = True
            h.on_eof()
        if self.writing_paused and len(self.sndbuf) <= self.write_low and not self.lost_pending:
            self.writing_paused = False
            h.on_resume_writing()
        if self.lost_pending and not self.lost_done:
            clean = self.error is None and not self.app_closed
            if clean and (rb.queued or self.eof_pending):
                return  # a clean end waits until the application has read everything
            self.lost_done = True
            h.on_closed(self.error)
            if self.state is S.CLOSED:
                self._detach()

    # -- introspection ---------------------------------------------------------------------------
    def info(self) -> dict[str, object]:
        """The stack's own view (seconds, bytes, names) plus Linux's tcp_info fields."""
        self.release_ack()
        rec = self.recovery
        cc = rec.cc
        return {
            "state": self.state.value,
            "mss": self.mss,
            "srtt": rec.rtt.srtt,
            "rto": rec.rtt.rto,
            "cwnd": cc.cwnd if cc is not None else None,
            "ssthresh": cc.ssthresh if cc is not None else None,
            "snd_wnd": self.snd_wnd,
            "rcv_wnd": max(0, self.rcv_adv - self.rcv_nxt),
            "unacked": self.snd_nxt - self.snd_una,
            "send_buffered": len(self.sndbuf),
            "recv_buffered": self.rcvbuf.queued,
            "sack": self.sack_ok,
            "timestamps": self.ts_ok,
            "wscale": (self.snd_wscale, self.rcv_wscale),
            "congestion_control": cc.name if cc is not None else None,
            "ca_state": rec.ca_state,
            "reordering": rec.dupthresh,
            "reordering_seen": rec.rack.reord,
            "reo_wnd_mult": rec.rack.reo_wnd_mult,
            "loss_probes": rec.tlp_probes,
            "undos": rec.undos,
            **self.tcp_info(),
        }

    def tcp_info(self, now: float | None = None) -> dict[str, int]:
        """Linux's struct tcp_info, field for field where the stack has the quantity
        (names and units as Linux: tcpi_ prefix, times in microseconds, windows and counts
        in segments, bytes in bytes), for tools that read `ss -ti` / getsockopt(TCP_INFO).
        `now` (default: the engine's clock) dates the last_* fields. Not kept: pacing rate,
        delivery rate and busy/limited times (no pacing here), rcv_rtt, ECN counts."""
        self.release_ack()
        if now is None:
            now = self.engine.now
        rec = self.recovery
        cc = rec.cc
        mss = self.mss
        rtt = rec.rtt
        board = rec.board
        sacked = lost = retrans = unacked = 0
        for r in board:
            unacked += 1
            sacked += r.sacked
            lost += r.lost and not r.sacked
            retrans += r.rexmit
        opts = (1 if self.ts_ok else 0) | (2 if self.sack_ok else 0) | (4 if self.wscale_ok else 0)
        lrcv = self.quickack.lrcvtime
        stats = self.stats

        def ago(t: float | None) -> int:
            return int((now - t) * 1000) if t else 0

        def us(t: float | None) -> int:
            return int(t * 1_000_000) if t is not None else 0

        fin_in = 1 if self.state in FIN_SEEN else 0
        return {
            "tcpi_state": LINUX_STATE[self.state],
            "tcpi_ca_state": LINUX_CA_STATE[rec.ca_state],
            "tcpi_retransmits": self.rexmt_count,
            "tcpi_probes": self.probes_out or self.ka_probes,
            "tcpi_backoff": rtt.backoff,
            "tcpi_options": opts,
            "tcpi_snd_wscale": self.snd_wscale,
            "tcpi_rcv_wscale": self.rcv_wscale,
            "tcpi_rto": us(rtt.rto),
            "tcpi_ato": us(self.config.delayed_ack),
            "tcpi_snd_mss": mss,
            "tcpi_rcv_mss": self.rcv_seg_mss,
            "tcpi_unacked": unacked,
            "tcpi_sacked": sacked,
            "tcpi_lost": lost,
            "tcpi_retrans": retrans,
            "tcpi_last_data_sent": ago(self.last_data),
            "tcpi_last_data_recv": ago(lrcv),
            "tcpi_last_ack_recv": ago(self.last_rx),
            "tcpi_pmtu": self.net.pmtu.path_mtu(self.remote_ip, self.net.link_mtu, now),
            "tcpi_rcv_ssthresh": max(0, self.rcv_adv - self.rcv_nxt),
            "tcpi_rtt": us(rtt.srtt),
            "tcpi_rttvar": us(rtt.rttvar),
            "tcpi_snd_ssthresh": min(cc.ssthresh // mss, 0x7FFFFFFF) if cc else 0,
            "tcpi_snd_cwnd": cc.cwnd // mss if cc else 0,
            "tcpi_advmss": self.rcv_mss,
            "tcpi_reordering": rec.dupthresh,
            "tcpi_rcv_space": self.rcv_buf_size,
            "tcpi_total_retrans": stats[6],
            "tcpi_bytes_acked": max(0, self.snd_una - self.iss - 1),
            "tcpi_bytes_received": max(0, self.rcv_nxt - self.irs - 1 - fin_in),
            "tcpi_segs_out": stats[1],
            "tcpi_segs_in": stats[0],
            "tcpi_notsent_bytes": max(0, self.snd_base + self.sndbuf.end - self.snd_nxt),
            "tcpi_min_rtt": us(rec.rack.min_rtt),
            "tcpi_data_segs_in": stats[2],
            "tcpi_data_segs_out": stats[3],
            "tcpi_bytes_sent": stats[4],
            "tcpi_bytes_retrans": stats[5],
            "tcpi_reord_seen": int(rec.rack.reord),
            "tcpi_snd_wnd": self.snd_wnd,
            "tcpi_rcv_wnd": max(0, self.rcv_adv - self.rcv_nxt),
        }
