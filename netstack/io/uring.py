"""io_uring for the TAP writer (config `tap_tx`, issue 10): a batch of frames, or the pieces
of one cut super-segment, in ONE system call instead of one writev each.

Why: each frame written to a TAP runs the kernel's receive inside the write and wakes the
receiving socket's reader; on our CPU that reader preempts us, once per frame (40-100 k
timeslices per 300 MiB of chargen with offloads off, bench/PROFILE.md "Seventh pass"). Within
one io_uring_enter the kernel still receives frame by frame, but the woken reader runs when
the call returns: once per batch, and it then reads the batch's bytes in one recv.

The ring is the C side's (ffi/netstack_ffi.c ns_uring_*, raw syscalls, no liburing). It is
probed at open with a request that cannot send anything (an empty frame the TAP refuses with
EINVAL), so a kernel without io_uring, with io_uring disabled (kernel.io_uring_disabled,
seccomp), or without RWF_NOWAIT on a TAP falls back to writev with the reason said.
"""

from __future__ import annotations

import errno
import functools
import os

from netstack._ffi import ffi, lib

ENTRIES = 128  # submission slots (a batch is at most 64 requests)


class Ring:
    """One io_uring instance; `write_batch` is ns_write_batch's drop-in for one fd."""

    def __init__(self, ring) -> None:
        self._ring = ring

    @property
    def handle(self):
        return self._ring

    def write_batch_fn(self):
        """ns_tap_write_batch bound to this ring, called as the link's _tx_fn is: batches of
        NS_URING_MIN frames or more through the ring, smaller ones by writev (the ring costs
        more than it saves on a connection's batches of ~2 frames)."""
        return functools.partial(lib.ns_tap_write_batch, self._ring)

    def close(self) -> None:
        """Unmap and close; idempotent."""
        if self._ring != ffi.NULL:
            ring, self._ring = self._ring, ffi.NULL
            lib.ns_uring_close(ring)


def open_ring(fd: int) -> tuple[Ring | None, str]:
    """(a ring for writing to the TAP `fd`, "") or (None, why not) after the probe."""
    err = ffi.new("int *")
    ring = lib.ns_uring_open(ENTRIES, err)
    if ring == ffi.NULL:
        return None, f"io_uring_setup: {os.strerror(-err[0])}"
    # Two empty frames (a batch of one would be a plain writev): iov_len 0 is too short for
    # a frame, so nothing is sent. The TAP answers EINVAL when io_uring reached it with
    # RWF_NOWAIT; EOPNOTSUPP when it does not take RWF_NOWAIT.
    counts = ffi.new("int[2]", [1, 1])
    pair = ffi.new("struct iovec[2]")
    rc = lib.ns_uring_write_batch(ring, fd, pair, counts, 2)
    if rc == -errno.EINVAL:
        return Ring(ring), ""
    lib.ns_uring_close(ring)
    why = os.strerror(-rc) if rc < 0 else f"an empty frame was accepted ({rc})"
    return None, f"io_uring write to the TAP: {why}"
