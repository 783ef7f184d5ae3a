"""An in-process stack driven through the blocking facade, for active-open tests.

    ip netns exec NS python -m tests.integration.tcp.stackproc \\
        send --to 192.0.2.1:5001 --bytes 100000000 --seed 7 [--timeout 120]
        (or --address6 2001:db8::2/64 ... send --to [2001:db8::1]:5001 for IPv6)

It creates tap0 (kernel side 192.0.2.1/24) in the namespace it runs in, runs a runtime.Stack
in a background thread (BlockingStack.for_stack), connects to the kernel, sends `--bytes` of the
seeded stream of kit.seeded_chunks, half-closes, reads whatever the kernel sends back until its
FIN, and prints one JSON line: sent / received bytes, their sha256, seconds, tcp_info.
Exit status 0 only if all of that happened within --timeout.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import socket
import sys
import time

from netstack.api.sockets import BlockingStack
from netstack.config import build_config
from netstack.runtime import Stack, open_link
from tests.integration.tcp.kit import seeded_chunks


def connect(bs: BlockingStack, address: tuple[str, int], deadline: float):
    """create_connection, again while our IPv6 address is still tentative (DAD: no source
    address yet) or the kernel's is (its DAD: the SYN is not answered)."""
    while True:
        try:
            return bs.create_connection(address, timeout=min(3.0, deadline - time.monotonic()))
        except OSError as err:
            if time.monotonic() > deadline - 3.0 or err.errno not in RETRY:
                raise
            time.sleep(0.1)


RETRY = (errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.ETIMEDOUT, errno.ECONNREFUSED, None)


def send(bs: BlockingStack, args: argparse.Namespace) -> dict:
    ip, port = args.to.rsplit(":", 1)
    ip = ip.strip("[]")  # [2001:db8::1]:5001
    started = time.monotonic()
    deadline = started + args.timeout
    sent = hashlib.sha256()
    received = hashlib.sha256()
    n_received = 0
    with connect(bs, (ip, int(port)), deadline) as sock:
        connected = time.monotonic() - started
        for piece in seeded_chunks(args.seed, args.bytes):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.sendall(piece)
            sent.update(piece)
        sock.shutdown(socket.SHUT_WR)
        sent_s = time.monotonic() - started
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(1 << 20)
            if not data:
                break
            received.update(data)
            n_received += len(data)
        info = sock.tcp_info()
        sock.close()
        closed = sock.wait_closed(max(0.01, deadline - time.monotonic()))
    return {
        "sent": args.bytes,
        "sha256_sent": sent.hexdigest(),
        "received": n_received,
        "sha256_received": received.hexdigest(),
        "connect_s": round(connected, 4),
        "send_s": round(sent_s, 3),
        "total_s": round(time.monotonic() - started, 3),
        "close_error": repr(closed) if closed is not None else None,
        "tcp_info": {k: v for k, v in info.items() if isinstance(v, int | float | str | bool)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stackproc")
    parser.add_argument("--interface", default="tap0")
    parser.add_argument("--address", default="192.0.2.2/24")
    parser.add_argument("--host-address", default="192.0.2.1/24")
    parser.add_argument("--address6", default=None, help="e.g. 2001:db8::2/64 (default: auto)")
    parser.add_argument("--pcap", default="none")
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command", required=True)
    p_send = sub.add_parser("send", help="connect, send a seeded stream, half-close, read")
    p_send.add_argument("--to", required=True, help="IP:PORT")
    p_send.add_argument("--bytes", type=int, required=True)
    p_send.add_argument("--seed", type=int, default=1)
    p_send.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    values = {
        "interface": args.interface,
        "address": args.address,
        "host_address": args.host_address,
        "pcap": args.pcap,
        "metrics_address": "none",
        "log_level": args.log_level,
    }
    if args.address6 is not None:
        values["address6"] = args.address6
    config = build_config(values, source="stackproc")
    stack = Stack(config, open_link(config))
    bs = BlockingStack.for_stack(stack)
    try:
        result = send(bs, args)
    finally:
        bs.close()
        print(stack.counters.summary(), file=sys.stderr)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
