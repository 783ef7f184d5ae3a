"""What is in flight: one record per sent segment, with SACK and loss marks (RFC 6675, 2018).

The sender keeps a record for every segment it transmitted and has not seen cumulatively
acknowledged, in sequence order (the FIN is a one-octet record of its own). Each record knows
whether it was SACKed, whether it is deemed lost, whether its current retransmission is still
out, and when it was last sent (for RTT samples under Karn's rule when timestamps are off).

From the marks the scoreboard keeps three byte totals, so the RFC 6675 "pipe" is O(1):

    pipe = (SND.NXT - SND.UNA) - sacked - lost + retransmitted_and_still_out

which is what RFC 6675's SetPipe() computes octet by octet (and what Linux calls
packets_in_flight). Loss marks come from RACK (rack.py, RFC 8985: by time, per record, which
also finds lost retransmissions) when SACK is on, from RFC 6675 IsLost() (mark_lost: an
unSACKed record is lost once DupThresh SACKed records, or more than (DupThresh - 1) * SMSS
SACKed bytes, lie above it) where asked, from NewReno's first hole, or from the RTO (all).

`delivered` lists the records that the last ack()/sack() calls newly delivered (cumulatively
or selectively), for RACK; the connection clears it before each incoming ACK.

A TSO or software-GSO super-segment is one `Run` record (one object per 64 KiB send, not one
per MSS piece) for as long as nothing but cumulative ACKs touches it: the common ACK
(Recovery.ack_fast) handles a Run as the pieces it stands for. Every other view (iteration,
records(), first(), SACK, loss marks, RTO, the general ACK path) first cuts the Runs into
their per-piece records (`_explode`), exactly those add_pieces made before Runs existed, so
SACK, RACK, DupThresh, undo and retransmission still work in wire segments. Cutting happens
once per Run at most: on SACK or loss, and also on any ACK the general path takes (after our
FIN, in the closing states, while a TLP probe is out, a segment the slim path declines) and
on an iteration such as tcp_info()'s, where the Runs' saving is simply lost.
"""

from __future__ import annotations

import bisect
import operator

DUPTHRESH = 3


class Sent:
    """One transmitted segment still awaiting its cumulative ACK."""

    __slots__ = (
        "end",
        "fin",
        "lost",
        "order",
        "psh",
        "retransmitted",
        "rexmit",
        "sacked",
        "sent_at",
        "start",
    )

    def __init__(
        self,
        start: int,
        end: int,
        sent_at: float,
        fin: bool = False,
        order: int = 0,
        psh: bool = False,
    ) -> None:
        self.start = start  # unwrapped sequence numbers
        self.end = end
        self.sent_at = sent_at
        self.order = order  # transmission count when last sent: orders sends within one `now`
        self.fin = fin
        self.psh = psh  # sent with PSH: a retransmission keeps the flag (as Linux's skb does)
        self.sacked = False
        self.lost = False
        self.rexmit = False  # retransmitted since last marked lost, and not yet acked or SACKed
        self.retransmitted = False  # ever retransmitted (Karn: no RTT sample from it)

    def __repr__(self) -> str:
        marks = "".join(
            c for c, on in (("S", self.sacked), ("L", self.lost), ("R", self.rexmit)) if on
        )
        return f"Sent({self.start}-{self.end}{' FIN' if self.fin else ''} {marks})"


