"""The C-backed checksum against the pure-Python reference."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from netstack import _ffi
from netstack.wire import checksum as checksum_mod
from netstack.wire.checksum import checksum, pseudo_header_sum
from tests.wire.reference import _checksum_py, pseudo_header, u32

as_types = st.sampled_from([bytes, bytearray, memoryview])


def test_backed_by_the_c_helper() -> None:
    assert checksum_mod._partial is _ffi.lib.ns_csum_partial
    assert checksum_mod._fold is _ffi.lib.ns_csum_fold


def test_rfc1071_example() -> None:
    # RFC 1071 section 3: the words sum to 0xddf2 (after end-around carry).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert checksum(data) == 0xFFFF - 0xDDF2
    assert _checksum_py(data) == 0xFFFF - 0xDDF2


def test_empty_and_zero_length_pieces() -> None:
    assert checksum() == 0xFFFF
    assert checksum(b"") == 0xFFFF
    assert checksum(b"", bytearray(), memoryview(b"")) == 0xFFFF
    assert checksum(b"", b"\x12\x34", b"") == 0xFFFF - 0x1234


def test_odd_tail_is_high_byte() -> None:
    assert checksum(b"\x01") == 0xFFFF - 0x0100
    assert checksum(b"\x00\x00\x01") == 0xFFFF - 0x0100


def test_carries_over_large_buffers() -> None:
    for size in (65535, 65536, 200_001):
        data = b"\xff" * size
        assert checksum(data) == _checksum_py(data)
    data = bytes(range(256)) * 300
    assert checksum(data, initial=0xFFFFFFFF) == _checksum_py(data, initial=0xFFFFFFFF)


def test_valid_packet_sums_to_zero() -> None:
    header = bytearray(bytes.fromhex("450000730000400040110000c0a80001c0a800c7"))
    value = checksum(header)
    assert value == 0xB861  # the well-known Wikipedia example header
    header[10:12] = value.to_bytes(2, "big")
    assert checksum(header) == 0


@given(st.binary(max_size=2000), st.integers(0, 0xFFFFFFFF), st.integers(0, 7), as_types)
def test_matches_reference(data: bytes, initial: int, skew: int, kind: type) -> None:
    # `skew` shifts the data to odd addresses so the C code's unaligned loads get exercised.
    view = memoryview(bytes(skew) + data)[skew:]
    assert checksum(view, initial=initial) == _checksum_py(data, initial=initial)
    assert checksum(kind(data), initial=initial) == _checksum_py(data, initial=initial)


@given(st.binary(max_size=1000), st.lists(st.integers(0, 1000), max_size=5), as_types, u32)
def test_split_buffers_equal_concatenation(
    data: bytes, cuts: list[int], kind: type, initial: int
) -> None:
    """Any split (even or odd pieces) sums like the joined buffer."""
    points = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    pieces = [kind(data[a:b]) for a, b in itertools.pairwise(points)]
    assert checksum(*pieces, initial=initial) == _checksum_py(data, initial=initial)


@given(st.binary(max_size=200).map(lambda b: b + b"\0" * (len(b) % 2)), st.binary(max_size=600))
def test_two_buffer_rule(header: bytes, payload: bytes) -> None:
    assert checksum(header, payload) == checksum(header + payload) == _checksum_py(header + payload)


@given(u32, u32, st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=300))
def test_pseudo_header_sum(src: int, dst: int, proto: int, length: int, data: bytes) -> None:
    expected = _checksum_py(pseudo_header(src, dst, proto, length), data)
    assert checksum(data, initial=pseudo_header_sum(src, dst, proto, length)) == expected
    assert pseudo_header_sum(src, dst, proto, length) < 1 << 20
