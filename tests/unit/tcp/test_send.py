"""The sending side: segmentation, cwnd and window limits, Nagle (RFC 896), sender SWS
avoidance (RFC 9293 3.8.6.2.1), zero-window probing (3.8.6.1), bounded send buffer."""

from __future__ import annotations

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
MSS = 1460


def ack(n: int, window: int = 65535) -> object:
    return seg(seq=R, ack=L + n, window=window)


def sizes(t) -> list[int]:
    return [len(s.payload) for s in t.recv()]


def test_data_is_cut_into_mss_segments() -> None:
    t, conn = established_passive()
    conn.send(b"z" * 4000)
    t.engine.flush(t.now)
    segs = t.recv()
    assert [len(s.payload) for s in segs] == [1460, 1460, 1080]
    assert [s.seq for s in segs] == [L, L + 1460, L + 2920]
    assert [s.flags for s in segs] == [ACK, ACK, ACK | PSH]  # PSH on the last one


def test_initial_window_is_ten_segments() -> None:
    """RFC 6928 through cc.py: IW = min(10*MSS, max(2*MSS, 14600))."""
    t, conn = established_passive()
    conn.send(b"z" * 30000)
    t.engine.flush(t.now)
    assert sizes(t) == [1460] * 10
    t.send(ack(2 * 1460))  # slow start: +2 MSS (RFC 3465 L=2) and 2 MSS left the network
    assert sizes(t) == [1460] * 4


def test_the_peer_window_limits_sending() -> None:
    t, conn = established_passive()
    conn.send(b"z" * 10000)
    t.send(seg(seq=R, ack=L, window=3000))  # the peer shrank its window to 3000
    assert sizes(t) == [1460, 1460]  # the 80-byte remainder is SWS-blocked
    t.send(ack(2920, window=3000))
    assert sizes(t) == [1460, 1460]


def test_sender_sws_avoidance_waits_for_a_useful_window() -> None:
    t, conn = established_passive()
    t.send(seg(seq=R, ack=L, window=1000))  # far below half the largest window seen (65535)
    conn.send(b"z" * 3000)
    t.engine.flush(t.now)
    assert sizes(t) == []
    assert conn.persist_at is not None  # the override timer sends it eventually
    t.advance(conn.persist_at - t.now)
    assert sizes(t) == [1000]  # RFC 9293 3.8.6.2.1 override
    t.send(ack(1000, window=40000))  # a useful window
    assert sizes(t) == [1460, 540]


def test_nagle_holds_a_small_segment_while_a_small_one_is_unacknowledged() -> None:
    t, conn = established_passive()
    conn.send(b"a")
    t.engine.flush(t.now)
    assert sizes(t) == [1]  # nothing outstanding: a small segment may go
    conn.send(b"b")
    conn.send(b"c")
    t.engine.flush(t.now)
    assert sizes(t) == []  # held: one small segment outstanding
    t.send(ack(1))
    segs = t.recv()
    assert [s.payload for s in segs] == [b"bc"]  # coalesced


def test_nodelay_sends_small_segments_at_once() -> None:
    t, conn = established_passive()
    conn.set_nodelay(True)
    for ch in b"abc":
        conn.send(bytes([ch]))
        t.engine.flush(t.now)
    assert sizes(t) == [1, 1, 1]


def test_nagle_lets_full_segments_through() -> None:
    t, conn = established_passive()
    conn.send(b"a")
    t.engine.flush(t.now)
    t.recv()
    conn.send(b"b" * 3000)
    t.engine.flush(t.now)
    assert sizes(t) == [1460, 1460]  # the 80-byte tail waits: "a" is unacknowledged
    t.send(ack(1))
    assert sizes(t) == [80]


def test_nagle_does_not_hold_the_tail_of_a_large_write() -> None:
    """Minshall's variant: full segments outstanding do not hold a small tail back."""
    t, conn = established_passive()
    conn.send(b"z" * 4000)
    t.engine.flush(t.now)
    assert sizes(t) == [1460, 1460, 1080]
    conn.send(b"more")
    t.engine.flush(t.now)
    assert sizes(t) == []  # now a small segment (the 1080) is outstanding


def test_nagle_does_not_hold_the_last_segment_before_fin() -> None:
    t, conn = established_passive()
    conn.send(b"a")
    t.engine.flush(t.now)
    t.recv()
    conn.send(b"tail")
    conn.close()
    t.engine.flush(t.now)
    (s,) = t.recv()
    assert s.payload == b"tail" and s.flags & 0x01


