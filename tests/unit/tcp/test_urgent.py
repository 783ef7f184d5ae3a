"""Urgent data (RFC 9293 3.8.5, RFC 6093): the pointer points just past the urgent data; the
receiver reports where it ends and delivers the bytes inline (SO_OOBINLINE semantics)."""

from __future__ import annotations

from netstack.wire.tcp import URG
from tests.unit.tcp.tcptools import (
    ACK,
    LOCAL_ISN,
    PSH,
    REMOTE_ISN,
    established_passive,
    seg,
    to_us,
)

L, R = LOCAL_ISN + 1, REMOTE_ISN + 1


def test_received_urgent_data_is_signalled_and_delivered_inline() -> None:
    """MUST-30/31/32: SEG.UP = SEG.SEQ + pointer, just past the urgent bytes; the application
    hears the stream offset where they end, and reads them in order with the rest."""
    t, conn = established_passive()
    t.send(seg(flags=ACK | PSH | URG, seq=R, ack=L, payload=b"ab!", urgent=3))
    assert t.events == [("urgent", 3), ("data", b"ab!")]
    assert conn.urgent_mark() == 3
    t.send(seg(flags=ACK | URG, seq=R + 3, ack=L, payload=b"cd", urgent=0))  # not advanced
    t.send(seg(flags=ACK | URG, seq=R + 5, ack=L, payload=b"ef", urgent=2))  # advanced
    assert t.events[2:] == [("data", b"cd"), ("urgent", 7), ("data", b"ef")]


def test_an_urgent_pointer_behind_what_was_read_is_ignored() -> None:
    t, conn = established_passive()
    t.send(seg(seq=R, ack=L, payload=b"abcd"))
    t.send(seg(flags=ACK | URG, seq=R + 4, ack=L, payload=b"", urgent=0))
    assert conn.urgent_mark() is None and ("urgent", 4) not in t.events


def test_sent_urgent_data_sets_urg_and_the_pointer_past_it() -> None:
    """send_urgent (send(MSG_OOB)): every segment before the urgent data's end carries URG and
    a pointer from its SEQ to just past the data (RFC 6093; Linux's tcp_transmit_skb)."""
    t, conn = established_passive(nagle=False)
    conn.send(b"x" * 2000)
    conn.send_urgent(b"!")
    t.engine.flush(t.now)
    t.expect(
        to_us(seg(flags=ACK | URG, seq=L, ack=R, payload=b"x" * 1460, urgent=2001)),
        to_us(seg(flags=ACK | PSH | URG, seq=L + 1460, ack=R, payload=b"x" * 540 + b"!",
                  urgent=541)),
    )  # fmt: skip
    t.send(seg(seq=R, ack=L + 2001))
    conn.send(b"later")
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=ACK | PSH, seq=L + 2001, ack=R, payload=b"later")))  # no URG
