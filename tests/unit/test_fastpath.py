"""The host's receive fast path (one unpack for Ethernet + IPv4, straight to UDP/TCP) must be
indistinguishable from the general path: same counters, same drop reasons, same frames out."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.proto.tcp import isn as isnmod
from tests.unit.hosttools import OUR_IP, ip_frame, udp_frame
from tests.unit.test_fuzz_receive import VALID_FRAMES, _host, tcp_frame


def _twin(general_only: bool):
    host = _host()
    host.tcp.secrets = isnmod.Secrets(b"\x07" * 32)  # same ISNs and TS offsets in both twins
    if general_only:
        host.receive = host._receive_general  # type: ignore[method-assign]
    return host


def _state(host) -> tuple[dict, list[bytes]]:
    c = host.counters
    fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    out = [b"".join(bytes(p) for p in frame) for frame in host.tx]
    host.tx.clear()
    return {k: v for k, v in fields.items() if isinstance(v, int | dict)}, out


def _same(frames: list[bytes]) -> None:
    fast, general = _twin(False), _twin(True)
    for i, frame in enumerate(frames):
        for host in (fast, general):
            host.receive_batch([memoryview(frame)], 1.0 + i)
        assert _state(fast) == _state(general), frame.hex()


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID_FRAMES),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), max_size=4),
    st.integers(14, 1600),
)
def test_mutated_frames_same_on_both_paths(frame: bytes, flips: list, cut: int) -> None:
    """Flips land in the headers (Ethernet, IPv4, UDP/TCP), where the fast path decides."""
    mutated = bytearray(frame)
    for position, value in flips:
        if position < len(mutated):
            mutated[position] = value
    _same([bytes(mutated[:cut])])


@pytest.mark.parametrize(
    "frame",
    [
        udp_frame(b"x" * 64, 4000, 7),  # echoed
        udp_frame(b"x" * 64, 4000, 999),  # port unreachable
        udp_frame(b"x", 4000, 7, src=0x7F000001),  # martian source
        udp_frame(b"x", 4000, 7, src=OUR_IP),  # our own address as source
        udp_frame(b"x", 4000, 7, src=0x00000001),  # 0.0.0.1
        udp_frame(b"x", 4000, 7, src=0xC00002FF),  # the subnet broadcast
        udp_frame(b"x", 4000, 7, dst=0xC00002FF),  # to the subnet broadcast: general path
        ip_frame(b"\x00" * 12, 99),  # unknown protocol
        tcp_frame(0x02, 4000, 7),  # SYN to a listener
        tcp_frame(0x02, 4000, 4444),  # SYN to a closed port: RST
        udp_frame(b"x" * 64, 4000, 7) + b"\x00" * 10,  # Ethernet padding trimmed
    ],
    ids=lambda frame: frame[34:48].hex(),
)
def test_edge_frames_same_on_both_paths(frame: bytes) -> None:
    _same([frame])


def test_bad_header_checksum_dropped_by_general_path() -> None:
    frame = bytearray(udp_frame(b"x" * 8, 4000, 7))
    frame[24] ^= 0xFF  # IPv4 header checksum
    _same([bytes(frame)])
    host = _twin(False)
    host.receive_batch([memoryview(bytes(frame))], 1.0)
    assert host.counters.drops and not host.tx


def test_common_frames_take_the_fast_path(monkeypatch) -> None:
    host = _twin(False)

    def general(frame, now):
        raise AssertionError(f"general path taken for {bytes(frame).hex()}")

    monkeypatch.setattr(host, "_receive_general", general)
    host.receive_batch([memoryview(udp_frame(b"x" * 64, 4000, 7))], 1.0)
    host.receive_batch([memoryview(tcp_frame(0x02, 4000, 7))], 1.0)
    assert host.counters.udp_rx == 1 and host.counters.tcp_segments_rx == 1
    assert host.counters.ipv4_rx == 2 and not host.counters.drops
