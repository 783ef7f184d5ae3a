"""Add seeds from a real capture: the kernel talking to the stack in a test namespace.

    sudo python tests/fuzz/capture_corpus.py

Starts the stack in a fresh namespace (tests/integration/world.py, removed at the end), lets
the kernel ping it (also with fragments), ARP for it, and talk TCP and UDP to its services and
a closed port, over IPv4 and (ND, ping -6 with fragments, UDP) IPv6; then every frame the
kernel sent (from the stack's pcap) becomes a seed for each layer's target, and, readdressed
to the fuzz host's MACs, for the `host` target. The stack runs with the fuzz host's IPv6
secret and static address (hostfuzz.py), so the kernel's v6 frames are addressed to it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from scapy.layers.inet import IP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402
from scapy.utils import rdpcap  # noqa: E402

from netstack.wire import ipv6 as wipv6  # noqa: E402
from tests.fuzz import hostfuzz as hf  # noqa: E402
from tests.fuzz.make_corpus import layer_seeds, write  # noqa: E402
from tests.integration.world import HOST_IP, STACK_IP, running_world  # noqa: E402

CONVERSATION = [
    ["ping", "-c", "2", "-i", "0.2", STACK_IP],
    ["ping", "-c", "1", "-s", "3000", STACK_IP],
    ["arping", "-c", "1", "-I", "tap0", STACK_IP],
    ["sh", "-c", f"echo hello | nc -N -w 2 {STACK_IP} 7"],
    ["sh", "-c", f"head -c 20000 /dev/zero | nc -N -w 2 {STACK_IP} 9"],
    ["sh", "-c", f"nc -w 1 {STACK_IP} 19 | head -c 5000 > /dev/null"],
    ["sh", "-c", f"echo datagram | nc -u -w 1 {STACK_IP} 7"],
    ["sh", "-c", f"echo nobody | nc -u -w 1 {STACK_IP} 99"],
    ["sh", "-c", f"echo refused | nc -w 1 {STACK_IP} 99 || true"],
]
STACK6 = wipv6.to_str(hf.OUR_IP6)
STACK_LL6 = wipv6.to_str(hf.OUR_LL6)
CONVERSATION6 = [
    ["ping", "-6", "-c", "2", "-i", "0.2", STACK6],
    ["ping", "-6", "-c", "1", "-s", "3000", STACK6],
    ["ping", "-6", "-c", "1", "-I", "tap0", STACK_LL6],
    ["sh", "-c", f"echo datagram6 | nc -6 -u -w 1 {STACK6} 7"],
    ["sh", "-c", f"echo nobody6 | nc -6 -u -w 1 {STACK6} 99"],
    ["ip", "-6", "neigh", "flush", "dev", "tap0"],  # the kernel resolves us again: NS
    ["ping", "-6", "-c", "1", STACK6],
]


def from_kernel(frame, kernel_macs: set[str]) -> bool:
    if ARP in frame:
        return frame[ARP].psrc == HOST_IP
    if IPv6 in frame:  # from the kernel's global, link-local or unspecified address
        return frame.src in kernel_macs
    return IP in frame and frame[IP].src == HOST_IP


def wait_for_dad(world, timeout: float = 15.0) -> None:
    """The stack answers on its v6 address only once DAD is over (RFC 4862 §5.4)."""
    deadline = time.monotonic() + timeout
    while f"address {STACK6}/64 ready" not in world.log():
        if time.monotonic() > deadline:
            raise SystemExit(f"no DAD within {timeout} s:\n{world.log()}")
        time.sleep(0.1)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-capture-") as tmp:
        config = Path(tmp) / "netstack.toml"
        config.write_text(f'ipv6_secret = "{hf.SECRET6.hex()}"\naddress6 = "{STACK6}/64"\n')
        with running_world(Path(tmp), "--config", str(config), tag="fzcap") as world:
            for cmd in CONVERSATION:
                world.run(cmd, check=False, timeout=30)
            wait_for_dad(world)
            for cmd in CONVERSATION6:
                world.run(cmd, check=False, timeout=30)
            world.stop()
            packets = rdpcap(str(world.pcap))
            kernel_macs = {f.src for f in packets if IP in f and f[IP].src == HOST_IP}
            frames = [bytes(f) for f in packets if from_kernel(f, kernel_macs)]
    for name, items in layer_seeds(frames).items():
        write(name, items)
    host = []
    for raw in frames:
        frame = Ether(raw)
        group = frame.dst == "ff:ff:ff:ff:ff:ff" or frame.dst.startswith("33:33:")
        frame.dst = frame.dst if group else hf.OUR_MAC.hex(":")
        frame.src = hf.PEER_MAC.hex(":")
        host.append(bytes(frame))
    write("host", [hf.encode(f) for f in host] + [hf.encode(*host)])
    print(f"{len(frames)} frames from the kernel captured")


if __name__ == "__main__":
    main()
