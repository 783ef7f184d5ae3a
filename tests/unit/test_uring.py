"""The io_uring TAP writer (netstack/io/uring.py, ffi ns_uring_* / ns_gso_write_uring) and its
fallback to writev.

The ring is exercised over an AF_UNIX datagram socketpair (a frame per datagram, as on a TAP;
sockets take RWF_NOWAIT): the frames of a batch and the pieces of a cut super-segment arrive
whole and in order, a full socket stops the batch at the first EAGAIN with the frames before
it written (and each piece of a super-segment written exactly once across the retries), and
the start-up probe, the missing io_uring and the refused RWF_NOWAIT all end in writev with
the reason (tap_tx "auto") or a refusal to start (tap_tx "uring").
"""

from __future__ import annotations

import errno
import os
import socket

import pytest
from netstack._ffi import ffi, lib

from netstack.io import softoffload
from netstack.io import tap as taplink
from netstack.io import uring as uringmod
from netstack.io.link import LinkUnavailableError
from netstack.wire import vnet as wvnet
from tests.unit.test_softoffload import PairLink, _drain, _tx_frame


def _ring() -> uringmod.Ring:
    err = ffi.new("int *")
    handle = lib.ns_uring_open(uringmod.ENTRIES, err)
    if handle == ffi.NULL:
        pytest.skip(f"io_uring unavailable here: {os.strerror(-err[0])}")
    return uringmod.Ring(handle)


@pytest.fixture
def ring_pair():
    """(link with software GSO writing through a ring, its socket, the peer socket)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    ring = _ring()
    link = PairLink("pair", a.fileno(), b"\x02\0\0\0\0\x01", 1500, 64, gso=True)
    link._tx_fn = ring.write_batch_fn()  # type: ignore[method-assign]
    assert link.soft_gso is not None
    link.soft_gso.ring = ring.handle
    try:
        yield link, a, b
    finally:
        ring.close()
        ring.close()  # idempotent
        a.close()
        b.close()


@pytest.mark.parametrize("count", [1, 2, 5, 64, 65, 150])
def test_ring_writes_a_batch_whole_and_in_order(ring_pair, count: int) -> None:
    """A batch of one (a plain writev), up to and beyond one submission of 64."""
    link, a, b = ring_pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    frames = [(os.urandom(60 + i % 7), bytes([i % 256]) * (i % 50)) for i in range(count)]
    got: list[bytes] = []
    sent = 0
    for _ in range(100):  # the peer may need draining between submissions
        sent += link.send_batch(frames[sent:])
        got += _drain(b)
        if sent == count:
            break
    assert sent == count
    assert got == [b"".join(f) for f in frames]


@pytest.mark.parametrize("count", [1, 2, lib.NS_URING_MIN - 1])
def test_batches_below_the_ring_minimum_are_written_by_writev(count: int) -> None:
    """The link's tx function (ns_tap_write_batch) writes a batch of fewer than NS_URING_MIN
    frames by writev and never touches the ring: here there is none (NULL), which the ring
    path would dereference. (A connection's batches of ~2 frames measured dearer through the
    ring: bench/RESULTS.md run 13.)"""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        frames = [os.urandom(60 + i) for i in range(count)]
        keep = [ffi.from_buffer(f) for f in frames]
        iov = ffi.new("struct iovec[]", count)
        for i, (f, buf) in enumerate(zip(frames, keep, strict=True)):
            iov[i].iov_base = buf
            iov[i].iov_len = len(f)
        counts = ffi.new("int[]", [1] * count)
        assert lib.ns_tap_write_batch(ffi.NULL, a.fileno(), iov, counts, count) == count
        assert [b.recv(2048) for _ in range(count)] == frames
    finally:
        a.close()
        b.close()


def test_ring_stops_at_the_first_eagain_with_the_front_written(ring_pair) -> None:
    link, a, b = ring_pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frames = [(bytes([i]) * 1000,) for i in range(64)]
    written = link.send_batch(frames)
    assert 0 < written < 64
    got = _drain(b)
    assert got == [f[0] for f in frames[:written]]
    # the rest goes once there is room again, in order, nothing twice
    rest = frames[written:]
    for _ in range(200):
        if not rest:
            break
        rest = rest[link.send_batch(rest) :]
        got += _drain(b)
    assert got == [f[0] for f in frames]


@pytest.mark.parametrize("family", [4, 6])
def test_ring_cut_equals_the_writev_cut(ring_pair, family: int) -> None:
    link, a, b = ring_pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    frame, mark, as_sent = _tx_frame(family, 45 * 1400 + 17, "PA")
    plain = (b"p" * 60,)
    assert link.send_batch([plain, as_sent, plain]) == 3
    assert _drain(b) == [plain[0], *softoffload.gso_cut(frame, mark), plain[0]]


def test_ring_cut_resumes_after_eagain_part_way(ring_pair) -> None:
    """As test_softoffload's writev case: every piece exactly once across the retries."""
    link, a, b = ring_pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frame, mark, as_sent = _tx_frame(4, 40 * 1400)
    want = softoffload.gso_cut(frame, mark)
    got: list[bytes] = []
    queue, rounds = [as_sent], 0
    while queue and rounds < 300:
        written = link.send_batch(queue)
        if written:
            del queue[:written]
        else:
            queue = [wvnet.own_frame(f) for f in queue]  # what the loop keeps
        got += _drain(b)
        rounds += 1
    assert not queue and rounds > 1
    assert got == want


