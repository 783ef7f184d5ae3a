"""Load generators of a soak: hping3, nc and ping against the stack, each bounded in rate AND time.

Every generator runs in its own thread until the load's end (or a stop), paces itself at its
rate, and gives each tool it spawns a count and a timeout; a process that overstays is ended by
its PID. Outcomes go to `GenStats`: attempts, ok, failures (and how many of those touched a flood
phase), corrupted transfers, transfers verified exact. Verification is end to end:

- short TCP connections to echo: what comes back equals the random payload sent;
- bulk into discard: every byte written, the stream's sha256 recorded, the stack's FIN after ours
  (so its TCP took every byte in order);
- bulk through echo: every byte that returns is compared with what was sent (sha256 both sides);
- bulk from chargen: every byte checked against the RFC 864 pattern;
- UDP echo lines (nc -u) matched by sequence number; ping RTT and loss recorded per reply.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import math
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netstack.api.services import chargen_pattern
from netstack.soak.schedule import Phase, Timeline

CHUNK = 16 * 1024
BLOCK_LEN = 65521  # a prime: a stream offset never lines up with pipe or segment sizes


@dataclasses.dataclass
class GenStats:
    attempts: int = 0
    attempts_flood: int = 0  # attempts that overlapped a flood phase
    ok: int = 0
    fail: int = 0
    fail_flood: int = 0  # failures that overlapped a flood phase (not judged)
    corrupt: int = 0  # data came back wrong
    verified: int = 0  # transfers whose bytes were checked and exact
    bytes: int = 0
    sent: int = 0  # packets (hping3, ping, UDP lines)
    received: int = 0
    skipped: int = 0  # slots missed because too many attempts were in flight
    errors: int = 0  # the generator itself failed (a tool missing, ...)


class ProcessSet:
    """Processes the soak started; ends each one by its own PID when the soak aborts."""

    def __init__(self) -> None:
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def spawn(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, **kwargs)
        with self._lock:
            self._procs.add(proc)
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> int:
        """Wait up to `timeout`, then signal, then kill: the exit code."""
        try:
            proc.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        with self._lock:
            self._procs.discard(proc)
        return proc.returncode

    def kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


@dataclasses.dataclass
class Context:
    stack_ip: str
    timeline: Timeline
    t0: float  # time.monotonic() when the load started
    load_end: float  # seconds after t0
    stop: threading.Event
    logdir: Path
    procs: ProcessSet

    def now(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.load_end - self.now()

    def sleep_until(self, t: float) -> bool:
        """Sleep until load time t; False if the load ends or stops first."""
        delay = min(t, self.load_end) - self.now()
        if delay > 0 and self.stop.wait(delay):
            return False
        return not self.stop.is_set() and self.now() < self.load_end


class Generator:
    """One kind of load; subclasses implement body(). `tcp` ones count for the failure bound."""

    tcp = False

    def __init__(self, name: str, ctx: Context, rate: float) -> None:
        self.name = name
        self.ctx = ctx
        self.rate = rate
        self.stats = GenStats()
        self.failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"soak-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        try:
            self.body()
        except Exception as err:  # the report shows it; the soak goes on
            with self._lock:
                self.stats.errors += 1
            self.failures.append({"t": round(self.ctx.now(), 1), "error": f"generator: {err!r}"})

    def body(self) -> None:
        raise NotImplementedError

    def each_phase(self, flood_only: bool = False):
        """The phases still ahead, each yielded once it has begun (until the load ends)."""
        for phase in self.ctx.timeline.phases:
            if (flood_only and not phase.flood) or self.ctx.now() >= phase.end - 0.5:
                continue
            self.ctx.sleep_until(phase.start)
            if self.ctx.stop.is_set() or self.ctx.now() >= self.ctx.load_end:
                return
            yield phase

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            data = dataclasses.asdict(self.stats)
        data["tcp"] = self.tcp
        data["rate"] = self.rate
        return data

    def record(
        self,
        started: float,
        ok: bool,
        *,
        corrupt: bool = False,
        verified: bool = False,
        nbytes: int = 0,
        error: str = "",
    ) -> None:
        flood = self.ctx.timeline.touches_flood(started, self.ctx.now())
        with self._lock:
            s = self.stats
            s.attempts += 1
            s.attempts_flood += flood
            s.bytes += nbytes
            if ok:
                s.ok += 1
                s.verified += verified
            else:
                s.fail += 1
                s.fail_flood += flood
                s.corrupt += corrupt
        if not ok:
            self.failures.append(
                {
                    "t": round(started, 1),
                    "phase": self.ctx.timeline.kind_at(started),
                    "error": error[:200],
                }
            )

    def count(self, **deltas: int) -> None:
        with self._lock:
            for key, value in deltas.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)


# -- helpers -------------------------------------------------------------------------------------
def stream_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK_LEN)


def stream_bytes(block: bytes, offset: int, size: int) -> bytes:
    """Bytes offset..offset+size of the endless repetition of `block`."""
    start = offset % len(block)
    out = bytearray()
    while len(out) < size:
        piece = block[start : start + size - len(out)]
        out += piece
        start = 0
    return bytes(out)


def paced_sleep(ctx: Context, started: float, done: int, rate: float) -> None:
    """Sleep so that `done` bytes took at least done/rate seconds since `started`."""
    delay = started + done / rate - time.monotonic()
    if delay > 0:
        ctx.stop.wait(delay)


def nc(ctx: Context, port: int, timeout: float, *extra: str) -> list[str]:
    return ["nc", *extra, "-w", str(int(timeout)), ctx.stack_ip, str(port)]


# -- nc: TCP -------------------------------------------------------------------------------------
class ShortEcho(Generator):
    """Short TCP connections to echo (7) at `rate` per second, a random payload each, checked."""

    tcp = True
    MAX_IN_FLIGHT = 8
    TIMEOUT = 10.0

    def body(self) -> None:
        slots = threading.Semaphore(self.MAX_IN_FLIGHT)
        rng = random.Random(7)
        t = self.ctx.now()
        while self.ctx.sleep_until(t):
            t += 1.0 / self.rate
            if not slots.acquire(blocking=False):
                self.count(skipped=1)
                continue
            payload = rng.randbytes(rng.randrange(1, 4096))
            threading.Thread(target=self._attempt, args=(payload, slots), daemon=True).start()

    def _attempt(self, payload: bytes, slots: threading.Semaphore) -> None:
        started = self.ctx.now()
        try:
            proc = self.ctx.procs.spawn(
                nc(self.ctx, 7, self.TIMEOUT, "-N"),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                out, err = proc.communicate(payload, timeout=self.TIMEOUT + 5)
            except subprocess.TimeoutExpired:
                out, err = b"", b"timed out"
            code = self.ctx.procs.finish(proc, 0)
            ok = code == 0 and out == payload
            corrupt = not payload.startswith(out)
            error = "" if ok else f"rc {code}, {len(out)}/{len(payload)} bytes back; {err[:120]!r}"
            self.record(started, ok, corrupt=corrupt, verified=ok, nbytes=len(out), error=error)
        finally:
            slots.release()


class Bulk(Generator):
    """Long transfers, one after another: `size` bytes each at `rate` bytes per second."""

    tcp = True
    PORT = 0

    def __init__(self, name: str, ctx: Context, rate: float, size: int) -> None:
        super().__init__(name, ctx, rate)
        self.size = size
        self.transfers: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)

    def timeout(self) -> float:
        return self.size / self.rate * 3 + 30

    def body(self) -> None:
        n = 0
        # A transfer starts only if it can finish (at its rate, with slack) before the load ends.
        while self.ctx.sleep_until(self.ctx.now()) and (
            self.ctx.remaining() > self.size / self.rate * 1.5 + 5
        ):
            n += 1
            started = self.ctx.now()
            proc = self.ctx.procs.spawn(
                nc(self.ctx, self.PORT, 30, "-N"),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                result = self.transfer(proc, stream_block(1000 + n))
            except (OSError, ValueError) as err:
                result = {"ok": False, "corrupt": False, "bytes": 0, "error": repr(err)}
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                code = self.ctx.procs.finish(proc, self.timeout())
            ok = result["ok"] and code == 0
            error = result.get("error", "") or ("" if ok else f"nc exit {code}")
            self.transfers.append({"t": round(started, 1), "ok": ok, **result})
            self.record(
                started, ok, corrupt=result["corrupt"], verified=ok,
                nbytes=result["bytes"], error=error,
            )  # fmt: skip

    def transfer(self, proc: subprocess.Popen, block: bytes) -> dict[str, Any]:
        raise NotImplementedError

    def write_stream(self, proc: subprocess.Popen, block: bytes) -> tuple[int, str]:
        """Write `size` bytes of the block stream, paced; (bytes written, sha256)."""
        digest = hashlib.sha256()
        sent, t0 = 0, time.monotonic()
        deadline = t0 + self.timeout()
        assert proc.stdin is not None
        while sent < self.size and not self.ctx.stop.is_set() and time.monotonic() < deadline:
            chunk = stream_bytes(block, sent, min(CHUNK, self.size - sent))
            proc.stdin.write(chunk)
            proc.stdin.flush()
            digest.update(chunk)
            sent += len(chunk)
            paced_sleep(self.ctx, t0, sent, self.rate)
        proc.stdin.close()
        return sent, digest.hexdigest()


class BulkDiscard(Bulk):
    """Into discard (9): every byte written and the stack's FIN after ours (all taken in order)."""

    PORT = 9

    def transfer(self, proc: subprocess.Popen, block: bytes) -> dict[str, Any]:
        sent, sha = self.write_stream(proc, block)
        assert proc.stdout is not None
        extra = proc.stdout.read()  # EOF: the stack closed after reading our FIN
        ok = sent == self.size and not extra
        return {
            "ok": ok, "corrupt": bool(extra), "bytes": sent, "sha256": sha,
            "error": "" if ok else f"{sent}/{self.size} bytes sent, {len(extra)} came back",
        }  # fmt: skip


