"""A SOCKS5 front (RFC 1928, RFC 1929 user/password optional): kernel programs go out
through the stack.

A kernel socket listens at `socks.listen` (loopback unless auth is configured). Each client's
handshake is parsed by socks5.py; then
- CONNECT opens a TCP connection from the stack's address through its link (netstack.api.tcp)
  and pipe.TcpPipe relays it to the client, with the pipe's flow control and half-close;
- BIND listens on a free stack TCP port for one connection from the host the client names
  (FTP's active mode: the client tells its server where to connect), replies with the stack's
  address and that port, then, once the connection came, with its peer, and relays it as a
  CONNECT's; connections from other hosts are reset and counted (`unexpected_peer`), and none
  within `socks.bind_timeout` ends the session with reply 6 (`bind_timeout`);
- UDP ASSOCIATE binds a kernel UDP socket for the client and an ephemeral stack UDP port, and
  relays datagrams (RFC 1928 section 7 headers) for as long as the control connection lives.

Both families: an IPv4 (ATYP 1) or IPv6 (ATYP 4) destination goes out over the stack's TCP or
UDP of that family, from the address the stack chooses for it (RFC 6724 for IPv6). With IPv6
off, an IPv6 destination gets reply 8 (address type not supported).

Hostnames (ATYP 3) are refused with reply 8 (address type not supported): the stack has no
DNS of its own, and resolving with the process's resolver would query through the kernel's
network, not the stack's link -- and block the loop. Clients resolve names themselves
(curl --socks5, not --socks5-hostname).

Destinations must fall in `socks.allow`, networks of either family (default: the stack's
on-link networks only -- IPv4's, and the prefixes of our IPv6 addresses, fe80::/64 included --
so nothing beyond a gateway until configured); others get reply 2 and a `not_allowed` count.
The stack's own addresses, multicast and unspecified addresses are never allowed. Sessions are
bounded (`socks.max_sessions`), handshakes must finish within `socks.handshake_timeout`, and a
session silent for `socks.idle_timeout` ends.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import logging
import socket
from typing import Any

from netstack.api.tcp import TcpTransport
from netstack.api.tcp import connect as tcp_connect
from netstack.front import socks5 as s5
from netstack.front.pipe import TcpPipe, connect_error_reason, reset_close
from netstack.front.port import StackPort
from netstack.front.stats import SocksStats
from netstack.proto.tcp.engine import Listener
from netstack.wire.inet import to_str as addr_to_str

log = logging.getLogger("netstack.front.socks")

MAX_HANDSHAKE = 1024  # bytes a client may send before its request is answered
CONNECT_TIMEOUT = 10.0
ACCEPTS_PER_WAKEUP = 64
UDP_BATCH = 64
UDP_MAX = 65535
UDP_PAYLOAD_MAX = {4: 65507, 6: 65527}  # what one UDP datagram carries, per IP version
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The destination address types served, and how their text becomes an address.
DESTINATION = {s5.ATYP_IPV4: ipaddress.IPv4Address, s5.ATYP_IPV6: ipaddress.IPv6Address}

REPLY_FOR = {  # a failed CONNECT's reason -> its reply code
    "refused": s5.REP_CONNECTION_REFUSED,
    "unreachable": s5.REP_HOST_UNREACHABLE,
    "connect_timeout": s5.REP_HOST_UNREACHABLE,
}
PIPE_REASON = {  # pipe.TcpPipe's end reasons -> SOCKS_ERRORS
    "client_reset": "reset",
    "target_reset": "reset",
    "refused": "refused",
    "unreachable": "unreachable",
    "connect_timeout": "connect_timeout",
    "idle_timeout": "idle_timeout",
}

GREETING, AUTH, REQUEST, CONNECTING, RELAY, UDP, DONE, BINDING = range(8)


def stack_address(ip: IPAddress) -> int | bytes:
    """The engines' form of an address: an int for IPv4, 16 bytes for IPv6 (wire/inet.py)."""
    return int(ip) if ip.version == 4 else ip.packed


