"""Add seeds from a real capture: the kernel talking to the stack in a test namespace.

    sudo python tests/fuzz/capture_corpus.py

Starts the stack in a fresh namespace (tests/integration/world.py, removed at the end), lets
the kernel ping it (also with fragments), ARP for it, and talk TCP and UDP to its services and
a closed port; then every frame the kernel sent (from the stack's pcap) becomes a seed for
each layer's target, and, readdressed to the fuzz host's MACs, for the `host` target.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from scapy.layers.inet import IP  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402
from scapy.utils import rdpcap  # noqa: E402

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


def from_kernel(frame) -> bool:
    if ARP in frame:
        return frame[ARP].psrc == HOST_IP
    return IP in frame and frame[IP].src == HOST_IP


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="fuzz-capture-") as tmp,
        running_world(Path(tmp), tag="fzcap") as world,
    ):
        for cmd in CONVERSATION:
            world.run(cmd, check=False, timeout=30)
        world.stop()
        frames = [bytes(f) for f in rdpcap(str(world.pcap)) if from_kernel(f)]
    for name, items in layer_seeds(frames).items():
        write(name, items)
    host = []
    for raw in frames:
        frame = Ether(raw)
        broadcast = frame.dst == "ff:ff:ff:ff:ff:ff"
        frame.dst = "ff:ff:ff:ff:ff:ff" if broadcast else hf.OUR_MAC.hex(":")
        frame.src = hf.PEER_MAC.hex(":")
        host.append(bytes(frame))
    write("host", [hf.encode(f) for f in host] + [hf.encode(*host)])
    print(f"{len(frames)} frames from the kernel captured")


if __name__ == "__main__":
    main()
