"""Keepalive (RFC 9293 3.8.4, RFC 1122 4.2.3.6): off by default; probes after idle; abort."""

from __future__ import annotations

from tests.unit.tcp.tcptools import LOCAL_ISN, REMOTE_ISN, established_passive, seg, to_us

L, R = LOCAL_ISN + 1, REMOTE_ISN + 1
PROBE = to_us(seg(seq=L - 1, ack=R))


def test_off_by_default() -> None:
    t, conn = established_passive()
    t.run_until(t.now + 10 * 7200)
    t.expect_nothing()
    assert conn.state.value == "established"


def test_probes_after_idle_and_gives_up() -> None:
    t, conn = established_passive(keepalive=True, keepalive_idle=60, keepalive_interval=5,
                                  keepalive_count=3)  # fmt: skip
    start = t.now
    t.run_until(start + 59.9)
    t.expect_nothing()
    t.run_until(start + 200)
    times = [round(now - start, 3) for now, s in t.recv_timed() if s == PROBE]
    assert times == [60.0, 65.0, 70.0]
    assert conn.state.value == "closed"
    assert isinstance(t.events[-1][1], TimeoutError)


def test_an_answer_resets_the_count_and_traffic_resets_the_idle_time() -> None:
    t, conn = established_passive(keepalive=True, keepalive_idle=60, keepalive_interval=5,
                                  keepalive_count=2)  # fmt: skip
    start = t.now
    t.run_until(start + 30)
    t.send(seg(seq=R, ack=L, payload=b"x"))  # traffic at 30 s: idle counts from here
    t.run_until(start + 89.9)
    assert [s for s in t.recv() if s == PROBE] == []
    t.run_until(start + 90)
    probe = to_us(seg(seq=L - 1, ack=R + 1, window=65534))
    t.expect(probe)
    t.send(seg(seq=R + 1, ack=L))  # the peer answers
    t.run_until(start + 149.9)
    t.expect_nothing()
    t.run_until(start + 150.1)
    t.expect(probe)
    assert conn.state.value == "established"


def test_can_be_turned_on_per_connection() -> None:
    t, conn = established_passive()
    conn.set_keepalive(True, idle=10)
    t.run_until(t.now + 10)
    t.expect(PROBE)


def test_a_half_closed_fin_wait_2_whose_peer_is_gone_is_reclaimed() -> None:
    """Issue 11: shutdown_write() then our FIN acknowledged: FIN_WAIT_2 with the application
    still reading. Nothing of ours is in flight, so a peer that went away was never noticed
    (Linux too waits forever without SO_KEEPALIVE). Our choice: after fin_wait2_timeout of
    silence, keepalive probes even with keepalive off; unanswered, ETIMEDOUT."""
    from netstack.wire.tcp import ACK, FIN

    t, conn = established_passive(fin_wait2_timeout=60, keepalive_interval=5, keepalive_count=3)
    conn.shutdown_write()
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=ACK | FIN, seq=L, ack=R)))
    t.send(seg(seq=R, ack=L + 1))
    assert conn.state.value == "fin_wait_2"
    start = t.now
    probe = to_us(seg(seq=L, ack=R))  # SND.UNA - 1: our FIN's sequence number
    t.run_until(start + 59.9)
    t.expect_nothing()
    t.run_until(start + 200)
    times = [round(now - start, 3) for now, s in t.recv_timed() if s == probe]
    assert times == [60.0, 65.0, 70.0]
    assert conn.state.value == "closed"
    assert isinstance(t.events[-1][1], TimeoutError)


def test_a_half_closed_fin_wait_2_whose_peer_answers_stays() -> None:
    """A live peer that is merely quiet answers the probe (RFC 9293 3.8.4): kept open."""
    from netstack.wire.tcp import ACK, FIN

    t, conn = established_passive(fin_wait2_timeout=60, keepalive_interval=5, keepalive_count=3)
    conn.shutdown_write()
    t.engine.flush(t.now)
    t.expect(to_us(seg(flags=ACK | FIN, seq=L, ack=R)))
    t.send(seg(seq=R, ack=L + 1))
    start = t.now
    t.run_until(start + 60)
    t.expect(to_us(seg(seq=L, ack=R)))
    t.send(seg(seq=R, ack=L + 1))  # the answer
    t.run_until(start + 119)
    t.expect_nothing()
    assert conn.state.value == "fin_wait_2"


def test_a_due_keepalive_timer_moves_on_when_last_rx_plus_idle_rounds_to_now() -> None:
    """Found by test_sim (hypothesis): `now - last_rx < idle` held while `last_rx + idle`
    rounded to `now`, so the timer was set to `now` again and the engine spun on it forever
    (virtual time stuck in FIN_WAIT_2). The deadline itself is compared now."""
    _t, conn = established_passive(keepalive=True, keepalive_idle=60)
    last_rx, now = 91.76994910066061, 151.7699491006606  # now - last_rx == 59.999999999999986
    assert now - last_rx < 60 and last_rx + 60 == now
    conn.last_rx = last_rx
    conn.keepalive_at = now
    conn.on_timer(now)
    assert conn.keepalive_at is not None and conn.keepalive_at > now
