"""An asyncio echo server on the stack (the README's "Use it from any program" example).

    sudo ip netns add demo && sudo ip -n demo link set lo up
    sudo ip netns exec demo python examples/aio_echo.py --port 7007 &
    echo hello | sudo ip netns exec demo nc -N 192.0.2.2 7007
    echo hello | sudo ip netns exec demo nc -u -w1 192.0.2.2 7007     # the UDP echo

The stack comes up on tap0 as 192.0.2.2 (kernel side 192.0.2.1), runs its loop in a
background thread, and the handler is plain asyncio stream code.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib

import netstack.aio
from netstack.config import build_config
from netstack.runtime import Stack, open_link


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def serve(port: int) -> None:
    server = await netstack.aio.start_server(echo, port=port)
    await netstack.aio.create_datagram_endpoint(UdpEcho, local_addr=("", port))  # UDP echo too
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


async def fetch(host: str, port: int, size: int) -> None:
    """Connect out through the stack, send `size` bytes, read as many back (an echo server)."""
    reader, writer = await netstack.aio.open_connection(host, port)
    payload = bytes(range(256)) * (size // 256)

    async def send() -> None:  # write while the echo comes back: drain() waits for the stack
        for i in range(0, len(payload), 65536):
            writer.write(payload[i : i + 65536])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    echoed = await reader.readexactly(len(payload))
    await sender
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()
    print("SHA", hashlib.sha256(echoed).hexdigest(), hashlib.sha256(payload).hexdigest())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interface", default="tap0")
    parser.add_argument("--port", type=int, default=7007)
    parser.add_argument("--fetch", metavar="HOST:PORT", help="client mode: echo through HOST")
    parser.add_argument("--size", type=int, default=1 << 20)
    args = parser.parse_args()
    config = build_config({"interface": args.interface, "metrics_address": "none"})
    stack = Stack(config, open_link(config))
    netstack.aio.start(stack)
    if args.fetch:
        host, _, port = args.fetch.rpartition(":")
        asyncio.run(fetch(host, int(port), args.size))
    else:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
