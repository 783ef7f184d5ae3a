"""RFC 1071 Internet checksum over one or more buffers, summed in C.

The per-byte work runs in `ns_csum_partial` (netstack._ffi); Python only strings the partial sums
of the pieces together, so a header and its payload are checksummed where they lie, unjoined.
"""

from __future__ import annotations

from netstack._ffi import ffi, lib

Buffer = bytes | bytearray | memoryview

_from_buffer = ffi.from_buffer
_partial = lib.ns_csum_partial
_fold = lib.ns_csum_fold


def checksum(*bufs: Buffer, initial: int = 0) -> int:
    """Checksum field value (ones-complement of the ones-complement sum) of bufs in sequence.

    `initial` is an unfolded sum below 2**32, e.g. from `pseudo_header_sum`. Every buffer but the
    last should have an even length (headers always do); an odd one is still handled correctly,
    at the price of a byte swap of the next buffer's sum (RFC 1071 2(B)).
    """
    total = initial
    odd = False
    for buf in bufs:
        ptr = _from_buffer(buf)
        size = len(ptr)
        if odd:
            # This buffer starts on the low byte of a 16-bit word: sum it alone, swap the bytes.
            part = 0xFFFF - _fold(_partial(ptr, size, 0))
            total += ((part << 8) | (part >> 8)) & 0xFFFF
            total = (total & 0xFFFFFFFF) + (total >> 32)
        else:
            total = _partial(ptr, size, total)
        odd ^= size & 1
    return _fold(total)


def pseudo_header_sum(src: int, dst: int, protocol: int, length: int) -> int:
    """Unfolded sum of the IPv4 pseudo-header (RFC 793/768), to pass as `initial`."""
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + protocol + length
