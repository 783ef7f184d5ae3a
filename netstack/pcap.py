"""Classic pcap capture of the frames the stack sees, with size-based rotation.

Files are libpcap format (magic a1b2c3d4, microseconds, LINKTYPE_ETHERNET) so tcpdump, tshark
and scapy read them. Each rotated file starts with its own global header and is valid alone:
`path` is the newest, `path.1` the one before, ... `path.{max_files-1}` the oldest.

Super-frames (offload = "auto": TCP segments of up to 64 KiB in one frame, wire/vnet.py) are
recorded whole, as the kernel handed them over or as we hand them to it, hence a snaplen of
256 KiB (tcpdump's default) rather than 65535. A frame that carries a VnetMark asking for a
partial checksum to be completed (NEEDS_CSUM) is recorded with that checksum filled in, as the
kernel will fill it (or as it vouched for it): tshark's checksum validation then passes on
every record, and a bad checksum in the capture still means a bad frame.

Writes go to an in-memory buffer flushed every 64 KiB or second, so capture costs a copy per
frame and almost no syscalls. A write error (disk full) disables the writer instead of raising
into the packet loop.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from pathlib import Path

from netstack.wire.vnet import F_NEEDS_CSUM, VnetMark, fill_checksum

log = logging.getLogger("netstack.pcap")

MAGIC = 0xA1B2C3D4
VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
GLOBAL_HEADER = struct.Struct("<IHHiIII")
RECORD_HEADER = struct.Struct("<IIII")
SNAPLEN = 262144
FLUSH_BYTES = 64 * 1024
FLUSH_SECONDS = 1.0

Buffer = bytes | bytearray | memoryview


class PcapWriter:
    """Append frames to a pcap file; rotate when it would pass max_bytes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        snaplen: int = SNAPLEN,
        max_bytes: int | None = 64 * 1024 * 1024,
        max_files: int = 5,
        time_offset: float | None = None,
    ) -> None:
        """`time_offset` is added to every timestamp to make it wall-clock time.

        The default assumes timestamps from the loop's clock (time.monotonic); pass 0.0 when
        they already are seconds since the epoch.
        """
        if snaplen < 1:
            raise ValueError("snaplen must be positive")
        if max_files < 1:
            raise ValueError("max_files must be at least 1")
        self.path = Path(path)
        self.snaplen = snaplen
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.time_offset = time.time() - time.monotonic() if time_offset is None else time_offset
        self.header = GLOBAL_HEADER.pack(MAGIC, *VERSION, 0, 0, snaplen, LINKTYPE_ETHERNET)
        self.frames_written = 0
        self.files_rotated = 0
        self.failed = False
        self._buffer = bytearray()
        self._file_bytes = 0  # bytes in the current file, buffered ones included
        self._last_flush = 0.0
        self._fd = -1
        if self.path.exists() and self.path.stat().st_size > 0:
            self._shift_files()  # keep an earlier capture instead of overwriting it
        self._open()

    def write(self, frame: Buffer | tuple[Buffer, ...], timestamp: float) -> None:
        """Record one frame (a buffer or a tuple of pieces) seen at `timestamp`."""
        if self._fd < 0:
            return
        pieces = frame if isinstance(frame, tuple) else (frame,)
        orig_len = 0
        for piece in pieces:
            orig_len += len(piece)
        incl_len = min(orig_len, self.snaplen)
        record = RECORD_HEADER.size + incl_len
        if (
            self.max_bytes is not None
            and self._file_bytes + record > self.max_bytes
            and self._file_bytes > len(self.header)
        ):
            self._rotate()
            if self._fd < 0:
                return
        wall = timestamp + self.time_offset
        seconds = int(wall)
        micros = int((wall - seconds) * 1_000_000)
        buf = self._buffer
        buf += RECORD_HEADER.pack(seconds & 0xFFFFFFFF, micros, incl_len, orig_len)
        if incl_len == orig_len:
            start = len(buf)
            mark = None
            for piece in pieces:
                if piece.__class__ is VnetMark:
                    mark = piece
                buf += piece
            if mark is not None and mark.vnet.flags & F_NEEDS_CSUM:
                with memoryview(buf) as view:
                    fill_checksum(view[start:], mark.vnet)
        else:
            left = incl_len
            for piece in pieces:
                take = min(left, len(piece))
                buf += memoryview(piece)[:take]
                left -= take
                if not left:
                    break
        self._file_bytes += record
        self.frames_written += 1
        if len(buf) >= FLUSH_BYTES or timestamp - self._last_flush >= FLUSH_SECONDS:
            self._last_flush = timestamp
            self.flush()

    def flush(self) -> None:
        """Hand buffered records to the kernel."""
        if self._fd < 0 or not self._buffer:
            return
        try:
            view = memoryview(self._buffer)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as err:
            self._fail(err)
        finally:
            del view
            self._buffer.clear()

    def close(self) -> None:
        """Flush and close; idempotent."""
        if self._fd >= 0:
            self.flush()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- files ---------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
            )
        except OSError as err:
            self._fail(err)
            return
        self._buffer += self.header
        self._file_bytes = len(self.header)

    def _rotate(self) -> None:
        self.close()
        if self.failed:
            return
        try:
            self._shift_files()
        except OSError as err:
            self._fail(err)
            return
        self.files_rotated += 1
        self._open()

    def _shift_files(self) -> None:
        """path.{n-2} -> path.{n-1}, ..., path -> path.1; the oldest is overwritten."""
        if self.max_files == 1:
            self.path.unlink(missing_ok=True)
            return
        name = str(self.path)
        for i in range(self.max_files - 2, 0, -1):
            older = f"{name}.{i}"
            if os.path.exists(older):
                os.replace(older, f"{name}.{i + 1}")
        os.replace(name, f"{name}.1")

    def _fail(self, err: OSError) -> None:
        log.error("pcap %s: %s; capture stopped", self.path, err)
        self.failed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_pcap(path: str | os.PathLike[str]) -> tuple[int, list[tuple[float, int, bytes]]]:
    """(linktype, [(timestamp, orig_len, data), ...]) of a classic pcap file; for tests/tools."""
    data = Path(path).read_bytes()
    magic, major, minor, _zone, _sigfigs, _snaplen, linktype = GLOBAL_HEADER.unpack_from(data)
    if magic != MAGIC or (major, minor) != VERSION:
        raise ValueError(f"{path}: not a little-endian microsecond pcap file")
    records = []
    offset = GLOBAL_HEADER.size
    while offset < len(data):
        seconds, micros, incl_len, orig_len = RECORD_HEADER.unpack_from(data, offset)
        offset += RECORD_HEADER.size
        if offset + incl_len > len(data):
            raise ValueError(f"{path}: truncated record at byte {offset}")
        records.append((seconds + micros / 1e6, orig_len, data[offset : offset + incl_len]))
        offset += incl_len
    return linktype, records