def test_ring_reports_a_hard_error_on_the_first_frame() -> None:
    """A descriptor that cannot be written: -errno, as ns_write_batch says it."""
    ring = _ring()
    r, w = os.pipe()
    try:
        iov = ffi.new("struct iovec[2]")
        buf = ffi.new("char[]", b"xx")
        for i in range(2):
            iov[i].iov_base = buf
            iov[i].iov_len = 2
        counts = ffi.new("int[2]", [1, 1])
        assert lib.ns_uring_write_batch(ring.handle, r, iov, counts, 2) == -errno.EBADF
        assert lib.ns_write_batch(r, iov, counts, 2) == -errno.EBADF
        assert lib.ns_uring_write_batch(ring.handle, w, iov, counts, 2) == 2
        assert os.read(r, 10) == b"xxxx"
    finally:
        ring.close()
        os.close(r)
        os.close(w)


# -- the probe and the fallback -------------------------------------------------------------------
def test_probe_refuses_a_descriptor_that_takes_empty_frames() -> None:
    """The probe's empty frames are refused only by a TAP; anything else is not one."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        _ring().close()  # skip where io_uring is unavailable
        ring, why = uringmod.open_ring(a.fileno())
        assert ring is None and "empty frame was accepted" in why
    finally:
        a.close()
        b.close()


class FakeLib:
    """lib with ns_uring_open / the probe's write answering as a given kernel would."""

    def __init__(self, open_err: int = 0, probe: int = -errno.EINVAL) -> None:
        self.open_err, self.probe, self.closed = open_err, probe, 0

    def ns_uring_open(self, entries, err):
        if self.open_err:
            err[0] = self.open_err
            return ffi.NULL
        return ffi.cast("void *", 1)

    def ns_uring_write_batch(self, ring, fd, iov, counts, n):
        return self.probe

    def ns_uring_close(self, ring):
        self.closed += 1


@pytest.mark.parametrize(
    ("fake", "why"),
    [
        (FakeLib(open_err=-errno.ENOSYS), "io_uring_setup: Function not implemented"),
        (FakeLib(open_err=-errno.EPERM), "io_uring_setup: Operation not permitted"),
        (FakeLib(probe=-errno.EOPNOTSUPP), "io_uring write to the TAP: Operation not supported"),
    ],
)
def test_open_ring_says_why_not(monkeypatch, fake: FakeLib, why: str) -> None:
    monkeypatch.setattr(uringmod, "lib", fake)
    ring, reason = uringmod.open_ring(3)
    assert ring is None and reason == why
    assert fake.closed == (0 if fake.open_err else 1)  # a ring that failed the probe is closed


def test_open_ring_accepts_the_tap_answer(monkeypatch) -> None:
    monkeypatch.setattr(uringmod, "lib", FakeLib())
    ring, reason = uringmod.open_ring(3)
    assert ring is not None and reason == ""


def _bare_tap(soft_gso: bool):
    """A TapLink without a descriptor, to drive _open_ring alone."""
    link = object.__new__(taplink.TapLink)
    link.name, link.fd = "tap9", 3
    link.soft_gso = softoffload.SoftGso(3, False, "tap9") if soft_gso else None
    return link


