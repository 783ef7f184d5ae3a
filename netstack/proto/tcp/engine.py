"""The TCP engine: demultiplexing, listeners with SYN and accept queues, SYN cookies, RSTs for
closed ports, ICMP errors, and the one timer heap and flush point for every connection.

Pure, like every engine here: `receive(ip_header, segment, packet, now)` (registered with the
IPv4 engine), `receive6` (with the IPv6 engine, attach_ipv6), `receive_error(...)` (ICMP) and
`receive_error6` (ICMPv6), `poll(now)` and `next_deadline()`; segments leave through their
connection's family (net.py: `ipv4.send`, or the IPv6 engine from a fixed source). The host
calls `flush(now)` at the end of every receive batch; `poll` flushes by itself.

Both families, one engine. An IPv4 address is an int, an IPv6 one 16 bytes: keys never
collide, and the IPv4 per-segment path is what it was. A listener takes both families (as a
Linux socket on `::` without IPV6_V6ONLY, and as UDP's shared port table): a port is a port.

The flush point. Connections touched during a batch (a segment arrived, a timer fired, the
application called write/close/...) are flushed once at its end: application events are
dispatched (Connection.dispatch), then whatever the connection may send goes out
(Connection.output: data, retransmissions, FIN, delayed or immediate ACKs, window updates),
then its timer is rescheduled. Application calls made outside the engine (a loop timer, the
blocking facade) only touch the connection; next_deadline() then answers "now", so the loop
polls at once and the flush happens in the same turn.

Frames and the send buffer. Data segments are (header, memoryview into the send buffer). The
send buffer never changes bytes once written (buffers.py), so frames may sit in any queue for
any time: the loop's tx queue, ARP's resolution queue (which copies), a pcap observer.

Application API: see netstack/api/tcp.py (asyncio-Protocol-shaped callbacks). At this level:
`listen(port, backlog)` -> Listener (accept() / on_ready), `connect((ip, port), local_port)` ->
Connection (send, shutdown_write, close, abort, pause/resume_reading; events to its handler).

Metrics: counters on `counters` (tcp_*), `connections_by_state()` for the connections gauge
(safe to call from the scrape thread), drops by reason (Drop.TCP_*).
Graceful shutdown (runtime.Closer): begin_shutdown(now), is_quiet(), abort(now).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import random
import struct
from collections import OrderedDict, deque
from collections.abc import Callable

from netstack.counters import Counters
from netstack.drops import Drop
from netstack.proto.deadlines import Announce, unannounced
from netstack.proto.ipv4 import Ipv4Engine
from netstack.proto.ipv6 import Ipv6Engine
from netstack.proto.pmtu import PmtuCache
from netstack.proto.tcp import isn as isnmod
from netstack.proto.tcp.cc import CongestionControl, make_cc
from netstack.proto.tcp.config import TcpConfig
from netstack.proto.tcp.connection import MIN_BUFFER, Connection
from netstack.proto.tcp.net import PARAM_PROBLEM, V6_ERRORS, Address, Net4, Net6, v6_sum
from netstack.proto.tcp.seq import MASK, seq_gt, unwrap
from netstack.proto.tcp.state import SYNCHRONIZED, State
from netstack.proto.tcp.timewait import TimeWait
from netstack.wire import icmp as wicmp
from netstack.wire import icmpv6 as wicmp6
from netstack.wire import ipv4 as wipv4
from netstack.wire import ipv6 as wipv6
from netstack.wire import tcp as wtcp
from netstack.wire import vnet as wvnet
from netstack.wire.errors import Malformed
from netstack.wire.tcp import ACK, FIN, RST, SYN, TcpHeader, TcpOptions, TcpRepr

log = logging.getLogger("netstack.tcp")

# (local ip, local port, remote ip, remote port), the full 4-tuple: a host with several
# addresses (IPv6 link-local + SLAAC + static) may hold one connection per local address to
# the same peer port. Addresses are ints (IPv4) or 16 bytes (IPv6). Listeners stay wildcard.
Key = tuple[Address, int, Address, int]
S = State
# State.value is a Python-level descriptor (enum): the per-state counts look names up here.
STATE_NAME = {s: s.value for s in State}
# transmit_fast's lean send for IPv4 (Ipv4Engine.send_tcp); read when an engine is made.
LEAN = True

# ICMP destination-unreachable codes that end a connection attempt (RFC 1122 4.2.3.9).
HARD_UNREACHABLE = frozenset({wicmp.CODE_PROTOCOL_UNREACHABLE, wicmp.CODE_PORT_UNREACHABLE})
# How other ICMP errors are reported if the connection then times out (soft errors).
SOFT_ERRNO = {
    (wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_NET_UNREACHABLE): errno.ENETUNREACH,
    (wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_HOST_UNREACHABLE): errno.EHOSTUNREACH,
    (wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_FRAG_NEEDED): errno.EMSGSIZE,
    (wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_PROTOCOL_UNREACHABLE): errno.ECONNREFUSED,
    (wicmp.TYPE_DEST_UNREACHABLE, wicmp.CODE_PORT_UNREACHABLE): errno.ECONNREFUSED,
}
COOKIE_WINDOW = 2 * isnmod.MAX_AGE * isnmod.COOKIE_PERIOD  # accept cookie ACKs this long
# A pure ACK as ns_ack_runs vouched for it (take_ack_run), read from the frame's IPv4 source
# address on (offset 26): addresses, ports, seq, ack, data offset, flags, window, checksum,
# urgent pointer, NOP NOP Timestamps (skipped), TSval, TSecr.
_PURE_ACK = struct.Struct("!IIHHIIBBHHH4xII")
_new = tuple.__new__


class AddressInUse(OSError):
    def __init__(self, message: str) -> None:
        super().__init__(errno.EADDRINUSE, message)


class Listener:
    """A listening port: SYN_RECEIVED connections (the SYN queue, bounded by syn_backlog) and
    established ones not yet accepted (the accept queue, bounded by backlog).

    `on_ready(listener)` is called at the engine's flush point when connections are waiting;
    take them with accept(). With no on_ready they wait (and count toward the backlog).
    """

    def __init__(
        self,
        engine: TcpEngine,
        port: int,
        backlog: int,
        syn_backlog: int,
        on_ready: Callable[[Listener], None] | None,
    ) -> None:
        self.engine = engine
        self.port = port
        self.backlog = backlog
        self.syn_backlog = syn_backlog
        self.on_ready = on_ready
        self.syn_queue: dict[Key, Connection] = {}
        self.accept_queue: deque[Connection] = deque()
        self.closed = False
        self.last_overflow: float | None = None  # when cookies were last sent
        # Per-listener SO_SNDBUF / SO_RCVBUF for its connections (None: the config's).
        self.send_buffer: int | None = None
        self.receive_buffer: int | None = None

    def set_buffer_sizes(self, send: int | None = None, receive: int | None = None) -> None:
        """Buffer sizes for connections accepted from now on (Linux: inherited from the
        listening socket); the receive size also sets the window scale they offer."""
        if send is not None:
            self.send_buffer = max(send, MIN_BUFFER)
        if receive is not None:
            self.receive_buffer = max(receive, MIN_BUFFER)

    def receive_size(self) -> int:
        return self.receive_buffer or self.engine.config.receive_buffer

    def accept(self) -> Connection | None:
        """The oldest established connection, or None. The caller sets its handler.

        The connection is flushed at the next flush point (at once when called from on_ready,
        else at the next loop turn: next_deadline() says "now"), so the events that waited
        in the accept queue (established, data, EOF, closed) reach the handler set meanwhile,
        wherever accept() was called from (a loop timer, the blocking facade's command)."""
        while self.accept_queue:
            conn = self.accept_queue.popleft()
            conn.listener = None
            if conn.state is not S.CLOSED:
                self.engine.touch(conn)
                return conn
        return None

    def close(self) -> None:
        """Stop listening; connections not yet accepted are reset."""
        self.engine.unlisten(self)

    def __repr__(self) -> str:
        return (
            f"<Listener :{self.port} syn={len(self.syn_queue)} "
            f"accept={len(self.accept_queue)}/{self.backlog}>"
        )


class TcpEngine:
    """All TCP of one host: connections by 4-tuple, listeners by port."""

    def __init__(
        self,
        ipv4: Ipv4Engine,
        counters: Counters,
        rng: random.Random,
        config: TcpConfig | None = None,
        *,
        secret: bytes | None = None,
        cc_factory: Callable[[str, int], CongestionControl] = make_cc,
    ) -> None:
        self.ipv4 = ipv4
        self.counters = counters
        self.rng = rng
        self.config = config if config is not None else TcpConfig()
        self.local_ip = ipv4.config.address
        self.mss = ipv4.config.mtu - wipv4.MIN_HEADER_LEN - wtcp.HEADER_LEN  # RFC 9293 3.7.1
        self.secrets = isnmod.Secrets(secret)
        # The host's path MTU cache (RFC 1191; owned by the IPv4 engine, shared with UDP).
        self.pmtu: PmtuCache = ipv4.pmtu
        self._cc_factory = cc_factory
        make_cc_check = cc_factory(self.config.congestion_control, self.mss)  # fail early
        del make_cc_check
        self.now = 0.0
        self.conns: dict[Key, Connection] = {}
        self.listeners: dict[int, Listener] = {}
        self._dirty: dict[Connection, None] = {}  # an ordered set
        self._ready: dict[Listener, None] = {}
        self._timers: list[tuple[float, int, Connection]] = []
        self._seq = itertools.count()
        # Told when the next deadline comes earlier (proto/deadlines.py): a timer entry pushed,
        # or a connection or listener queued for the flush point ("now") when no flush point
        # follows before the loop regains control. `flush_follows` is set by the host around
        # a receive batch (it flushes at its end) and by flush() itself.
        self.deadline_moved: Announce = unannounced
        self.flush_follows = False
        self._states: dict[str, int] = {s.value: 0 for s in State if s is not S.CLOSED}
        self.time_wait_count = 0
        # Connections that ended without TIME_WAIT (the passive closer's LAST_ACK, resets):
        # key -> (forget at, ISS, SND.NXT - ISS), oldest first. Old duplicates of theirs must
        # not pass as SYN-cookie ACKs (see _stale_ack). An OrderedDict, not a dict: as a FIFO
        # of up to max_time_wait entries, a dict's next(iter()) scans the deleted slots at its
        # front (~23 us per connection at 16 384 entries, once a connection load fills it).
        self._closed_recently: OrderedDict[Key, tuple[float, int, int]] = OrderedDict()
        self.shutting_down = False
        # Set by the host around one received frame whose virtio-net header vouches for its
        # checksum (partial, or verified by the kernel): not verified again.
        self.csum_trusted = False
        # Tests may replace this to place ISNs (e.g. just below 2^32).
        self.choose_isn: Callable[[Connection, float], int] = self._isn
        # Per-family network access (net.py); IPv6 once the host attaches it (attach_ipv6).
        self.net4 = Net4(self)
        self.net6: Net6 | None = None
        # The lean send of a template segment, where the IPv4 engine has one (a test's
        # stand-in need not).
        self.lean4: Callable[..., bool] | None = (
            ipv4.send_tcp if LEAN and isinstance(ipv4, Ipv4Engine) else None
        )
        self.lean6: Callable[..., bool] | None = None  # the same for IPv6 (attach_ipv6)
        ipv4.register(wipv4.PROTO_TCP, self.receive)
        if self.config.checked:
            from netstack.proto.tcp import invariants  # only in checked mode

            invariants.attach(self)
            log.info("TCP checked mode: the invariants are checked on every segment")

    def attach_ipv6(self, ipv6, icmp6) -> None:
        """Take TCP over IPv6 too (next header 6): same connections table, same listeners
        (a listener takes both families, as Linux's without IPV6_V6ONLY), ICMPv6 errors."""
        self.net6 = Net6(ipv6, self)
        self.lean6 = ipv6.send_tcp if LEAN and isinstance(ipv6, Ipv6Engine) else None
        ipv6.register(wipv6.TCP, self.receive6)
        icmp6.error_handlers[wipv6.TCP] = self.receive_error6
        icmp6.validates_ptb.add(wipv6.TCP)  # receive_error6 reports a PTB's MTU itself

    def net_for(self, address: Address) -> Net4 | Net6:
        """The family object for an address (its type is its family)."""
        if type(address) is bytes:
            if self.net6 is None:
                raise OSError(errno.EAFNOSUPPORT, "IPv6 is not enabled on this stack")
            return self.net6
        return self.net4

    # =========================================================================================
    # application side
    # =========================================================================================
    def listen(
        self,
        port: int,
        backlog: int | None = None,
        on_ready: Callable[[Listener], None] | None = None,
    ) -> Listener:
        """Listen on `port`; 0: on a free port of the ephemeral range (as bind(0) would:
        the listener says which), e.g. for a SOCKS BIND."""
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"TCP port out of range: {port}")
        if port in self.listeners:
            raise AddressInUse(f"TCP port {port} is already listening")
        if self.shutting_down:
            raise OSError(errno.ESHUTDOWN, "the stack is shutting down")
        if port == 0:
            port = self._free_listen_port()
        cfg = self.config
        backlog = cfg.default_backlog if backlog is None else max(1, backlog)
        listener = Listener(self, port, backlog, cfg.syn_backlog, on_ready)
        self.listeners[port] = listener
        self._states["listen"] += 1
        return listener

    def unlisten(self, listener: Listener) -> None:
        if listener.closed:
            return
        listener.closed = True
        if self.listeners.get(listener.port) is listener:
            del self.listeners[listener.port]
            self._states["listen"] -= 1
        for conn in [*listener.syn_queue.values(), *listener.accept_queue]:
            conn.abort()
        listener.syn_queue.clear()
        listener.accept_queue.clear()
        self._ready.pop(listener, None)

    def connect(
        self, remote: tuple[Address, int], local_port: int = 0, local_ip: Address | None = None
    ) -> Connection:
        """Active open: a Connection in SYN_SENT; set its handler before the next flush.
        The remote address is an int (IPv4) or 16 bytes (IPv6). `local_ip` (a socket bound
        to one of our addresses): the source, of the remote's family; None: the family's
        choice (RFC 6724 for IPv6)."""
        remote_ip, remote_port = remote
        if not 0 < remote_port <= 0xFFFF:
            raise ValueError(f"TCP port out of range: {remote_port}")
        if self.shutting_down:
            raise OSError(errno.ESHUTDOWN, "the stack is shutting down")
        net = self.net_for(remote_ip)
        if not net.routable(remote_ip):
            raise OSError(errno.ENETUNREACH, "no route to the destination")
        if local_ip is None:
            local_ip = net.source(remote_ip)
        elif type(local_ip) is not type(remote_ip) or not net.is_ours(local_ip):
            raise OSError(errno.EADDRNOTAVAIL, "the local address is not ours, or not its family")
        if local_ip is None:
            raise OSError(errno.EADDRNOTAVAIL, "no local address for the destination")
        if local_port == 0:
            local_port = self._ephemeral_port(local_ip, remote_ip, remote_port)
        elif not 0 < local_port <= 0xFFFF:
            raise ValueError(f"TCP port out of range: {local_port}")
        elif (local_ip, local_port, remote_ip, remote_port) in self.conns:
            raise AddressInUse(f"TCP port {local_port} is in use towards that destination")
        conn = Connection(self, local_port, remote_ip, remote_port, local_ip=local_ip)
        self.conns[conn.key] = conn
        conn.open_active(self.choose_isn(conn, self.now), self.now)
        self.counters.tcp_active_opens += 1
        self.touch(conn)
        return conn

    def _free_listen_port(self) -> int:
        """A random port of the ephemeral range that nothing listens on or uses locally."""
        cfg = self.config
        span = cfg.ephemeral_last - cfg.ephemeral_first + 1
        used = {key[1] for key in self.conns}
        start = self.rng.randrange(span)
        for i in range(span):
            port = cfg.ephemeral_first + (start + i) % span
            if port not in self.listeners and port not in used:
                return port
        raise AddressInUse("no free ephemeral TCP port")

    def _ephemeral_port(self, local_ip: Address, remote_ip: Address, remote_port: int) -> int:
        """RFC 6056 algorithm 1: a random start, then the next port free for this peer."""
        cfg = self.config
        span = cfg.ephemeral_last - cfg.ephemeral_first + 1
        start = self.rng.randrange(span)
        for i in range(span):
            port = cfg.ephemeral_first + (start + i) % span
            key = (local_ip, port, remote_ip, remote_port)
            if port not in self.listeners and key not in self.conns:
                return port
        raise AddressInUse("no free ephemeral TCP port")

    # =========================================================================================
    # hooks the connections call
    # =========================================================================================
    def make_cc(self, mss: int) -> CongestionControl:
        cc = self._cc_factory(self.config.congestion_control, mss)
        tso = self.config.tso_max
        if tso > mss and hasattr(cc, "abc_limit"):  # see cc.Reno.abc_limit
            cc.abc_limit = max(cc.abc_limit, tso // mss)
        return cc

    def _tuple(self, conn: Connection) -> bytes:
        return isnmod.tuple_bytes(conn.local_ip, conn.local_port, conn.remote_ip, conn.remote_port)

    def _isn(self, conn: Connection, now: float) -> int:
        return self.secrets.isn(self._tuple(conn), now)

    def ts_offset(self, conn: Connection) -> int:
        return self.secrets.ts_offset(self._tuple(conn))

    def touch(self, conn: Connection) -> None:
        """Flush `conn` at the next flush point."""
        self._dirty[conn] = None
        if not self.flush_follows:
            self.deadline_moved(self.now)

    def transmit(
        self,
        conn: Connection,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        payload,
        options: TcpOptions | None,
        urgent: int = 0,
        gso_size: int = 0,
    ) -> None:
        """gso_size (TSO): `payload` is longer than one segment; the link's kernel cuts it
        into gso_size pieces and completes their checksums (wire/vnet.py)."""
        if gso_size and len(payload) > gso_size:
            self._transmit_gso(conn, seq, ack, flags, window, payload, options, gso_size)
            return
        if (
            flags & SYN
            and options is not None
            and not options.sack_blocks
            and not urgent
            and not len(payload)
        ):  # a SYN or SYN-ACK: from the connection's template sum, its usual options in one
            # pack (wire/tcp.py; the same bytes as TcpRepr.emit)
            header = wtcp.build_syn(
                conn.tx_sum, conn.local_port, conn.remote_port, seq, ack, flags, window, options
            )
        else:
            header = TcpRepr(
                conn.local_port, conn.remote_port, seq, ack, flags, window, options, urgent,
                payload,
            ).emit(*conn.csum)  # fmt: skip
        self.counters.tcp_segments_tx += 1
        pieces = (header, payload) if len(payload) else (header,)
        conn.ip_send(conn.remote_ip, wipv4.PROTO_TCP, pieces, self.now, dont_fragment=conn.pmtu_df)

    def _transmit_gso(
        self,
        conn: Connection,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        payload,
        options: TcpOptions | None,
        gso_size: int,
    ) -> None:
        """A TSO super-segment: the checksum field holds the pseudo-header sum over the whole
        TCP length (not complemented), as Linux's CHECKSUM_PARTIAL; the kernel adjusts it to
        each segment's length and completes it. Nothing here sums the 64 KiB payload."""
        header = bytearray(
            TcpRepr(conn.local_port, conn.remote_port, seq, ack, flags, window, options).emit(
                *conn.csum
            )
        )
        hlen = len(header)
        plen = len(payload)
        room = conn.net.mss - (hlen - wtcp.HEADER_LEN)  # the payload the MTU takes
        if gso_size > room:
            gso_size = room  # cannot happen when the connection sized it; never exceed the MTU
        header[16:18] = wvnet.pseudo_sum(*conn.csum, hlen + plen)
        self.counters.tcp_segments_tx += wvnet.segments(plen, gso_size)
        conn.ip_send(
            conn.remote_ip, wipv4.PROTO_TCP, (bytes(header), payload), self.now,
            gso_size=gso_size, l4_header_len=hlen,
        )  # fmt: skip

    def transmit_fast(
        self,
        conn: Connection,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        payload,
        timestamp: tuple[int, int] | None,
    ) -> None:
        """`transmit` for a segment whose only option is a timestamp (or none), no urgent
        pointer and no TSO: the header is packed at once from the connection's checksum
        template.

        An IPv4 connection's segment takes the lean send (`Ipv4Engine.send_tcp`: the whole
        frame in one pack, onto the link's queue), an IPv6 one `Ipv6Engine.send_tcp` (both
        headers in one pack, then ND's link send), where that provably gives what the general
        way would; `LEAN = False` turns both off (tests compare both ways)."""
        lean = self.lean4
        if (
            lean is not None
            and conn.net is self.net4
            and lean(
                conn.remote_ip, conn.pmtu_df, conn.tx_sum, conn.local_port, conn.remote_port,
                seq, ack, flags, window, timestamp, payload,
            )
        ):  # fmt: skip
            self.counters.tcp_segments_tx += 1
            return
        lean = self.lean6
        if (
            lean is not None
            and conn.net is self.net6
            and lean(
                conn.remote_ip, conn.local_ip, conn.tx_sum, conn.local_port, conn.remote_port,
                seq, ack, flags, window, timestamp, payload, self.now,
            )
        ):  # fmt: skip
            self.counters.tcp_segments_tx += 1
            return
        header = wtcp.build_fast(
            conn.tx_sum, conn.local_port, conn.remote_port, seq, ack, flags, window, timestamp,
            payload,
        )  # fmt: skip
        self.counters.tcp_segments_tx += 1
        pieces = (header, payload) if len(payload) else (header,)
        conn.ip_send(conn.remote_ip, wipv4.PROTO_TCP, pieces, self.now, dont_fragment=conn.pmtu_df)

    def send_reset(
        self,
        remote_ip: Address,
        remote_port: int,
        local_port: int,
        seq: int,
        local_ip: Address | None = None,
    ) -> None:
        """<SEQ=seq><CTL=RST> (the answer to an unacceptable ACK, RFC 9293 3.10.7), from
        `local_ip` (the address the segment came to; default: the source for remote_ip)."""
        self._send_bare(remote_ip, local_ip, TcpRepr(local_port, remote_port, seq, 0, RST, 0))

    def _send_bare(self, remote: Address, local: Address | None, repr_: TcpRepr) -> bool:
        """A segment outside any connection (RST, cookie SYN-ACK) from `local` to `remote`."""
        net = self.net_for(remote)
        if local is None:
            local = net.source(remote)
            if local is None:
                return False
        header = repr_.emit(*net.csum_pair(local, remote))
        if repr_.flags & RST:
            self.counters.tcp_resets_tx += 1
        self.counters.tcp_segments_tx += 1
        return net.sender(local)(remote, wipv4.PROTO_TCP, (header,), self.now)

    def state_changed(self, conn: Connection | TimeWait, old: State, new: State) -> None:
        if old is S.TIME_WAIT and type(conn) is Connection:
            record = self.conns.get(conn.key)
            if type(record) is TimeWait and record.owner() is conn:
                record.abort()  # the application aborted a retired connection: the record
                return  # is what the table and the counts hold
        states = self._states
        if old is not S.CLOSED:
            states[STATE_NAME[old]] -= 1
        if new is not S.CLOSED:
            states[STATE_NAME[new]] += 1
        if old is S.TIME_WAIT:
            self.time_wait_count -= 1
        listener = conn.listener
        if new is S.TIME_WAIT:
            self.time_wait_count += 1
            if self.time_wait_count > self.config.max_time_wait:
                conn.close_at = self.now  # too many: this one leaves at once
        elif new is S.ESTABLISHED and old is S.SYN_RECEIVED and listener is not None:
            listener.syn_queue.pop(conn.key, None)
            listener.accept_queue.append(conn)
            self._ready[listener] = None
            if not self.flush_follows:
                self.deadline_moved(self.now)
        elif new is S.CLOSED:
            if self.conns.get(conn.key) is conn:
                del self.conns[conn.key]
            if old in SYNCHRONIZED and old is not S.TIME_WAIT and old is not S.SYN_RECEIVED:
                self._remember_closed(conn)
            if listener is not None:
                listener.syn_queue.pop(conn.key, None)
                if conn in listener.accept_queue:
                    listener.accept_queue.remove(conn)
        self._dirty[conn] = None  # touch(): five times per connection
        if not self.flush_follows:
            self.deadline_moved(self.now)

    def accept_ready(self, conn: Connection) -> bool:
        """May this SYN_RECEIVED connection complete (room in its listener's accept queue)?"""
        listener = conn.listener
        if listener is None:
            return True
        return len(listener.accept_queue) < listener.backlog

    # =========================================================================================
    # receive
    # =========================================================================================
    def receive(
        self, ip: wipv4.Ipv4Header, segment: memoryview, packet: memoryview, now: float
    ) -> None:
        self.receive_fast(ip.src, ip.dst, segment, packet, now)

    def receive_fast(
        self,
        src: int,
        dst: int,
        segment: memoryview,
        packet: memoryview,
        now: float,
        checked: bool = False,
    ) -> None:
        """One segment, from the host's fast path (addresses as ints; `checked`: it verified
        the checksum already) or `receive`."""
        c = self.counters
        self.now = now
        if dst != self.local_ip:
            c.drop(Drop.TCP_NOT_UNICAST)  # RFC 1122 4.2.3.10: no TCP to broadcasts
            return
        try:
            h, payload = wtcp.parse(segment, src, dst, not (checked or self.csum_trusted))
        except Malformed as bad:
            c.drop(bad.reason)
            return
        self._demux(src, dst, h, payload, now)

    def receive6(
        self,
        ip: wipv6.Ipv6Header,
        segment: memoryview,
        packet: memoryview,
        now: float,
        checked: bool = False,
    ) -> None:
        """One segment over IPv6 (the IPv6 engine delivers only our addresses and groups).
        `checked`: the fast path (proto/fast6.py) verified the checksum in C already."""
        c = self.counters
        self.now = now
        src, dst = ip.src, ip.dst
        if dst[0] == 0xFF:
            c.drop(Drop.TCP_NOT_UNICAST)  # RFC 1122 4.2.3.10, as for broadcasts
            return
        verify = not (checked or self.csum_trusted)
        try:  # the pseudo-header sum only when the checksum is still to be verified
            h, payload = wtcp.parse(segment, v6_sum(src, dst) if verify else 0, 0, verify)
        except Malformed as bad:
            c.drop(bad.reason)
            return
        self._demux(src, dst, h, payload, now)

    def take_ack_run(self, frame: memoryview, more: int, window: int, now: float) -> bool:
        """Pure ACKs of the host's batch (Host._ack_batch), as ns_ack_runs found them: valid
        66-byte IPv4 segments whose options are NOP NOP Timestamps, flags exactly ACK, no
        text. `frame` is the last of `more` ACKs of one flow (one alone, or the members of a
        run after its first), `window` the largest raw window of the others (0: none). When
        `frame` replaces the connection's held ACK (ACK_HOLD), all are taken here as
        receive_fast would take them one by one, from the frame's fields, without the parse
        and the per-frame path (Connection.take_ack_run: for a run, being monotone, each
        member would have replaced the one before). False leaves them to that path."""
        src, dst, sport, dport, seq, ack, _offset, flags, wnd, csum, urgent, tsval, tsecr = (
            _PURE_ACK.unpack_from(frame, 26)
        )
        conn = self.conns.get((dst, dport, src, sport))
        if conn is None or conn.__class__ is not Connection or conn.ack_held is None:
            return False
        options = _new(TcpOptions, (None, None, False, (), (tsval, tsecr)))
        h = _new(TcpHeader, (sport, dport, seq, ack, 32, flags, wnd, csum, urgent, options))
        try:
            if not conn.take_ack_run(h, more, window, now):
                return False
        except Exception:  # as _demux: a bug costs one connection, not the batch
            self._internal_error(conn, "processing a segment")
            self.counters.drop(Drop.TCP_INTERNAL_ERROR)
        self.counters.tcp_segments_rx += more
        self._dirty[conn] = None
        return True

    def _demux(
        self, src: Address, dst: Address, h: TcpHeader, payload: memoryview, now: float
    ) -> None:
        """A valid segment from src to our address dst: its connection, else its listener."""
        c = self.counters
        c.tcp_segments_rx += 1
        conn = self.conns.get((dst, h.dst_port, src, h.src_port))
        isn_floor = None
        if conn is not None:
            if conn.state is S.TIME_WAIT and h.flags & (SYN | ACK | RST) == SYN:
                isn_floor = self._time_wait_reopen(conn, h)
            if isn_floor is None:
                try:
                    conn.segment(h, payload, now)
                except Exception:  # a bug must cost one connection, not the loop's batch
                    self._internal_error(conn, "processing a segment")
                    c.drop(Drop.TCP_INTERNAL_ERROR)
                self._dirty[conn] = None
                if not self.flush_follows:
                    self.deadline_moved(now)
                return
            # RFC 6191: the old incarnation gave way; the listener decides on the SYN.
        listener = self.listeners.get(h.dst_port)
        if listener is None:
            self._reset_closed(src, dst, h, len(payload))
            c.drop(Drop.TCP_NO_LISTENER)
            return
        self._listen_segment(listener, src, dst, h, payload, now, isn_floor)

    def _time_wait_reopen(self, conn: Connection, h: TcpHeader) -> int | None:
        """RFC 6191 (timestamps) / RFC 1122 4.2.2.13 (sequence numbers): may this SYN reopen
        a connection in TIME_WAIT? Then the old one closes, and the new ISN must lie beyond
        its sequence space: the floor returned (as Linux: SND.NXT + 65535 + 2)."""
        ts = h.options.timestamp
        if conn.ts_ok and ts is not None:
            newer = seq_gt(ts[0], conn.ts_recent)
        else:
            newer = unwrap(h.seq, conn.rcv_nxt) > conn.rcv_nxt
        if not newer:
            return None
        floor = (conn.snd_nxt + 65535 + 2) & MASK
        conn.time_wait_reopened()
        return floor

    def _reset_closed(self, src: Address, dst: Address, h: TcpHeader, plen: int) -> None:
        """RFC 9293 3.10.7.1: a segment for no connection gets a RST (unless it is one)."""
        reply = TcpRepr.reset_for(h.src_port, h.dst_port, h.seq, h.ack, h.flags, plen)
        if reply is None:
            return
        self._send_bare(src, dst, reply)

    # -- LISTEN (RFC 9293 3.10.7.2) ----------------------------------------------------------
    def _listen_segment(
        self,
        listener: Listener,
        src: Address,
        dst: Address,
        h: TcpHeader,
        payload: memoryview,
        now: float,
        isn_floor: int | None = None,
    ) -> None:
        c = self.counters
        flags = h.flags
        if flags & RST:
            c.drop(Drop.TCP_LISTEN_RST)
            return
        if flags & ACK:
            if not flags & SYN and self._cookie_ack(listener, src, dst, h, payload, now):
                return
            self.send_reset(src, h.src_port, h.dst_port, h.ack, dst)
            c.drop(Drop.TCP_LISTEN_ACK)
            return
        if not flags & SYN:
            c.drop(Drop.TCP_LISTEN_NO_SYN)
            return
        if len(listener.accept_queue) >= listener.backlog:
            c.tcp_accept_queue_overflows += 1
            c.drop(Drop.TCP_ACCEPT_QUEUE_FULL)
            return
        if len(listener.syn_queue) >= listener.syn_backlog:
            c.tcp_syn_queue_overflows += 1
            if self.config.syncookies:
                self._send_cookie(listener, src, dst, h, now)
                return
            c.drop(Drop.TCP_SYN_QUEUE_FULL)
            return
        conn = Connection(self, h.dst_port, src, h.src_port, listener, local_ip=dst)
        if listener.send_buffer is not None or listener.receive_buffer is not None:
            conn.set_buffer_sizes(listener.send_buffer, listener.receive_buffer)
        isn = self.choose_isn(conn, now)
        if isn_floor is not None and seq_gt(isn_floor, isn):
            isn = isn_floor
        key = conn.key
        self.conns[key] = conn
        listener.syn_queue[key] = conn
        conn.open_passive(h, isn, now)
        c.tcp_passive_opens += 1
        self._dirty[conn] = None  # touch()
        if not self.flush_follows:
            self.deadline_moved(now)

    # -- SYN cookies (RFC 4987 3.6) ----------------------------------------------------------
    def _send_cookie(
        self, listener: Listener, src: Address, dst: Address, h: TcpHeader, now: float
    ) -> None:
        cfg = self.config
        opts = h.options
        our_mss = self.net_for(src).mss
        tuple4 = isnmod.tuple_bytes(dst, h.dst_port, src, h.src_port)
        peer_mss = opts.mss if opts.mss else 536
        isn, _ = self.secrets.make_cookie(tuple4, h.seq, min(peer_mss, our_mss), now)
        options_ts = None
        wscale = sack = None
        if cfg.timestamps and opts.timestamp is not None:
            # The peer's options ride in the low bits of our TSval (isn.py).
            peer_ws = opts.window_scale if cfg.window_scaling else None
            peer_sack = bool(cfg.sack and opts.sack_permitted)
            tsval = (int(now * 1000) + self.secrets.ts_offset(tuple4)) & MASK
            options_ts = (isnmod.cookie_tsval(tsval, peer_ws, peer_sack), opts.timestamp[0])
            if peer_ws is not None:
                wscale = self._our_wscale(listener.receive_size())
            sack = peer_sack
        options = TcpOptions(our_mss, wscale, bool(sack), (), options_ts)
        window = min(listener.receive_size(), 0xFFFF)
        reply = TcpRepr(h.dst_port, h.src_port, isn, (h.seq + 1) & MASK, SYN | ACK, window, options)
        self.counters.tcp_syn_cookies_sent += 1
        listener.last_overflow = now
        self._send_bare(src, dst, reply)

    def _our_wscale(self, receive_buffer: int) -> int:
        shift = 0
        while (0xFFFF << shift) < receive_buffer and shift < 14:
            shift += 1
        return shift

    def _cookie_ack(
        self,
        listener: Listener,
        src: Address,
        dst: Address,
        h: TcpHeader,
        payload: memoryview,
        now: float,
    ) -> bool:
        """An ACK to a listener: the end of a cookie handshake? Then make the connection."""
        if listener.last_overflow is None or now - listener.last_overflow > COOKIE_WINDOW:
            return False
        c = self.counters
        tuple4 = isnmod.tuple_bytes(dst, h.dst_port, src, h.src_port)
        mss = self.secrets.check_cookie(tuple4, (h.seq - 1) & MASK, (h.ack - 1) & MASK, now)
        wscale, sack = None, False
        ts = h.options.timestamp
        if mss is not None and ts is not None and self.config.timestamps:
            decoded = isnmod.cookie_ts_options(ts[1])
            if decoded is None:
                mss = None
            else:
                wscale, sack = decoded
        if mss is None:
            c.tcp_syn_cookies_failed += 1
            return False
        if self._stale_ack((dst, h.dst_port, src, h.src_port), h.ack, now):
            return False  # a segment for a closed connection: RST (Drop.TCP_LISTEN_ACK)
        if len(listener.accept_queue) >= listener.backlog:
            c.tcp_accept_queue_overflows += 1
            c.drop(Drop.TCP_ACCEPT_QUEUE_FULL)
            return True
        c.tcp_syn_cookies_validated += 1
        c.tcp_passive_opens += 1
        conn = Connection(self, h.dst_port, src, h.src_port, listener, local_ip=dst)
        conn.set_buffer_sizes(listener.send_buffer, listener.receive_buffer)
        self.conns[conn.key] = conn
        conn.open_from_cookie(h, mss, wscale, sack, now)
        # The ACK may carry data (or a FIN): process it as the established connection.
        if len(payload) or h.flags & FIN:
            conn.segment(h, payload, now)
        self.touch(conn)
        return True

    def _remember_closed(self, conn: Connection) -> None:
        self._forget_closed(self.now)
        recent = self._closed_recently
        recent.pop(conn.key, None)
        recent[conn.key] = (
            self.now + self.config.time_wait,
            conn.iss & MASK,
            conn.snd_nxt - conn.iss,
        )
        while len(recent) > self.config.max_time_wait:
            recent.popitem(last=False)

    def _forget_closed(self, now: float) -> None:
        recent = self._closed_recently
        while recent:
            oldest = next(iter(recent))
            if recent[oldest][0] > now:
                break
            recent.popitem(last=False)

    def _stale_ack(self, key: Key, ack_wire: int, now: float) -> bool:
        """Is this "cookie ACK" an old duplicate of a connection that just closed?

        A cookie is checked as (SEG.ACK - 1) - (SEG.SEQ - 1), which any later segment of the
        same connection also satisfies when both sides sent as many octets (an echo). The
        passive closer has no TIME_WAIT to absorb such a duplicate (e.g. the peer's TIME_WAIT
        answering our retransmitted FIN after LAST_ACK ended): without this check it makes a
        ghost connection in ESTABLISHED at the old sequence numbers, which never ends.
        Within 2*MSL, an ACK inside the old connection's sequence space is such a duplicate.
        """
        self._forget_closed(now)
        entry = self._closed_recently.get(key)
        if entry is None:
            return False
        _, iss, span = entry
        return ((ack_wire - 1 - iss) & MASK) <= span

    # =========================================================================================
    # ICMP errors (RFC 1122 4.2.3.9, RFC 5927)
    # =========================================================================================
    def receive_error(
        self,
        icmp_type: int,
        code: int,
        inner: wipv4.Ipv4Header,
        inner_payload: memoryview,
        now: float,
    ) -> None:
        self.now = now
        src_port = int.from_bytes(inner_payload[0:2], "big")
        dst_port = int.from_bytes(inner_payload[2:4], "big")
        seq = int.from_bytes(inner_payload[4:8], "big")
        conn = self.conns.get((inner.src, src_port, inner.dst, dst_port))
        if conn is None:
            self.counters.drop(Drop.TCP_ICMP_NO_CONNECTION)
            return
        hard = icmp_type == wicmp.TYPE_DEST_UNREACHABLE and code in HARD_UNREACHABLE
        code_errno = SOFT_ERRNO.get((icmp_type, code), errno.EHOSTUNREACH)
        error = OSError(code_errno, os.strerror(code_errno))
        if not conn.icmp_error(hard, error, seq):
            self.counters.drop(Drop.TCP_ICMP_OUT_OF_WINDOW)
            return
        self.touch(conn)

    def receive_frag_needed(
        self, inner: wipv4.Ipv4Header, inner_payload: memoryview, mtu: int, now: float
    ) -> None:
        """ICMP "fragmentation needed" (RFC 1191) quoting one of our segments, `mtu` the
        next-hop MTU (icmp.py made a plateau estimate of a 0). Believed only when the quoted
        segment is in flight (RFC 5927 4.1), then the destination's estimate goes down and
        the connection resends at the new size. Not a soft error (Linux neither)."""
        self.now = now
        src_port = int.from_bytes(inner_payload[0:2], "big")
        dst_port = int.from_bytes(inner_payload[2:4], "big")
        seq = int.from_bytes(inner_payload[4:8], "big")
        conn = self.conns.get((inner.src, src_port, inner.dst, dst_port))
        if conn is None:
            self.counters.drop(Drop.TCP_ICMP_NO_CONNECTION)
            return
        if not conn.quotes_in_flight(seq):
            self.counters.drop(Drop.TCP_ICMP_OUT_OF_WINDOW)
            return
        if not self.config.pmtu_discovery:
            return
        self.pmtu.report(inner.dst, mtu, self.ipv4.config.mtu, now)
        conn.pmtu_reduced(now)
        self.touch(conn)

    def receive_error6(
        self,
        icmp_type: int,
        code: int,
        word: int,
        inner: wipv6.Ipv6Header,
        inner_payload: memoryview,
        now: float,
    ) -> None:
        """An ICMPv6 error quoting one of our segments (RFC 4443; icmpv6.py checked that we
        sent the quoted packet). Packet Too Big takes the frag-needed path: believed only for
        a segment in flight (RFC 5927 4.1), then the estimate goes down (RFC 8201, the IPv6
        engine's cache; ICMPv6 leaves that to us) and the connection resends at the new size.
        The rest are soft or hard errors as for IPv4 (net.V6_ERRORS)."""
        self.now = now
        if len(inner_payload) < 8:
            self.counters.drop(Drop.TCP_ICMP_NO_CONNECTION)
            return
        src_port = int.from_bytes(inner_payload[0:2], "big")
        dst_port = int.from_bytes(inner_payload[2:4], "big")
        seq = int.from_bytes(inner_payload[4:8], "big")
        conn = self.conns.get((inner.src, src_port, inner.dst, dst_port))
        if conn is None:
            self.counters.drop(Drop.TCP_ICMP_NO_CONNECTION)
            return
        if icmp_type == wicmp6.TYPE_PACKET_TOO_BIG:
            if not conn.quotes_in_flight(seq):
                self.counters.drop(Drop.TCP_ICMP_OUT_OF_WINDOW)
                return
            net = conn.net
            net.pmtu.report(inner.dst, word, net.link_mtu, now)  # RFC 8201, once validated
            if self.config.pmtu_discovery:
                conn.pmtu_reduced(now)
                self.touch(conn)
            return
        if icmp_type == wicmp6.TYPE_PARAMETER_PROBLEM:
            code_errno, hard = PARAM_PROBLEM
        else:
            code_errno, hard = V6_ERRORS.get((icmp_type, code), (errno.EHOSTUNREACH, False))
        if not conn.icmp_error(hard, OSError(code_errno, os.strerror(code_errno)), seq):
            self.counters.drop(Drop.TCP_ICMP_OUT_OF_WINDOW)
            return
        self.touch(conn)

    # =========================================================================================
    # flush, timers
    # =========================================================================================
    def flush(self, now: float) -> None:
        """The flush point: listeners' on_ready, then each touched connection's events,
        output and timer. Callbacks may touch more connections; they are flushed too (a few
        rounds at most here; anything left makes next_deadline() 'now')."""
        self.now = now
        timers = self._timers
        if timers:
            when, _, top = timers[0]
            if top.heap_at != when or top.state is S.CLOSED:
                self._prune_timers()
        outer = self.flush_follows
        self.flush_follows = True  # what the callbacks touch is flushed by the next round
        try:
            for _ in range(8):
                if self._ready:
                    ready = list(self._ready)
                    self._ready.clear()
                    for listener in ready:
                        if listener.on_ready is not None and listener.accept_queue:
                            listener.on_ready(listener)
                if not self._dirty:
                    return
                dirty = self._dirty
                self._dirty = {}
                for conn in dirty:
                    try:
                        conn.dispatch()
                    except Exception:  # the application's callback raised: as asyncio does,
                        self._internal_error(conn, "in an application callback")  # reset it
                        conn.lost_done = True  # and do not call it again
                    self._dirty.pop(conn, None)
                    try:
                        conn.output(now)
                    except Exception:
                        self._internal_error(conn, "sending")
                    if conn.state is S.TIME_WAIT and type(conn) is Connection:
                        conn = self._retire(conn)
                    self._schedule(conn)
        finally:
            self.flush_follows = outer
            if not outer and (self._dirty or self._ready):
                self.deadline_moved(now)  # left for the next flush point: next_deadline "now"

    def _prune_timers(self) -> None:
        """Drop the heap's leading entries that can never run a timer (superseded, or their
        connection closed). next_deadline() did this on every loop turn while the loop asked
        it after each batch; without it, a connection load would keep each closed
        connection alive in the heap until its old entry came due (a second for a SYN-ACK's
        RTO: thousands of connections, and the collector scanning them)."""
        timers = self._timers
        while timers:
            when, _, conn = timers[0]
            if conn.heap_at == when:
                if conn.state is not S.CLOSED:
                    return
                conn.heap_at = None
            heapq.heappop(timers)

    def _retire(self, conn: Connection) -> Connection | TimeWait:
        """A connection in TIME_WAIT, its last ACK sent, gives its place in the table to a
        small record (timewait.py) that answers the old incarnation's segments for 2*MSL.
        Kept whole when the record could not answer exactly as it would: received data the
        application has not taken (its window may still open), out-of-order data or owed
        ACKs (their SACK blocks), anything unacknowledged or urgent."""
        if (
            not self.config.compact_time_wait
            or self.conns.get(conn.key) is not conn
            or conn.rcvbuf.queued
            or conn.rcvbuf.ooo
            or conn.ack_points
            or conn.ack_now
            or conn.snd_una != conn.snd_nxt
            or conn.snd_up > conn.snd_nxt
        ):
            return conn
        record = TimeWait(conn)
        self.conns[conn.key] = record
        conn.close_at = None  # its timers end here: the record's run on
        conn.heap_at = None  # (a heap entry left for it finds this and lapses)
        return record

    def _internal_error(self, conn: Connection, doing: str) -> None:
        log.exception("TCP %r: error %s; the connection is reset", conn, doing)
        try:
            conn.abort()
        except Exception:  # pragma: no cover - last resort: forget it
            conn.state = S.CLOSED
            self.conns.pop(conn.key, None)

    def _schedule(self, conn: Connection) -> None:
        """Keep the heap's entry for conn no later than its next timer (lazy: a later timer
        leaves the earlier entry, which fires, finds nothing due and reschedules)."""
        when = conn.next_timer()
        if when is None:
            return
        at = conn.heap_at
        if at is None or when < at:
            conn.heap_at = when
            heapq.heappush(self._timers, (when, next(self._seq), conn))
            self.deadline_moved(when)

    def poll(self, now: float) -> None:
        """Run the timers that are due, then flush."""
        self.now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, conn = heapq.heappop(timers)
            if conn.heap_at != when:
                continue  # superseded by an earlier entry
            conn.heap_at = None
            if conn.state is S.CLOSED:
                continue
            due = conn.next_timer()
            if due is None or due > now:
                # Stale: the timer this entry was for was stopped or moved later by a state
                # change (a SYN-ACK's RTO after the handshake). No timer run, no output pass
                # (which could only repeat an ACK); the real next timer gets its own entry.
                self._schedule(conn)
                continue
            try:
                conn.on_timer(now)
            except Exception:
                self._internal_error(conn, "running its timers")
            self._dirty[conn] = None
        self.flush(now)

    def announce_deadlines(self, moved: Announce) -> None:
        """Tell `moved` when the next deadline comes earlier (proto/deadlines.py)."""
        self.deadline_moved = moved

    def next_deadline(self) -> float | None:
        if self._dirty or self._ready:
            return self.now
        timers = self._timers
        while timers:
            when, _, conn = timers[0]
            if conn.heap_at != when:
                heapq.heappop(timers)  # superseded by an earlier entry
                continue
            due = conn.next_timer()
            if due is not None and due <= when:
                return when
            # Stale (its timer was stopped or moved later): no wake-up for it; its real
            # next timer (`due`, just asked) gets its own entry (as _schedule would).
            heapq.heappop(timers)
            if due is None:
                conn.heap_at = None
            else:
                conn.heap_at = due
                heapq.heappush(timers, (due, next(self._seq), conn))
        return None

    # =========================================================================================
    # metrics and shutdown
    # =========================================================================================
    def connections_by_state(self) -> dict[str, int]:
        """{state name: count}, listeners included (safe from another thread: a copy)."""
        return dict(self._states)

    def connection_count(self) -> int:
        """Connections other than listeners and TIME_WAIT."""
        states = self._states
        return sum(states.values()) - states["listen"] - states["time_wait"]

    def begin_shutdown(self, now: float) -> None:
        """Stop accepting (close every listener) and close every connection gracefully."""
        self.now = now
        self.shutting_down = True
        for listener in list(self.listeners.values()):
            self.unlisten(listener)
        for conn in list(self.conns.values()):
            if conn.state is S.SYN_SENT:
                conn.abort()
            elif conn.state is not S.TIME_WAIT:
                conn.close()
        self.flush(now)

    def is_quiet(self) -> bool:
        """Nothing left but TIME_WAIT."""
        return all(conn.state is S.TIME_WAIT for conn in self.conns.values())

    def abort(self, now: float) -> None:
        """Reset every connection still open (the grace period is over)."""
        self.now = now
        for conn in list(self.conns.values()):
            if conn.state is not S.TIME_WAIT:
                conn.abort()
        self.flush(now)
