"""ns_csum_partial / ns_csum_fold against a plain RFC 1071 reference."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netstack._ffi import ffi, lib


def reference_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071: add big-endian 16-bit words (odd tail padded with a zero low byte), fold."""
    if len(data) % 2:
        data += b"\0"
    total = initial + sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def reference_checksum(data: bytes, initial: int = 0) -> int:
    return ~reference_sum(data, initial) & 0xFFFF


def c_checksum(data: bytes, initial: int = 0) -> int:
    return lib.ns_csum_fold(lib.ns_csum_partial(data, len(data), initial))


def test_rfc1071_example() -> None:
    # RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert lib.ns_csum_fold(lib.ns_csum_partial(data, len(data), 0)) == ~0xDDF2 & 0xFFFF


def test_ipv4_header_checksum() -> None:
    # A real IPv4 header with its checksum field (b861) filled: the sum over it checks to 0.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert c_checksum(header) == 0xB861
    filled = header[:10] + (0xB861).to_bytes(2, "big") + header[12:]
    assert c_checksum(filled) == 0


@pytest.mark.parametrize("length", range(0, 70))
def test_every_small_length(length: int) -> None:
    rng = random.Random(length)
    data = rng.randbytes(length)
    assert c_checksum(data) == reference_checksum(data)


def test_odd_tail_is_high_byte() -> None:
    assert lib.ns_csum_partial(b"\x12", 1, 0) == 0x1200
    assert lib.ns_csum_partial(b"\x00\x01\x12", 3, 0) == 0x1201


def test_all_ones_and_zero() -> None:
    assert c_checksum(b"") == 0xFFFF
    assert c_checksum(b"\0" * 64) == 0xFFFF
    assert c_checksum(b"\xff" * 64) == 0x0000
    assert c_checksum(b"\xff" * 65537) == reference_checksum(b"\xff" * 65537)


def test_chaining_partial_sums_over_even_pieces() -> None:
    rng = random.Random(1)
    data = rng.randbytes(1500)
    partial = 0
    for start in range(0, 1500, 100):
        piece = data[start : start + 100]
        partial = lib.ns_csum_partial(piece, len(piece), partial)
    assert lib.ns_csum_fold(partial) == reference_checksum(data)


def test_large_initial_does_not_overflow() -> None:
    data = b"\xff\xff" * 10
    initial = 0xFFFFFFFF
    assert c_checksum(data, initial) == reference_checksum(data, initial)


@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_matches_reference(data: bytes, initial: int) -> None:
    assert c_checksum(data, initial) == reference_checksum(data, initial)


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_split_at_even_offset(head: bytes, tail: bytes) -> None:
    if len(head) % 2:
        head = head[:-1]
    partial = lib.ns_csum_partial(head, len(head), 0)
    assert lib.ns_csum_fold(lib.ns_csum_partial(tail, len(tail), partial)) == reference_checksum(
        head + tail
    )


def test_works_on_memoryview_slices_at_odd_addresses() -> None:
    buf = bytearray(random.Random(2).randbytes(1001))
    for start in (0, 1, 3):
        view = memoryview(buf)[start:]
        ptr = ffi.from_buffer(view)
        assert lib.ns_csum_fold(lib.ns_csum_partial(ptr, len(view), 0)) == reference_checksum(
            bytes(view)
        )
