"""Fault injection: a Link wrapper that drops, duplicates, corrupts, reorders and delays frames.

For testing applications against a bad network without one (like smoltcp's FaultInjector).
`--fault drop=0.05,delay=2ms` impairs both directions; `--fault rx:drop=0.05,tx:drop=0.01`
one at a time (rx = frames the stack receives, tx = frames it sends):

    spec  := item ("," item)*          item := [dir ":"] key "=" value        dir := rx | tx
    drop, dup, reorder, corrupt        probability: 0.05 or 5%
    delay, jitter                      duration: 2ms, 500us, 0.1s (jitter: uniform 0..jitter extra)
    limit                              frames held at once per direction (default 4096)
    seed                               integer; both directions (no prefix); random when absent

An item with a direction overrides the same key without one, whatever the order. Each frame, in
order: dropped (drop); else a bit flipped in a copy (corrupt); sent twice (dup); held for
delay+jitter; then, as it leaves, held back with probability `reorder` and sent right after the
next frame of that direction (or after REORDER_MAX_HOLD if none comes).

With offloads on (offload = "auto") a frame may be a super-frame of up to 64 KiB standing for
many wire segments: every fault acts on the frame as a whole (dropped, delayed, duplicated or
reordered together). A corrupted received super-frame loses the checksum vouching of its
virtio-net header, so the stack verifies it and drops it; a corrupted super-frame on its way
out is dropped instead (the kernel would checksum the flipped bit into its segments).

Every injected loss is a drop with its own reason (Drop.LINK_FAULT_INJECTED), every frame lost
to a full hold queue another (Drop.LINK_FAULT_QUEUE_FULL). Decisions come from a seeded RNG per
direction and depend only on frame order (and jitter), so a seed replays the same faults.
FaultChannel, the per-direction engine, is pure (frames and `now` in); tests/integration/
impair.py reuses it for a relay outside the stack.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.io.link import Frame, Link, LinkTxError
from netstack.wire.vnet import find_mark, own_frame

log = logging.getLogger("netstack.io.fault")

DIRECTIONS = ("rx", "tx")
PROBABILITIES = ("drop", "dup", "reorder", "corrupt")
DURATIONS = ("delay", "jitter")
DEFAULT_LIMIT = 4096
MAX_DELAY = 60.0
REORDER_MAX_HOLD = 0.02  # a held-back frame goes out alone after this long
BACKLOG_RETRY = 0.001  # retry a link that said EAGAIN with nothing else to wake us
_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000}
_DURATION = re.compile(r"^([0-9]*\.?[0-9]+)(s|ms|us)$")


# -- the setting ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class Impairment:
    """What one direction does to frames; probabilities in [0, 1], durations in seconds."""

    drop: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        for key in PROBABILITIES:
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be a probability between 0 and 1 (or 0% to 100%)")
        for key in DURATIONS:
            if not 0.0 <= getattr(self, key) <= MAX_DELAY:
                raise ValueError(f"{key} must be between 0 and {MAX_DELAY:g}s")
        if isinstance(self.limit, bool) or not 1 <= self.limit <= 1 << 20:
            raise ValueError(f"limit must be between 1 and {1 << 20} frames")

    @property
    def active(self) -> bool:
        return any(getattr(self, key) for key in (*PROBABILITIES, *DURATIONS))

    def items(self) -> list[str]:
        """key=value for every field that differs from the default, canonical spelling."""
        out = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value != field.default:
                shown = _format_duration(value) if field.name in DURATIONS else f"{value:g}"
                out.append(f"{field.name}={shown}")
        return out


NO_FAULT = Impairment()


@dataclasses.dataclass(frozen=True, slots=True)
class FaultSpec:
    """The `fault` setting: one Impairment per direction and the seed."""

    rx: Impairment = NO_FAULT
    tx: Impairment = NO_FAULT
    seed: int | None = None

    def __str__(self) -> str:
        rx, tx = self.rx.items(), self.tx.items()
        items = [i for i in rx if i in tx]  # both directions: no prefix
        items += [f"rx:{i}" for i in rx if i not in tx] + [f"tx:{i}" for i in tx if i not in rx]
        if self.seed is not None:
            items.append(f"seed={self.seed}")
        return ",".join(items) or "none"


def _format_duration(seconds: float) -> str:
    if seconds >= 1 or seconds == 0:
        return f"{seconds:g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"


def _probability(text: str) -> float:
    scale = 1.0
    if text.endswith("%"):
        text, scale = text[:-1], 100.0
    return float(text) / scale


def _duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise ValueError("a number and a unit (us, ms, s), like 2ms")
    return float(match[1]) / _UNITS[match[2]]


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("seed must be a non-negative integer")
    return value


_PARSERS: dict[str, Callable[[str], Any]] = {
    **dict.fromkeys(PROBABILITIES, _probability),
    **dict.fromkeys(DURATIONS, _duration),
    "limit": int,
    "seed": _seed,
}


def parse_fault(value: Any) -> FaultSpec | None:
    """Parse the `fault` setting; None for none/off/false/empty. ValueError says what is wrong."""
    if value is None or value is False:
        return None
    if not isinstance(value, str):
        raise ValueError("expected a string like 'drop=0.05,delay=2ms'")
    text = value.strip()
    if text.lower() in ("", "none", "off", "false"):
        return None
    both: dict[str, Any] = {}
    per: dict[str, dict[str, Any]] = {d: {} for d in DIRECTIONS}
    seed: int | None = None
    seen: set[tuple[str, str]] = set()
    for raw in text.split(","):
        item = raw.strip()
        direction, colon, rest = item.partition(":")
        if not colon:
            direction, rest = "", item
        direction = direction.strip().lower()
        if direction and direction not in DIRECTIONS:
            raise ValueError(f"bad direction {direction!r} in {item!r} (rx or tx)")
        key, eq, text_value = (part.strip() for part in rest.partition("="))
        key = key.lower()
        if not eq or not key or not text_value:
            raise ValueError(f"expected key=value, got {item!r}")
        if key not in _PARSERS:
            raise ValueError(f"unknown fault {key!r} (known: {', '.join(_PARSERS)})")
        if (direction, key) in seen:
            raise ValueError(f"{item!r} given twice")
        seen.add((direction, key))
        try:
            parsed = _PARSERS[key](text_value)
        except ValueError as err:
            detail = str(err) if key in DURATIONS or key == "seed" else "not a number"
            raise ValueError(f"bad {key} {text_value!r}: {detail}") from None
        if key == "seed":
            if direction:
                raise ValueError("seed applies to both directions: no rx:/tx: prefix")
            seed = parsed
        elif direction:
            per[direction][key] = parsed
        else:
            both[key] = parsed
    rx, tx = (Impairment(**{**both, **per[d]}) for d in DIRECTIONS)
    return FaultSpec(rx, tx, seed)


# -- one direction ---------------------------------------------------------------------------
T = TypeVar("T")


class Form(NamedTuple, Generic[T]):
    """How a channel copies and corrupts its kind of frame: received views (with or without
    their virtio-net metadata) or transmit piece tuples."""

    own: Callable[[T], T]  # a copy that outlives the buffers the frame points into
    size: Callable[[T], int]  # bytes a corruption may hit
    corrupted: Callable[[T, int], T | None]  # a copy with that bit flipped; None: lost


def _flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit >> 3] ^= 1 << (bit & 7)
    return bytes(out)


def _tx_corrupted(frame: Frame, bit: int) -> Frame | None:
    """A super-frame (offload) cannot be corrupted on its way out: the kernel would compute
    its segments' checksums over the flipped bit and the peer would take the damage. A
    corrupted segment is one its receiver drops, so the super-frame is lost instead."""
    mark = find_mark(frame)
    if mark is not None and mark.vnet.gso_type:
        return None
    return (_flipped(b"".join(frame), bit),)


RX_FORM: Form[memoryview] = Form(
    lambda view: memoryview(bytes(view)),
    len,
    lambda view, bit: memoryview(_flipped(view, bit)),
)
TX_FORM: Form[Frame] = Form(own_frame, lambda frame: sum(map(len, frame)), _tx_corrupted)
# Received (view, vnet metadata) pairs from a link with the virtio-net header. A corrupted
# copy loses the metadata: its checksum is no longer vouched for, so the stack verifies it
# (and a super-frame, whose checksum field holds a partial sum, is then dropped whole).
RX_META_FORM: Form[tuple[memoryview, int]] = Form(
    lambda pair: (memoryview(bytes(pair[0])), pair[1]),
    lambda pair: len(pair[0]),
    lambda pair, bit: (memoryview(_flipped(pair[0], bit)), 0),
)


@dataclasses.dataclass(slots=True)
class FaultStats:
    """What one direction did; `delivered` counts frames out, duplicates included."""

    frames: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    corrupted: int = 0
    delayed: int = 0
    reordered: int = 0  # held back and sent after a later frame
    overflow: int = 0  # lost because `limit` frames were already held

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def channel_rng(seed: int, direction: str) -> random.Random:
    """The RNG of one direction: independent of the other, fixed by the seed."""
    return random.Random(f"netstack-fault/{seed}/{direction}")


class FaultChannel(Generic[T]):
    """One direction of impairment: decides every frame's fate, holds delayed copies.

    Pure: `process(frames, now, out)` appends what leaves now; `release(now, out)` what was
    held and is due; `next_deadline()` says when that is. Frames passed in may be views into a
    reused buffer: whatever is held is copied first.
    """

    def __init__(
        self,
        impairment: Impairment,
        rng: random.Random,
        form: Form[T],
        on_drop: Callable[[Drop], None] | None = None,
    ) -> None:
        self.impairment = impairment
        self.rng = rng
        self.form = form
        self.stats = FaultStats()
        self._on_drop = on_drop
        self._held: list[tuple[float, int, T]] = []  # (release time, order, copy)
        self._order = itertools.count()
        self._reorder: tuple[T, float] | None = None  # (copy, latest release)

    @property
    def held(self) -> int:
        return len(self._held) + (self._reorder is not None)

    def next_deadline(self) -> float | None:
        deadline = self._held[0][0] if self._held else None
        if self._reorder is not None and (deadline is None or self._reorder[1] < deadline):
            deadline = self._reorder[1]
        return deadline

    def due(self, now: float) -> bool:
        deadline = self.next_deadline()
        return deadline is not None and deadline <= now

    def process(self, frames: Iterable[T], now: float, out: list[T]) -> None:
        """Decide the fate of each frame, in order; survivors that leave now go to `out`."""
        imp = self.impairment
        stats = self.stats
        if not imp.active:
            before = len(out)
            out.extend(frames)
            n = len(out) - before
            stats.frames += n
            stats.delivered += n
            return
        if self._held or self._reorder is not None:
            self.release(now, out)
        rng = self.rng
        for frame in frames:
            stats.frames += 1
            if imp.drop and rng.random() < imp.drop:
                stats.dropped += 1
                self._drop(Drop.LINK_FAULT_INJECTED)
                continue
            if imp.corrupt and rng.random() < imp.corrupt:
                corrupted = self._corrupted(frame)
                if corrupted is None:  # a super-frame: lost whole (see _tx_corrupted)
                    stats.dropped += 1
                    self._drop(Drop.LINK_FAULT_INJECTED)
                    continue
                frame = corrupted
            copies = 1
            if imp.dup and rng.random() < imp.dup:
                stats.duplicated += 1
                copies = 2
            for _ in range(copies):
                if imp.delay or imp.jitter:
                    delay = imp.delay + (rng.random() * imp.jitter if imp.jitter else 0.0)
                    self._hold(frame, now + delay)
                else:
                    self._emit(frame, now, out)

    def release(self, now: float, out: list[T]) -> None:
        """Send what was held and is due (delayed frames, an overdue held-back frame)."""
        held = self._held
        while held and held[0][0] <= now:
            _, _, frame = heapq.heappop(held)
            self._emit(frame, now, out)
        if self._reorder is not None and self._reorder[1] <= now:
            frame, _ = self._reorder
            self._reorder = None
            out.append(frame)
            self.stats.delivered += 1

    def _emit(self, frame: T, now: float, out: list[T]) -> None:
        """The reorder stage, the last one: a held-back frame goes out after this one."""
        stats = self.stats
        if self._reorder is not None:
            held, _ = self._reorder
            self._reorder = None
            out.append(frame)
            out.append(held)
            stats.delivered += 2
            stats.reordered += 1
        elif (
            self.impairment.reorder
            and self.rng.random() < self.impairment.reorder
            and self.held < self.impairment.limit  # full: let it through in order
        ):
            self._reorder = (self._own(frame), now + REORDER_MAX_HOLD)
        else:
            out.append(frame)
            stats.delivered += 1

    def _hold(self, frame: T, when: float) -> None:
        if self.held >= self.impairment.limit:
            self._overflow()
            return
        self.stats.delayed += 1
        heapq.heappush(self._held, (when, next(self._order), self._own(frame)))

    def _overflow(self) -> None:
        self.stats.overflow += 1
        self._drop(Drop.LINK_FAULT_QUEUE_FULL)

    def _drop(self, reason: Drop) -> None:
        if self._on_drop is not None:
            self._on_drop(reason)

    def _own(self, frame: T) -> T:
        return self.form.own(frame)

    def _corrupted(self, frame: T) -> T | None:
        size = self.form.size(frame)
        if not size:
            return frame
        bit = self.rng.randrange(size * 8)
        self.stats.corrupted += 1
        return self.form.corrupted(frame, bit)


# -- the link wrapper --------------------------------------------------------------------------
class FaultLink:
    """A Link that impairs what passes through `inner`, both ways; attach() it to the loop.

    The loop still polls the inner fd. Delayed received frames must come out when that fd is
    quiet, so `attach(loop)` adds a deadline source that sends due tx frames and makes the loop
    drain this link (Loop.drain_link) when rx frames are due. Frames the loop hands to
    send_batch count as sent (tx_packets, pcap) even when the fault then drops them.
    """

    def __init__(
        self,
        inner: Link,
        spec: FaultSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        counters: Counters | None = None,
    ) -> None:
        self.inner = inner
        self.spec = spec
        self.seed = spec.seed if spec.seed is not None else random.SystemRandom().randrange(1 << 32)
        self.counters = counters
        self._clock = clock
        on_drop = counters.drop if counters is not None else None
        # A link with the virtio-net header reports metadata per frame (rx_meta): it travels
        # with its frame through the channel, so drops, delays and reordering keep the pairs.
        # (Software GRO reports metadata too: its merged frames are super-frames.)
        self.vnet = bool(
            getattr(inner, "vnet", False) or getattr(inner, "soft_gro", None) is not None
        )
        self.rx_meta: list[int] | None = [] if self.vnet else None
        self.rx_vnet_truncated = 0
        self.rx_kernel_dropped = 0
        # The loop's deadline_changed (attach): frames held on send move this link's deadline
        # outside the loop's callbacks, and the loop caches its earliest deadline.
        self._deadline_changed: Callable[[], None] = _nothing
        self.rx: FaultChannel[Any] = FaultChannel(
            spec.rx, channel_rng(self.seed, "rx"), RX_META_FORM if self.vnet else RX_FORM, on_drop
        )
        self.tx: FaultChannel[Frame] = FaultChannel(
            spec.tx, channel_rng(self.seed, "tx"), TX_FORM, on_drop
        )
        self.rx_oversize = 0
        self._backlog: list[Frame] = []  # let through but refused by inner with EAGAIN
        self._backlog_retry = 0.0

    @classmethod
    def around(cls, inner: Link, spec: FaultSpec, loop: Any, counters: Counters) -> FaultLink:
        """Wrap `inner` for a stack run by `loop`: its clock, its timers, a line in the log."""
        link = cls(inner, spec, clock=loop.clock, counters=counters)
        link.attach(loop)
        log.warning("%s (seed=%d replays it)", link.describe(), link.seed)
        return link

    # Frames pass through the fault channels (copied, held, reordered): the host never reads
    # them from the inner link's arena (Host.receive_batch's `arena`; not __getattr__'s).
    rx_arena = None

    # Link attributes are the inner link's.
    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def mac(self) -> bytes:
        return self.inner.mac

    @property
    def mtu(self) -> int:
        return self.inner.mtu

    @property
    def fd(self) -> int:
        return self.inner.fd

    def __getattr__(self, attr: str) -> Any:  # max_batch, peer_mac, ...
        if attr == "inner":  # not set yet: __init__ failed early
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    @property
    def stats(self) -> dict[str, FaultStats]:
        return {"rx": self.rx.stats, "tx": self.tx.stats}

    def describe(self) -> str:
        spec = dataclasses.replace(self.spec, seed=self.seed)
        return f"fault injection on {self.name}: {spec}"

    # -- receive ----------------------------------------------------------------------------
    def receive_batch(self) -> list[memoryview]:
        """Due held frames first (they arrived earlier), then the inner link's, impaired."""
        now = self._clock()
        inner = self.inner
        views = inner.receive_batch()
        if inner.rx_oversize:
            self.rx_oversize += inner.rx_oversize
            inner.rx_oversize = 0
        if getattr(inner, "rx_vnet_truncated", 0):
            self.rx_vnet_truncated += inner.rx_vnet_truncated
            inner.rx_vnet_truncated = 0
        if getattr(inner, "rx_kernel_dropped", 0):
            self.rx_kernel_dropped += inner.rx_kernel_dropped
            inner.rx_kernel_dropped = 0
        out: list[Any] = []
        self.rx.release(now, out)
        if self.vnet:
            metas = inner.rx_meta or [0] * len(views)  # software GRO: None when none merged
            self.rx.process(zip(views, metas, strict=True), now, out)
            self.rx_meta = [meta for _, meta in out]
            return [view for view, _ in out]
        self.rx.process(views, now, out)
        return out

    # -- transmit ---------------------------------------------------------------------------
    def send_batch(self, frames: Sequence[Frame]) -> int:
        """Takes all frames (fates decided at once) unless the inner link is still backed up."""
        if self._backlog and not self._transmit([]):
            return 0  # the loop keeps its queue and waits for EPOLLOUT
        now = self._clock()
        out: list[Frame] = []
        self.tx.release(now, out)
        self.tx.process(frames, now, out)
        if out:
            self._transmit(out)
        self._deadline_changed()
        return len(frames)

    def _transmit(self, frames: list[Frame]) -> bool:
        """Hand frames to the inner link; what it cannot take waits. True when all went."""
        if self._backlog:
            frames, self._backlog = self._backlog + frames, []
        while frames:
            try:
                written = self.inner.send_batch(frames)
            except LinkTxError as err:  # that frame is refused for good; go on after it
                if self.counters is not None:
                    self.counters.drop(Drop.LINK_TX_ERROR)
                frames = frames[err.written + 1 :]
                continue
            frames = frames[written:]
            break
        if not frames:
            return True
        room = self.tx.impairment.limit
        if len(frames) > room:
            self.tx.stats.overflow += len(frames) - room
            if self.counters is not None:
                self.counters.drop(Drop.LINK_FAULT_QUEUE_FULL, len(frames) - room)
            frames = frames[:room]
        self._backlog = [own_frame(frame) for frame in frames]
        self._backlog_retry = self._clock() + BACKLOG_RETRY
        return False

    # -- time -------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.rx.next_deadline(), self.tx.next_deadline()) if d is not None]
        if self._backlog:
            deadlines.append(self._backlog_retry)
        return min(deadlines) if deadlines else None

    def poll(self, now: float) -> None:
        """Send the tx frames that are due (received ones wait for receive_batch)."""
        out: list[Frame] = []
        self.tx.release(now, out)
        if out or self._backlog:
            self._transmit(out)

    def attach(self, loop: Any) -> None:
        """Run this link's clock on `loop` (a netstack.io.loop.Loop it is registered with)."""

        def on_deadline(now: float) -> None:
            self.poll(now)
            if self.rx.due(now):
                loop.drain_link(self, now)

        loop.add_deadline_source(self.next_deadline, on_deadline)
        self._deadline_changed = getattr(loop, "deadline_changed", _nothing)

    def close(self) -> None:
        if self.spec.rx.active or self.spec.tx.active:
            log.info(
                "fault injection on %s: rx %s; tx %s",
                self.name,
                self.rx.stats.as_dict(),
                self.tx.stats.as_dict(),
            )
        self.inner.close()

    def __repr__(self) -> str:
        return f"FaultLink({self.inner!r}, {self.spec})"


def _nothing() -> None:
    """deadline_changed before attach(): no loop to tell."""