class BulkEcho(Bulk):
    """Through echo (7): every returning byte compared with what was sent; sha256 both ways."""

    PORT = 7

    def transfer(self, proc: subprocess.Popen, block: bytes) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def write() -> None:
            result["sent"], result["sha_sent"] = self.write_stream(proc, block)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        digest, got, bad_at = hashlib.sha256(), 0, None
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while data := os.read(fd, 65536):
            if bad_at is None and data != stream_bytes(block, got, len(data)):
                want = stream_bytes(block, got, len(data))
                bad_at = got + next(
                    i for i, (a, b) in enumerate(zip(data, want, strict=True)) if a != b
                )
            digest.update(data)
            got += len(data)
            if got > self.size:
                break
        writer.join(self.timeout())
        sha_back = digest.hexdigest()
        ok = bad_at is None and got == self.size and result.get("sha_sent") == sha_back
        error = ""
        if not ok:
            error = f"{got}/{self.size} bytes back" + (f", first bad byte at {bad_at}" if
                                                        bad_at is not None else "")  # fmt: skip
        return {"ok": ok, "corrupt": bad_at is not None or got > self.size, "bytes": got,
                "sha256": sha_back, "error": error}  # fmt: skip


class BulkChargen(Bulk):
    """From chargen (19): `size` bytes read at `rate`, every one checked against RFC 864."""

    PORT = 19
    PATTERN = chargen_pattern()

    def transfer(self, proc: subprocess.Popen, block: bytes) -> dict[str, Any]:
        assert proc.stdout is not None and proc.stdin is not None
        fd = proc.stdout.fileno()
        period = len(self.PATTERN)
        ring = self.PATTERN * (65536 // period + 2)
        got, bad_at, t0 = 0, None, time.monotonic()
        deadline = t0 + self.timeout()
        closed = False
        while time.monotonic() < deadline:
            if not closed and (got >= self.size or self.ctx.stop.is_set()):
                proc.stdin.close()  # our FIN: the stack closes, the rest drains to EOF
                closed = True
            data = os.read(fd, 65536)
            if not data:
                break
            start = got % period
            if bad_at is None and data != ring[start : start + len(data)]:
                want = ring[start : start + len(data)]
                bad_at = got + next(
                    i for i, (a, b) in enumerate(zip(data, want, strict=True)) if a != b
                )
            got += len(data)
            if not closed:
                paced_sleep(self.ctx, t0, got, self.rate)
        ok = bad_at is None and got >= self.size and closed
        return {
            "ok": ok, "corrupt": bad_at is not None, "bytes": got,
            "error": "" if ok else f"{got}/{self.size} bytes" + (
                f", first bad byte at {bad_at}" if bad_at is not None else ""),
        }  # fmt: skip


# -- nc: UDP -------------------------------------------------------------------------------------
class UdpEchoLines(Generator):
    """Numbered lines to UDP echo (7) through one `nc -u` per phase, matched when they return."""

    def body(self) -> None:
        for phase in self.each_phase():
            self._phase(phase)

    def _phase(self, phase: Phase) -> None:
        proc = self.ctx.procs.spawn(
            nc(self.ctx, 7, 2, "-u"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        seen: set[int] = set()
        reader = threading.Thread(target=self._read, args=(proc, seen), daemon=True)
        reader.start()
        sent, t = 0, self.ctx.now()
        assert proc.stdin is not None
        try:
            while t < phase.end and self.ctx.sleep_until(t):
                proc.stdin.write(f"{sent:09d} soak {sent * 7919 % 100003}\n".encode())
                proc.stdin.flush()
                sent += 1
                t += 1.0 / self.rate
        except OSError:
            pass
        self.ctx.stop.wait(1.0)  # the last answers
        with contextlib.suppress(OSError):
            proc.stdin.close()
        self.ctx.procs.finish(proc, 3)
        reader.join(2)
        got = len(seen & set(range(sent)))
        self.count(attempts=sent, sent=sent, received=got, ok=got, fail=sent - got)

    @staticmethod
    def _read(proc: subprocess.Popen, seen: set[int]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError, IndexError):
                seq, _, check = line.decode().split()
                if int(check) == int(seq) * 7919 % 100003:
                    seen.add(int(seq))


# -- ping ----------------------------------------------------------------------------------------
_PING_REPLY = re.compile(rb"^\[(\d+\.\d+)\] \d+ bytes from .* time=([\d.]+) ms")
_PING_LOST = re.compile(rb"^\[(\d+\.\d+)\] no answer yet")


class Ping(Generator):
    """ping at a fixed rate, one process per phase; every RTT and every loss kept for sampling."""

    def __init__(self, name: str, ctx: Context, rate: float) -> None:
        super().__init__(name, ctx, rate)
        self._rtts: list[float] = []  # since the last drain (ms)
        self._lost = 0

    def drain(self) -> tuple[list[float], int]:
        """RTTs (ms) and losses since the last call (the sampler takes them)."""
        with self._lock:
            rtts, lost = self._rtts, self._lost
            self._rtts, self._lost = [], 0
        return rtts, lost

    def body(self) -> None:
        interval = max(0.01, 1.0 / self.rate)
        for phase in self.each_phase():
            length = phase.end - self.ctx.now()
            count = max(1, math.floor(length / interval))
            proc = self.ctx.procs.spawn(
                ["ping", "-n", "-D", "-O", "-W", "1", "-i", f"{interval:g}", "-c", str(count),
                 self.ctx.stack_ip],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            assert proc.stdout is not None
            sent = got = 0
            for line in proc.stdout:  # ends when ping does (count, or ended below)
                if m := _PING_REPLY.match(line):
                    sent, got = sent + 1, got + 1
                    with self._lock:
                        self._rtts.append(float(m[2]))
                elif _PING_LOST.match(line):
                    sent += 1
                    with self._lock:
                        self._lost += 1
                if self.ctx.stop.is_set():
                    break
            self.ctx.procs.finish(proc, 3, signal.SIGINT)
            self.count(attempts=sent, sent=sent, received=got, ok=got, fail=sent - got)


# -- hping3 --------------------------------------------------------------------------------------
_HPING_STATS = re.compile(rb"(\d+) packets tramitted, (\d+) packets received|"
                          rb"(\d+) packets transmitted, (\d+) packets received")  # fmt: skip


class Hping(Generator):
    """One hping3 mode at `rate` packets per second, one process per (eligible) phase with
    -i u<interval> and -c <rate * phase length>, ended by PID if it overstays."""

    def __init__(
        self, name: str, ctx: Context, rate: float, args: tuple[str, ...], flood_only: bool
    ) -> None:
        super().__init__(name, ctx, rate)
        self.args = args
        self.flood_only = flood_only
        self.tcp = False
        self.log_path = ctx.logdir / f"hping3-{name}.log"

    def body(self) -> None:
        interval_us = max(100, round(1e6 / self.rate))
        for phase in self.each_phase(self.flood_only):
            # hping3 also stops once it has *received* -c packets (replies, or other traffic it
            # matches), so one -c per phase may end early: start it again for what is left of
            # the phase, never more than rate * remaining packets, at most twice a second.
            while (left := min(phase.end, self.ctx.load_end) - self.ctx.now()) > 0.5:
                started = time.monotonic()
                self._one(max(1, math.floor(left * self.rate)), left, interval_us)
                if self.ctx.stop.wait(max(0.0, 0.5 - (time.monotonic() - started))):
                    return

    def _one(self, count: int, length: float, interval_us: int) -> None:
        cmd = ["hping3", "-q", *self.args, "-i", f"u{interval_us}", "-c", str(count),
               self.ctx.stack_ip]  # fmt: skip
        proc = self.ctx.procs.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        kept: list[bytes] = []
        reader = threading.Thread(target=self._read, args=(proc, kept), daemon=True)
        reader.start()
        self.ctx.procs.finish(proc, length + 3, signal.SIGINT)
        reader.join(5)
        with open(self.log_path, "ab") as log:  # summary lines only, and at most ~1 MB
            if log.tell() < 1 << 20:
                log.write(f"$ {' '.join(cmd)}\n".encode() + b"".join(kept))
        sent, got = self._stats(b"".join(kept))
        self.count(attempts=sent, sent=sent, received=got, ok=sent)
        if sent == 0:
            self.count(errors=1)

    @staticmethod
    def _read(proc: subprocess.Popen, kept: list[bytes]) -> None:
        """hping3 prints a line per reply even with -q: keep all but those."""
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith((b"len=", b"status=", b"ICMP ", b"DUP!")) and len(kept) < 50:
                kept.append(line)

    @staticmethod
    def _stats(text: bytes) -> tuple[int, int]:
        matches = list(_HPING_STATS.finditer(text))
        if not matches:
            return 0, 0
        m = matches[-1]
        return int(m[1] or m[3]), int(m[2] or m[4])


# -- the table -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GenSpec:
    """A generator the command offers: its rate flag, default rate and unit, and how to build it."""

    name: str
    default: float
    unit: str
    help: str
    tcp: bool  # sends to the TCP engine (off with --no-tcp)
    make: Callable[[str, Context, float, Any], Generator]


def _hping(args: tuple[str, ...], flood_only: bool = False):
    return lambda name, ctx, rate, opts: Hping(name, ctx, rate, args, flood_only)


def _bulk(cls: type[Bulk]):
    return lambda name, ctx, rate, opts: cls(name, ctx, rate, opts.bulk_size)


GENERATORS: tuple[GenSpec, ...] = (
    GenSpec("syn_flood", 100, "pps", "hping3 SYN flood to echo (flood phases)", True,
            _hping(("-S", "-p", "7"), flood_only=True)),
    GenSpec("syn_flood_rand", 100, "pps", "hping3 SYN flood from random sources (flood phases)",
            True, _hping(("-S", "-p", "7", "--rand-source"), flood_only=True)),
    GenSpec("hping_udp_echo", 20, "pps", "hping3 UDP to echo", False,
            _hping(("--udp", "-p", "7", "-d", "64"))),
    GenSpec("hping_udp_closed", 10, "pps", "hping3 UDP to a closed port", False,
            _hping(("--udp", "-p", "33", "-d", "32"))),
    GenSpec("hping_icmp", 10, "pps", "hping3 ICMP echo", False, _hping(("--icmp", "-d", "56"))),
    GenSpec("hping_frag", 5, "pps", "hping3 ICMP echo of 1400 bytes in 256-byte fragments",
            False, _hping(("--icmp", "-d", "1400", "-m", "256"))),
    GenSpec("hping_badcksum_udp", 5, "pps", "hping3 UDP with bad checksums", False,
            _hping(("--udp", "-p", "7", "-b", "-d", "32"))),
    GenSpec("hping_badcksum_tcp", 5, "pps", "hping3 TCP SYNs with bad checksums", True,
            _hping(("-S", "-p", "7", "-b"))),
    GenSpec("tcp_short", 5, "conn/s", "nc: short connections to TCP echo, payload checked",
            True, lambda name, ctx, rate, opts: ShortEcho(name, ctx, rate)),
    GenSpec("bulk_discard", 512 * 1024, "B/s", "nc: bulk into TCP discard", True,
            _bulk(BulkDiscard)),
    GenSpec("bulk_echo", 256 * 1024, "B/s", "nc: bulk through TCP echo, bytes compared", True,
            _bulk(BulkEcho)),
    GenSpec("bulk_chargen", 512 * 1024, "B/s", "nc: bulk from TCP chargen, RFC 864 checked",
            True, _bulk(BulkChargen)),
    GenSpec("udp_echo", 10, "lines/s", "nc -u: numbered lines to UDP echo", False,
            lambda name, ctx, rate, opts: UdpEchoLines(name, ctx, rate)),
    GenSpec("ping", 5, "pps", "ping at a fixed rate (RTT, loss)", False,
            lambda name, ctx, rate, opts: Ping(name, ctx, rate)),
)  # fmt: skip
GENERATORS_BY_NAME = {g.name: g for g in GENERATORS}
