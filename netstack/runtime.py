"""Assembles a running stack from a Config: link, host, services, pcap and the loop."""

from __future__ import annotations

import logging
import os
import random

from netstack.api.services import start_services
from netstack.config import Config
from netstack.counters import Counters
from netstack.io import netlink
from netstack.io.loop import Loop
from netstack.pcap import PcapWriter
from netstack.proto.host import Host, HostConfig
from netstack.wire.ethernet import mac_to_str

log = logging.getLogger("netstack")

CAP_NET_ADMIN = 12


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

            link = TapLink(config.interface)
            netlink.configure_interface(
                config.interface, address=config.host_address, mtu=config.mtu
            )
        else:
            from netstack.io.packet import PacketLink

            if not netlink.interface_exists(config.interface):
                raise StartupError(f"interface {config.interface} does not exist")
            netlink.configure_interface(config.interface, address=None, mtu=config.mtu)
            link = PacketLink(config.interface)
    except LinkError as err:
        raise StartupError(str(err)) from None
    except netlink.NetlinkConfigError as err:
        raise StartupError(str(err)) from None
    return link


class Stack:
    """A host on a link, driven by a loop; `run()` blocks until SIGINT/SIGTERM or `stop()`."""

    def __init__(self, config: Config, link, *, clock=None) -> None:
        self.config = config
        self.link = link
        self.counters = Counters()
        mtu = config.mtu or link.mtu
        mac = link.mac if config.link == "packet" and config.mac is None else config.stack_mac()
        self.host = Host(
            HostConfig(
                mac=mac,
                address=int(config.address.ip),
                prefix_len=config.address.network.prefixlen,
                gateway=int(config.gateway) if config.gateway is not None else None,
                mtu=mtu,
            ),
            self.counters,
            random.SystemRandom(),
        )
        self.services = start_services(self.host.udp, config.service_ports())
        self.loop = Loop(self.counters, clock=clock) if clock else Loop(self.counters)
        self.pcap: PcapWriter | None = None
        if config.pcap is not None:
            self.pcap = PcapWriter(
                config.pcap, max_bytes=config.pcap_max_bytes, max_files=config.pcap_max_files
            )
            self.loop.frame_observers.append(self._capture)
        self.loop.add_link(link, self._on_frames)
        self.loop.add_deadline_source(self.host.next_deadline, self._poll)

    def _on_frames(self, frames: list[memoryview], now: float) -> None:
        self.host.receive_batch(frames, now)
        self._move_tx()

    def _poll(self, now: float) -> None:
        self.host.poll(now)
        self._move_tx()

    def _move_tx(self) -> None:
        tx = self.host.tx
        if tx:
            self.loop.tx(self.link).extend(tx)
            tx.clear()

    def _capture(self, direction: str, frame, now: float) -> None:
        assert self.pcap is not None
        self.pcap.write(frame, now)

    def describe(self) -> str:
        ip = self.config.address.ip
        return (
            f"netstack up: {ip} ({mac_to_str(self.host.config.mac)}) on {self.link.name} "
            f"mtu {self.host.config.mtu}; try: ping {ip}, tcpdump -i {self.link.name}"
        )

    def run(self) -> None:
        self.host.start(self.loop.now())
        self._move_tx()
        log.info("%s", self.describe())
        try:
            self.loop.run()
        finally:
            self.close()

    def close(self) -> None:
        if self.pcap is not None:
            self.pcap.close()
            self.pcap = None
        self.link.close()
