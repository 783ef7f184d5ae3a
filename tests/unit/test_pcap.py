"""PcapWriter: records read back byte for byte, snaplen, rotation; scapy/tshark agree."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from netstack.pcap import GLOBAL_HEADER, LINKTYPE_ETHERNET, RECORD_HEADER, PcapWriter, read_pcap

ETH = bytes.fromhex("02aabbccdd0102aabbccdd020800")


def frame(n: int, size: int = 60) -> bytes:
    return ETH + bytes([n % 256]) * (size - len(ETH))


def test_header_and_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cap.pcap"
    with PcapWriter(path, time_offset=0.0) as pcap:
        pcap.write(memoryview(frame(1)), 1700000000.25)
        pcap.write((ETH, b"\x45" * 10, memoryview(b"tail")), 1700000001.5)
    data = path.read_bytes()
    magic, major, minor, zone, sigfigs, snaplen, linktype = GLOBAL_HEADER.unpack_from(data)
    assert (magic, major, minor, zone, sigfigs) == (0xA1B2C3D4, 2, 4, 0, 0)
    # 256 KiB, not 65535: a super-frame (offload = auto) is recorded whole
    assert (snaplen, linktype) == (262144, LINKTYPE_ETHERNET)
    assert data[:4] == b"\xd4\xc3\xb2\xa1"  # little-endian magic
    linktype, records = read_pcap(path)
    assert [(r[0], r[1], r[2]) for r in records] == [
        (1700000000.25, 60, frame(1)),
        (1700000001.5, 28, ETH + b"\x45" * 10 + b"tail"),
    ]
    sec, usec, _, _ = RECORD_HEADER.unpack_from(data, GLOBAL_HEADER.size)
    assert (sec, usec) == (1700000000, 250000)


def test_default_offset_turns_monotonic_into_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "mono.pcap"
    with PcapWriter(path) as pcap:
        pcap.write(frame(0), time.monotonic())
    _, records = read_pcap(path)
    assert abs(records[0][0] - time.time()) < 5


def test_snaplen_truncates_but_keeps_orig_len(tmp_path: Path) -> None:
    path = tmp_path / "snap.pcap"
    with PcapWriter(path, snaplen=20, time_offset=0.0) as pcap:
        pcap.write((ETH, b"x" * 100), 1.0)
        pcap.write(memoryview(frame(2, 15)), 2.0)
    _, records = read_pcap(path)
    assert records[0][1:] == (114, ETH + b"xxxxxx")
    assert records[1][1:] == (15, frame(2, 15))


def test_buffered_until_flush(tmp_path: Path) -> None:
    path = tmp_path / "buf.pcap"
    pcap = PcapWriter(path, time_offset=0.0)
    pcap.write(frame(1), 10.0)  # first write flushes (time-based)
    pcap.write(frame(2), 10.1)
    assert len(read_pcap(path)[1]) == 1
    pcap.flush()
    assert len(read_pcap(path)[1]) == 2
    pcap.close()
    pcap.close()
    pcap.write(frame(3), 11.0)  # after close: ignored
    assert len(read_pcap(path)[1]) == 2


def test_rotation_keeps_each_file_valid_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "rot.pcap"
    record = RECORD_HEADER.size + 60
    max_bytes = GLOBAL_HEADER.size + 3 * record  # exactly three frames per file
    with PcapWriter(path, max_bytes=max_bytes, max_files=3, time_offset=0.0) as pcap:
        for i in range(20):
            pcap.write(frame(i), float(i))
        assert pcap.files_rotated == 6
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["rot.pcap", "rot.pcap.1", "rot.pcap.2"]
    # newest in rot.pcap: frames 18, 19; then 15-17; then 12-14; older ones are gone
    expected = {"rot.pcap": [18, 19], "rot.pcap.1": [15, 16, 17], "rot.pcap.2": [12, 13, 14]}
    for name, numbers in expected.items():
        assert (tmp_path / name).stat().st_size <= max_bytes
        _, records = read_pcap(tmp_path / name)
        assert [r[2] for r in records] == [frame(n) for n in numbers]


def test_one_file_only_restarts_it(tmp_path: Path) -> None:
    path = tmp_path / "one.pcap"
    with PcapWriter(path, max_bytes=200, max_files=1, time_offset=0.0) as pcap:
        for i in range(10):
            pcap.write(frame(i), float(i))
    assert [p.name for p in tmp_path.iterdir()] == ["one.pcap"]
    assert path.stat().st_size <= 200
    assert read_pcap(path)[1][-1][2] == frame(9)


def test_frame_larger_than_max_bytes_still_written(tmp_path: Path) -> None:
    path = tmp_path / "big.pcap"
    with PcapWriter(path, max_bytes=50, max_files=2, time_offset=0.0) as pcap:
        pcap.write(frame(1, 200), 1.0)
        pcap.write(frame(2, 200), 2.0)
    assert read_pcap(path)[1][0][2] == frame(2, 200)
    assert read_pcap(str(path) + ".1")[1][0][2] == frame(1, 200)


def test_existing_capture_is_rotated_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "old.pcap"
    with PcapWriter(path, time_offset=0.0) as pcap:
        pcap.write(frame(1), 1.0)
    with PcapWriter(path, time_offset=0.0) as pcap:
        pcap.write(frame(2), 2.0)
    assert read_pcap(path)[1][0][2] == frame(2)
    assert read_pcap(str(path) + ".1")[1][0][2] == frame(1)


def test_unlimited_size(tmp_path: Path) -> None:
    path = tmp_path / "nolimit.pcap"
    with PcapWriter(path, max_bytes=None, time_offset=0.0) as pcap:
        for i in range(2000):
            pcap.write(frame(i, 1000), float(i))
    assert len(read_pcap(path)[1]) == 2000


def test_write_error_disables_capture_instead_of_raising(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    pcap = PcapWriter(tmp_path / "x.pcap", time_offset=0.0)
    os.dup2(os.open("/dev/full", os.O_WRONLY), pcap._fd)  # every write now fails ENOSPC
    pcap.write(frame(1), 1.0)
    pcap.flush()
    assert pcap.failed
    pcap.write(frame(2), 2.0)
    pcap.close()


def test_scapy_reads_it(tmp_path: Path) -> None:
    scapy_utils = pytest.importorskip("scapy.utils")
    from scapy.layers.l2 import Ether

    path = tmp_path / "scapy.pcap"
    udp = bytes.fromhex("450000200001000040117cceac100001ac1000021f900035000c0000abcd")
    with PcapWriter(path, time_offset=0.0) as pcap:
        pcap.write((ETH, udp), 1700000000.5)
    packets = scapy_utils.rdpcap(str(path))
    assert len(packets) == 1
    assert isinstance(packets[0], Ether)
    assert bytes(packets[0]) == ETH + udp
    assert float(packets[0].time) == pytest.approx(1700000000.5)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "ts.pcap"
    with PcapWriter(path, max_bytes=400, max_files=2, time_offset=0.0) as pcap:
        for i in range(10):
            pcap.write(frame(i), 1700000000.0 + i)
    for name in (path, Path(str(path) + ".1")):
        out = subprocess.run(
            ["tshark", "-r", str(name), "-T", "fields", "-e", "eth.src"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        lines = out.stdout.split()
        assert lines and set(lines) == {"02:aa:bb:cc:dd:02"}


def test_record_header_layout() -> None:
    assert RECORD_HEADER.size == 16
    assert GLOBAL_HEADER.size == 24
    assert struct.calcsize("<IIII") == 16
