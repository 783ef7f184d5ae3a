"""The transition table: every RFC 9293 arrow, and nothing else."""

from __future__ import annotations

import pytest

from netstack.proto.tcp.state import TRANSITIONS, Event, State, next_state

S, E = State, Event

RFC_9293_DIAGRAM = [
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
    # events without an arrow leave the state alone
    assert next_state(S.ESTABLISHED, E.FIN_ACKED) is S.ESTABLISHED
    assert next_state(S.TIME_WAIT, E.RCV_FIN) is S.TIME_WAIT
