"""Secrets-keyed numbers: ISNs (RFC 6528), timestamp offsets (RFC 7323 5.4), SYN cookies.

ISN = M + F(localip, localport, remoteip, remoteport, secretkey) where M is a 4 microsecond
clock taken from `now` and F a keyed BLAKE2s of the 4-tuple (RFC 6528 section 3). For one
4-tuple the ISN therefore grows with time, which is what makes TIME_WAIT reuse safe.

Timestamps use a per-4-tuple offset from the same kind of hash (RFC 7323 5.4, as Linux does),
so a connection made from a SYN cookie, with no state kept, sends the same TSvals as one made
the ordinary way.

SYN cookies (RFC 4987 3.6) use Linux's layout (net/ipv4/syncookies.c):

    ISN = H1(tuple) + peer ISN + (count << 24) + ((H2(tuple, count) + mss_index) mod 2^24)

count is a 64-second clock; a cookie is accepted for up to MAX_AGE ticks. Only the MSS index
(two bits: MSS_TABLE) fits in the ISN. When the peer sends timestamps, the low 6 bits of our
TSval carry the rest, as in Linux's cookie_init_timestamp: bits 0-3 the peer's window scale
(15 = none), bit 4 SACK permitted. The final ACK's TSecr echoes them back.
"""

from __future__ import annotations

import hashlib
import os
import struct

MASK = 0xFFFFFFFF
COOKIE_BITS = 24
COOKIE_MASK = (1 << COOKIE_BITS) - 1
COOKIE_PERIOD = 64.0  # seconds per count tick
MAX_AGE = 2  # ticks: a cookie is good for 128-192 s
MSS_TABLE = (536, 1300, 1440, 1460)  # what the two MSS bits can say (Linux's msstab)
TS_OPT_BITS = 6
TS_OPT_MASK = (1 << TS_OPT_BITS) - 1
TS_WSCALE_NONE = 0xF
TS_SACK = 0x10

_TUPLE = struct.Struct("!IHIH")
_TUPLE6 = struct.Struct("!16sH16sH")
_COUNT = struct.Struct("!I")


def tuple_bytes(
    local_ip: int | bytes, local_port: int, remote_ip: int | bytes, remote_port: int
) -> bytes:
    """The 4-tuple hashed for ISNs, timestamps and cookies: IPv4 addresses as ints, IPv6 ones
    as 16 bytes (RFC 6528 hashes the connection-id of either family)."""
    if type(remote_ip) is bytes:
        return _TUPLE6.pack(local_ip, local_port, remote_ip, remote_port)
    return _TUPLE.pack(local_ip, local_port, remote_ip, remote_port)


class Secrets:
    """Keyed hashes for one stack instance; the key is random unless a test fixes it."""

    __slots__ = ("_cookie1", "_cookie2", "_isn", "_ts")

    def __init__(self, key: bytes | None = None) -> None:
        key = key if key is not None else os.urandom(32)
        if not 1 <= len(key) <= 32:
            raise ValueError("the secret key must be 1 to 32 bytes")
        self._isn = hashlib.blake2s(key=key, digest_size=4, person=b"ns-isn")
        self._ts = hashlib.blake2s(key=key, digest_size=4, person=b"ns-tsoff")
        self._cookie1 = hashlib.blake2s(key=key, digest_size=4, person=b"ns-ck1")
        self._cookie2 = hashlib.blake2s(key=key, digest_size=4, person=b"ns-ck2")

    @staticmethod
    def _hash(base, data: bytes) -> int:
        h = base.copy()
        h.update(data)
        return int.from_bytes(h.digest(), "big")

    def isn(self, tuple4: bytes, now: float) -> int:
        """RFC 6528: keyed hash of the 4-tuple plus a 4 us clock."""
        return (self._hash(self._isn, tuple4) + int(now * 250_000)) & MASK

    def ts_offset(self, tuple4: bytes) -> int:
        return self._hash(self._ts, tuple4)

    # -- SYN cookies -------------------------------------------------------------------------
    def make_cookie(self, tuple4: bytes, peer_isn: int, mss: int, now: float) -> tuple[int, int]:
        """Our ISN for a SYN answered without state, and the MSS it encodes (<= mss)."""
        index = 0
        for i, value in enumerate(MSS_TABLE):
            if value <= mss:
                index = i
        count = int(now // COOKIE_PERIOD)
        h1 = self._hash(self._cookie1, tuple4)
        h2 = self._hash(self._cookie2, tuple4 + _COUNT.pack(count & MASK))
        cookie = h1 + peer_isn + ((count & 0xFF) << COOKIE_BITS) + ((h2 + index) & COOKIE_MASK)
        return cookie & MASK, MSS_TABLE[index]

    def check_cookie(self, tuple4: bytes, peer_isn: int, cookie: int, now: float) -> int | None:
        """The MSS a cookie encodes, or None if it is forged or too old."""
        c = (cookie - self._hash(self._cookie1, tuple4) - peer_isn) & MASK
        now_count = int(now // COOKIE_PERIOD)
        age = (now_count - (c >> COOKIE_BITS)) & 0xFF
        if age > MAX_AGE:
            return None
        count = now_count - age
        h2 = self._hash(self._cookie2, tuple4 + _COUNT.pack(count & MASK))
        index = (c - h2) & COOKIE_MASK
        return MSS_TABLE[index] if index < len(MSS_TABLE) else None


def cookie_tsval(tsval: int, wscale: int | None, sack: bool) -> int:
    """Our TSval with the peer's options in its low bits, never ahead of the real clock."""
    opts = (TS_WSCALE_NONE if wscale is None else wscale) | (TS_SACK if sack else 0)
    ts = (tsval & ~TS_OPT_MASK & MASK) | opts
    if 0 < ((ts - tsval) & MASK) < (1 << 31):  # ahead of tsval: step one period back
        ts = (ts - (1 << TS_OPT_BITS)) & MASK
    return ts


def cookie_ts_options(tsecr: int) -> tuple[int | None, bool] | None:
    """(peer window scale or None, SACK permitted) from an echoed cookie TSval; None if bad."""
    wscale = tsecr & 0xF
    if wscale != TS_WSCALE_NONE and wscale > 14:
        return None
    return (None if wscale == TS_WSCALE_NONE else wscale), bool(tsecr & TS_SACK)
