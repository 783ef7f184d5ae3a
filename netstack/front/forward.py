"""Inbound port forwarding: a port on the stack's address relayed to a kernel socket address.

TCP: each connection the stack accepts opens a nonblocking kernel connection to the target;
the stack side does not read until it is up (its window closes meanwhile). A refused or
unreachable target resets the stack-side connection at once; after that pipe.TcpPipe relays.
UDP: one kernel socket per flow (stack-side peer address and the address of ours it wrote to),
connected to the target, so replies find their way back, from the address the peer wrote to
(a peer of an IPv6 stack with several addresses expects its reply from that one); flows end
after idle_timeout, and at most max_connections live at once.

`Forwards.apply(specs)` is both startup and SIGHUP: forwards that appear start, ones that
disappear stop listening at once and let their open sessions finish for up to
`shutdown_timeout` seconds, and ones left unchanged are not touched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections import OrderedDict

from netstack.api.tcp import TcpServer, listen
from netstack.front.pipe import TcpPipe, connect_error_reason
from netstack.front.port import StackPort
from netstack.front.spec import ForwardSpec
from netstack.front.stats import ForwardStats, FrontStats
from netstack.wire.inet import Address
from netstack.wire.inet import to_str as addr_to_str

log = logging.getLogger("netstack.front")

CONNECT_TIMEOUT = 10.0  # seconds the kernel target gets to accept a forwarded connection
UDP_BATCH = 64  # datagrams read from one kernel socket per wakeup
UDP_MAX = 65507


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class TcpForward:
    """One TCP forward: a stack listener whose connections are piped to `spec.target`."""

    def __init__(self, port: StackPort, spec: ForwardSpec, stats: ForwardStats) -> None:
        self.port = port
        self.spec = spec
        self.stats = stats
        self.pipes: set[TcpPipe] = set()
        self._connecting: dict[TcpPipe, tuple[socket.socket, object]] = {}
        self.server: TcpServer | None = listen(port.tcp, spec.listen, self._new_pipe)

    def _new_pipe(self) -> TcpPipe:
        pipe = _ForwardPipe(self.port, self.spec.idle, self._pipe_ended, self._count_bytes)
        pipe.forward = self
        return pipe

    def _count_bytes(self, to_target: int, from_target: int) -> None:
        self.stats.bytes_to_target += to_target
        self.stats.bytes_from_target += from_target

    def start(self, pipe: TcpPipe) -> None:
        """The stack accepted a connection: dial the target (or refuse over the limit)."""
        self.stats.sessions += 1
        if len(self.pipes) >= self.spec.max_connections:
            pipe.abort("limit")  # RST; _pipe_ended counts it
            return
        self.pipes.add(pipe)
        self.stats.active += 1
        sock = socket.socket(_family(self.spec.to_host), socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(self.spec.target)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            pipe.abort(connect_error_reason(err))
            return
        timer = self.port.loop.call_later(CONNECT_TIMEOUT, lambda now: self._timeout(pipe, now))
        self._connecting[pipe] = (sock, timer)
        self.port.loop.add_writer(sock.fileno(), lambda now: self._connected(pipe, now))

    def _connected(self, pipe: TcpPipe, now: float) -> None:
        entry = self._connecting.pop(pipe, None)
        if entry is None:
            return
        sock, timer = entry
        timer.cancel()  # type: ignore[attr-defined]
        self.port.loop.remove_writer(sock.fileno())
        self.port.enter(now)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            pipe.abort(connect_error_reason(err))  # RST to the stack side at once
            return
        if pipe.ended or pipe.stack_lost:
            sock.close()
            return
        pipe.attach(sock)

    def _timeout(self, pipe: TcpPipe, now: float) -> None:
        entry = self._connecting.pop(pipe, None)
        if entry is None:
            return
        sock, _ = entry
        self.port.loop.remove_writer(sock.fileno())
        sock.close()
        self.port.enter(now)
        pipe.abort("connect_timeout")

    def _pipe_ended(self, pipe: TcpPipe, reason: str | None) -> None:
        entry = self._connecting.pop(pipe, None)
        if entry is not None:  # the stack side went away while the target was being dialled
            sock, timer = entry
            timer.cancel()  # type: ignore[attr-defined]
            self.port.loop.remove_writer(sock.fileno())
            sock.close()
        if pipe in self.pipes:
            self.pipes.discard(pipe)
            self.stats.active -= 1
        if reason is not None:
            self.stats.error(reason)
            log.debug("forward %s: session ended: %s", self.spec.name, reason)

    def stop_listening(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def abort_all(self, reason: str) -> None:
        for pipe in list(self.pipes):
            pipe.abort(reason)

    def busy(self) -> bool:
        return bool(self.pipes)


class _ForwardPipe(TcpPipe):
    forward: TcpForward

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.forward.start(self)


FlowKey = tuple[tuple[Address, int], Address]  # (stack-side peer, our address it wrote to)


class _UdpFlow:
    """One stack-side peer's datagrams to and from the target, over its own kernel socket."""

    __slots__ = ("key", "last_active", "local", "peer", "sock")

    def __init__(self, sock: socket.socket, key: FlowKey, now: float) -> None:
        self.sock = sock
        self.key = key
        self.peer, self.local = key
        self.last_active = now


