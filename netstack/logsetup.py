"""Logging to stderr in a form journald understands, and rate-limited per-packet warnings.

Under systemd (stderr is the journal stream named by $JOURNAL_STREAM) each line starts with an
sd-daemon priority prefix like `<4>` so `journalctl -p warning` filters on it, and carries no
timestamp: journald adds its own. On a terminal lines get a timestamp and a level name.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from netstack.proto.ratelimit import TokenBucket

# sd-daemon(3) priorities (syslog levels) for Python's levels.
PRIORITIES = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
JOURNAL_FORMAT = "<%(priority)d>%(name)s: %(message)s"
TERMINAL_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries whose debug output would drown ours (pyroute2 logs every netlink message).
QUIET_LOGGERS = {"pyroute2": logging.WARNING}


class JournalFormatter(logging.Formatter):
    """Prefixes every line with its priority; a traceback's lines get the same prefix."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.priority = PRIORITIES.get(record.levelno, 6)
        text = super().format(record)
        prefix = f"<{record.priority}>"
        return text.replace("\n", "\n" + prefix)


def is_journal_stream(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journal connection systemd gave us (not merely inherited env).

    systemd.exec(5): compare $JOURNAL_STREAM's "device:inode" with the stream's fstat().
    """
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(
    level: str, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> logging.Handler:
    """Configure the root logger once for the process; returns the handler it installed."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if is_journal_stream(stream, environ):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(TERMINAL_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    for name, floor in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(floor)
    return handler


def set_level(level: str) -> None:
    """Change the level live (SIGHUP reload)."""
    logging.getLogger().setLevel(level.upper())


class RateLimitedLog:
    """A logger for per-packet trouble: at most `rate` lines a second (bursts of `burst`).

    What it holds back is counted and reported on the next line that gets through, so a flood
    of identical warnings costs a counter increment each, not a journal line each.
    """

    def __init__(self, logger: logging.Logger, rate: float = 1.0, burst: int = 5) -> None:
        self.logger = logger
        self.bucket = TokenBucket(rate, burst)
        self.suppressed = 0

    def log(self, level: int, now: float, msg: str, *args: object) -> bool:
        """Log unless over the rate; True when the line went out."""
        if not self.bucket.allow(now):
            self.suppressed += 1
            return False
        if self.suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self.logger.log(level, msg, *args)
        return True

    def warning(self, now: float, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, now, msg, *args)
