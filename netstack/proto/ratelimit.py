"""A token bucket fed by the caller's clock, for ICMP errors and log lines."""

from __future__ import annotations


class TokenBucket:
    """Allows `rate` events per second on average and bursts of up to `burst`.

    Pure: the caller passes `now`, so tests drive it with a fake clock.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        if self._stamp is None or now > self._stamp:
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
