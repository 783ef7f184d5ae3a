"""Send and receive buffers: bounded, copy at most once, views that stay valid."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.proto.tcp.buffers import COALESCE, ReceiveBuffer, SendBuffer


# -- send --------------------------------------------------------------------------------------
def test_write_is_bounded_by_capacity() -> None:
    buf = SendBuffer(10)
    assert buf.write(b"abcdefgh") == 8
    assert buf.write(b"xyz") == 2
    assert buf.write(b"more") == 0
    assert len(buf) == 10 and buf.free() == 0
    assert bytes(buf.view(0, 10)) == b"abcdefghxy"


def test_large_bytes_are_kept_by_reference() -> None:
    data = bytes(range(256)) * (COALESCE // 256 + 1)
    buf = SendBuffer(1 << 20)
    buf.write(data)
    view = buf.view(100, 50)
    assert isinstance(view, memoryview) and view.obj is data  # no copy at all


def test_a_read_only_view_of_bytes_is_kept_by_reference() -> None:
    """chargen writes memoryview slices of an immutable block: kept as they are (no copy),
    and the application releasing its own view does not end the buffer's."""
    data = bytes(range(256)) * (2 * COALESCE // 256 + 1)
    buf = SendBuffer(1 << 20)
    mine = memoryview(data)[7 : 7 + COALESCE]
    assert buf.write(mine) == COALESCE
    mine.release()
    view = buf.view(100, 50)
    assert isinstance(view, memoryview) and view.obj is data  # no copy at all
    assert bytes(view) == data[107:157]


def test_a_small_view_of_a_large_bytes_is_copied() -> None:
    """Kept by reference, a 16 KiB slice of 1 MiB would keep the whole MiB alive until
    acknowledged: copied instead."""
    big = bytes(1 << 20)
    buf = SendBuffer(1 << 20)
    assert buf.write(memoryview(big)[:COALESCE]) == COALESCE
    view = buf.view(0, 10)
    assert not (isinstance(view, memoryview) and view.obj is big)
    assert bytes(view) == bytes(10)


def test_views_that_are_not_plain_bytes_views_are_copied() -> None:
    """A writable view (of a bytearray) may change after the write, a cast or strided view
    is not one byte per item in order: those are copied."""
    ba = bytearray(b"a" * COALESCE)
    buf = SendBuffer(1 << 20)
    buf.write(memoryview(ba))
    ba[0:1] = b"Z"
    assert bytes(buf.view(0, 2)) == b"aa"
    data = bytes(range(256)) * (2 * COALESCE // 256)
    buf = SendBuffer(1 << 20)
    buf.write(memoryview(data)[::2])
    assert bytes(buf.view(0, 4)) == data[0:8:2] and buf.end == COALESCE
    buf = SendBuffer(1 << 20)
    assert buf.write(memoryview(data).cast("I")) == len(data)
    assert bytes(buf.view(0, 8)) == data[:8]


def test_chunks_of_views_join_only_across_a_boundary() -> None:
    block = bytes(range(256)) * 600
    buf = SendBuffer(1 << 20)
    view = memoryview(block)
    buf.write(view[0:COALESCE])
    buf.write(view[3 : 3 + COALESCE])
    assert isinstance(buf.view(10, 100), memoryview)
    across = buf.view(COALESCE - 5, 10)
    assert bytes(across) == block[COALESCE - 5 : COALESCE] + block[3:8]
    buf.consume(COALESCE)
    assert bytes(buf.view(COALESCE, 4)) == block[3:7] and len(buf) == COALESCE


def test_small_writes_coalesce_into_one_chunk() -> None:
    buf = SendBuffer(1 << 20)
    for i in range(100):
        buf.write(bytes([i]) * 10)
    view = buf.view(0, 1000)
    assert isinstance(view, memoryview)  # one chunk: a view, not a join
    assert bytes(view) == b"".join(bytes([i]) * 10 for i in range(100))


def test_mutable_input_is_copied() -> None:
    data = bytearray(b"hello")
    buf = SendBuffer(100)
    buf.write(data)
    data[0:5] = b"XXXXX"
    assert bytes(buf.view(0, 5)) == b"hello"


def test_bytes_under_a_view_never_change() -> None:
    """A frame in the tx queue holds a view: later writes must not touch those bytes."""
    buf = SendBuffer(1 << 20)
    buf.write(b"a" * 100)
    held = buf.view(0, 100)  # as a queued frame would
    buf.write(b"b" * 100)  # the tail is exported: this starts a new chunk
    buf.consume(100)  # even acknowledged bytes stay intact while viewed
    buf.write(b"c" * 100)
    assert bytes(held) == b"a" * 100
    assert bytes(buf.view(100, 200)) == b"b" * 100 + b"c" * 100


def test_view_spanning_chunks_is_joined() -> None:
    buf = SendBuffer(1 << 20)
    big = b"x" * COALESCE
    buf.write(big)
    buf.write(b"tail")
    joined = buf.view(COALESCE - 3, 7)
    assert joined == b"xxxtail"


def test_consume_releases_whole_chunks() -> None:
    buf = SendBuffer(1 << 20)
    big1, big2 = b"1" * COALESCE, b"2" * COALESCE
    buf.write(big1)
    buf.write(big2)
    buf.consume(COALESCE + 10)
    assert buf.start == COALESCE + 10 and len(buf) == COALESCE - 10
    assert buf._chunks == [big2]
    assert bytes(buf.view(COALESCE + 10, 5)) == b"22222"
    assert buf.free() == (1 << 20) - (COALESCE - 10)


# -- receive -----------------------------------------------------------------------------------
def test_in_order_queue() -> None:
    rb = ReceiveBuffer(8)
    rb.push(b"abc")
    rb.push(b"de")
    assert rb.queued == 5
    assert rb.pop() == b"abc" and rb.queued == 2


def test_out_of_order_pieces_fill_in_and_come_out_in_order() -> None:
    rb = ReceiveBuffer(8)
    rb.add_ooo(120, memoryview(b"C" * 10))
    rb.add_ooo(105, memoryview(b"B" * 10))
    assert rb.ooo_bytes == 20
    assert rb.blocks() == [(105, 115), (120, 130)]
    nxt, pieces = rb.take_ooo(100)
    assert (nxt, pieces) == (100, [])  # hole at 100..105
    nxt, pieces = rb.take_ooo(105)
    assert nxt == 115 and pieces == [b"B" * 10]
    assert rb.blocks() == [(120, 130)]


def test_overlapping_out_of_order_data_is_stored_once() -> None:
    rb = ReceiveBuffer(8)
    rb.add_ooo(110, memoryview(b"a" * 10))  # 110..120
    stored, refused = rb.add_ooo(105, memoryview(b"b" * 20))  # 105..125 overlaps
    assert (stored, refused) == (10, False)  # only 105..110 and 120..125 are new
    assert rb.blocks() == [(105, 125)]
    _, pieces = rb.take_ooo(105)
    assert b"".join(pieces) == b"b" * 5 + b"a" * 10 + b"b" * 5


def test_out_of_order_store_is_bounded_and_prunes_the_furthest() -> None:
    rb = ReceiveBuffer(2)
    rb.add_ooo(200, memoryview(b"x"))
    rb.add_ooo(300, memoryview(b"y"))
    _, refused = rb.add_ooo(400, memoryview(b"z"))  # furthest of all: refused
    assert refused and rb.blocks() == [(200, 201), (300, 301)]
    _, refused = rb.add_ooo(100, memoryview(b"w"))  # closer: the furthest goes
    assert not refused and rb.blocks() == [(100, 101), (200, 201)]


def test_sack_blocks_most_recent_first() -> None:
    """RFC 2018 section 4: the block with the latest segment first, then recent ones."""
    rb = ReceiveBuffer(16)
    rb.add_ooo(300, memoryview(b"x" * 10))
    rb.add_ooo(100, memoryview(b"x" * 10))
    rb.add_ooo(200, memoryview(b"x" * 10))
    rb.add_ooo(310, memoryview(b"x" * 10))  # extends the first block
    assert rb.sack_blocks(4) == [(300, 320), (200, 210), (100, 110)]
    assert rb.sack_blocks(2) == [(300, 320), (200, 210)]


@pytest.mark.parametrize("limit", [3, 4])
def test_sack_blocks_fill_up_with_older_blocks(limit: int) -> None:
    rb = ReceiveBuffer(16)
    for start in (100, 200, 300, 400, 500):
        rb.add_ooo(start, memoryview(b"x"))
    blocks = rb.sack_blocks(limit)
    assert len(blocks) == limit and blocks[0] == (500, 501)
    assert len(set(blocks)) == limit


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(1, 400), st.integers(1, 60), st.booleans()), min_size=1, max_size=60
    ),
    max_pieces=st.sampled_from([2, 5, 256]),
)
def test_sack_ranges_follow_the_pieces(ops, max_pieces) -> None:
    """The merged ranges kept for SACK blocks are always the pieces' contiguous runs, and
    SACK blocks are among them, the most recently received piece's block first."""
    rb = ReceiveBuffer(max_pieces)
    rcv_nxt = 0
    for start, length, take in ops:
        if take:
            rcv_nxt, _ = rb.take_ooo(max(rcv_nxt, start - 30))
        elif start > rcv_nxt:
            rb.add_ooo(start, memoryview(bytes(length)))
        naive: list[tuple[int, int]] = []
        for s, e, _ in rb.ooo:
            if naive and naive[-1][1] == s:
                naive[-1] = (naive[-1][0], e)
            else:
                naive.append((s, e))
        assert rb.blocks() == naive
        sack = rb.sack_blocks(3)
        assert len(sack) == min(3, len(naive)) and all(b in naive for b in sack)
        assert len(set(sack)) == len(sack)


def test_push_points_coalesce_over_the_unsent_tail() -> None:
    """A write's push point moves to the end of a later write while it is unsent (Linux
    appends to its tail skb), but not once it went out, nor beyond the 64 KB skb goal."""
    from netstack.proto.tcp.buffers import SendBuffer

    b = SendBuffer(1 << 20)
    b.write(b"a")
    b.mark_push(unsent_from=0)
    b.write(b"b")
    b.mark_push(unsent_from=0)  # "a" not sent yet: one push point, after "b"
    assert not b.push_in(0, 1) and b.push_in(1, 2)
    b.write(b"c")
    b.mark_push(unsent_from=2)  # "ab" went out: "c" gets its own
    assert b.push_in(1, 2) and b.push_in(2, 3)
    b.write(b"d" * 70000)
    b.mark_push(unsent_from=2)  # the run from the unsent edge would pass 64 KB: keep "c"'s
    assert b.push_in(2, 3) and b.push_in(70002, 70003)
    b.consume(3)
    assert not b.push_in(0, 3) and b.push_in(3, 70003)
