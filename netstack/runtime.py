"""Assembles a running stack from a Config: link, host, services, pcap and the loop.

It also runs the stack's life as a service: READY=1/WATCHDOG=1/STATUS= to systemd (notify.py),
a graceful SIGTERM (closers get `shutdown_timeout` seconds to end their connections, then are
reset) and a SIGHUP that reloads what can change live.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import ipaddress
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Protocol

from netstack.api.services import start_services
from netstack.config import BUSY_POLL_AUTO_US, SETTINGS, Config, ConfigError
from netstack.counters import Counters
from netstack.io import netlink
from netstack.io.fault import FaultLink
from netstack.io.loop import Loop
from netstack.io.offload import OFF, TSO_MAX, TUN_F_USO
from netstack.lease import LeaseFile, ReleaseOnShutdown
from netstack.logsetup import set_level
from netstack.notify import Heartbeat, Notifier
from netstack.pcap import PcapWriter
from netstack.proto.dhcp import DhcpConfig, DhcpState, Lease
from netstack.proto.host import Host, HostConfig
from netstack.wire.ethernet import mac_to_str
from netstack.wire.ipv4 import ip_to_str

log = logging.getLogger("netstack")

CAP_NET_ADMIN = 12
# UDP echo replies per super-frame when the link's kernel has USO (UdpEngine.gso_max): a
# receive batch's worth, one write instead of one per datagram.
USO_ECHO_MAX = 64


class StartupError(RuntimeError):
    """The stack cannot start; str() is the one line shown to the user."""


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def open_link(config: Config):
    """Open (creating if needed) the configured link and configure its kernel side."""
    from netstack.io.link import LinkError

    if not has_net_admin():
        raise StartupError("needs root or CAP_NET_ADMIN (try: sudo netstack run)")
    try:
        if config.link == "tap":
            from netstack.io.tap import TapLink

            link = TapLink(
                config.interface, offload=config.offload, gso=config.gso, gro=config.gro,
                tx=config.tap_tx,
            )  # fmt: skip
            netlink.configure_interface(
                config.interface, address=config.host_address, mtu=config.mtu
            )
            if config.address6 is not None and config.host_address6 is not None:
                netlink.add_address6(config.interface, config.host_address6)
        else:
            from netstack.io.packet import PacketLink

            if not netlink.interface_exists(config.interface):
                raise StartupError(f"interface {config.interface} does not exist")
            netlink.configure_interface(config.interface, address=None, mtu=config.mtu)
            link = PacketLink(
                config.interface, offload=config.offload, ring=config.packet_ring,
                gso=config.gso, gro=config.gro,
            )  # fmt: skip
    except LinkError as err:
        raise StartupError(str(err)) from None
    except netlink.NetlinkConfigError as err:
        raise StartupError(str(err)) from None
    return link


class Closer(Protocol):
    """Something holding connections that should end politely on SIGTERM (the TCP engine).

    Frames it emits go out the usual way (the host's tx list); the loop keeps turning while it
    drains, so FINs are retransmitted and ACKs received as in normal operation.
    """

    def begin_shutdown(self, now: float) -> None:
        """Stop accepting new connections; start closing the open ones (send FIN)."""

    def is_quiet(self) -> bool:
        """True once nothing is left to close."""

    def abort(self, now: float) -> None:
        """The grace period is over: reset (RST) whatever is left."""


class GracefulShutdown:
    """SIGTERM's sequence, pure: begin -> poll until every closer is quiet or `timeout` has
    passed -> abort the loud ones -> done. The stack runs `poll` as a loop deadline source."""

    CHECK_INTERVAL = 0.05  # how often is_quiet() is asked while draining

    def __init__(self, closers: list[Closer], timeout: float) -> None:
        self.closers = closers
        self.timeout = timeout
        self.started = False
        self.done = False
        self.deadline: float | None = None
        self.aborted: list[Closer] = []
        self._next_check: float | None = None

    def begin(self, now: float) -> None:
        if self.started:
            return
        self.started = True
        self.deadline = now + self.timeout
        for closer in self.closers:
            closer.begin_shutdown(now)
        self.poll(now)

    def poll(self, now: float) -> bool:
        """Check the closers; abort them at the deadline. True once shutdown is complete."""
        if not self.started or self.done:
            return self.done
        assert self.deadline is not None
        loud = [closer for closer in self.closers if not closer.is_quiet()]
        if loud and now < self.deadline:
            self._next_check = min(self.deadline, now + self.CHECK_INTERVAL)
            return False
        for closer in loud:
            closer.abort(now)
        self.aborted = loud
        self.done = True
        self._next_check = None
        return True

    def abort_now(self, now: float) -> bool:
        """Skip the rest of the grace period (a second SIGTERM)."""
        self.begin(now)
        self.deadline = now
        return self.poll(now)

    def next_deadline(self) -> float | None:
        return self._next_check


def _show(value: object) -> str:
    if value is None:
        return "none"
    return mac_to_str(value) if isinstance(value, bytes) else str(value)


# Settings a SIGHUP applies to the running stack, and the Stack method that applies each;
# every other setting needs a restart.
LIVE_SETTINGS: dict[str, str] = {
    "log_level": "_apply_log_level",
    "pcap": "_apply_pcap",
    "pcap_max_bytes": "_apply_pcap",
    "pcap_max_files": "_apply_pcap",
    "shutdown_timeout": "_apply_shutdown_timeout",
    "forward": "_apply_front",
}


class Stack:
    """A host on a link, driven by a loop; `run()` blocks until SIGINT/SIGTERM or `stop()`."""

    def __init__(
        self,
        config: Config,
        link,
        *,
        clock=None,
        notifier: Notifier | None = None,
        reload: Callable[[], Config] | None = None,
    ) -> None:
        """`reload` returns the config as it is now (re-read from its file) for SIGHUP."""
        self.config = config
        self.link = link
        self.counters = Counters()
        mtu = config.mtu or link.mtu
        mac = link.mac if config.link == "packet" and config.mac is None else config.stack_mac()
        offloads = getattr(link, "offloads", OFF)
        tcp = config.tcp_config()
        soft_gso = getattr(link, "soft_gso", None) is not None  # the link cuts (softoffload)
        if offloads.tso4 or soft_gso:  # TCP may hand the link segments of up to 64 KiB (TSO)
            tcp = dataclasses.replace(tcp, tso_max=TSO_MAX)
        if offloads.tso6 or soft_gso:  # the same over IPv6 (TSO6)
            tcp = dataclasses.replace(tcp, tso6_max=TSO_MAX)
        soft_gro = getattr(link, "soft_gro", None)
        if soft_gro is not None:
            soft_gro.mac = mac  # merge only what is to the stack's MAC (the drops stay per frame)
        self.host = Host(
            HostConfig(
                mac=mac,
                address=0 if config.dhcp else int(config.address.ip),
                prefix_len=0 if config.dhcp else config.address.network.prefixlen,
                gateway=int(config.gateway) if config.gateway is not None else None,
                mtu=mtu,
                tcp=tcp,
                dhcp=DhcpConfig() if config.dhcp else None,
                ipv6=ipv6_host_config(config, mtu),
            ),
            self.counters,
            random.SystemRandom(),
        )
        if self.host.v6 is not None:
            self.host.v6.nd.on_dad_failure = _dad_failed
            self.host.v6.nd.on_address = _address_ready
            self.host.v6.nd.on_deprecated = _address_deprecated
        self.services = start_services(
            self.host.udp, {**config.service_ports(), **config.tcp_service_ports()}, self.host.tcp
        )
        if (offloads.vnet and offloads.available & TUN_F_USO) or soft_gso:
            # The kernel (USO) or the link's software cut makes datagrams of UDP super-frames:
            # the echo service's replies to one batch leave as one super-frame per peer.
            self.host.udp.gso_max = USO_ECHO_MAX
        adaptive = config.busy_poll == "auto"
        busy = (BUSY_POLL_AUTO_US if adaptive else int(config.busy_poll)) / 1e6
        self.loop = (
            Loop(self.counters, clock=clock, busy_poll=busy, busy_poll_adaptive=adaptive)
            if clock
            else Loop(self.counters, busy_poll=busy, busy_poll_adaptive=adaptive)
        )
        self.pcap: PcapWriter | None = None
        self.metrics = None  # a metrics.MetricsServer once start_metrics() has run
        self.admin = None  # its api.admin.LoopDoor (/connections), likewise
        self._apply_pcap()
        if config.fault is not None:  # --fault: impair the link for testing (io/fault.py)
            self.link = link = FaultLink.around(link, config.fault, self.loop, self.counters)
        # The host's tx list is the link's tx queue itself: what the host emits is already
        # queued (no move per batch or poll; the loop flushes it at the end of the turn).
        self.loop.add_link(link, self._on_frames, tx_queue=self.host.tx)
        self.loop.add_deadline_source(
            self.host.next_deadline,
            self.host.poll,
            announces=self.host.announce_deadlines(self.loop.deadline_moved),
        )
        self._init_service(notifier, reload)
        self.add_closer(self.host.tcp)  # SIGTERM: FIN every connection, RST what is left
        self._start_front()  # before DHCP: its RELEASE waits for every closer made so far
        self.lease_file: LeaseFile | None = None
        if self.host.dhcp is not None:
            self._init_dhcp()

    def _on_frames(self, frames: list[memoryview], now: float) -> None:
        # rx_meta: each frame's virtio-net header (None without one), parallel to frames
        # rx_arena: the frames as the link's arena holds them (the UDP echo batch reads it)
        link = self.link
        self.host.receive_batch(
            frames, now, getattr(link, "rx_meta", None), getattr(link, "rx_arena", None)
        )

    def _move_tx(self) -> None:
        """Hand what the host emitted to the link's tx queue (a no-op since the queue is the
        host's list: kept for the callers that say "this goes out now")."""
        tx = self.host.tx
        queue = self.loop.tx(self.link)
        if tx and tx is not queue:
            queue.extend(tx)
            tx.clear()

    def push_tx(self) -> None:
        """Send what applications queued outside a receive batch or timer (a UDP sendto from
        a kernel-socket callback): it goes out at the end of this loop turn."""
        self._move_tx()

    def _start_front(self) -> None:
        """Forwards and the SOCKS front (netstack/front): kernel programs through the stack."""
        from netstack.front.front import Front
        from netstack.front.port import StackPort

        port = StackPort(
            self.loop, self.host.tcp, self.host.udp, self.current_address, self.push_tx,
            self.current_addresses6,
        )  # fmt: skip
        try:
            self.front = Front(port, self.config)
        except OSError as err:  # e.g. the SOCKS port is taken
            where, why = self.config.socks_listen, err.strerror or err
            raise StartupError(f"cannot start the SOCKS front on {where}: {why}") from None
        self.add_closer(self.front)

    def current_address(self) -> ipaddress.IPv4Interface:
        """The address the stack answers on now: static, or DHCP's (0.0.0.0/32 while unbound)."""
        ipv4 = self.host.ipv4.config
        return ipaddress.IPv4Interface((ipv4.address, ipv4.prefix_len))

    def current_addresses6(self) -> tuple[ipaddress.IPv6Interface, ...]:
        """Our usable IPv6 addresses with their prefix lengths now (none with IPv6 off)."""
        v6 = self.host.v6
        if v6 is None:
            return ()
        return tuple(
            ipaddress.IPv6Interface((e.address, e.prefix_len)) for e in v6.addresses if e.usable
        )

    def _apply_front(self) -> None:
        self.front.apply(self.config)

    def _capture(self, direction: str, frame, now: float) -> None:
        assert self.pcap is not None
        self.pcap.write(frame, now)

    def address_text(self) -> str:
        """The address we answer on: static, or what DHCP has given us (or is doing)."""
        if not self.config.dhcp:
            return str(self.config.address.ip)
        dhcp = self.host.dhcp
        assert dhcp is not None
        lease = dhcp.lease
        if lease is None or dhcp.state not in (
            DhcpState.BOUND,
            DhcpState.RENEWING,
            DhcpState.REBINDING,
        ):
            return f"dhcp ({dhcp.state.value}, no address yet)"
        ip = f"{ip_to_str(lease.address)}/{lease.prefix_len}"
        left = dhcp.seconds_left(self.loop.now())
        return f"{ip} (dhcp {dhcp.state.value}, lease {left:.0f}s left)"

    def describe(self) -> str:
        if self.config.dhcp:
            return (
                f"netstack up: address from DHCP ({mac_to_str(self.host.config.mac)}) on "
                f"{self.link.name} mtu {self.host.config.mtu}; the lease is logged once bound"
            )
        ip = self.config.address.ip
        return (
            f"netstack up: {ip} ({mac_to_str(self.host.config.mac)}) on {self.link.name} "
            f"mtu {self.host.config.mtu}; try: ping {ip}, tcpdump -i {self.link.name}"
            f"{self._describe6()}"
        )

    def _describe6(self) -> str:
        """IPv6 in the start-up line: with `auto` there is no global address until a router
        advertises a prefix, which a user trying `ping -6` needs to know."""
        address6 = self.config.address6
        if self.host.v6 is None or address6 is None:
            return "; ipv6 off"
        if isinstance(address6, ipaddress.IPv6Interface):
            return f", ping -6 {address6.ip}"
        return "; ipv6 auto: link-local now, global addresses from router advertisements (SLAAC)"

    def pmtu_cache_entries(self) -> int:
        """Destinations with a path MTU below the link's, both families."""
        v6 = self.host.v6
        return len(self.host.ipv4.pmtu) + (len(v6.ipv6.pmtu) if v6 is not None else 0)

    def checksum_completion_hook(self) -> Callable[[], int] | None:
        """Reads the AF_PACKET link's count of partial checksums it completed; None for a TAP
        and with the vnet header (the header flags such frames: nothing to complete)."""
        link = self.link
        if getattr(link, "vnet", True) or not hasattr(link, "rx_csum_completed"):
            return None
        return lambda: link.rx_csum_completed

    def nd_cache_entries(self) -> int:
        v6 = self.host.v6
        return 0 if v6 is None else v6.nd.cache_entries()

    def describe_offloads(self) -> str:
        """What the link negotiated (and, for AF_PACKET, how it receives and sends)."""
        link = self.link
        send_only = ("uso",) if self.host.udp.gso_max else ()  # UDP echo super-frames
        line = getattr(link, "offloads", OFF).describe(link.name, send_only)
        soft = [kind for kind in ("gso", "gro") if getattr(link, f"soft_{kind}", None) is not None]
        if soft:  # io/softoffload.py: what the link does in software instead
            line += f"; software {' '.join(soft)}"
        rx_mode = getattr(link, "rx_mode", None)
        if rx_mode is not None:
            bypass = "on" if getattr(link, "qdisc_bypass", False) else "off"
            line += f"; receive {rx_mode}, qdisc bypass {bypass}"
        tx_mode = getattr(link, "tx_mode", None)
        if tx_mode is not None:  # io/tap.py: io_uring batches or one writev per frame
            line += f"; send {tx_mode}"
        return line

    def run(self) -> None:
        now = self.loop.now()
        self.host.start(now, self.lease_file.load(now) if self.lease_file is not None else None)
        self._move_tx()
        log.info("%s", self.describe())
        log.info("%s", self.describe_offloads())
        self.loop.call_at(now, self._ready)  # from the first turn: the loop is serving
        # What start-up made (modules, config, tables) lives as long as the process: moved
        # out of the cyclic collector's reach, so its full collections under load scan only
        # what the traffic made (bench/PROFILE.md, fifth pass).
        gc.freeze()
        try:
            self.loop.run()
        finally:
            if not self.shutdown.started:
                self.notifier.stopping()
            self.heartbeat.stop()
            self.close()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        if self.pcap is not None:
            self.pcap.close()
            self.pcap = None
        self.front.close()
        self.link.close()
        self.notifier.close()

    # -- metrics -------------------------------------------------------------------------------
    def tcp_connections_by_state(self) -> dict[str, int]:
        """TCP connections per state name (metrics.TCP_STATES; "listen" counts listeners).

        Runs on the metrics HTTP thread: read per-state ints or copy before iterating, never
        walk a dict the loop may resize meanwhile.
        """
        return self.host.tcp.connections_by_state()  # a copy of a fixed-size dict of ints

    def start_metrics(self) -> None:
        """Serve Prometheus metrics at config.metrics_address (None: off). Called by `run`'s
        caller (the CLI) before run(), so a busy port is a startup error, not a half-up stack.
        """
        address = self.config.metrics_address
        if address is None or self.metrics is not None:
            return
        from netstack.metrics import MetricsServer, build_registry

        registry = build_registry(
            self.counters,
            interface=self.link.name,
            arp_cache_entries=self.host.arp.cache_entries,
            tcp_connections_by_state=self.tcp_connections_by_state,
            dhcp_status=self.dhcp_status,
            pmtu_cache_entries=self.pmtu_cache_entries,
            nd_cache_entries=self.nd_cache_entries,
            receive_mode=getattr(self.link, "rx_mode", None),
            rx_checksums_completed=self.checksum_completion_hook(),
        )
        from netstack.metrics import FrontCollector

        registry.register(FrontCollector(self.front.stats))
        from netstack.api.admin import LoopDoor
        from netstack.proto.tcp.introspect import connection_table

        # /connections (netstack ss): the loop builds the table, the HTTP thread waits for it.
        self.admin = door = LoopDoor(self.loop)
        tcp = self.host.tcp
        routes = {"/connections": lambda: door.call(lambda now: connection_table(tcp, now))}
        try:
            self.metrics = MetricsServer(address.host, address.port, registry, routes)
        except OSError as err:
            hint = "set metrics_address, or 'none' to turn metrics off"
            if err.errno == errno.EADDRNOTAVAIL:  # a fresh network namespace: lo starts down
                hint = "is the loopback interface up? or " + hint
            raise StartupError(
                f"cannot serve metrics on {address}: {err.strerror or err} ({hint})"
            ) from None
        log.info("metrics at %s", self.metrics.url)

    # -- DHCP ----------------------------------------------------------------------------------
    def _init_dhcp(self) -> None:
        client = self.host.dhcp
        assert client is not None
        self.lease_file = LeaseFile(self.config.lease_file(), time.time)
        self._lease_address: int | None = None
        self.host.on_lease = self._on_lease
        client.on_state = lambda old, new: log.info("dhcp: %s -> %s", old.value, new.value)
        if self.config.dhcp_release:
            self.add_closer(
                ReleaseOnShutdown(
                    client,
                    list(self.closers),
                    self.loop.now,
                    self.host.arp.queued_packets,
                    self.lease_file.forget,
                )
            )

    def _on_lease(self, lease: Lease | None, now: float) -> None:
        """The client bound, renewed or lost its lease: remember it, say so."""
        assert self.lease_file is not None
        if lease is None:
            log.warning("dhcp: lease lost; no address")
            self.lease_file.forget()
        elif self._lease_address == lease.address:
            log.info("dhcp: lease renewed, %ss (T1 %.0fs)", lease.lease_time, lease.renewal_time)
            self.lease_file.save(lease, now)
        else:
            gateway = "none" if lease.gateway is None else ip_to_str(lease.gateway)
            log.info(
                "dhcp: bound %s/%d gateway %s server %s lease %ss (T1 %.0fs, T2 %.0fs)",
                ip_to_str(lease.address), lease.prefix_len, gateway, ip_to_str(lease.server_id),
                lease.lease_time, lease.renewal_time, lease.rebinding_time,
            )  # fmt: skip
            self.lease_file.save(lease, now)
        self._lease_address = None if lease is None else lease.address
        self.notifier.status(self.status_line(now))

    def dhcp_status(self) -> tuple[str, float] | None:
        """(state, lease seconds left) for the metrics thread; None without DHCP."""
        client = self.host.dhcp
        if client is None:
            return None
        return client.state.value, client.seconds_left(self.loop.now())

    # -- life as a service ---------------------------------------------------------------------
    def _init_service(self, notifier: Notifier | None, reload: Callable[[], Config] | None) -> None:
        self.notifier = notifier if notifier is not None else Notifier()
        self.reload_config = reload
        # The TCP engine registers itself here (add_closer) for a graceful SIGTERM.
        self.closers: list[Closer] = []
        self.shutdown = GracefulShutdown(self.closers, self.config.shutdown_timeout)
        # Its deadline is set only by its own poll and by request_shutdown, which says so.
        self.loop.add_deadline_source(
            self.shutdown.next_deadline, self._shutdown_poll, announces=True
        )
        self.heartbeat = Heartbeat(self.notifier, self.loop, self.status_line)
        self._rate_sample: tuple[float, int, int] | None = None
        self.loop.signal_handlers.update(
            {
                signal.SIGTERM: self._on_stop_signal,
                signal.SIGINT: self._on_stop_signal,
                signal.SIGHUP: self._on_reload_signal,
            }
        )

    def add_closer(self, closer: Closer) -> None:
        self.closers.append(closer)

    def status_line(self, now: float) -> str:
        """One line for `systemctl status`: state, address, connections, packet rates."""
        rx, tx = self.counters.rx_packets, self.counters.tx_packets
        since, rx0, tx0 = self._rate_sample or (now, rx, tx)
        self._rate_sample = (now, rx, tx)
        elapsed = now - since
        rx_pps = (rx - rx0) / elapsed if elapsed > 0 else 0.0
        tx_pps = (tx - tx0) / elapsed if elapsed > 0 else 0.0
        state = "stopping" if self.shutdown.started else "up"
        line = (
            f"{state}: {self.address_text()} on {self.link.name}, "
            f"{self.host.tcp.connection_count()} connections, "
            f"rx {rx_pps:.0f} pps, tx {tx_pps:.0f} pps"
        )
        # the IPv6 addresses a user would reach us on (static, SLAAC; not the link-local one)
        v6 = [str(a) for a in self.current_addresses6() if not a.ip.is_link_local]
        return f"{line}; ipv6 {' '.join(v6)}" if v6 else line

    def _ready(self, now: float) -> None:
        self.notifier.ready(self.status_line(now))
        self.heartbeat.start(now)

    def request_shutdown(self, now: float) -> None:
        """What SIGTERM does: STOPPING=1, closers begin; the loop stops once they are done."""
        if self.shutdown.started:
            log.warning("shutdown already under way: resetting what is left")
            self.shutdown.abort_now(now)
        else:
            log.info(
                "shutting down: %d closer(s) get %ss to end their connections",
                len(self.closers),
                self.shutdown.timeout,
            )
            self.shutdown.begin(now)
            self.notifier.stopping(self.status_line(now))
        self.loop.deadline_changed()  # the shutdown's checks (and the closers' timers) begin
        self._shutdown_step(now)

    def _on_stop_signal(self, signum: int, now: float) -> None:
        log.info("%s received", signal.Signals(signum).name)
        self.request_shutdown(now)

    def _shutdown_poll(self, now: float) -> None:
        self.shutdown.poll(now)
        self._shutdown_step(now)

    def _shutdown_step(self, now: float) -> None:
        self._move_tx()  # FINs and RSTs the closers emitted
        if self.shutdown.done:
            if self.shutdown.aborted:
                log.warning(
                    "shutdown: %d closer(s) still busy after %ss were reset",
                    len(self.shutdown.aborted),
                    self.shutdown.timeout,
                )
            self.loop.stop()

    def _on_reload_signal(self, signum: int, now: float) -> None:
        if self.reload_config is None:
            log.warning("SIGHUP: started without --config, nothing to reload")
            return
        self.notifier.reloading(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        try:
            self.apply_config(self.reload_config())
        except ConfigError as err:
            log.error("reload failed, running settings kept: %s", err)
        except OSError as err:  # e.g. a pcap path that cannot be written
            log.error("reload: %s", err)
        finally:
            self.notifier.ready(self.status_line(now))

    def apply_config(self, new: Config) -> list[str]:
        """Apply what can change live; log every change. Returns the keys that need a restart."""
        old = self.config
        changed = [s for s in SETTINGS if getattr(old, s.attr) != getattr(new, s.attr)]
        if not changed:
            log.info("reload: no changes")
        live = [s for s in changed if s.key in LIVE_SETTINGS]
        restart = [s for s in changed if s.key not in LIVE_SETTINGS]
        for s in changed:
            change = f"{_show(getattr(old, s.attr))} -> {_show(getattr(new, s.attr))}"
            if s.key in LIVE_SETTINGS:
                log.info("reload: %s changed (%s), applied", s.key, change)
            else:
                log.warning("reload: %s changed (%s), needs a restart", s.key, change)
        self.config = dataclasses.replace(old, **{s.attr: getattr(new, s.attr) for s in live})
        for method in dict.fromkeys(LIVE_SETTINGS[s.key] for s in live):
            getattr(self, method)()
        return [s.key for s in restart]

    def _apply_log_level(self) -> None:
        set_level(self.config.log_level)

    def _apply_shutdown_timeout(self) -> None:
        self.shutdown.timeout = self.config.shutdown_timeout

    def _apply_pcap(self) -> None:
        """(Re)open the capture the config asks for; the old file is flushed and closed."""
        if self.pcap is not None:
            self.pcap.close()
            self.pcap = None
        observers = self.loop.frame_observers
        if self._capture in observers:
            observers.remove(self._capture)
        config = self.config
        if config.pcap is not None:
            self.pcap = PcapWriter(
                config.pcap, max_bytes=config.pcap_max_bytes, max_files=config.pcap_max_files
            )
            observers.append(self._capture)


SECRET_FILE = "ipv6-secret"


def ipv6_secret(config: Config) -> bytes:
    """RFC 7217 secret_key: from the config, else kept in the state directory (made once, so
    the interface IDs stay stable across restarts); if that cannot be written, a random one
    for this run (addresses then change at each start: said in the log)."""
    if config.ipv6_secret is not None:
        return config.ipv6_secret
    from netstack.config import STATE_DIRECTORY

    path = STATE_DIRECTORY / SECRET_FILE
    try:
        data = path.read_bytes()
        if len(data) >= 16:
            return data
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("ipv6: cannot read %s (%s)", path, err.strerror)
    secret = os.urandom(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secret)
    except OSError as err:
        log.warning(
            "ipv6: cannot keep the interface-ID secret in %s (%s): IPv6 addresses will change "
            "at the next start (set ipv6_secret to fix them)",
            path,
            err.strerror,
        )
    return secret


def ipv6_host_config(config: Config, mtu: int):  # -> Ipv6HostConfig | None
    """address6: none -> no IPv6; auto -> link-local + SLAAC; ADDR/P -> link-local + it."""
    import ipaddress as _ip

    from netstack.proto.v6 import Ipv6HostConfig

    if config.address6 is None:
        return None
    if mtu < 1280:
        log.warning("ipv6: off, the link MTU %d is below IPv6's 1280 (RFC 8200 section 5)", mtu)
        return None
    static = ()
    if isinstance(config.address6, _ip.IPv6Interface):
        static = ((config.address6.ip.packed, config.address6.network.prefixlen),)
    return Ipv6HostConfig(
        interface=config.interface,
        secret=ipv6_secret(config),
        static=static,
        slaac=config.address6 == "auto",
    )


def _dad_failed(entry, now: float) -> None:
    log.error(
        "ipv6: duplicate address detection failed for %s: another node on the link uses it; "
        "the address is not used (RFC 4862 section 5.4.5)",
        entry,
    )


def _address_ready(entry, now: float) -> None:
    log.info("ipv6: address %s ready (%s)", entry, entry.origin.value)


def _address_deprecated(entry, now: float) -> None:
    log.info("ipv6: address %s deprecated (kept for existing peers, not chosen as a source)", entry)