def test_send_buffer_is_bounded_and_signals_pause_and_resume() -> None:
    t, conn = established_passive(send_buffer=5000)
    assert conn.send(b"x" * 6000) == 5000
    assert t.events == [("pause_writing",)]  # at once, from inside send(), like asyncio
    assert conn.writing_paused
    t.engine.flush(t.now)
    t.recv()
    t.send(ack(1460))  # 3540 left: above the low-water mark (2500)
    assert ("resume_writing",) not in t.events
    t.send(ack(2920))
    assert ("resume_writing",) in t.events
    assert conn.sndbuf.free() == 5000 - 2080


def test_zero_window_probes_back_off_and_continue_while_answered() -> None:
    t, conn = established_passive()
    conn.send(b"x" * 100)
    t.send(seg(seq=R, ack=L, window=0))
    t.expect_nothing()
    probe = to_us(seg(seq=L - 1, ack=R))
    start = t.now
    t.run_until(start + 0.2)
    t.expect(probe)  # first probe after one RTO (200 ms after the handshake's sample)
    times = []
    for _ in range(20):  # the peer answers every probe, keeping its window shut
        t.run_until(t.now + 200)
        for now, s in t.recv_timed():
            assert s == probe
            times.append(now)
            t.send(seg(seq=R, ack=L, window=0))
    gaps = [round(b - a, 3) for a, b in zip([start + 0.2, *times], times, strict=False)]
    assert gaps[:5] == [0.4, 0.8, 1.6, 3.2, 6.4]  # exponential backoff
    assert max(gaps) <= 120.0  # capped at rto_max
    assert conn.state.value == "established"  # RFC 9293 MUST-26: no abort while answered
    t.send(seg(seq=R, ack=L, window=1000))  # the window opens
    (s,) = t.recv()
    assert s.payload == b"x" * 100


def test_unanswered_zero_window_probes_give_up() -> None:
    t, conn = established_passive(retries=3)
    conn.send(b"x" * 100)
    t.send(seg(seq=R, ack=L, window=0))
    t.run_until(t.now + 1000)
    assert conn.state.value == "closed"
    assert isinstance(t.events[-1][1], TimeoutError)
    assert len(t.recv()) == 3


def test_fin_waits_for_window_space() -> None:
    t, conn = established_passive()
    t.send(seg(seq=R, ack=L, window=0))
    conn.close()
    t.engine.flush(t.now)
    t.expect_nothing()
    t.run_until(conn.persist_at)
    t.expect(to_us(seg(seq=L - 1, ack=R)))  # a probe, not the FIN
    t.send(seg(seq=R, ack=L, window=10))
    (fin,) = t.recv()
    assert fin.flags & 0x01 and fin.seq == L


