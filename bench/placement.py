"""Where the scheduler put a responder and its load generator while a bench row ran.

On a 2-CPU machine a request/response figure depends on it more than on anything the stack
does: when the client and the server share a CPU, each wakes the other inside its own syscall
and the rate is 1 / (server + client) CPU per exchange; apart, every wakeup is a remote one
(an inter-processor interrupt, a wakeup from halt on an idle vCPU). bench/PROFILE.md (fourth
pass, `udprate`) measured both regimes. A row that says how often the two shared a CPU can be
read against another run's; one that does not cannot.
"""

from __future__ import annotations

import contextlib
import os
import threading


def cpu_of(path: str) -> int | None:
    """The CPU a task last ran on (/proc stat field 39), None if the task is gone."""
    with contextlib.suppress(OSError, IndexError, ValueError), open(path) as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])
    return None


def ticks_of(path: str) -> int:
    """utime + stime of a task or process, in clock ticks (0 if it is gone)."""
    with contextlib.suppress(OSError, IndexError, ValueError), open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children of each of its threads, recursively)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out += kids
                todo += kids
    return out


def threads_of(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    return []


class PlacementSampler:
    """Samples, every `every` seconds until stop(), the CPU of each thread of `server` and of
    every other process below `root` (the bench's own children: the load generator and its
    wrappers). stop() returns how often the server's busiest thread and the busiest client
    process were last seen on the same CPU (0-100), or None when no client ran."""

    def __init__(self, server: int, root: int | None = None, every: float = 0.01) -> None:
        self.server, self.root, self.every = server, os.getpid() if root is None else root, every
        self._samples: list[tuple[dict[int, int], dict[int, int]]] = []
        self._ticks0: dict[int, int] = {}
        self._done = threading.Event()
        self.looks = 0  # sampling passes made (with or without a client)
        self._thread = threading.Thread(target=self._run, name="placement", daemon=True)

    def start(self) -> PlacementSampler:
        self._ticks0 = {t: ticks_of(self._task(t)) for t in threads_of(self.server)}
        self._thread.start()
        return self

    def _task(self, tid: int) -> str:
        return f"/proc/{self.server}/task/{tid}/stat"

    def _clients(self) -> list[int]:
        mine = {self.server, *descendants(self.server)}
        return [p for p in descendants(self.root) if p not in mine]

    def _run(self) -> None:
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        while not self._done.wait(self.every):
            servers = {}
            for t in threads_of(self.server):
                c = cpu_of(self._task(t))
                if c is not None:
                    servers[t] = c
            self.looks += 1
            clients = {}
            for p in self._clients():
                c = cpu_of(f"/proc/{p}/stat")
                ticks = ticks_of(f"/proc/{p}/stat")
                if c is not None and ticks:  # 0: it ended between the two reads
                    clients[p] = c
                    last[p] = ticks
                    first.setdefault(p, ticks)
            if servers and clients:
                self._samples.append((servers, clients))
        # a client has usually ended by stop(): its CPU time is what the samples saw
        self._client_cpu = {p: last[p] - first[p] for p in last}

    def stop(self) -> float | None:
        self._done.set()
        self._thread.join()
        if not self._samples:
            return None
        server = max(
            {t for s, _ in self._samples for t in s},
            key=lambda t: ticks_of(self._task(t)) - self._ticks0.get(t, 0),
        )
        client = max({p for _, c in self._samples for p in c}, key=self._client_cpu.__getitem__)
        seen = [(s[server], c[client]) for s, c in self._samples if server in s and client in c]
        if not seen:
            return None
        return 100.0 * sum(1 for a, b in seen if a == b) / len(seen)
