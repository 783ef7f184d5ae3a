"""The DHCP lease's life outside the pure client: its file, and the RELEASE at shutdown.

The file remembers the lease across restarts so the client can start in INIT-REBOOT (RFC 2131
§3.2): a small JSON object, written atomically (temp file + rename). Loop times are monotonic
and die with the process, so the file holds the wall-clock time the lease was acquired; loading
converts it back to the new loop's clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from netstack.proto.dhcp import DhcpClient, Lease
from netstack.wire.ipv4 import ip_from_str, ip_to_str

log = logging.getLogger("netstack.dhcp")

RELEASE_WAIT = 1.0  # seconds shutdown waits for the RELEASE to leave (its next hop's ARP)


def lease_to_json(lease: Lease, *, loop_now: float, wall_now: float) -> str:
    data = {
        "address": ip_to_str(lease.address),
        "prefix_len": lease.prefix_len,
        "gateway": None if lease.gateway is None else ip_to_str(lease.gateway),
        "server_id": ip_to_str(lease.server_id),
        "lease_time": lease.lease_time,
        "renewal_time": lease.renewal_time,
        "rebinding_time": lease.rebinding_time,
        "mtu": lease.mtu,
        "acquired_unix": wall_now - (loop_now - lease.acquired),
    }
    return json.dumps(data, indent=1) + "\n"


def lease_from_json(text: str, *, loop_now: float, wall_now: float) -> Lease:
    """ValueError (or KeyError/TypeError) when the text is not a lease we wrote."""
    data = json.loads(text)
    gateway = data["gateway"]
    mtu = data["mtu"]
    return Lease(
        address=ip_from_str(data["address"]),
        prefix_len=int(data["prefix_len"]),
        gateway=None if gateway is None else ip_from_str(gateway),
        server_id=ip_from_str(data["server_id"]),
        lease_time=int(data["lease_time"]),
        renewal_time=float(data["renewal_time"]),
        rebinding_time=float(data["rebinding_time"]),
        mtu=None if mtu is None else int(mtu),
        acquired=loop_now - (wall_now - float(data["acquired_unix"])),
    )


class LeaseFile:
    """Load, save and forget the remembered lease; I/O errors are logged, never fatal."""

    def __init__(self, path: Path, wall_clock: Callable[[], float]) -> None:
        self.path = path
        self.wall_clock = wall_clock

    def load(self, loop_now: float) -> Lease | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("dhcp: cannot read lease file %s: %s", self.path, err.strerror)
            return None
        try:
            return lease_from_json(text, loop_now=loop_now, wall_now=self.wall_clock())
        except (ValueError, KeyError, TypeError) as err:
            log.warning("dhcp: ignoring lease file %s: %s", self.path, err)
            return None

    def save(self, lease: Lease, loop_now: float) -> None:
        text = lease_to_json(lease, loop_now=loop_now, wall_now=self.wall_clock())
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError as err:
            log.warning("dhcp: cannot write lease file %s: %s", self.path, err.strerror)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def forget(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("dhcp: cannot remove lease file %s: %s", self.path, err.strerror)


class Quiet(Protocol):
    def is_quiet(self) -> bool: ...


class ReleaseOnShutdown:
    """A shutdown closer (runtime.Closer) that sends DHCPRELEASE once the other closers are
    done (their FINs need the address), then waits up to RELEASE_WAIT for it to leave: a RELEASE
    to a server whose MAC is not cached waits in the ARP queue."""

    def __init__(
        self,
        client: DhcpClient,
        others: list[Quiet],
        clock: Callable[[], float],
        arp_queued: Callable[[], int],
        on_released: Callable[[], None],
    ) -> None:
        self.client = client
        self.others = others
        self.clock = clock
        self.arp_queued = arp_queued
        self.on_released = on_released
        self.started = False
        self.sent_at: float | None = None

    def begin_shutdown(self, now: float) -> None:
        self.started = True

    def is_quiet(self) -> bool:
        if not self.started:
            return True
        if self.sent_at is None:
            if not all(other.is_quiet() for other in self.others):
                return False
            self._release(self.clock())
        return self.arp_queued() == 0 or self.clock() - self.sent_at >= RELEASE_WAIT

    def abort(self, now: float) -> None:
        if self.sent_at is None:
            self._release(now)

    def _release(self, now: float) -> None:
        self.sent_at = now
        if self.client.release(now):
            log.info("dhcp: lease released")
            self.on_released()
