"""Plain Python UDP echo server on the kernel's stack: the second baseline row of bench/run.py.

    python bench/pyecho.py PORT MAX_SECONDS

One recvfrom/sendto per datagram, no batching. Exits on SIGTERM/SIGINT or after MAX_SECONDS.
"""

from __future__ import annotations

import signal
import socket
import sys
import time


def main() -> int:
    port, max_seconds = int(sys.argv[1]), float(sys.argv[2])
    deadline = time.monotonic() + max_seconds
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.5)
    print("ready", flush=True)
    recvfrom, sendto, monotonic = sock.recvfrom, sock.sendto, time.monotonic
    echoed = 0
    try:
        while monotonic() < deadline:
            try:
                for _ in range(1024):  # look at the clock once per 1024 datagrams
                    data, peer = recvfrom(65535)
                    sendto(data, peer)
                    echoed += 1
            except TimeoutError:
                pass
    except KeyboardInterrupt:
        pass
    finally:
        print(f"echoed {echoed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
