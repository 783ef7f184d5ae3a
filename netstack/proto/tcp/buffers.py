"""Bounded send and receive buffers, built so that payload is copied at most once each way.

Send: the application's bytes are kept in a list of chunks indexed by *stream offset* (0 is the
first byte after our SYN). A write of COALESCE bytes or more of `bytes`, or of a read-only
memoryview of `bytes`, is kept by reference (no copy: bytes are immutable); anything else is
copied once, appended to a tail `bytearray` so that small writes coalesce. Segments are handed
out as memoryview slices of the chunks, so a frame waiting in the tx queue points straight at
the buffer.

The rule that makes that safe: **bytes of a chunk are never changed once written.** Appending
to the tail bytearray while a view of it is alive is refused by Python (BufferError), and the
buffer then simply starts a new chunk; acknowledged chunks are released by dropping our
reference, and a frame still holding a view keeps its chunk alive. Nothing is ever compacted
in place, so there is no "when is it safe to compact" rule to get wrong. A segment that spans
two chunks (once per chunk boundary: most 64 KiB super-segments over 32 KiB writes kept by
reference) is joined into one `bytes` for the checksum.

Receive: payload views (valid only during the receive call) are copied once into `bytes`;
in-order data queues until the application takes it, out-of-order data waits in a sorted,
bounded store of non-overlapping pieces, which also yields the SACK blocks (RFC 2018).
"""

from __future__ import annotations

import bisect
from collections import deque

Buffer = bytes | bytearray | memoryview

COALESCE = 16 * 1024  # writes below this size are copied into the tail bytearray
TAIL_LIMIT = 256 * 1024  # a tail bytearray stops growing here (bounds one chunk's lifetime)
PUSH_GOAL = 65536  # Linux's largest skb (GSO_MAX_SIZE): writes coalesce under one PSH up to this


def _byte_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _immutable(view: memoryview) -> bool:
    """A contiguous, read-only, one-byte-per-item view of a `bytes` object."""
    return (
        view.readonly
        and type(view.obj) is bytes
        and view.format == "B"
        and view.ndim == 1
        and view.contiguous
    )


class SendBuffer:
    """Unacknowledged and unsent bytes, [start, end) in stream offsets, at most `capacity`."""

    __slots__ = ("_chunks", "_offsets", "_pushes", "capacity", "end", "start")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.start = 0  # stream offset of the oldest byte held (SND.UNA's offset)
        self.end = 0  # stream offset just past the last byte written
        self._chunks: list[Buffer] = []
        self._offsets: list[int] = []  # stream offset of each chunk's first byte
        self._pushes: list[int] = []  # push points (ends of writes), ascending, > start

    def __len__(self) -> int:
        return self.end - self.start

    def free(self) -> int:
        return max(0, self.capacity - (self.end - self.start))

    def write(self, data: Buffer) -> int:
        """Take as much of `data` as fits; returns how many bytes were taken."""
        size = data.nbytes if type(data) is memoryview else len(data)
        take = min(size, self.capacity - (self.end - self.start))
        if take <= 0:
            return 0
        chunks = self._chunks
        kind = type(data)
        if take >= COALESCE and kind is bytes:
            self._offsets.append(self.end)
            chunks.append(data if take == size else memoryview(data)[:take])
        elif (
            take >= COALESCE
            and kind is memoryview
            and _immutable(data)  # type: ignore[arg-type]
            and 4 * take >= len(data.obj)  # type: ignore[union-attr, arg-type]
        ):
            # A read-only byte view of `bytes` (chargen's slices of its pattern block): as
            # immutable as the bytes, so kept by reference too. A new view (data[:take]),
            # so that the application's release() of its own view cannot end ours. Only
            # when it covers a good part of that bytes: a small slice of a large one would
            # keep all of it alive until acknowledged (review finding).
            self._offsets.append(self.end)
            chunks.append(data[:take])
        else:
            piece = _byte_view(data)[:take] if take < size or type(data) is not bytes else data
            tail = chunks[-1] if chunks else None
            appended = False
            if type(tail) is bytearray and len(tail) + take <= TAIL_LIMIT:
                try:
                    tail += piece
                    appended = True
                except BufferError:  # a queued frame still views the tail: leave it be
                    pass
            if not appended:
                self._offsets.append(self.end)
                chunks.append(bytearray(piece))
        self.end += take
        return take

    def mark_push(self, unsent_from: int, goal: int = PUSH_GOAL) -> None:
        """The application's write ends here: the segment holding this byte carries PSH
        (RFC 9293 3.9.1 SEND: the last segment of the buffer; Linux's tcp_push marks the tail
        skb at the end of each sendmsg, and when a blocking one waits for room).

        Linux appends a later write to the tail skb while that is unsent and smaller than
        its size goal (at most 64 KB): one PSH then, at the end of the skb. So a push point
        not yet sent (at or beyond `unsent_from`) moves to the new end, unless that would
        make its run from the previous push point (or the unsent edge) exceed `goal`."""
        end = self.end
        pushes = self._pushes
        if pushes and pushes[-1] >= end:
            return
        if pushes and pushes[-1] > unsent_from:
            base = pushes[-2] if len(pushes) > 1 and pushes[-2] > unsent_from else unsent_from
            if end - base <= goal:
                pushes[-1] = end
                return
        pushes.append(end)

    def push_in(self, first: int, end: int) -> bool:
        """Does a push point lie in the stream offsets (first, end]?"""
        pushes = self._pushes
        i = bisect.bisect_right(pushes, first)
        return i < len(pushes) and pushes[i] <= end

    def view(self, offset: int, size: int) -> Buffer:
        """`size` bytes from stream offset `offset`: a view when they lie in one chunk."""
        offsets = self._offsets
        i = bisect.bisect_right(offsets, offset) - 1
        chunk = self._chunks[i]
        a = offset - offsets[i]
        if a + size <= len(chunk):
            return memoryview(chunk)[a : a + size]
        pieces = []
        need = size
        while need > 0:
            chunk = self._chunks[i]
            take = min(len(chunk) - a, need)
            pieces.append(memoryview(chunk)[a : a + take])
            need -= take
            i += 1
            a = 0
        return b"".join(pieces)

    def consume(self, upto: int) -> None:
        """Forget everything before stream offset `upto` (it was acknowledged)."""
        if upto <= self.start:
            return
        upto = min(upto, self.end)
        self.start = upto
        pushes = self._pushes
        if pushes and pushes[0] <= upto:
            del pushes[: bisect.bisect_right(pushes, upto)]
        offsets, chunks = self._offsets, self._chunks
        drop = 0
        while drop < len(chunks) and offsets[drop] + len(chunks[drop]) <= upto:
            drop += 1
        if drop:
            del offsets[:drop]
            del chunks[:drop]

    def clear(self) -> None:
        self._chunks.clear()
        self._offsets.clear()
        self._pushes.clear()
        self.start = self.end


