"""TCP invariants, checked on a live engine: what it sends on the wire plus its TCB state.

`attach(engine)` wraps the engine's transmit, receive, flush and poll on that instance (the
product code is unchanged) and checks, for every segment sent and after every flush/poll,
the rules below; a broken one raises `InvariantViolation` (an AssertionError) naming the rule
and its RFC. The stateful tests (tests/unit/tcp/test_stateful*.py) attach it to engines under
random application calls, link impairments and hostile peers; the `checked` mode
(TcpConfig.checked, NETSTACK_CHECKED=1 for `netstack run`) attaches it in the real stack so
the kernel integration tests check the same rules.

Every read of engine state goes through the accessors at the top (`snd_una(c)`, `rto(c)`,
...), so a refactor of the connection's insides is adapted here in one place.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import struct
from collections import Counter
from typing import TYPE_CHECKING

from netstack.proto.tcp.seq import unwrap
from netstack.proto.tcp.state import State
from netstack.proto.tcp.timewait import TimeWait
from netstack.wire.tcp import ACK, FIN, RST, SYN, TcpOptions

if TYPE_CHECKING:
    from netstack.proto.tcp.connection import Connection
    from netstack.proto.tcp.engine import TcpEngine

log = logging.getLogger("netstack.tcp.invariants")
S = State
UNSYNCHRONIZED = (S.CLOSED, S.LISTEN, S.SYN_SENT)


class InvariantViolation(AssertionError):
    """A TCP invariant does not hold: the message names the rule, its RFC and the segment."""


# =============================================================================================
# accessors: the one place that knows where the engine keeps things
# =============================================================================================
def state(c: Connection) -> State:
    return c.state


def iss(c: Connection) -> int:
    return c.iss


def snd_una(c: Connection) -> int:
    return c.snd_una


def snd_nxt(c: Connection) -> int:
    return c.snd_nxt


def snd_wnd(c: Connection) -> int:
    return c.snd_wnd


def rcv_nxt(c: Connection) -> int:
    return c.rcv_nxt


def rcv_wscale(c: Connection) -> int:
    """The shift our window fields carry (0 unless both sides agreed on window scaling)."""
    return c.rcv_wscale if c.wscale_ok else 0


def _rtt(c: Connection):
    """The RFC 6298 estimator: in recovery.py since loss recovery left the connection."""
    recovery = getattr(c, "recovery", None)
    return recovery.rtt if recovery is not None else c.rtt


def rto(c: Connection) -> float:
    return _rtt(c).rto


def rto_backoff(c: Connection) -> int:
    return _rtt(c).backoff


def rto_bounds(c: Connection) -> tuple[float, float]:
    return c.config.rto_min, c.config.rto_max


def rexmt_at(c: Connection) -> float | None:
    """When the retransmission timer fires (None: off)."""
    recovery = getattr(c, "recovery", None)
    return recovery.rto_at if recovery is not None else c.rexmt_at


def send_buffered(c: Connection) -> tuple[int, int]:
    """(bytes held, capacity) of the send buffer."""
    return len(c.sndbuf), c.sndbuf.capacity


def receive_held(c: Connection) -> tuple[int, int, int, int]:
    """(in-order bytes, out-of-order bytes, out-of-order pieces, piece limit)."""
    rb = c.rcvbuf
    return rb.queued, rb.ooo_bytes, len(rb.ooo), rb.max_pieces


def receive_capacity(c: Connection) -> int:
    return c.rcv_buf_size


def receive_free(c: Connection) -> int:
    """Buffer space for in-order data not yet taken by the application."""
    if is_record(c):
        return c.rcv_free  # a TIME_WAIT record: frozen when the connection retired
    return c.rcv_buf_size - c.rcvbuf.queued


def is_record(c: Connection) -> bool:
    """A TIME_WAIT record (timewait.py): sequence state and timers only, no buffers."""
    return type(c) is TimeWait


def owed_acks(c: Connection) -> int:
    return len(c.ack_points)


# =============================================================================================
# the checker
# =============================================================================================
@dataclasses.dataclass
class Track:
    """What the checker remembers of one connection between segments and steps."""

    conn: Connection
    snd_max: int  # SND.MAX: the highest sequence number sent so far (+1)
    rcv_nxt: int | None = None
    right_edge: int | None = None  # the highest RCV.NXT + RCV.WND advertised
    last_pure_ack: tuple | None = None  # (ack, window, SACK blocks) of the last pure ACK
    arrivals_seen: int = 0  # arrivals for this 4-tuple taken into `credit`
    credit: int = 0  # arrivals of this flush not yet answered by a pure ACK
    rto: float = 0.0
    backoff: int = 0


class Checker:
    """Watches one engine. `violations` keeps every message (when raise_on_violation is
    False, as the product's checked mode may choose to log and go on)."""

    def __init__(self, engine: TcpEngine, raise_on_violation: bool = True) -> None:
        self.engine = engine
        self.raise_on_violation = raise_on_violation
        self.tracks: dict[int, Track] = {}  # id(connection) -> Track
        self.arrivals: Counter[tuple[int | bytes, int, int | bytes, int]] = Counter()  # by Key
        self.violations: list[str] = []
        self.segments_checked = 0
        self.steps_checked = 0

    # -- hooks ---------------------------------------------------------------------------------
    def attach(self) -> Checker:
        engine = self.engine
        transmit, transmit_fast, receive_fast, flush, poll = (
            engine.transmit, engine.transmit_fast, engine.receive_fast, engine.flush, engine.poll,
        )  # fmt: skip
        receive6, take_ack_run = engine.receive6, engine.take_ack_run

        def checked_transmit(conn, seq, ack, flags, window, payload, options, *more) -> None:
            self.on_transmit(conn, seq, ack, flags, window, payload, options)
            transmit(conn, seq, ack, flags, window, payload, options, *more)

        def checked_transmit_fast(conn, seq, ack, flags, window, payload, timestamp) -> None:
            # the template path: a timestamp is its only option
            options = TcpOptions(timestamp=timestamp) if timestamp else None
            self.on_transmit(conn, seq, ack, flags, window, payload, options)
            transmit_fast(conn, seq, ack, flags, window, payload, timestamp)

        def checked_receive_fast(src, dst, segment, packet, now, checked=False) -> None:
            # every arrival goes through receive_fast (engine.receive delegates to it, and the
            # host's fast path calls it directly)
            receive_fast(src, dst, segment, packet, now, checked)
            if len(segment) >= 4:
                sport = int.from_bytes(segment[0:2], "big")
                dport = int.from_bytes(segment[2:4], "big")
                self.arrivals[(dst, dport, src, sport)] += 1

        def checked_take_ack_run(frame, more, window, now) -> bool:
            # pure ACKs of the host's batch taken from their fields: `more` arrivals on the flow
            taken = take_ack_run(frame, more, window, now)
            if taken:
                src, dst, sport, dport = struct.unpack_from("!IIHH", frame, 26)
                self.arrivals[(dst, dport, src, sport)] += more
            return taken

        def checked_receive6(ip, segment, packet, now, checked=False) -> None:
            # IPv6 arrivals (registered by attach_ipv6, and read by the IPv6 fast path, both
            # after this: they take this wrapper)
            receive6(ip, segment, packet, now, checked)
            if len(segment) >= 4:
                sport = int.from_bytes(segment[0:2], "big")
                dport = int.from_bytes(segment[2:4], "big")
                self.arrivals[(ip.dst, dport, ip.src, sport)] += 1

        def checked_flush(now: float) -> None:
            flush(now)
            self.end_of_flush()
            self.check_state(now)

        def checked_poll(now: float) -> None:
            before = self.snapshot_rto()
            poll(now)
            self.check_backoff(before, now)
            self.check_state(now)

        engine.transmit = checked_transmit  # type: ignore[method-assign]
        engine.transmit_fast = checked_transmit_fast  # type: ignore[method-assign]
        engine.receive_fast = checked_receive_fast  # type: ignore[method-assign]
        engine.receive6 = checked_receive6  # type: ignore[method-assign]
        engine.take_ack_run = checked_take_ack_run  # type: ignore[method-assign]
        engine.flush = checked_flush  # type: ignore[method-assign]
        engine.poll = checked_poll  # type: ignore[method-assign]
        engine.invariants = self  # type: ignore[attr-defined]
        return self

    def fail(self, rule: str, conn: Connection | None, detail: str) -> None:
        message = f"TCP invariant violated: {rule}: {detail} [{conn!r}]"
        self.violations.append(message)
        log.error("%s", message)
        if self.raise_on_violation:
            raise InvariantViolation(message)

    def track(self, conn: Connection) -> Track:
        t = self.tracks.get(id(conn))
        if t is None or t.conn is not conn:
            t = self.tracks[id(conn)] = Track(conn, snd_nxt(conn))
            t.rto, t.backoff = rto(conn), rto_backoff(conn)
        return t

    # -- every segment sent --------------------------------------------------------------------
    def on_transmit(self, conn, seq_wire, ack_wire, flags, window, payload, options) -> None:
        self.segments_checked += 1
        t = self.track(conn)
        una = snd_una(conn)
        seq = unwrap(seq_wire, una)
        plen = len(payload)
        end = seq + plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        if flags & RST:
            return
        seg = f"seq={seq_wire} ack={ack_wire} flags={flags:#x} win={window} len={plen}"
        if end > seq:  # it occupies sequence space: data, SYN or FIN
            # RFC 9293 3.10.7.4 / RFC 6298: SND.UNA is acknowledged; nothing below it goes
            # out again (a probe is seq = SND.UNA - 1 with no data, so never here).
            if seq < una:
                self.fail("never retransmit below SND.UNA (RFC 9293 3.3.1)", conn,
                          f"{seg}: starts {una - seq} below SND.UNA={una}")  # fmt: skip
            # RFC 9293 3.8.6 / MUST-36 via 3.10.7.4: new data only within the peer's window
            # (SND.UNA + SND.WND). Retransmissions of what was sent may exceed a window the
            # peer since shrank (they are then its probes, RFC 9293 3.8.6.1).
            if end > t.snd_max and not flags & SYN and state(conn) not in UNSYNCHRONIZED:
                right = una + snd_wnd(conn)
                if end > right:
                    self.fail("never send beyond the peer's window (RFC 9293 3.8.6)", conn,
                              f"{seg}: new data to {end} > SND.UNA+SND.WND={right}")  # fmt: skip
            t.snd_max = max(t.snd_max, end)
        if not flags & ACK:
            return
        ack = unwrap(ack_wire, rcv_nxt(conn))
        shift = 0 if flags & SYN else rcv_wscale(conn)
        right = ack + (window << shift)
        # RFC 9293 3.8.6 ("SHOULD NOT shrink the window"): the right edge RCV.NXT + RCV.WND
        # we advertised never moves left; except, with window scaling, by less than one unit
        # when the edge already reaches what the buffer backs (RFC 7323 appendix F: rounding
        # up at every ACK would let a paused reader's buffer grow without bound).
        # A SYN's window is never scaled (RFC 7323 2.2): a retransmitted SYN-ACK may fall
        # short of an edge an ACK rounded up to the scale's unit, by less than the unit.
        backed_edge = rcv_nxt(conn) + receive_free(conn)
        unit = 1 << rcv_wscale(conn)
        if (
            t.right_edge is not None
            and right < t.right_edge
            and not (t.right_edge - right < unit and (right >= backed_edge or flags & SYN))
        ):
            self.fail("advertised right edge never shrinks (RFC 9293 3.8.6)", conn,
                      f"{seg}: right edge {right} < {t.right_edge} advertised before")  # fmt: skip
        t.right_edge = right if t.right_edge is None else max(right, t.right_edge)
        pure = not flags & (SYN | FIN) and plen == 0 and seq != una - 1  # probes excepted
        if pure:
            key = (ack_wire, window, options.sack_blocks if options is not None else ())
            arrived = self.arrivals[conn.key]
            t.credit += arrived - t.arrivals_seen
            t.arrivals_seen = arrived
            # RFC 5681 4.2: ACKs answer arriving segments (one each for out-of-order ones),
            # a delayed ACK's timer, or a window update that changes the window. The same
            # pure ACK again with no segment left to answer (from this flush: a batch's ACKs
            # go out at its end) is a duplicate ACK the peer counts toward a fast
            # retransmit (RFC 5681 3.2).
            if key == t.last_pure_ack:
                if t.credit < 1:
                    self.fail("no duplicate pure ACK without an arrival (RFC 5681 4.2)", conn,
                              f"{seg} sack={key[2]} again, nothing arrived to answer")  # fmt: skip
                t.credit -= 1
            elif t.credit:
                t.credit -= 1
            t.last_pure_ack = key

    # -- after every flush and poll ---------------------------------------------------------
    def snapshot_rto(self) -> dict[int, tuple[int, float]]:
        return {id(c): (rto_backoff(c), rto(c)) for c in self.engine.conns.values()}

    def check_backoff(self, before: dict[int, tuple[int, float]], now: float) -> None:
        """RFC 6298 5.5: when the timer expires, RTO <- min(2 * RTO, max); 5.6: the timer
        restarts with that value."""
        for c in self.engine.conns.values():
            old = before.get(id(c))
            if old is None or state(c) is S.CLOSED:
                continue
            old_backoff, old_rto = old
            if rto_backoff(c) != old_backoff + 1:
                continue
            _, hi = rto_bounds(c)
            want = min(2 * old_rto, hi)
            if not math.isclose(rto(c), want, rel_tol=1e-9):
                self.fail("RTO backoff doubles (RFC 6298 5.5)", c,
                          f"RTO {old_rto} -> {rto(c)}, want {want}")  # fmt: skip
            at = rexmt_at(c)
            if at is not None and not math.isclose(at, now + rto(c), rel_tol=0, abs_tol=1e-6):
                self.fail("timer restarts with the backed-off RTO (RFC 6298 5.6)", c,
                          f"rexmt_at {at} != now {now} + RTO {rto(c)}")  # fmt: skip

    def end_of_flush(self) -> None:
        """Arrivals of this batch that got no ACK of their own do not license one later."""
        arrivals = self.arrivals
        for t in self.tracks.values():
            t.arrivals_seen = arrivals[t.conn.key]
            t.credit = 0

    def check_state(self, now: float) -> None:
        self.steps_checked += 1
        engine = self.engine
        live = set()
        for c in list(engine.conns.values()):
            live.add(id(c))
            self.check_connection(c)
        for key in [k for k, t in self.tracks.items() if k not in live]:
            del self.tracks[key]
        cfg = engine.config
        for listener in engine.listeners.values():
            if len(listener.syn_queue) > listener.syn_backlog:
                self.fail(
                    "SYN queue within its bound (RFC 4987 3.1)",
                    None,
                    f"{listener!r}: {len(listener.syn_queue)} > {listener.syn_backlog}",
                )
            if len(listener.accept_queue) > listener.backlog:
                self.fail(
                    "accept queue within the backlog",
                    None,
                    f"{listener!r}: {len(listener.accept_queue)} > {listener.backlog}",
                )
        if engine.time_wait_count > cfg.max_time_wait + 1:
            self.fail("TIME_WAIT connections within max_time_wait", None,
                      f"{engine.time_wait_count} > {cfg.max_time_wait}")  # fmt: skip

    def check_connection(self, c: Connection) -> None:
        t = self.track(c)
        st = state(c)
        if st is S.CLOSED:
            return
        if is_record(c):
            self.check_record(c, t)
            return
        una, nxt = snd_una(c), snd_nxt(c)
        # RFC 9293 3.3.1: SND.UNA <= SND.NXT (<= SND.MAX, the most ever sent: RFC 6298's
        # go-back-N retransmits from SND.UNA without taking SND.NXT past what was sent).
        if not una <= nxt <= max(t.snd_max, iss(c) + 1):
            self.fail("SND.UNA <= SND.NXT <= SND.MAX (RFC 9293 3.3.1)", c,
                      f"SND.UNA={una} SND.NXT={nxt} SND.MAX={t.snd_max}")  # fmt: skip
        if st not in UNSYNCHRONIZED:
            r = rcv_nxt(c)
            # RFC 9293 3.3.1: RCV.NXT advances as data arrives in order; it never goes back.
            if t.rcv_nxt is not None and r < t.rcv_nxt:
                self.fail("RCV.NXT only grows (RFC 9293 3.3.1)", c,
                          f"RCV.NXT {t.rcv_nxt} -> {r}")  # fmt: skip
            t.rcv_nxt = r
        lo, hi = rto_bounds(c)
        value = rto(c)
        # RFC 6298 2.4/2.5: the RTO is rounded up to RTO.min and may be capped at RTO.max.
        if not lo - 1e-9 <= value <= hi + 1e-9:
            self.fail("RTO within [rto_min, rto_max] (RFC 6298 2.4, 2.5)", c,
                      f"RTO={value} outside [{lo}, {hi}]")  # fmt: skip
        held, capacity = send_buffered(c)
        if held > capacity:
            self.fail("send buffer within its capacity", c, f"{held} > {capacity}")
        queued, ooo_bytes, pieces, limit = receive_held(c)
        # What is held never exceeds the window we offered, which the buffer backs (RFC 9293
        # 3.8.6); window scaling rounds an advertisement up by less than 2**shift.
        room = receive_capacity(c) + (1 << rcv_wscale(c)) - 1
        if queued + ooo_bytes > room:
            self.fail("receive buffer within its capacity (RFC 9293 3.8.6)", c,
                      f"{queued} in order + {ooo_bytes} out of order > {room}")  # fmt: skip
        if pieces > limit:
            self.fail("out-of-order queue within ooo_max_pieces", c, f"{pieces} > {limit}")
        if owed_acks(c) > 256:
            self.fail("owed ACKs within MAX_ACK_POINTS", c, f"{owed_acks(c)}")

    def check_record(self, c: Connection, t: Track) -> None:
        """A TIME_WAIT record: everything of ours acknowledged, RCV.NXT where it was."""
        una, nxt = snd_una(c), snd_nxt(c)
        if una != nxt:
            self.fail("TIME_WAIT: nothing of ours in flight (RFC 9293 3.6)", c,
                      f"SND.UNA={una} SND.NXT={nxt}")  # fmt: skip
        r = rcv_nxt(c)
        if t.rcv_nxt is not None and r != t.rcv_nxt:
            self.fail("TIME_WAIT: RCV.NXT stays (RFC 9293 3.10.7.4)", c,
                      f"RCV.NXT {t.rcv_nxt} -> {r}")  # fmt: skip
        t.rcv_nxt = r


def attach(engine: TcpEngine, raise_on_violation: bool = True) -> Checker:
    """Check `engine` from now on (see the module docstring)."""
    return Checker(engine, raise_on_violation).attach()
