"""TCP and path MTU discovery (RFC 1191 with RFC 5927's checks): segments in and out on a fake
clock. The fake IP layer records DF for each segment."""

from __future__ import annotations

from netstack.drops import Drop
from netstack.wire import ipv4 as wipv4
from tests.unit.tcp.tcptools import (
    ACK,
    LOCAL_IP,
    LOCAL_ISN,
    LOCAL_PORT,
    PSH,
    REMOTE_IP,
    REMOTE_ISN,
    REMOTE_PORT,
    established_passive,
    seg,
)

L, R = LOCAL_ISN + 1, REMOTE_ISN + 1


def frag_needed(t, seq: int, mtu: int, length: int = 1500) -> None:
    """What icmp.py hands TCP for "fragmentation needed" quoting our segment at `seq`."""
    inner = wipv4.Ipv4Header(20, 0, length, 0, True, False, 0, 64, 6, 0, LOCAL_IP, REMOTE_IP)
    quoted = memoryview(
        LOCAL_PORT.to_bytes(2, "big") + REMOTE_PORT.to_bytes(2, "big") + seq.to_bytes(4, "big")
    )
    t.engine.receive_frag_needed(inner, quoted, mtu, t.now)
    t.engine.flush(t.now)


def test_segments_carry_df() -> None:
    t, conn = established_passive()
    t.ipv4.df.clear()
    conn.send(b"z" * 100)
    t.engine.flush(t.now)
    assert len(t.recv()) == 1 and t.ipv4.df == [True]


def test_frag_needed_lowers_the_mss_and_resends_in_flight_data_at_the_new_size() -> None:
    """Linux's tcp_v4_mtu_reduced: tcp_sync_mss, then tcp_simple_retransmit (every segment
    larger than the new MSS, split to it; no congestion response)."""
    t, conn = established_passive()
    conn.send(b"z" * 3 * 1460)
    t.engine.flush(t.now)
    assert [len(s.payload) for s in t.recv()] == [1460] * 3
    cwnd, ssthresh = conn.recovery.cc.cwnd, conn.recovery.cc.ssthresh
    t.now += 0.01
    frag_needed(t, L + 1460, 1280)  # quotes the second segment: in flight
    assert conn.mss == 1240
    got = t.recv()
    assert [(s.seq - L, len(s.payload)) for s in got] == [
        (0, 1240), (1240, 220), (1460, 1240), (2700, 220), (2920, 1240), (4160, 220)
    ]  # fmt: skip
    assert got[-1].flags == ACK | PSH  # the original's flags (the write ended there)
    assert (conn.recovery.cc.cwnd, conn.recovery.cc.ssthresh) == (cwnd, ssthresh)
    assert conn.tcp_info()["tcpi_snd_mss"] == 1240 and conn.tcp_info()["tcpi_pmtu"] == 1280
    assert t.engine.pmtu.updates == 1
    # New data goes at the new size; the peer's ACK of everything ends the episode.
    t.send(seg(seq=R, ack=L + 3 * 1460))
    assert conn.recovery.ca_state == "open"
    conn.send(b"y" * 3000)
    t.engine.flush(t.now)
    assert [len(s.payload) for s in t.recv()] == [1240, 1240, 520]


def test_frag_needed_quoting_data_not_in_flight_is_ignored() -> None:
    """RFC 5927 4.1: SND.UNA <= SEG.SEQ < SND.NXT, else a forgery (or very late)."""
    t, conn = established_passive()
    conn.send(b"z" * 1460)
    t.engine.flush(t.now)
    t.recv()
    frag_needed(t, L + 1460, 1280)  # SND.NXT: nothing sent there
    frag_needed(t, L - 1, 1280)  # below SND.UNA
    assert conn.mss == 1460 and t.engine.pmtu.updates == 0
    assert t.counters.drops[Drop.TCP_ICMP_OUT_OF_WINDOW] == 2
    t.expect_nothing()


def test_old_style_frag_needed_uses_the_plateau_table() -> None:
    """RFC 1191 5: next-hop MTU 0 -> the plateau below the quoted length (icmp.py resolves it;
    here through the ICMP engine's helper, as the host wires it)."""
    from netstack.proto.pmtu import next_hop_mtu

    t, conn = established_passive()
    conn.send(b"z" * 1460)
    t.engine.flush(t.now)
    t.recv()
    frag_needed(t, L, next_hop_mtu(0, 1500))
    assert conn.mss == 1492 - 40