class ReceiveBuffer:
    """In-order bytes the application has not taken yet, plus out-of-order pieces.

    Positions are unwrapped sequence numbers. The out-of-order store holds non-overlapping
    (start, end, data) pieces sorted by start, at most `max_pieces` of them; it never holds
    more than the window allows, since the connection trims segments to the window first.
    The contiguous ranges they form (the SACK blocks) are kept merged as pieces come and go,
    so the blocks of an ACK cost O(log n), not a pass over every piece: with a large window
    after a loss, an ACK goes out for every other of hundreds of out-of-order segments.
    """

    __slots__ = (
        "_bstarts",
        "_ranges",
        "_recent",
        "_starts",
        "max_pieces",
        "ooo",
        "ooo_bytes",
        "queue",
        "queued",
    )

    def __init__(self, max_pieces: int) -> None:
        self.max_pieces = max_pieces
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.ooo: list[tuple[int, int, bytes]] = []
        self._starts: list[int] = []
        self.ooo_bytes = 0
        self._recent: list[int] = []  # starts of recently received pieces, newest first
        self._ranges: list[list[int]] = []  # [start, end] of each contiguous run of pieces
        self._bstarts: list[int] = []  # their starts (for bisect)

    # -- in order ----------------------------------------------------------------------------
    def push(self, data: bytes) -> None:
        self.queue.append(data)
        self.queued += len(data)

    def pop(self) -> bytes:
        data = self.queue.popleft()
        self.queued -= len(data)
        return data

    def unshift(self, data: bytes) -> None:
        """Put back the unread tail of a chunk (the application paused mid-way)."""
        self.queue.appendleft(data)
        self.queued += len(data)

    # -- out of order ------------------------------------------------------------------------
    def add_ooo(self, start: int, view: memoryview) -> tuple[int, bool]:
        """Store the parts of view (at `start`) not held yet.

        Returns (bytes newly stored, whether anything had to be refused for lack of room).
        When the store is full, pieces beyond the new one are pruned first (they are the
        furthest from being useful), as Linux's tcp_prune_ofo_queue does.
        """
        end = start + len(view)
        ooo, starts = self.ooo, self._starts
        i = bisect.bisect_right(starts, start)
        pos = start
        if i and ooo[i - 1][1] > pos:
            pos = ooo[i - 1][1]
        gaps: list[tuple[int, int]] = []
        j = i
        while pos < end:
            if j < len(ooo) and ooo[j][0] < end:
                if ooo[j][0] > pos:
                    gaps.append((pos, ooo[j][0]))
                pos = max(pos, ooo[j][1])
                j += 1
            else:
                gaps.append((pos, end))
                break
        stored = 0
        refused = False
        for gap_start, gap_end in gaps:
            if len(ooo) >= self.max_pieces:
                if starts[-1] > gap_start:
                    self._drop_last()
                else:
                    refused = True
                    break
            k = bisect.bisect_right(starts, gap_start)
            data = bytes(view[gap_start - start : gap_end - start])
            ooo.insert(k, (gap_start, gap_end, data))
            starts.insert(k, gap_start)
            self._add_range(gap_start, gap_end)
            stored += gap_end - gap_start
        self.ooo_bytes += stored
        if stored:
            self._touch(start)
        return stored, refused

    def _drop_last(self) -> None:
        s, e, _ = self.ooo.pop()
        self._starts.pop()
        self.ooo_bytes -= e - s
        last = self._ranges[-1]  # the highest piece ends the highest range
        if last[0] >= s:
            self._ranges.pop()
            self._bstarts.pop()
        else:
            last[1] = s

    def _add_range(self, start: int, end: int) -> None:
        """Merge [start, end) into the ranges (it may join its neighbours)."""
        ranges, bstarts = self._ranges, self._bstarts
        i = bisect.bisect_right(bstarts, start) - 1
        if i >= 0 and ranges[i][1] >= start:
            cur = ranges[i]
            if end > cur[1]:
                cur[1] = end
        else:
            i += 1
            cur = [start, end]
            ranges.insert(i, cur)
            bstarts.insert(i, start)
        j = i + 1
        while j < len(ranges) and ranges[j][0] <= cur[1]:
            if ranges[j][1] > cur[1]:
                cur[1] = ranges[j][1]
            j += 1
        if j > i + 1:
            del ranges[i + 1 : j]
            del bstarts[i + 1 : j]

    def _touch(self, seq: int) -> None:
        recent = self._recent
        if seq in recent:
            recent.remove(seq)
        recent.insert(0, seq)
        del recent[8:]

    def take_ooo(self, rcv_nxt: int) -> tuple[int, list[bytes]]:
        """Pieces that became in order at `rcv_nxt`: (new rcv_nxt, their data in order)."""
        ooo, starts = self.ooo, self._starts
        out: list[bytes] = []
        n = 0
        while n < len(ooo) and ooo[n][0] <= rcv_nxt:
            s, e, data = ooo[n]
            if e > rcv_nxt:
                out.append(data if s == rcv_nxt else data[rcv_nxt - s :])
                rcv_nxt = e
            n += 1
        if n:
            self.ooo_bytes -= sum(e - s for s, e, _ in ooo[:n])
            del ooo[:n]
            del starts[:n]
            ranges, bstarts = self._ranges, self._bstarts
            k = 0
            while k < len(ranges) and ranges[k][0] <= rcv_nxt:
                k += 1
            if k:
                del ranges[:k]
                del bstarts[:k]
        return rcv_nxt, out

    def blocks(self) -> list[tuple[int, int]]:
        """Contiguous ranges held out of order, in sequence order."""
        return [(s, e) for s, e in self._ranges]

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` SACK blocks, the most recently changed first (RFC 2018 section 4)."""
        if not self.ooo:
            return []
        ranges, bstarts = self._ranges, self._bstarts
        out: list[tuple[int, int]] = []
        for seq in self._recent:
            i = bisect.bisect_right(bstarts, seq) - 1
            if i >= 0 and seq < ranges[i][1]:
                block = (ranges[i][0], ranges[i][1])
                if block not in out:
                    out.append(block)
                    if len(out) >= limit:
                        return out
        for s, e in reversed(ranges):
            if len(out) >= limit:
                break
            if (s, e) not in out:
                out.append((s, e))
        return out

    def drop_ooo(self) -> None:
        """Forget everything held out of order."""
        self.ooo.clear()
        self._starts.clear()
        self._ranges.clear()
        self._bstarts.clear()
        self._recent.clear()
        self.ooo_bytes = 0

    def clear(self) -> None:
        self.queue.clear()
        self.queued = 0
        self.drop_ooo()
