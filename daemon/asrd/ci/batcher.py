"""``GetBatcher``: concurrent job look-ups coalesced into CI's multi-id describe requests."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .errors import CiError

JobsDetail = dict[str, Any]


def _outcome(fut: Future[JobsDetail | None]) -> JobsDetail | BaseException | None:
    exc = fut.exception()
    return exc if exc is not None else fut.result()


class GetBatcher:
    """Coalesces concurrent job lookups into describe requests of up to ``max_ids`` ids.

    CI's describe takes comma-separated ids. At most ``lanes`` requests are in flight; while
    they are, new ids queue, and the next request takes up to ``max_ids`` of them, so HTTP,
    signing and connection costs are shared under load. When other requests are in flight
    (a backlog), a short batch waits up to ``linger_s`` for more ids; a lone id on an idle
    daemon is sent at once. If a multi-id request is refused as a whole (4xx), it is split in
    halves and each half asked again (down to single ids), so one bad id cannot fail its
    neighbours and costs about 2·log2(n) extra requests, not n.

    ``pace`` (the CI request limiter) is waited for after a lane is free and before the ids are
    taken: under a request quota the ids pile up meanwhile, so each request carries as many as
    it can.
    """

    def __init__(
        self,
        describe: Callable[[list[str]], dict[str, JobsDetail]],
        lanes: int,
        max_ids: int,
        linger_s: float = 0.002,
        pace: Callable[[], object] | None = None,
    ) -> None:
        self._describe = describe
        self._pace = pace
        self._max_ids = max_ids
        self._linger_s = linger_s
        self._busy = 0  # requests in flight; guarded by _ready
        self._queue: deque[tuple[str, Future[JobsDetail | None]]] = deque()
        self._ready = threading.Condition()
        self._lanes = threading.BoundedSemaphore(lanes)
        self._pool = ThreadPoolExecutor(lanes, thread_name_prefix="asrd-ci")
        threading.Thread(target=self._dispatch, name="asrd-ci-batcher", daemon=True).start()

    def get(self, job_id: str) -> JobsDetail | None:
        return self._submit([job_id])[0].result()

    def get_many(self, job_ids: list[str]) -> dict[str, JobsDetail | CiError | None]:
        """Several ids at once (they share requests); a failure is the id's value.

        Whole requests' worth of ids are asked from the caller's thread (a batch of messages
        already is a batch of ids: handing it to a lane costs thread switches and gains
        nothing); only the rest joins the queue, to share a request with other callers' ids."""
        whole = len(job_ids) - len(job_ids) % self._max_ids
        rest = job_ids[whole:]
        futures = self._submit(rest) if rest else []
        found: dict[str, JobsDetail | BaseException | None] = {}
        for i in range(0, whole, self._max_ids):
            with self._lanes:
                if self._pace is not None:
                    self._pace()
                with self._ready:
                    self._busy += 1  # in flight: the dispatcher lingers for fuller batches
                try:
                    found.update(self._lookup(job_ids[i : i + self._max_ids]))
                finally:
                    with self._ready:
                        self._busy -= 1
        found.update((job_id, _outcome(fut)) for job_id, fut in zip(rest, futures, strict=True))
        out: dict[str, JobsDetail | CiError | None] = {}
        for job_id in job_ids:
            value = found.get(job_id)
            if isinstance(value, BaseException) and not isinstance(value, CiError):
                raise value
            out[job_id] = value
        return out

    def _submit(self, job_ids: list[str]) -> list[Future[JobsDetail | None]]:
        futures: list[Future[JobsDetail | None]] = [Future() for _ in job_ids]
        with self._ready:
            self._queue.extend(zip(job_ids, futures, strict=True))
            self._ready.notify()
        return futures

    def _dispatch(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
            # A free lane (callers' own requests hold lanes too); meanwhile ids pile up.
            self._lanes.acquire()
            if self._pace is not None:
                self._pace()  # a request slot of the quota: more ids pile up meanwhile
            with self._ready:
                if self._busy and len(self._queue) < self._max_ids:
                    deadline = time.monotonic() + self._linger_s
                    while (
                        len(self._queue) < self._max_ids
                        and (left := deadline - time.monotonic()) > 0
                    ):
                        self._ready.wait(left)
                take = min(self._max_ids, len(self._queue))
                batch = [self._queue.popleft() for _ in range(take)]
                self._busy += 1
            self._pool.submit(self._run, batch)

    def _run(self, batch: list[tuple[str, Future[JobsDetail | None]]]) -> None:
        try:
            outcome = self._lookup([job_id for job_id, _ in batch])
            for job_id, fut in batch:
                result = outcome.get(job_id)
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        except BaseException as exc:  # noqa: BLE001 - every waiter must be woken, whatever happened
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        finally:
            with self._ready:
                self._busy -= 1
            self._lanes.release()

    def _lookup(self, job_ids: list[str]) -> dict[str, JobsDetail | BaseException | None]:
        """One describe request for the ids (a refused one split in halves)."""
        ids = list(dict.fromkeys(job_ids))
        try:
            return dict(self._describe(ids))
        except CiError as exc:
            if exc.transient or len(ids) == 1:
                return dict.fromkeys(ids, exc)
            return self._split(ids)

    def _split(self, ids: list[str]) -> dict[str, JobsDetail | BaseException | None]:
        """The ids of a refused request, asked again in halves (each half paced)."""
        outcome: dict[str, JobsDetail | BaseException | None] = {}
        half = len(ids) // 2
        for part in (ids[:half], ids[half:]):
            if self._pace is not None:
                self._pace()
            try:
                outcome.update(self._describe(part))
            except CiError as exc:
                if exc.transient or len(part) == 1:
                    outcome.update(dict.fromkeys(part, exc))
                else:
                    outcome.update(self._split(part))
        return outcome
