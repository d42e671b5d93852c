"""requests' connection pools that close keep-alive connections left idle too long.

urllib3 keeps every idle connection until the process ends, and hands out the newest first.
After a burst (a backlog worked off by every thread at once when an endpoint answers again
after timeouts, or CI answering slowly so that more calls overlap) the connections the burst
opened stay open for good, up to the pool's size, in ``CLOSE_WAIT`` once the server drops them:
the open file descriptors of a long-running daemon then climb with each such fault and never
come back. Here a connection idle longer than ``IDLE_S`` is closed the next time its pool is
used; what a steady load uses stays open and reused.

urllib3 has no idle timeout of its own; its pools take the queue class as a documented
extension point (``QueueCls``), and the ``queue`` module's ``_init``/``_qsize``/``_put``/``_get``
hooks are the ones its own ``LifoQueue`` overrides.
"""

from __future__ import annotations

import queue
import time
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["IDLE_S", "ExpiringAdapter", "IdleExpiringQueue"]

# httpx's default, and the idle timeout of common servers (Apache, Node.js): past it the server
# has likely closed the connection anyway, and a steady load reuses its connections sooner.
IDLE_S = 5.0


class IdleExpiringQueue(queue.LifoQueue[Any]):
    """urllib3's queue of idle connections (newest first, as its own), where a connection left
    idle longer than ``idle_s`` is closed whenever the queue is next used, leaving the empty slot
    (``None``) urllib3 fills with a new connection when it needs one. The hooks run under the
    queue's lock."""

    idle_s = IDLE_S

    def _init(self, maxsize: int) -> None:
        self.queue: list[tuple[Any, float]] = []  # (connection or None, when it was put back)

    def _qsize(self) -> int:
        return len(self.queue)

    def _put(self, item: Any) -> None:
        self._expire()
        self.queue.append((item, time.monotonic()))

    def _get(self) -> Any:
        item = self.queue.pop()[0]
        self._expire()
        return item

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.idle_s
        for i, (conn, since) in enumerate(self.queue):
            if conn is not None and since < cutoff:
                conn.close()  # closing a socket does not wait on the network
                self.queue[i] = (None, since)

    def idle(self) -> int:
        """How many open connections wait in the queue."""
        with self.mutex:
            return sum(conn is not None for conn, _ in self.queue)


class _HTTPPool(HTTPConnectionPool):
    QueueCls = IdleExpiringQueue


class _HTTPSPool(HTTPSConnectionPool):
    QueueCls = IdleExpiringQueue


class ExpiringAdapter(HTTPAdapter):
    """requests' adapter (same arguments) whose pools close connections idle over ``IDLE_S``."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
