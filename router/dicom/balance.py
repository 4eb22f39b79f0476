"""Which receiving process accepts the next connection: the least busy one.

With ``listener.workers`` > 1 the processes of a node share one listening socket per port (made
by the parent, :mod:`router.workers`), so they share one accept queue: a connection waits there
until some process accepts it, and a process that is down or restarting leaves it to the
others. Every process is woken when a connection arrives; each publishes its load (open
connections and associations) in a small shared array, and one that is busier than another
live process leaves the connection to it. Two processes on two cores then share four
associations two and two, where ``SO_REUSEPORT``'s hash of the connection's addresses put
three or four of them on one process about two times in three (docs/benchmarks.md).

A process waits for a less busy one for at most ``patience`` seconds per connection (that one
may be stuck), then accepts anyway: nobody is ever left unserved by the balancing.
"""

from __future__ import annotations

import time
from collections.abc import MutableSequence

#: Load published for a process that accepts nothing (stopped, draining, or not started).
NOT_ACCEPTING = 1 << 30
#: Seconds a busier process leaves a waiting connection to a less busy one.
PATIENCE = 0.05


class AcceptBalance:
    """One process's view of the shared loads (``loads[index]`` is its own).

    ``loads`` is a shared integer array (``multiprocessing.RawArray("i", workers)``); reads and
    writes of one slot are atomic enough for this purpose (a stale value only makes a decision
    less even, never leaves a connection unaccepted).
    """

    def __init__(self, loads: MutableSequence[int], index: int, patience: float = PATIENCE) -> None:
        self._loads = loads
        self._index = index
        self._patience = patience
        self._deferring_since: float | None = None

    def publish(self, load: int) -> None:
        """Record this process's current load (open connections and associations)."""
        self._loads[self._index] = load

    def stop(self) -> None:
        """This process accepts nothing more: never defer to it."""
        self._loads[self._index] = NOT_ACCEPTING

    def defer(self, load: int) -> bool:
        """Publish ``load``; True if a less busy process should take the waiting connection."""
        self._loads[self._index] = load
        others = [value for position, value in enumerate(self._loads) if position != self._index]
        if not others or load <= min(others):
            self._deferring_since = None
            return False
        now = time.monotonic()
        if self._deferring_since is None:
            self._deferring_since = now
        if now - self._deferring_since >= self._patience:
            self._deferring_since = None  # the other one did not take it: take it here
            return False
        return True