class Run(Sent):
    """Consecutive pieces of `seg` bytes from `base` (the last may be shorter), sent together
    as one super-segment: piece k has order `order + k`, the PSH flag (if any) sits on the
    last piece. Never SACKed, lost or retransmitted (those cut it into pieces first);
    `start` moves up when a cumulative ACK takes part of it."""

    __slots__ = ("base", "seg")

    def __init__(self, start: int, end: int, seg: int, sent_at: float, order: int, psh: bool):
        super().__init__(start, end, sent_at, False, order, psh)
        self.base = start
        self.seg = seg

    def first_order(self) -> int:
        """Order of the first piece still outstanding."""
        return self.order + (self.start - self.base) // self.seg

    def last_order(self) -> int:
        """Order of the last piece (the newest transmission in the Run)."""
        return self.order + (self.end - 1 - self.base) // self.seg

    def first_end(self) -> int:
        """End of the first piece still outstanding."""
        seg = self.seg
        end = self.base + ((self.start - self.base) // seg + 1) * seg
        return end if end < self.end else self.end

    def pieces(self) -> list[Sent]:
        """The per-piece records this Run stands for (from `start`)."""
        base, seg, end, sent_at = self.base, self.seg, self.end, self.sent_at
        k = (self.start - base) // seg
        order = self.order + k
        out = []
        lo = self.start
        hi = base + (k + 1) * seg
        while lo < end:
            if hi > end:
                hi = end
            out.append(Sent(lo, hi, sent_at, False, order))
            order += 1
            lo = hi
            hi += seg
        out[-1].psh = self.psh
        return out

    def __repr__(self) -> str:
        return f"Run({self.start}-{self.end}/{self.seg})"


Sent.seg = 0  # (a plain record: not a Run; Run's slot overrides it)

_start = operator.attrgetter("start")


class Scoreboard:
    """Records from SND.UNA to SND.NXT, and the byte totals the sender needs."""

    __slots__ = (
        "_head",
        "_lost_upto",
        "_records",
        "_rexmit_hint",
        "_runs_from",
        "_tx",
        "delivered",
        "high_sacked",
        "lost_bytes",
        "rexmit_bytes",
        "sacked_bytes",
    )

    def __init__(self) -> None:
        self._records: list[Sent] = []
        self._head = 0  # index of the first live record (the list is compacted lazily)
        self.sacked_bytes = 0
        self.lost_bytes = 0  # lost and not SACKed (retransmitted or not)
        self.rexmit_bytes = 0  # lost, retransmitted, the retransmission still out
        self.high_sacked = 0  # end of the highest SACKed record (0 when none)
        self._lost_upto = 0  # records below this sequence number were checked by mark_lost
        self._rexmit_hint = 0  # no record below this one waits for a retransmission
        self.delivered: list[Sent] = []  # newly delivered by the current ACK (for RACK)
        self._tx = 0  # transmissions so far (Sent.order)
        self._runs_from: int | None = None  # no Run starts below this sequence number

    def _explode(self) -> None:
        """Cut every Run into its per-piece records (see the module docstring)."""
        lo = self._runs_from
        if lo is None:
            return
        self._runs_from = None
        records = self._records
        n = len(records)
        i = bisect.bisect_left(records, lo, self._head, n, key=_start)
        out: list[Sent] = []
        for r in records[i:]:
            if r.seg:
                out.extend(r.pieces())  # type: ignore[attr-defined]
            else:
                out.append(r)
        records[i:] = out

    # -- views -------------------------------------------------------------------------------
    def __len__(self) -> int:
        self._explode()
        return len(self._records) - self._head

    def __iter__(self):
        self._explode()
        return iter(self._records[self._head :])

    def records(self) -> tuple[list[Sent], int]:
        """(the record list, index of the first live one): a loop without a copy."""
        self._explode()
        return self._records, self._head

    def first(self) -> Sent | None:
        self._explode()
        return self._records[self._head] if self._head < len(self._records) else None

    def first_retransmitted(self) -> Sent | None:
        """The oldest record whose retransmission is still out (a recovery probe resends it)."""
        if not self.rexmit_bytes:
            return None
        records = self._records
        for i in range(self._head, len(records)):
            r = records[i]
            if r.lost and r.rexmit and not r.sacked:
                return r
        return None

    def last_unsacked(self) -> Sent | None:
        """The highest record not SACKed (a tail loss probe retransmits it)."""
        self._explode()
        records = self._records
        for i in range(len(records) - 1, self._head - 1, -1):
            if not records[i].sacked:
                return records[i]
        return None

    def pipe(self, flight: int) -> int:
        """RFC 6675 pipe, given flight = SND.NXT - SND.UNA."""
        return flight - self.sacked_bytes - self.lost_bytes + self.rexmit_bytes

    # -- sending -----------------------------------------------------------------------------
    def add(self, start: int, end: int, now: float, fin: bool = False, psh: bool = False) -> Sent:
        self._tx += 1
        record = Sent(start, end, now, fin, self._tx, psh)
        self._records.append(record)
        return record

    def add_pieces(self, start: int, end: int, size: int, now: float, psh: bool = False) -> None:
        """A TSO super-segment as the wire will carry it, `size` bytes a piece: one Run record
        standing for the pieces add() would have made one by one (PSH on the last piece)."""
        if end - start <= size:
            self.add(start, end, now, psh=psh)
            return
        order = self._tx + 1
        self._tx += (end - start + size - 1) // size
        self._records.append(Run(start, end, size, now, order, psh))
        if self._runs_from is None:
            self._runs_from = start

    def split(self, r: Sent, at: int) -> Sent:
        """Cut a live record at sequence `at` (start < at < end), as Linux's tcp_fragment: `r`
        keeps [start, at), a new record [at, end) with the same marks, send time and order
        follows it; PSH and FIN stay with the tail. Byte totals do not change. Used to resend
        part of a multi-MSS (offloaded) segment when cwnd allows less than all of it."""
        tail = Sent(at, r.end, r.sent_at, r.fin, r.order, r.psh)
        tail.sacked, tail.lost, tail.rexmit = r.sacked, r.lost, r.rexmit
        tail.retransmitted = r.retransmitted
        r.end = at
        r.fin = r.psh = False
        records = self._records
        i = bisect.bisect_left(records, r.start, self._head, len(records), key=_start)
        records.insert(i + 1, tail)
        return tail

    def retransmitted(self, record: Sent, now: float) -> None:
        """`record` went out again."""
        if record.lost and not record.rexmit and not record.sacked:
            self.rexmit_bytes += record.end - record.start
        record.rexmit = True
        record.retransmitted = True
        record.sent_at = now
        self._tx += 1
        record.order = self._tx

    def next_lost(self) -> Sent | None:
        """RFC 6675 NextSeg() rule 1: the first lost record not yet retransmitted."""
        if self.lost_bytes <= self.rexmit_bytes:
            return None
        records = self._records
        i = bisect.bisect_left(records, self._rexmit_hint, self._head, len(records), key=_start)
        upto = self._lost_upto
        while i < len(records):
            r = records[i]
            if r.start >= upto:
                break
            if r.lost and not r.rexmit and not r.sacked:
                self._rexmit_hint = r.start
                return r
            i += 1
        self._rexmit_hint = upto
        return None

    # -- acknowledgements --------------------------------------------------------------------
    def _forget(self, r: Sent, length: int) -> None:
        if r.sacked:
            self.sacked_bytes -= length
        elif r.lost:
            self.lost_bytes -= length
            if r.rexmit:
                self.rexmit_bytes -= length

    def ack(self, ack: int) -> tuple[float | None, bool]:
        """Drop what `ack` covers; returns (send time for an RTT sample, any retransmitted).

        The sample is the newest fully acknowledged record's send time, and is None when
        any acknowledged record had been retransmitted (Karn's algorithm, as Linux applies it).
        """
        self._explode()  # (`delivered` lists pieces, for RACK)
        records = self._records
        i, n = self._head, len(records)
        newest: float | None = None
        any_retransmitted = False
        while i < n:
            r = records[i]
            if r.end <= ack:
                self._forget(r, r.end - r.start)
                if not r.sacked:
                    self.delivered.append(r)
                if r.retransmitted:
                    any_retransmitted = True
                else:
                    newest = r.sent_at
                i += 1
                continue
            if r.start < ack:  # partially acknowledged (the peer took part of a segment)
                self._forget(r, ack - r.start)
                r.start = ack
                any_retransmitted = any_retransmitted or r.retransmitted
            break
        self._head = i
        if i > 64 and i * 2 > n:
            del records[:i]
            self._head = 0
        if self.high_sacked and self.high_sacked <= ack:
            self.high_sacked = 0
        return (None if any_retransmitted else newest), any_retransmitted

    def sack(self, blocks: list[tuple[int, int]]) -> int:
        """Mark records fully inside the (validated, unwrapped) blocks; returns new bytes."""
        self._explode()
        records = self._records
        n = len(records)
        new = 0
        for left, right in blocks:
            i = bisect.bisect_left(records, left, self._head, n, key=_start)
            while i < n:
                r = records[i]
                if r.end > right:
                    break
                if not r.sacked:
                    length = r.end - r.start
                    self.delivered.append(r)
                    r.sacked = True
                    new += length
                    self.sacked_bytes += length
                    if r.lost:
                        self.lost_bytes -= length
                        if r.rexmit:
                            self.rexmit_bytes -= length
                        r.lost = False
                    r.rexmit = False
                    if r.end > self.high_sacked:
                        self.high_sacked = r.end
                i += 1
        return new

    # -- loss --------------------------------------------------------------------------------
    def mark_lost(self, mss: int, dupthresh: int = DUPTHRESH) -> int:
        """RFC 6675 IsLost() over the records below the SACKed ones; returns new lost bytes."""
        if not self.sacked_bytes:
            return 0
        self._explode()
        records = self._records
        head = self._head
        top = bisect.bisect_left(records, self.high_sacked, head, len(records), key=_start) - 1
        count = sacked = 0
        limit = (dupthresh - 1) * mss
        i = top
        while i >= head:
            r = records[i]
            if r.sacked:
                count += 1
                sacked += r.end - r.start
                if count >= dupthresh or sacked > limit:
                    break
            i -= 1
        if i < head:
            return 0
        boundary = records[i].start  # unSACKed records ending at or below this are lost
        if boundary <= self._lost_upto:
            return 0
        new = 0
        j = bisect.bisect_left(records, self._lost_upto, head, i, key=_start)
        for k in range(j, i):
            r = records[k]
            if not r.sacked and not r.lost:
                r.lost = True
                new += r.end - r.start
        self.lost_bytes += new
        self._lost_upto = boundary
        return new

    def mark_record_lost(self, r: Sent) -> int:
        """RACK: `r` is lost (again, if its retransmission was): due for retransmission."""
        length = r.end - r.start
        if r.lost:
            if r.rexmit:  # a lost retransmission
                self.rexmit_bytes -= length
        else:
            r.lost = True
            self.lost_bytes += length
        r.rexmit = False
        if r.start < self._rexmit_hint:
            self._rexmit_hint = r.start
        if r.end > self._lost_upto:
            self._lost_upto = r.end
        return length

    def unmark_lost(self) -> None:
        """Undo (the losses were spurious): records marked lost and not yet retransmitted are
        in flight after all; retransmissions already out stay counted as such."""
        for r in self:
            if r.lost and not r.rexmit:
                r.lost = False
                self.lost_bytes -= r.end - r.start

    def mark_first_lost(self) -> bool:
        """NewReno (RFC 6582): the first unacknowledged record is deemed lost."""
        r = self.first()
        if r is None or r.lost or r.sacked:
            return False
        r.lost = True
        r.rexmit = False
        self.lost_bytes += r.end - r.start
        self._lost_upto = max(self._lost_upto, r.end)
        self._rexmit_hint = min(self._rexmit_hint, r.start)
        return True

    def mark_all_lost(self, forget_sacks: bool) -> None:
        """After an RTO: everything outstanding (unSACKed) is lost, no retransmission is out.

        `forget_sacks` drops the SACK marks too (RFC 2018 section 8: the receiver may have
        reneged); the connection does that when the timer fires a second time in a row.
        """
        self.sacked_bytes = self.lost_bytes = self.rexmit_bytes = 0
        self.high_sacked = 0
        end = 0
        for r in self:
            r.rexmit = False
            if forget_sacks:
                r.sacked = False
            if r.sacked:
                self.sacked_bytes += r.end - r.start
                self.high_sacked = r.end
                r.lost = False
            else:
                r.lost = True
                self.lost_bytes += r.end - r.start
            end = r.end
        self._lost_upto = end
        self._rexmit_hint = 0

    def clear(self) -> None:
        self._runs_from = None
        self._records.clear()
        self.delivered.clear()
        self._head = 0
        self.sacked_bytes = self.lost_bytes = self.rexmit_bytes = 0
        self.high_sacked = 0
        self._lost_upto = 0
        self._rexmit_hint = 0
