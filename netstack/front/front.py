"""The front as one object the runtime holds: forwards (live-reloadable) and the SOCKS server.

It is also a Closer for SIGTERM: it stops taking new sessions at once; the sessions end with
their stack connections (the TCP engine closes those), and whatever is left is reset.
"""

from __future__ import annotations

from typing import Any

from netstack.front.forward import Forwards
from netstack.front.port import StackPort
from netstack.front.stats import FrontStats


class Front:
    def __init__(self, port: StackPort, config: Any) -> None:
        self.port = port
        self.stats = FrontStats()
        self.forwards = Forwards(port, self.stats)
        self.socks = None
        self.forwards.apply(config.forward, config.shutdown_timeout)
        if config.socks_listen is not None:
            from netstack.front.socks import SocksServer

            self.socks = SocksServer(port, config, self.stats.socks)

    def apply(self, config: Any) -> None:
        """SIGHUP: start new forwards, retire removed ones (see Forwards.apply)."""
        self.port.enter(self.port.loop.now())
        self.forwards.apply(config.forward, config.shutdown_timeout)

    # -- Closer ----------------------------------------------------------------------------------
    def begin_shutdown(self, now: float) -> None:
        self.port.enter(now)
        for fwd in self.forwards.active.values():
            if fwd.spec.proto == "udp":  # no connections to finish: flows end now
                fwd.stop_listening()
        if self.socks is not None:
            self.socks.stop_listening()

    def is_quiet(self) -> bool:
        busy = self.forwards.sessions()
        if self.socks is not None:
            busy += self.socks.session_count()
        return busy == 0

    def abort(self, now: float) -> None:
        self.port.enter(now)
        self.close()

    def close(self) -> None:
        self.forwards.close()
        if self.socks is not None:
            self.socks.close()
