"""The impairment wire of a soak: a relay between the kernel and the stack whose faults change live.

    kernel 192.0.2.1 on peer0 (TAP) <-> relay: to_stack / to_kernel FaultChannels
        <-> AF_PACKET on tap0 (kernel side unaddressed, ARP off) <-> stack 192.0.2.2

Why a relay and not the stack's own `--fault`: a soak switches loss, reordering and delay on and
off during one run, and the stack's fault setting is fixed at start (SIGHUP reloads only the log
level and the pcap), while restarting the stack mid-run would defeat the soak. The relay applies
a new impairment on SIGUSR1 (read from its control file) and writes its counters (JSON) to its
stats file; SIGTERM ends it with a last write. The kernel tests (tests/integration/impair.py)
drive this same module, and the installed `netstack soak` never imports tests/. Run as
`python -m netstack.soak.relay` inside the namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import struct
import sys
from pathlib import Path

from netstack.io.fault import RX_FORM, FaultChannel, Impairment, channel_rng, parse_fault
from netstack.wire import vnet as wvnet

KERNEL_IF = "peer0"
KERNEL_ADDRESS = "192.0.2.1/24"
SOL_PACKET = 263
PACKET_STATISTICS = 6
SOCKET_BUFFER = 8 << 20

log = logging.getLogger("netstack.soak.relay")


def impairment_text(imp: Impairment) -> str:
    """The fault-setting spelling of one direction ('none' when clean)."""
    return ",".join(imp.items()) or "none"


def impairment_from_text(text: str) -> Impairment:
    spec = parse_fault(text)
    return spec.rx if spec is not None else Impairment()


class Relay:
    """Moves frames both ways between two links through one FaultChannel per direction."""

    def __init__(
        self, loop, kernel_link, stack_link, to_stack: Impairment, to_kernel: Impairment, seed: int
    ) -> None:
        self.channels = {
            "to_stack": FaultChannel(to_stack, channel_rng(seed, "to_stack"), RX_FORM),
            "to_kernel": FaultChannel(to_kernel, channel_rng(seed, "to_kernel"), RX_FORM),
        }
        self.stack_link = stack_link
        # add_link returns the link's own tx queue: what goes *to* that side
        self._to_kernel_q = loop.add_link(kernel_link, self._from_kernel)
        self._to_stack_q = loop.add_link(stack_link, self._from_stack)
        loop.add_deadline_source(self.next_deadline, self.release)
        self.wire_drops = 0

    def _from_kernel(self, views: list[memoryview], now: float) -> None:
        out: list[memoryview] = []
        self.channels["to_stack"].process(views, now, out)
        self._to_stack_q.extend((v,) for v in out)

    def _from_stack(self, views: list[memoryview], now: float) -> None:
        metas = getattr(self.stack_link, "rx_meta", None)
        if metas and any(metas):
            views = self._as_on_the_wire(views, metas)
        out: list[memoryview] = []
        self.channels["to_kernel"].process(views, now, out)
        self._to_kernel_q.extend((v,) for v in out)

    @staticmethod
    def _as_on_the_wire(views: list[memoryview], metas: list[int]) -> list[memoryview]:
        """The stack's super-frames (offload) cut into the segments a wire would carry, and
        partial checksums completed, so faults hit wire segments as on a real network."""
        out: list[memoryview] = []
        for view, meta in zip(views, metas, strict=True):
            if meta:
                segments = wvnet.software_segments(view, wvnet.meta_header(meta))
                out.extend(map(memoryview, segments))
            else:
                out.append(view)
        return out

    def next_deadline(self) -> float | None:
        deadlines = [c.next_deadline() for c in self.channels.values()]
        return min((d for d in deadlines if d is not None), default=None)

    def release(self, now: float) -> None:
        for name, queue in (("to_stack", self._to_stack_q), ("to_kernel", self._to_kernel_q)):
            out: list[memoryview] = []
            self.channels[name].release(now, out)
            queue.extend((v,) for v in out)

    def set_impairments(self, to_stack: Impairment, to_kernel: Impairment) -> None:
        """Change the faults live; frames already held still leave at their time."""
        self.channels["to_stack"].impairment = to_stack
        self.channels["to_kernel"].impairment = to_kernel

    def stats(self) -> dict:
        return {name: ch.stats.as_dict() for name, ch in self.channels.items()}


def _packet_drops(fd: int) -> int:
    """Frames the AF_PACKET socket lost since the last call (PACKET_STATISTICS resets)."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            _, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            return drops
        finally:
            sock.close()
    return 0


def _grow_socket_buffers(fd: int) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # *BUFFORCE
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    """Run the relay inside the namespace until SIGTERM (or a link disappears)."""
    from netstack.io import netlink
    from netstack.io.loop import Loop
    from netstack.io.packet import PacketLink
    from netstack.io.tap import TapLink

    parser = argparse.ArgumentParser(prog="netstack-soak-relay")
    parser.add_argument("--wire", default="tap0", help="the stack's TAP (AF_PACKET on it)")
    parser.add_argument("--peer", default=KERNEL_IF, help="TAP created for the kernel peer")
    parser.add_argument("--peer-address", default=KERNEL_ADDRESS)
    parser.add_argument("--to-stack", default="none", help="initial impairment toward the stack")
    parser.add_argument("--to-kernel", default="none", help="initial impairment toward the kernel")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--control", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay %(message)s")

    loop = Loop()
    peer = TapLink(args.peer)
    netlink.configure_interface(
        args.peer, address=ipaddress.IPv4Interface(args.peer_address), mtu=None
    )
    # The stack may send super-frames (offload = auto): read them with their virtio-net
    # header and cut them into wire segments (Relay._as_on_the_wire).
    wire = PacketLink(args.wire, offload="auto")
    _grow_socket_buffers(wire.fd)
    relay = Relay(
        loop,
        peer,
        wire,
        impairment_from_text(args.to_stack),
        impairment_from_text(args.to_kernel),
        args.seed,
    )
    dumps = 0

    def dump() -> None:
        nonlocal dumps
        relay.wire_drops += _packet_drops(wire.fd)
        data = {**relay.stats(), "wire_drops": relay.wire_drops, "dumps": dumps}
        dumps += 1
        tmp = args.stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, args.stats)

    def on_usr1(signum: int, frame: object) -> None:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, ValueError):
            control = json.loads(args.control.read_text())
            to_stack = impairment_from_text(control["to_stack"])
            to_kernel = impairment_from_text(control["to_kernel"])
            relay.set_impairments(to_stack, to_kernel)
            log.info("impairment: to_stack %s, to_kernel %s", control["to_stack"],
                     control["to_kernel"])  # fmt: skip
        dump()

    signal.signal(signal.SIGUSR1, on_usr1)
    log.info("relaying %s <-> %s, seed %d", args.peer, args.wire, args.seed)
    dump()  # the first stats file says "ready"
    try:
        loop.run()
    finally:
        dump()
        log.info("relay done: %s", relay.stats())
        peer.close()
        wire.close()
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
