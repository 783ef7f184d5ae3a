"""RFC 9293 connection states and the one table of transitions between them (h11 style).

The connection code decides *which event* a segment, a call or a timer amounts to; this table
alone decides where that event leads, every transition included (the openings too: a
Connection starts CLOSED, connect() is OPEN, a listener's SYN is RCV_SYN). An event with no
entry for the current state is an error, as in h11: IllegalTransition, which the engine
turns into a reset of that one connection (Drop.TCP_INTERNAL_ERROR, logged) — the callers
decide no-ops (a second close(), the ACK of a FIN we never sent) before asking the table.
So the table is the complete picture of the diagram in RFC 9293 3.3.2, simultaneous open
and close included.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    """Values are the names used for the `state` label of netstack_tcp_connections."""

    CLOSED = "closed"
    LISTEN = "listen"
    SYN_SENT = "syn_sent"
    SYN_RECEIVED = "syn_received"
    ESTABLISHED = "established"
    FIN_WAIT_1 = "fin_wait_1"
    FIN_WAIT_2 = "fin_wait_2"
    CLOSE_WAIT = "close_wait"
    CLOSING = "closing"
    LAST_ACK = "last_ack"
    TIME_WAIT = "time_wait"

    # Members are singletons compared by identity: hash them by identity too. Enum's own
    # __hash__ is a Python call (hash of the name), and `state in RECEIVING` runs per segment.
    __hash__ = object.__hash__


class Event(enum.Enum):
    """What happened, as far as the state diagram is concerned."""

    OPEN = "open"  # connect(): the SYN is due
    RCV_SYN = "rcv_syn"  # a SYN without ACK (passive open; simultaneous open in SYN_SENT)
    RCV_SYN_ACK = "rcv_syn_ack"  # an acceptable SYN-ACK in SYN_SENT
    SYN_ACKED = "syn_acked"  # our SYN (SYN_RECEIVED) was acknowledged
    CLOSE = "close"  # the application has no more to send: a FIN is due
    RCV_FIN = "rcv_fin"  # the peer's FIN, in sequence
    FIN_ACKED = "fin_acked"  # our FIN was acknowledged
    TIMEOUT = "timeout"  # 2*MSL in TIME_WAIT, or the orphaned FIN_WAIT_2 timeout
    RESET = "reset"  # RST accepted, abort(), or retries exhausted

    # As State's: the transition table is looked up by (state, event) five times per
    # connection, and Enum's __hash__ is a Python call.
    __hash__ = object.__hash__


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    # opening
    (S.CLOSED, E.OPEN): S.SYN_SENT,  # active open (RFC 9293 3.10.1)
    # A listener's SYN (or its cookie ACK) makes a new connection: LISTEN itself stays (the
    # Listener), its new Connection goes CLOSED -> SYN_RECEIVED.
    (S.CLOSED, E.RCV_SYN): S.SYN_RECEIVED,
    (S.LISTEN, E.RCV_SYN): S.SYN_RECEIVED,
    (S.SYN_SENT, E.RCV_SYN_ACK): S.ESTABLISHED,
    (S.SYN_SENT, E.RCV_SYN): S.SYN_RECEIVED,  # simultaneous open
    (S.SYN_SENT, E.CLOSE): S.CLOSED,  # nothing was synchronised: just forget it
    (S.SYN_RECEIVED, E.SYN_ACKED): S.ESTABLISHED,
    # (SYN_RECEIVED, CLOSE) is queued by the connection until ESTABLISHED (RFC 9293 3.10.4).
    # closing, our side first
    (S.ESTABLISHED, E.CLOSE): S.FIN_WAIT_1,
    (S.FIN_WAIT_1, E.FIN_ACKED): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, E.RCV_FIN): S.CLOSING,  # simultaneous close
    (S.FIN_WAIT_2, E.RCV_FIN): S.TIME_WAIT,
    (S.FIN_WAIT_2, E.TIMEOUT): S.CLOSED,  # orphaned: the peer never closed
    (S.CLOSING, E.FIN_ACKED): S.TIME_WAIT,
    (S.TIME_WAIT, E.TIMEOUT): S.CLOSED,
    # closing, the peer's side first
    (S.ESTABLISHED, E.RCV_FIN): S.CLOSE_WAIT,
    (S.CLOSE_WAIT, E.CLOSE): S.LAST_ACK,
    (S.LAST_ACK, E.FIN_ACKED): S.CLOSED,
}
# Every state but CLOSED (and LISTEN, which has no connection) goes to CLOSED on RESET.
for _state in State:
    if _state not in (S.CLOSED, S.LISTEN):
        TRANSITIONS[(_state, E.RESET)] = S.CLOSED
del _state

# RFC 9293 "synchronized" states: the full acceptability, RST, SYN and ACK checks apply.
SYNCHRONIZED = frozenset(
    {
        S.SYN_RECEIVED,
        S.ESTABLISHED,
        S.FIN_WAIT_1,
        S.FIN_WAIT_2,
        S.CLOSE_WAIT,
        S.CLOSING,
        S.LAST_ACK,
        S.TIME_WAIT,
    }
)
# States in which the peer may still send us data (the peer has not sent its FIN).
RECEIVING = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})
# States in which we may still send new data (we have not sent our FIN).
SENDING = frozenset({S.ESTABLISHED, S.CLOSE_WAIT})
# States in which something of ours may still need (re)transmission.
TRANSMITTING = frozenset(
    {S.ESTABLISHED, S.CLOSE_WAIT, S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK, S.SYN_RECEIVED}
)
# States whose FIN has been sent (so the FIN's sequence number is taken).
FIN_SENT = frozenset({S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSING, S.LAST_ACK, S.TIME_WAIT})


class IllegalTransition(RuntimeError):
    """An event the table has no entry for in the current state: a bug in the caller."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"TCP event {event.value} is not allowed in state {state.value}")
        self.state = state
        self.event = event


def next_state(state: State, event: Event) -> State:
    """Where `event` leads from `state`; IllegalTransition when the table has no entry."""
    new = TRANSITIONS.get((state, event))
    if new is None:
        raise IllegalTransition(state, event)
    return new
