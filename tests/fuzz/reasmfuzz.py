"""The `reassembly` fuzz target: the shared IPv4/IPv6 reassembler against what must hold.

Input: records of 7 bytes, each one fragment or a clock step:
  byte 0: bit 7 family (0 IPv4, 1 IPv6), bit 6 more fragments, bits 5-4 which of 4 datagrams,
          bits 3-0 header part in 8-byte units beyond the minimum (IPv4 options, IPv6
          extension headers before the Fragment header); 0x0F in bits 3-0 with bit 6 and 7
          set means "advance the clock by the next two bytes in ms and poll";
  bytes 1-2: offset in 8-byte units (13 bits); bytes 3-4: data length (up to 16 KiB);
  bytes 5-6: ignored padding, so that a mutation of one field does not shift the rest.
The data of every fragment of a datagram is a fixed pattern of (datagram, offset), so a
finished datagram must carry exactly the pattern over [0, its length).
Checked after every record: no exception; the byte and datagram bounds; the bookkeeping
(held bytes = the data held, sorted non-overlapping pieces); a finished datagram's length
fields, header and data; every fragment accounted for (filed, finished, or dropped).
"""

from __future__ import annotations

import struct

from netstack.counters import Counters
from netstack.proto.reassembly import FRAGMENT_OVERHEAD, Reassembler, Reassembly
from netstack.proto.reassembly6 import Reassembler6
from netstack.wire import ipv4 as wipv4
from netstack.wire.checksum import checksum
from netstack.wire.errors import Malformed

MAX_BYTES = 160 * 1024  # two whole 64 KiB datagrams fit, a third evicts
MAX_DATAGRAMS = 3
TIMEOUT = 5.0
SRC4, DST4 = 0xC0000201, 0xC0000202
SRC6, DST6 = bytes(15) + b"\x01", bytes(15) + b"\x02"
_RECORD = struct.Struct("!BHH2x")
_PERIOD = 251  # prime, so that a piece put at the wrong place shows
_PATTERN = bytes(range(_PERIOD)) * (0x10000 // _PERIOD + 2)


def pattern(which: int, start: int, size: int) -> bytes:
    """The data at [start, start + size) of datagram `which` (size <= 65535)."""
    i = (start + 37 * which) % _PERIOD
    return _PATTERN[i : i + size]


def fragment4(which: int, start: int, size: int, more: bool, options: int) -> bytes:
    """An IPv4 fragment with `options` words of NOP options (wipv4.build writes none)."""
    ihl = 5 + options
    flags = (0x2000 if more else 0) | (start // 8)
    head = bytearray(struct.pack("!BBHHHBBHII", 0x40 | ihl, 0, 4 * ihl + size, which, flags, 64,
                                 17, 0, SRC4, DST4) + b"\x01" * (4 * options))  # fmt: skip
    head[10:12] = checksum(head).to_bytes(2, "big")
    return bytes(head) + pattern(which, start, size)


def unfragmentable(ext: int) -> bytes:
    """An IPv6 header then `ext` empty destination-options headers (next header 60)."""
    head = bytearray(40)
    head[0] = 0x60
    head[6] = 60 if ext else 44
    for i in range(ext):
        head += bytes((60 if i + 1 < ext else 44, 0, 1, 4, 0, 0, 0, 0))  # PadN 4
    return bytes(head)


def check_state(r: Reassembly) -> None:
    assert r.charged_bytes <= r.max_bytes, (r.charged_bytes, r.max_bytes)
    assert len(r) <= r.max_datagrams
    held = 0
    pieces = 0
    for dg in r._datagrams.values():
        assert dg.starts == sorted(dg.starts)
        for i, (s, e, d) in enumerate(zip(dg.starts, dg.ends, dg.datas, strict=True)):
            assert e == s + len(d) and len(d) > 0
            assert i == 0 or dg.ends[i - 1] <= s
        assert dg.held == sum(map(len, dg.datas))
        assert dg.total is None or dg.ends[-1] <= dg.total
        held += dg.held
        pieces += len(dg.starts)
    assert r.held_bytes == held
    assert r.charged_bytes == held + FRAGMENT_OVERHEAD * pieces


def reassembly_target(data: bytes) -> None:
    c4, c6 = Counters(), Counters()
    r4 = Reassembler(c4, timeout=TIMEOUT, max_bytes=MAX_BYTES, max_datagrams=MAX_DATAGRAMS)
    r6 = Reassembler6(c6, timeout=TIMEOUT, max_bytes=MAX_BYTES, max_datagrams=MAX_DATAGRAMS)
    now = 0.0
    sent4 = sent6 = 0
    done4 = done6 = 0
    for at in range(0, len(data) - _RECORD.size + 1, _RECORD.size):
        flags, offset, size = _RECORD.unpack_from(data, at)
        if flags & 0xCF == 0xCF:
            now += offset / 1000.0
            for r in (r4, r6):
                for quote in r.poll(now):
                    assert quote  # fragment zero as it came
            continue
        six, more, which, head = flags >> 7, bool(flags & 0x40), (flags >> 4) & 3, flags & 0x0F
        start = (offset & 0x1FFF) * 8
        size = min(size, 16 * 1024)
        if six:
            unfrag = unfragmentable(head)
            sent6 += 1
            piece = memoryview(pattern(which, start, size))
            packet = memoryview(unfrag + bytes(8) + bytes(piece))
            whole = r6.add((SRC6, DST6, which), start, more, piece, memoryview(unfrag), 17,
                           packet, now)  # fmt: skip
            if whole is not None:
                done6 += 1
                packet, base = whole
                assert base >= 40 and packet[:4] == unfrag[:4]
                assert int.from_bytes(packet[4:6], "big") == len(packet) - 40 <= 0xFFFF
                assert packet[base:] == pattern(which, 0, len(packet) - base)
            check_state(r6)
        else:
            head = min(head, 10)  # IPv4 options: 40 bytes at most
            raw = fragment4(which, start, size, more, head)
            sent4 += 1
            try:
                header, payload = wipv4.parse(memoryview(raw))
            except Malformed:  # never reaches reassembly
                sent4 -= 1
                continue
            whole4 = r4.add(header, memoryview(raw), payload, now)
            if whole4 is not None:
                done4 += 1
                h, packet = whole4
                assert h.total_length == len(packet) <= 0xFFFF and not h.more_fragments
                assert checksum(packet[: h.header_len]) == 0
                assert bytes(packet[h.header_len :]) == pattern(
                    which, 0, len(packet) - h.header_len
                )
            check_state(r4)
    # every fragment: held, in a finished datagram, or counted as a drop (duplicates aside)
    for r, c, sent in ((r4, c4, sent4), (r6, c6, sent6)):
        held = sum(len(dg.starts) for dg in r._datagrams.values())
        assert held + c.total_drops() <= sent