class UdpForward:
    """One UDP forward: a bound stack port; a connected kernel socket per peer."""

    def __init__(self, port: StackPort, spec: ForwardSpec, stats: ForwardStats) -> None:
        self.port = port
        self.spec = spec
        self.stats = stats
        self.flows: OrderedDict[FlowKey, _UdpFlow] = OrderedDict()  # LRU order
        self.socket = port.udp.bind(spec.listen, self._on_datagram)
        self._sweeper = port.loop.call_later(self._sweep_interval(), self._sweep)

    def _sweep_interval(self) -> float:
        return min(1.0, self.spec.idle / 2)

    def _on_datagram(
        self, data: memoryview, peer: tuple[Address, int], dst: Address, now: float
    ) -> None:
        key = (peer, dst)
        flow = self.flows.get(key)
        if flow is None:
            flow = self._open(key, now)
            if flow is None:
                return
        else:
            self.flows.move_to_end(key)
        flow.last_active = now
        try:
            flow.sock.send(data)
        except (BlockingIOError, ConnectionRefusedError):
            # A full socket buffer, or an ICMP port unreachable from an earlier datagram:
            # UDP is best-effort, the datagram is lost and counted.
            self.stats.error("send_failed")
            return
        except OSError:
            self.stats.error("send_failed")
            return
        self.stats.bytes_to_target += len(data)

    def _open(self, key: FlowKey, now: float) -> _UdpFlow | None:
        if len(self.flows) >= self.spec.max_connections:
            self.stats.error("limit")
            return None
        sock = socket.socket(_family(self.spec.to_host), socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(self.spec.target)
        except OSError as err:
            sock.close()
            self.stats.error(connect_error_reason(err.errno or 0))
            return None
        flow = _UdpFlow(sock, key, now)
        self.flows[key] = flow
        self.stats.sessions += 1
        self.stats.active += 1
        self.port.loop.add_reader(sock.fileno(), lambda now: self._on_reply(flow, now))
        peer = flow.peer
        log.debug("forward %s: new flow from %s:%d", self.spec.name, addr_to_str(peer[0]), peer[1])
        return flow

    def _on_reply(self, flow: _UdpFlow, now: float) -> None:
        self.port.enter(now)
        sent = False
        for _ in range(UDP_BATCH):
            try:
                data = flow.sock.recv(UDP_MAX)
            except BlockingIOError:
                break
            except OSError:  # ICMP error from the target (port unreachable, ...)
                self.stats.error("refused")
                break
            flow.last_active = now
            if self.socket.closed:
                break
            if self.socket.sendto(data, flow.peer, flow.local):
                self.stats.bytes_from_target += len(data)
                sent = True
            else:
                self.stats.error("send_failed")
        if sent:
            self.port.push_tx()

    def _close_flow(self, flow: _UdpFlow) -> None:
        if self.flows.pop(flow.key, None) is not None:
            self.stats.active -= 1
            self.port.loop.remove_reader(flow.sock.fileno())
            flow.sock.close()

    def _sweep(self, now: float) -> None:
        idle = self.spec.idle
        for flow in list(self.flows.values()):  # oldest first; stop at the first fresh one
            if now - flow.last_active < idle:
                break
            self.stats.error("idle_timeout")
            self._close_flow(flow)
        self._sweeper = self.port.loop.call_later(self._sweep_interval(), self._sweep)

    def stop_listening(self) -> None:
        """UDP has no connections to finish: the flows end with the binding."""
        self.socket.close()
        self._sweeper.cancel()
        for flow in list(self.flows.values()):
            self._close_flow(flow)

    def abort_all(self, reason: str) -> None:
        self.stop_listening()

    def busy(self) -> bool:
        return bool(self.flows)


FORWARD_KINDS = {"tcp": TcpForward, "udp": UdpForward}


class Forwards:
    """Every configured forward; `apply` reconciles the running set with a new config."""

    def __init__(self, port: StackPort, stats: FrontStats) -> None:
        self.port = port
        self.stats = stats
        self.active: dict[str, TcpForward | UdpForward] = {}
        self.draining: list[TcpForward | UdpForward] = []

    def apply(self, specs: tuple[ForwardSpec, ...], drain_timeout: float) -> None:
        wanted = {spec.name: spec for spec in specs}
        for name, fwd in list(self.active.items()):
            if wanted.get(name) != fwd.spec:
                self._remove(fwd, drain_timeout)
        for name, spec in wanted.items():
            if name not in self.active:
                kind = FORWARD_KINDS[spec.proto]
                self.active[name] = kind(self.port, spec, self.stats.forward(name, spec.proto))
                log.info("forward %s -> %s:%d", name, spec.to_host, spec.to_port)

    def _remove(self, fwd: TcpForward | UdpForward, drain_timeout: float) -> None:
        del self.active[fwd.spec.name]
        fwd.stop_listening()
        log.info("forward %s removed", fwd.spec.name)
        if fwd.busy():
            self.draining.append(fwd)

            def expire(now: float) -> None:
                self.port.enter(now)
                if fwd.busy():
                    log.warning(
                        "forward %s: sessions left after %ss reset", fwd.spec.name, drain_timeout
                    )
                    fwd.abort_all("removed")
                with contextlib.suppress(ValueError):
                    self.draining.remove(fwd)

            self.port.loop.call_later(drain_timeout, expire)

    def close(self) -> None:
        for fwd in [*self.active.values(), *self.draining]:
            fwd.stop_listening()
            fwd.abort_all("removed")
        self.active.clear()
        self.draining.clear()

    def sessions(self) -> int:
        return sum(
            len(f.pipes) if isinstance(f, TcpForward) else len(f.flows)
            for f in [*self.active.values(), *self.draining]
        )