def test_a_tiny_mtu_is_clamped_and_df_goes_off() -> None:
    t, conn = established_passive()
    conn.send(b"z" * 1460)
    t.engine.flush(t.now)
    t.recv()
    t.ipv4.df.clear()
    frag_needed(t, L, 296)
    assert conn.mss == 512  # Linux's min_pmtu 552 - 40
    assert [len(s.payload) for s in t.recv()] == [512, 512, 436]
    assert t.ipv4.df == [False, False, False]


def test_another_connection_to_the_same_destination_uses_the_new_estimate() -> None:
    t, conn = established_passive()
    conn.send(b"z" * 1460)
    t.engine.flush(t.now)
    t.recv()
    t.engine.pmtu.report(REMOTE_IP, 1280, 1500, t.now)  # as another connection's report would
    conn.send(b"y" * 1460)
    t.engine.flush(t.now)
    assert [len(s.payload) for s in t.recv()] == [1240, 220]  # no resend: no report of ours


def test_the_estimate_ages_out_and_the_mss_comes_back() -> None:
    """RFC 1191 6.3: after 10 minutes the PMTU is raised to the first hop's MTU."""
    t, conn = established_passive(keepalive=False)
    conn.send(b"z" * 1460)
    t.engine.flush(t.now)
    t.recv()
    frag_needed(t, L, 1280)
    t.send(seg(seq=R, ack=L + 1460))
    t.recv()
    assert conn.mss == 1240
    t.now += 601
    conn.send(b"y" * 1460)
    t.engine.flush(t.now)
    assert [len(s.payload) for s in t.recv()] == [1460]
    assert conn.mss == 1460


def test_pmtu_discovery_off_sends_without_df_and_ignores_reports() -> None:
    t, conn = established_passive(pmtu_discovery=False)
    conn.send(b"z" * 1460)
    t.engine.flush(t.now)
    t.recv()
    assert t.ipv4.df[-1] is False
    frag_needed(t, L, 1280)
    assert conn.mss == 1460 and len(t.engine.pmtu) == 0


def test_a_syn_quoted_in_syn_sent_sets_the_mss_of_the_connection() -> None:
    from tests.unit.tcp.tcptools import RecordingHandler, Seg

    t = established_passive()[0]
    conn = t.engine.connect((REMOTE_IP, REMOTE_PORT), local_port=LOCAL_PORT + 1)
    conn.handler = RecordingHandler(conn, t.events)
    t.engine.flush(t.now)
    t.recv()
    inner = wipv4.Ipv4Header(20, 0, 1500, 0, True, False, 0, 64, 6, 0, LOCAL_IP, REMOTE_IP)
    quoted = memoryview(
        (LOCAL_PORT + 1).to_bytes(2, "big")
        + REMOTE_PORT.to_bytes(2, "big")
        + LOCAL_ISN.to_bytes(4, "big")
    )
    t.engine.receive_frag_needed(inner, quoted, 1280, t.now)
    t.send(Seg(flags=0x12, seq=REMOTE_ISN, ack=LOCAL_ISN + 1, mss=1460, dport=LOCAL_PORT + 1))
    assert conn.state.value == "established" and conn.mss == 1240


def test_plpmtud_black_hole_detection_lowers_the_mss_after_repeated_rtos() -> None:
    """RFC 4821/8899 black-hole fallback (Linux tcp_mtu_probing=1, tcp_retries1=3, base_mss
    1024): no ICMP ever comes; the 4th RTO in a row caps the MSS at 1024 and the go-back-N
    resends at that size; a 5th halves it; after the probe interval the full size is back."""
    t, conn = established_passive(plpmtud=True)
    conn.send(b"z" * 2000)
    t.engine.flush(t.now)
    assert [len(s.payload) for s in t.recv()] == [1460, 540]
    sizes = []
    for _ in range(5):
        t.run_until(t.engine.next_deadline())
        sizes.append([len(s.payload) for s in t.recv() if s.payload])
    assert sizes[:3] == [[1460]] * 3  # RTOs 1-3: the first segment again, full size
    assert sizes[3][0] == 1024
    assert sizes[4][0] == 512 and conn.mss == 512
    assert t.counters.tcp_plpmtud_black_holes == 2
    # The peer finally ACKs everything; after tcp_probe_interval the full size is tried.
    t.send(seg(seq=R, ack=L + 2000))
    t.now += 601
    conn.send(b"y" * 3000)
    t.engine.flush(t.now)
    assert [len(s.payload) for s in t.recv()][:1] == [1460]  # (cwnd after idle: 1 MSS)


def test_plpmtud_is_off_by_default() -> None:
    t, conn = established_passive()
    conn.send(b"z" * 1460)
    t.engine.flush(t.now)
    t.recv()
    for _ in range(6):
        t.run_until(t.engine.next_deadline())
    assert conn.mss == 1460 and t.counters.tcp_plpmtud_black_holes == 0
