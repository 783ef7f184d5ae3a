"""The sender's scoreboard: acks, SACK marks, RFC 6675 IsLost and pipe."""

from __future__ import annotations

from netstack.proto.tcp.scoreboard import Scoreboard

MSS = 100


def board_with(n: int, start: int = 1000) -> Scoreboard:
    b = Scoreboard()
    for i in range(n):
        b.add(start + i * MSS, start + (i + 1) * MSS, now=float(i))
    return b


def test_cumulative_ack_drops_records_and_gives_a_karn_clean_sample() -> None:
    b = board_with(4)
    sent_at, rexmit = b.ack(1200)
    assert sent_at == 1.0 and not rexmit  # the newest fully acknowledged record
    assert len(b) == 2 and b.first().start == 1200  # type: ignore[union-attr]


def test_no_sample_when_retransmitted_data_is_acknowledged() -> None:
    b = board_with(3)
    first = b.first()
    assert first is not None
    b.mark_first_lost()
    b.retransmitted(first, 10.0)
    sent_at, rexmit = b.ack(1200)
    assert sent_at is None and rexmit  # Karn


def test_partial_ack_trims_the_record() -> None:
    b = board_with(2)
    b.ack(1050)
    assert b.first().start == 1050  # type: ignore[union-attr]


def test_sack_marks_only_whole_records_inside_the_block() -> None:
    b = board_with(5)
    assert b.sack([(1200, 1350)]) == 100  # 1200..1300 only; 1300..1400 is not covered
    assert b.sacked_bytes == 100 and b.high_sacked == 1300
    assert b.sack([(1200, 1300)]) == 0  # nothing new
    assert b.pipe(500) == 400


def test_is_lost_needs_three_sacked_segments_above() -> None:
    """RFC 6675 IsLost: DupThresh SACKed segments (or > 2*SMSS bytes) above a hole."""
    b = board_with(6)  # 1000..1600
    b.sack([(1100, 1300)])
    assert b.mark_lost(MSS) == 0  # two segments above the hole at 1000: not yet
    b.sack([(1300, 1400)])
    assert b.mark_lost(MSS) == 100  # three: 1000..1100 is lost
    assert b.lost_bytes == 100
    first = b.first()
    assert first is not None and first.lost
    assert b.next_lost() is first
    assert b.pipe(600) == 600 - 300 - 100  # sacked and lost are out of the pipe
    b.retransmitted(first, 5.0)
    assert b.next_lost() is None
    assert b.pipe(600) == 600 - 300 - 100 + 100  # the retransmission is in the pipe


def test_holes_between_sacks_are_lost_in_order() -> None:
    b = board_with(8)  # 1000..1800
    b.sack([(1100, 1200), (1300, 1400), (1500, 1800)])
    b.mark_lost(MSS)
    lost = [r.start for r in b if r.lost]
    assert lost == [1000, 1200, 1400]
    assert [b.next_lost().start] == [1000]  # type: ignore[union-attr]


def test_sack_of_a_lost_record_unmarks_it() -> None:
    b = board_with(5)
    b.sack([(1100, 1400)])
    b.mark_lost(MSS)
    assert b.lost_bytes == 100
    b.sack([(1000, 1100)])  # it arrived after all (reordering)
    assert b.lost_bytes == 0 and b.sacked_bytes == 400


def test_rto_marks_everything_lost_and_may_forget_sacks() -> None:
    b = board_with(4)
    b.sack([(1200, 1300)])
    b.mark_all_lost(forget_sacks=False)
    assert b.lost_bytes == 300 and b.sacked_bytes == 100
    assert [r.start for r in b if r.lost] == [1000, 1100, 1300]
    b.mark_all_lost(forget_sacks=True)  # RFC 2018 8: the receiver may have reneged
    assert b.lost_bytes == 400 and b.sacked_bytes == 0
    order = []
    while (r := b.next_lost()) is not None:
        order.append(r.start)
        b.retransmitted(r, 1.0)
    assert order == [1000, 1100, 1200, 1300]
    assert b.rexmit_bytes == 400 and b.pipe(400) == 400