def test_tap_auto_falls_back_to_writev_and_says_why(monkeypatch) -> None:
    monkeypatch.setattr(uringmod, "open_ring", lambda fd: (None, "io_uring_setup: nope"))
    link = _bare_tap(True)
    link._open_ring("auto")
    assert link.tx_mode == "writev (io_uring unavailable: io_uring_setup: nope)"
    assert link._tx_fn is lib.ns_write_batch and link._ring is None
    assert link.soft_gso.ring is None


def test_tap_uring_refuses_to_start_without_it(monkeypatch) -> None:
    monkeypatch.setattr(uringmod, "open_ring", lambda fd: (None, "io_uring_setup: nope"))
    with pytest.raises(LinkUnavailableError, match="tap_tx uring on tap9: io_uring_setup: nope"):
        _bare_tap(True)._open_ring("uring")


def test_tap_with_a_ring_sends_through_it(monkeypatch) -> None:
    ring = _ring()
    monkeypatch.setattr(uringmod, "open_ring", lambda fd: (ring, ""))
    link = _bare_tap(True)
    link._open_ring("auto")
    try:
        assert link.tx_mode == "io_uring"
        assert link.soft_gso.ring == ring.handle and link._tx_fn is not lib.ns_write_batch
    finally:
        link.fd = -1  # nothing to close but the ring
        link.close()
    assert link.soft_gso.ring is None and link._ring is None
    assert link._tx_fn is lib.ns_write_batch  # not a partial over the freed ring


def test_tap_rejects_an_unknown_tx_mode() -> None:
    with pytest.raises(ValueError, match="tx must be one of"):
        taplink.TapLink("tap9", tx="sendmmsg")


# -- configuration ---------------------------------------------------------------------------------
def test_tap_tx_config_key_flag_and_check_config(tmp_path, capsys) -> None:
    from netstack.cli import main
    from netstack.config import ConfigError, build_config

    assert build_config().tap_tx == "auto"  # io_uring where the kernel allows it
    assert build_config({"tap_tx": "writev"}).tap_tx == "writev"
    with pytest.raises(ConfigError, match="'tap_tx'"):
        build_config({"tap_tx": "sendmmsg"})
    path = tmp_path / "n.toml"
    path.write_text('tap_tx = "uring"\n')
    assert main(["check-config", str(path)]) == 0
    assert "tap_tx = uring" in capsys.readouterr().out
    # the flag takes the same choices, refused before anything is opened
    assert main(["run", "--tap-tx", "bogus", "--interface", "tap9"]) == 2
    assert "'tap_tx'" in capsys.readouterr().err


@pytest.mark.parametrize("ring_on", [False, True])
def test_a_frame_refused_mid_batch_leaves_every_other_frame_sent_once_in_order(
    ring_on: bool,
) -> None:
    """Frame 1 of 12 is refused for good (EMSGSIZE: larger than the socket's buffer), through
    the real Loop's flush. By writev the loop drops it and sends the rest; through the ring the
    later frames went in the same submission (requests are not linked) and must not be sent
    again: the ring lets the refused frame go and counts it, and the loop folds the count into
    its LINK_TX_ERROR drops. Before, the ring's frames 2-11 arrived three times."""
    from netstack.counters import Counters
    from netstack.drops import Drop
    from netstack.io.loop import Loop

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    link = PairLink("pair", a.fileno(), b"\x02\0\0\0\0\x01", 1500, 64)
    ring = None
    if ring_on:
        ring = _ring()
        link.tx_refused = ffi.new("int[1]")  # as TapLink._open_ring wires it
        lib.ns_uring_count_refused(ring.handle, link.tx_refused)
        link._tx_fn = ring.write_batch_fn()  # type: ignore[method-assign]
    frames = [(bytes([i]) * 100,) for i in range(12)]
    frames[1] = (b"\xff" * 60000,)
    counters = Counters()
    try:
        with Loop(counters) as loop:
            queue = loop.add_link(link, lambda views, now: None)
            queue.extend(frames)
            got: list[bytes] = []
            for _ in range(5):  # the loop retries what is left when the fd is writable
                loop._flush(0.0)
                got += _drain(b)
                if not queue:
                    break
            loop.remove_link(link)
        assert got == [f[0] for i, f in enumerate(frames) if i != 1]
        assert counters.drops[Drop.LINK_TX_ERROR] == 1
        if ring_on:
            assert link.tx_refused[0] == 0  # folded and zeroed by the loop
    finally:
        if ring is not None:
            ring.close()
        a.close()
        b.close()
