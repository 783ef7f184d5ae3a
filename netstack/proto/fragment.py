"""Source fragmentation for IPv4 and IPv6 (RFC 791 §3.2, RFC 8200 §4.5): one splitter.

Cuts a datagram's payload, given as the caller's buffers, into pieces of at most `room` bytes
rounded down to a multiple of 8 (fragment offsets count 8-byte units), as slices of those
buffers: nothing is joined or copied. Each piece goes out behind the headers the family's
builder returns for its (offset, size, more) — an IPv4 header, or an IPv6 header plus a
Fragment header — so the two families share the cutting and differ only in their headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

Buffer = bytes | bytearray | memoryview
# (offset in bytes, data size, more fragments follow) -> the headers to put before the data
HeaderBuilder = Callable[[int, int, bool], tuple[Buffer, ...]]


def byte_view(buf: Buffer) -> memoryview:
    """A flat byte view of `buf` (a memoryview of another format is recast, not copied)."""
    view = memoryview(buf)
    return view if view.format == "B" else view.cast("B")


def fragments(
    payload: tuple[Buffer, ...], length: int, room: int, header: HeaderBuilder
) -> Iterator[tuple[Buffer, ...]]:
    """Yield each fragment as (headers..., data slices...); `length` is the payload's total
    size and `room` the most data one fragment may carry (at least 8)."""
    step = room & ~7
    if step < 8:
        raise ValueError(f"no room for a fragment: {room} bytes")
    pieces = [v for v in map(byte_view, payload) if len(v)]
    index = pos = offset = 0
    while offset < length:
        size = min(step, length - offset)
        slices: list[memoryview] = []
        need = size
        while need:
            view = pieces[index]
            take = min(len(view) - pos, need)
            slices.append(view[pos : pos + take])
            pos += take
            need -= take
            if pos == len(view):
                index += 1
                pos = 0
        more = offset + size < length
        yield (*header(offset, size, more), *slices)
        offset += size