# -- PSH placement (Linux profile: tcp_push, and the skb's own flags on retransmission) ----------
def flags_of(segs) -> list[tuple[int, int]]:
    return [((s.seq - L) // MSS, s.flags) for s in segs]


def test_a_retransmission_keeps_the_flags_of_the_original() -> None:
    """Linux resends the skb as first built: a segment sent without PSH is retransmitted
    without it, the one that ended the write with it (before: PSH on every retransmission)."""
    t, conn = established_passive()
    conn.send(b"z" * (3 * MSS))
    t.engine.flush(t.now)
    assert flags_of(t.recv()) == [(0, ACK), (1, ACK), (2, ACK | PSH)]
    t.advance(conn.recovery.rtt.rto)  # the RTO: go-back-N from SND.UNA, cwnd 1 MSS
    assert flags_of(t.recv()) == [(0, ACK)]
    t.send(ack(MSS))
    assert flags_of(t.recv()) == [(1, ACK), (2, ACK | PSH)]


def test_psh_ends_each_write_even_when_cwnd_holds_back_the_next() -> None:
    """RFC 9293 3.9.1 (PSH on the last segment of a SEND) as Linux's tcp_push marks the tail
    skb at the end of each sendmsg. Here the first write is 50 segments and cwnd (IW10) holds
    back the second; writes coalesce under one PSH only while the unsent run stays within
    Linux's largest skb (64 KB), so the first write's last segment keeps its PSH although more
    is queued behind it when it goes (before: PSH only where the queue ran dry)."""
    t, conn = established_passive(send_buffer=256 * 1024)
    conn.send(b"a" * (50 * MSS))
    t.engine.flush(t.now)
    assert [f for _, f in flags_of(t.recv())] == [ACK] * 10
    conn.send(b"b" * (10 * MSS))
    t.engine.flush(t.now)
    sent = []
    for n in range(10, 60, 5):  # ACK as the peer would, until everything is out
        t.send(ack(n * MSS))
        sent += flags_of(t.recv())
    pushed = [n for n, f in sent if f & PSH]
    assert pushed == [49, 59]


def test_tcp_info_has_linux_fields_and_units() -> None:
    """conn.info() carries Linux's struct tcp_info fields (tcpi_*, microseconds, segments)."""
    t, conn = established_passive()
    conn.send(b"z" * (3 * MSS))
    t.engine.flush(t.now)
    t.recv()
    t.now += 0.05
    t.send(seg(seq=R, ack=L + MSS, payload=b"hello"))
    info = conn.info()
    assert info["tcpi_state"] == 1 and info["tcpi_ca_state"] == 0
    assert info["tcpi_unacked"] == 2 and info["tcpi_snd_mss"] == MSS
    assert info["tcpi_snd_cwnd"] == 10  # IW10; not grown: application-limited (as Linux)
    assert info["tcpi_rtt"] == int(conn.recovery.rtt.srtt * 1e6) > 0  # microseconds
    rtt = conn.recovery.rtt
    assert info["tcpi_rto"] == int(rtt.rto * 1e6) == int((rtt.srtt + 0.2) * 1e6)  # Linux's RTO
    assert info["tcpi_bytes_acked"] == MSS and info["tcpi_bytes_received"] == 5
    assert info["tcpi_bytes_sent"] == 3 * MSS and info["tcpi_data_segs_out"] == 3
    assert info["tcpi_segs_in"] == 2 and info["tcpi_data_segs_in"] == 1  # handshake ACK too
    assert info["tcpi_total_retrans"] == 0 and info["tcpi_notsent_bytes"] == 0
    t.advance(conn.recovery.rtt.rto)
    info = conn.info()
    assert info["tcpi_ca_state"] == 4 and info["tcpi_retransmits"] == 1
    assert info["tcpi_total_retrans"] == 1 and info["tcpi_bytes_retrans"] == MSS
    assert info["tcpi_backoff"] == 1 and info["tcpi_lost"] == 2 and info["tcpi_retrans"] == 1


def test_the_offload_seam_sends_multi_mss_segments_counted_in_mss() -> None:
    """config.tso_max (the TSO seam): one segment of up to tso_max (a whole number of MSS)
    per send, within cwnd and the window; the scoreboard keeps one record per MSS piece (the
    wire segments the kernel cuts it into, which SACK blocks name), so RACK, the probe timer
    and PRR count in MSS (see test_tso.py)."""
    t, conn = established_passive(tso_max=65535 - 40)
    conn.send(b"z" * (12 * MSS))
    t.engine.flush(t.now)
    segs = t.recv()
    assert [(len(s.payload), s.flags) for s in segs] == [(10 * MSS, ACK)]  # IW10 in one
    assert len(conn.recovery.board) == 10
    t.send(ack(10 * MSS))
    assert [(len(s.payload), s.flags) for s in t.recv()] == [(2 * MSS, ACK | PSH)]


def test_a_lost_offloaded_segment_is_resent_within_cwnd() -> None:
    """A 10-MSS offloaded segment is lost: after the RTO (cwnd 1 MSS) one MSS of it goes
    again, not all ten; each ACK then lets out what slow start allows (Linux fragments the
    skb to cwnd's quota, tcp_retransmit_skb). The records are the MSS pieces the kernel cut
    it into, so each retransmission is exactly one of them. PSH only on the piece ending it."""
    t, conn = established_passive(tso_max=65535 - 40)
    conn.send(b"z" * (10 * MSS))
    t.engine.flush(t.now)
    assert [len(s.payload) for s in t.recv()] == [10 * MSS]
    t.advance(conn.recovery.rtt.rto)
    assert [(s.seq - L, len(s.payload), s.flags) for s in t.recv()] == [(0, MSS, ACK)]
    t.send(ack(MSS))  # cwnd 2 MSS: two more
    assert [(s.seq - L, len(s.payload)) for s in t.recv()] == [(MSS, MSS), (2 * MSS, MSS)]
    t.send(ack(3 * MSS))  # cwnd 4 MSS: four more
    assert [(s.seq - L, len(s.payload)) for s in t.recv()] == [(i * MSS, MSS) for i in (3, 4, 5, 6)]
    t.send(ack(7 * MSS))
    assert [(s.seq - L, len(s.payload), s.flags) for s in t.recv()] == [
        (7 * MSS, MSS, ACK),
        (8 * MSS, MSS, ACK),
        (9 * MSS, MSS, ACK | PSH),
    ]
