"""The transition table: every RFC 9293 arrow, and nothing else."""

from __future__ import annotations

import pytest

from netstack.proto.tcp.state import TRANSITIONS, Event, IllegalTransition, State, next_state

S, E = State, Event

RFC_9293_DIAGRAM = [
    (S.CLOSED, E.OPEN, S.SYN_SENT),  # active OPEN
    (S.CLOSED, E.RCV_SYN, S.SYN_RECEIVED),  # a listener's new connection (LISTEN stays)
    (S.LISTEN, E.RCV_SYN, S.SYN_RECEIVED),
    (S.SYN_SENT, E.RCV_SYN_ACK, S.ESTABLISHED),
    (S.SYN_SENT, E.RCV_SYN, S.SYN_RECEIVED),
    (S.SYN_SENT, E.CLOSE, S.CLOSED),
    (S.SYN_RECEIVED, E.SYN_ACKED, S.ESTABLISHED),
    (S.ESTABLISHED, E.CLOSE, S.FIN_WAIT_1),
    (S.ESTABLISHED, E.RCV_FIN, S.CLOSE_WAIT),
    (S.FIN_WAIT_1, E.FIN_ACKED, S.FIN_WAIT_2),
    (S.FIN_WAIT_1, E.RCV_FIN, S.CLOSING),
    (S.FIN_WAIT_2, E.RCV_FIN, S.TIME_WAIT),
    (S.FIN_WAIT_2, E.TIMEOUT, S.CLOSED),
    (S.CLOSING, E.FIN_ACKED, S.TIME_WAIT),
    (S.TIME_WAIT, E.TIMEOUT, S.CLOSED),
    (S.CLOSE_WAIT, E.CLOSE, S.LAST_ACK),
    (S.LAST_ACK, E.FIN_ACKED, S.CLOSED),
]


@pytest.mark.parametrize(("state", "event", "after"), RFC_9293_DIAGRAM)
def test_arrow(state: State, event: Event, after: State) -> None:
    assert next_state(state, event) is after


def test_reset_closes_every_state_with_a_connection() -> None:
    for state in State:
        if state not in (S.CLOSED, S.LISTEN):
            assert next_state(state, E.RESET) is S.CLOSED


def test_no_other_arrows() -> None:
    expected = {(s, e): a for s, e, a in RFC_9293_DIAGRAM}
    expected |= {(s, E.RESET): S.CLOSED for s in State if s not in (S.CLOSED, S.LISTEN)}
    assert expected == TRANSITIONS


@pytest.mark.parametrize(
    ("state", "event"),
    [(s, e) for s in State for e in Event if (s, e) not in TRANSITIONS],
)
def test_an_event_without_an_arrow_is_an_error(state: State, event: Event) -> None:
    """As h11: an unknown (state, event) pair raises, never a silent no-op."""
    with pytest.raises(IllegalTransition):
        next_state(state, event)


def test_an_illegal_event_on_a_connection_raises_and_the_engine_resets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from netstack.drops import Drop
    from netstack.proto.tcp.connection import Connection
    from tests.unit.tcp.tcptools import LOCAL_ISN, REMOTE_ISN, established_passive, seg

    t, conn = established_passive()
    with pytest.raises(IllegalTransition):
        conn._event(E.FIN_ACKED)  # no FIN of ours was ever sent
    assert conn.state is S.ESTABLISHED
    # Inside the engine a bug costs the one connection: reset, counted, logged.
    monkeypatch.setattr(Connection, "segment", lambda self, *a: self._event(E.TIMEOUT))
    t.send(seg(seq=REMOTE_ISN + 1, ack=LOCAL_ISN + 1))
    assert conn.state is S.CLOSED
    assert t.counters.drops[Drop.TCP_INTERNAL_ERROR] == 1