def connect_refusal(err: OSError) -> s5.SocksError:
    """A CONNECT the stack could not even start: IPv6 off is "address type not supported"
    (RFC 1928 6, X'08'); no route or no source address, "network unreachable" (X'03')."""
    if err.errno == errno.EAFNOSUPPORT:
        return s5.SocksError("bad_address_type", s5.REP_ADDRESS_TYPE_NOT_SUPPORTED)
    return s5.SocksError("unreachable", s5.REP_NETWORK_UNREACHABLE)


class SocksServer:
    def __init__(self, port: StackPort, config: Any, stats: SocksStats) -> None:
        self.port = port
        self.stats = stats
        self.max_sessions = config.socks_max_sessions
        self.handshake_timeout = config.socks_handshake_timeout
        self.idle_timeout = config.socks_idle_timeout
        self.bind_timeout = config.socks_bind_timeout
        self._allow = config.socks_allow
        self.auth: tuple[bytes, bytes] | None = None
        if config.socks_username is not None:
            self.auth = (config.socks_username.encode(), config.socks_password.encode())
        self.sessions: set[Session] = set()
        host, listen_port = config.socks_listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind((host, listen_port))
        sock.listen(128)
        self.listen_host = host
        self.sock: socket.socket | None = sock
        port.loop.add_reader(sock.fileno(), self._on_accept)
        log.info(
            "SOCKS5 on %s:%d (allow %s)",
            host,
            sock.getsockname()[1],
            ", ".join(map(str, self.allow)),
        )

    @property
    def allow(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The configured networks, or the on-link networks as they are now (DHCP and SLAAC
        may change them)."""
        return self._allow or self.port.networks()

    def allowed(self, ip: IPAddress) -> bool:
        if ip.is_multicast or ip.is_unspecified or self.port.is_ours(ip):
            return False
        for net in self.allow:
            if ip in net:  # False for the other family
                if ip.version == 6:
                    return True
                return ip != net.broadcast_address or net.prefixlen >= 31
        return False

    def _on_accept(self, now: float) -> None:
        if self.sock is None:
            return
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as err:  # EMFILE and friends: the client waits in the backlog
                log.warning("SOCKS accept: %s", err)
                return
            conn.setblocking(False)
            if len(self.sessions) >= self.max_sessions:
                self.stats.error("limit")
                reset_close(conn)
                continue
            self.stats.sessions += 1
            self.stats.active += 1
            session = Session(self, conn, addr, now)
            self.sessions.add(session)

    def session_ended(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.stats.active -= 1

    def stop_listening(self) -> None:
        if self.sock is not None:
            self.port.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def session_count(self) -> int:
        return len(self.sessions)

    def close(self) -> None:
        self.stop_listening()
        for session in list(self.sessions):
            session.abort()


class Session:
    """One client: the handshake, then a CONNECT pipe or a UDP association."""

    def __init__(self, server: SocksServer, sock: socket.socket, addr: Any, now: float) -> None:
        self.server = server
        self.port = server.port
        self.sock = sock
        self.fd = sock.fileno()
        self.client_ip = addr[0]
        self.buf = bytearray()
        self.received = 0
        self.state = GREETING
        self.pipe: _SocksPipe | None = None
        self.udp: _UdpAssociation | None = None
        self.listener: Listener | None = None  # BIND's, until its connection came
        self.expected: IPAddress | None = None  # BIND: the peer to accept (None: any allowed)
        self.port.loop.add_reader(self.fd, self._on_readable)
        self.reading = True
        self._timer = self.port.loop.call_later(server.handshake_timeout, self._handshake_expired)

    # -- handshake -----------------------------------------------------------------------------
    def _on_readable(self, now: float) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            self._fail("reset")
            return
        if self.state == UDP:
            if not data:
                self.end(None)  # the control connection ended: so does the association
            return  # anything else on the control connection is ignored (RFC 1928 7)
        if not data:
            self._fail("truncated")
            return
        self.received += len(data)
        if self.received > MAX_HANDSHAKE:
            self._fail("oversized", s5.REP_GENERAL_FAILURE if self.state == REQUEST else None)
            return
        self.buf += data
        self.port.enter(now)
        try:
            self._advance()
        except s5.SocksError as err:
            self._fail(err.reason, err.reply)

    def _advance(self) -> None:
        while self.state in (GREETING, AUTH, REQUEST):
            parse = {
                GREETING: s5.parse_greeting,
                AUTH: s5.parse_userpass,
                REQUEST: s5.parse_request,
            }[self.state]
            parsed = parse(self.buf)
            if parsed is None:
                return
            message, used = parsed
            del self.buf[:used]
            if isinstance(message, s5.Greeting):
                self._on_greeting(message)
            elif isinstance(message, s5.UserPass):
                self._on_userpass(message)
            else:
                self._on_request(message)

    def _on_greeting(self, greeting: s5.Greeting) -> None:
        method = s5.choose_method(greeting, self.server.auth is not None)
        self._send(s5.encode_method(method))
        if method == s5.METHOD_NONE_ACCEPTABLE:
            raise s5.SocksError("no_acceptable_method")
        self.state = AUTH if method == s5.METHOD_USERPASS else REQUEST

    def _on_userpass(self, creds: s5.UserPass) -> None:
        user, password = self.server.auth or (b"", b"")
        ok = hmac.compare_digest(creds.username, user) & hmac.compare_digest(
            creds.password, password
        )
        self._send(s5.encode_auth_status(ok))
        if not ok:
            raise s5.SocksError("auth_failed")
        self.state = REQUEST

    def _on_request(self, request: s5.Request) -> None:
        address = request.address
        if address.atyp == s5.ATYP_DOMAIN:
            raise s5.SocksError("hostname_refused", s5.REP_ADDRESS_TYPE_NOT_SUPPORTED)
        if address.atyp not in DESTINATION:
            raise s5.SocksError("bad_address_type", s5.REP_ADDRESS_TYPE_NOT_SUPPORTED)
        if request.command == s5.CMD_UDP_ASSOCIATE:
            self._associate(address)
            return
        ip = DESTINATION[address.atyp](address.host)
        if request.command == s5.CMD_BIND:
            self._bind(ip)
            return
        if not self.server.allowed(ip):
            raise s5.SocksError("not_allowed", s5.REP_NOT_ALLOWED)
        pipe = _SocksPipe(self)
        try:
            pending = tcp_connect(self.port.tcp, (stack_address(ip), address.port), lambda: pipe)
        except OSError as err:  # IPv6 off, no route, no source address for it
            raise connect_refusal(err) from None
        self.state = CONNECTING
        self._set_reading(False)  # the client's early bytes wait in the kernel until we relay
        self._timer.cancel()
        self._timer = self.port.loop.call_later(CONNECT_TIMEOUT, self._connect_expired)
        self.pipe = pipe
        pipe.pending = pending

    # -- CONNECT -------------------------------------------------------------------------------
    def connected(self, pipe: _SocksPipe) -> None:
        """The stack's connection is up: reply with its address (a BIND's second reply:
        with its peer's, RFC 1928 6), start relaying."""
        self._timer.cancel()
        assert pipe.transport is not None
        if self.state == BINDING:
            self.server.stats.binds += 1
            address = pipe.transport.get_extra_info("peername")
        else:
            self.server.stats.connects += 1
            address = pipe.transport.get_extra_info("sockname")
        self._send(s5.encode_reply(s5.REP_SUCCEEDED, address))  # type: ignore[arg-type]
        self.state = RELAY
        early = bytes(self.buf)
        self.buf = bytearray()
        if early:
            pipe.transport.write(early)
        self.fd = -1  # the pipe owns the kernel socket now
        pipe.attach(self.sock)

    def pipe_ended(self, pipe: TcpPipe, reason: str | None) -> None:
        if self.state in (CONNECTING, BINDING):  # the connection never came up
            reason = PIPE_REASON.get(reason or "", "other")
            self._fail(reason, REPLY_FOR.get(reason, s5.REP_GENERAL_FAILURE))
            return
        if reason is not None:
            self.server.stats.error(PIPE_REASON.get(reason, "other"))
        self.state = DONE
        self.server.session_ended(self)

    def _connect_expired(self, now: float) -> None:
        if self.state == CONNECTING and self.pipe is not None:
            self.port.enter(now)
            self.pipe.pending.abort()  # the SYN_SENT connection goes away
            self.pipe.abort("connect_timeout")  # -> pipe_ended -> reply 4

    # -- BIND ----------------------------------------------------------------------------------
    def _bind(self, expected: IPAddress) -> None:
        """Listen on a free port for one connection from `expected` (any allowed host when
        it is unspecified); the first reply names our address toward it and that port."""
        if not expected.is_unspecified and not self.server.allowed(expected):
            raise s5.SocksError("not_allowed", s5.REP_NOT_ALLOWED)
        target = stack_address(expected)
        try:
            source = self.port.tcp.net_for(target).source(target)
        except OSError as err:  # IPv6 off
            raise connect_refusal(err) from None
        if source is None:  # no address of that family yet
            raise connect_refusal(OSError(errno.EADDRNOTAVAIL, "no source address"))
        try:
            self.listener = self.port.tcp.listen(0, 1, self._inbound)
        except OSError as err:  # no free port, or the stack is shutting down
            raise s5.SocksError("other", s5.REP_GENERAL_FAILURE) from err
        self.expected = None if expected.is_unspecified else expected
        self.state = BINDING
        self._set_reading(False)  # as CONNECT's: early bytes and a half-close wait in the kernel
        self._timer.cancel()
        self._timer = self.port.loop.call_later(self.server.bind_timeout, self._bind_expired)
        bound = (addr_to_str(source), self.listener.port)
        self._send(s5.encode_reply(s5.REP_SUCCEEDED, bound))

    def _inbound(self, listener: Listener) -> None:
        """A connection came to the BIND's port: the expected host's is relayed (the
        listener closes: one per BIND), any other is reset."""
        while (conn := listener.accept()) is not None:
            peer = ipaddress.ip_address(conn.remote_ip)  # an int (IPv4) or 16 bytes (IPv6)
            wanted = self.server.allowed(peer) if self.expected is None else peer == self.expected
            if self.state != BINDING or not wanted:
                self.server.stats.error("unexpected_peer")
                conn.abort()
                continue
            self._close_listener()
            pipe = self.pipe = _SocksPipe(self)
            pipe.pending = TcpTransport(conn, pipe)  # connection_made -> connected()

    def _bind_expired(self, now: float) -> None:
        if self.state == BINDING:
            self.port.enter(now)
            self._fail("bind_timeout", s5.REP_TTL_EXPIRED)

    def _close_listener(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    # -- UDP ASSOCIATE -------------------------------------------------------------------------
    def _associate(self, address: s5.Address) -> None:
        self._timer.cancel()
        self.udp = _UdpAssociation(self, address)
        self.server.stats.udp_associations += 1
        self.state = UDP
        self._send(s5.encode_reply(s5.REP_SUCCEEDED, self.udp.bound))

    # -- the end -------------------------------------------------------------------------------
    def _handshake_expired(self, now: float) -> None:
        if self.state in (GREETING, AUTH, REQUEST):
            self._fail("handshake_timeout")

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # a client gone mid-handshake: the read says so
            self.sock.send(data)

    def _fail(self, reason: str, reply: int | None = None) -> None:
        if self.state == DONE:
            return
        self.server.stats.error(reason)
        if reply is not None and self.state in (REQUEST, CONNECTING, BINDING):
            self._send(s5.encode_reply(reply))
        log.debug("SOCKS client %s: %s", self.client_ip, reason)
        self.end(reason)

    def end(self, reason: str | None) -> None:
        if self.state == DONE:
            return
        self.state = DONE
        self._timer.cancel()
        self._close_listener()
        if self.udp is not None:
            self.udp.close()
        if self.fd >= 0:
            self._set_reading(False)
            self.fd = -1
            if reason == "reset":
                reset_close(self.sock)
            else:
                self.sock.close()
        self.server.session_ended(self)

    def abort(self) -> None:
        if self.pipe is not None and not self.pipe.ended:
            self.pipe.pending.abort()
            self.pipe.abort(None)
        self.end("reset")

    def _set_reading(self, on: bool) -> None:
        if on != self.reading and self.fd >= 0:
            self.reading = on
            if on:
                self.port.loop.add_reader(self.fd, self._on_readable)
            else:
                self.port.loop.remove_reader(self.fd)


class _SocksPipe(TcpPipe):
    """The CONNECT relay; the stack side is the target here, the kernel socket the client."""

    def __init__(self, session: Session) -> None:
        stats = session.server.stats

        def count(from_target: int, to_target: int) -> None:
            stats.bytes_from_target += from_target
            stats.bytes_to_target += to_target

        super().__init__(session.port, session.server.idle_timeout, session.pipe_ended, count)
        self.session = session
        self.pending: TcpTransport  # what tcp_connect returned, before connection_made

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.session.connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None and not self.ended:  # the connect failed
            self.stack_lost = True
            err = getattr(exc, "errno", None) or 0
            self._end(connect_error_reason(err) if exc is not None else "other")
            return
        super().connection_lost(exc)


class _UdpAssociation:
    """Datagrams between one SOCKS client's UDP socket and the stack's UDP."""

    def __init__(self, session: Session, requested: s5.Address) -> None:
        self.session = session
        self.port = session.port
        self.server = session.server
        host = self.server.listen_host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.ksock = socket.socket(family, socket.SOCK_DGRAM)
        self.ksock.setblocking(False)
        self.ksock.bind((host, 0))
        self.bound = (host, self.ksock.getsockname()[1])
        # The client's UDP address: as requested when it named one, else its first datagram's
        # (which must come from the control connection's IP).
        self.client: tuple[str, int] | None = None
        if requested.port and requested.host not in ("0.0.0.0", "::"):
            self.client = (requested.host, requested.port)
        self.ssock = self.port.udp.bind(0, self._from_stack)
        self.last_active = self.port.loop.now()
        self.closed = False
        self.port.loop.add_reader(self.ksock.fileno(), self._from_client)
        self._idle = self.port.loop.call_later(self.server.idle_timeout, self._idle_check)

    def _from_client(self, now: float) -> None:
        self.port.enter(now)
        sent = False
        stats = self.server.stats
        for _ in range(UDP_BATCH):
            try:
                data, addr = self.ksock.recvfrom(UDP_MAX)
            except BlockingIOError:
                break
            except OSError:
                break
            if addr[0] != self.session.client_ip or (
                self.client is not None and addr[:2] != self.client
            ):
                continue  # not our client's: dropped (RFC 1928 section 7)
            self.client = addr[:2]
            try:
                header, payload = s5.parse_udp(data)
            except s5.SocksError as err:
                stats.error(err.reason)
                continue
            kind = DESTINATION.get(header.address.atyp)
            if header.frag != 0 or kind is None:
                stats.error("bad_address_type" if header.frag == 0 else "other")
                continue
            ip = kind(header.address.host)
            if len(payload) > UDP_PAYLOAD_MAX[ip.version]:
                stats.error("oversized")
                continue
            if not self.server.allowed(ip):
                stats.error("not_allowed")
                continue
            self.last_active = now
            try:
                ok = self.ssock.sendto(payload, (stack_address(ip), header.address.port))
            except OSError:  # IPv6 off
                stats.error("bad_address_type")
                continue
            if ok:
                stats.bytes_to_target += len(payload)
                sent = True
            else:
                stats.error("unreachable")
        if sent:
            self.port.push_tx()

    def _from_stack(self, data: memoryview, peer: tuple[int, int], dst: int, now: float) -> None:
        if self.client is None or self.closed:
            return
        self.last_active = now
        with contextlib.suppress(OSError):  # a full kernel buffer: UDP, the datagram is lost
            self.ksock.sendto(s5.encode_udp((addr_to_str(peer[0]), peer[1]), data), self.client)
            self.server.stats.bytes_from_target += len(data)

    def _idle_check(self, now: float) -> None:
        if self.closed:
            return
        if now - self.last_active >= self.server.idle_timeout:
            self.server.stats.error("idle_timeout")
            self.session.end(None)
        else:
            self._idle = self.port.loop.call_at(
                self.last_active + self.server.idle_timeout, self._idle_check
            )

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._idle.cancel()
        self.ssock.close()
        self.port.loop.remove_reader(self.ksock.fileno())
        self.ksock.close()
