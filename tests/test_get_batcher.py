"""GetBatcher (pure logic, fake describe): concurrent lookups share requests, errors reach
every waiter, and one bad id cannot fail its neighbours."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from asrd.ci import CiError, ErrorKind, GetBatcher, JobsDetail


class FakeDescribe:
    def __init__(self, delay: float = 0.05, poison: str = "", fail: CiError | None = None):
        self.calls: list[list[str]] = []
        self.delay, self.poison, self.fail = delay, poison, fail
        self._lock = threading.Lock()

    def __call__(self, ids: list[str]) -> dict[str, JobsDetail]:
        with self._lock:
            self.calls.append(ids)
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        if self.poison in ids:
            raise CiError(ErrorKind.PERMANENT, "InvalidArgument", "bad id in the list", 400)
        return {i: {"JobId": i} for i in ids if not i.startswith("missing")}


def test_concurrent_lookups_are_batched() -> None:
    """60 callers at once, both lanes busy: the ids that wait share requests of ``max_ids``.
    The lanes' first requests are held until every other id has queued, so no thread's timing
    decides how the rest are grouped."""
    gate = threading.Event()
    calls: list[list[str]] = []
    lock = threading.Lock()

    def describe(ids: list[str]) -> dict[str, JobsDetail]:
        with lock:
            calls.append(ids)
        assert gate.wait(30)
        return {i: {"JobId": i} for i in ids}

    batcher = GetBatcher(describe, lanes=2, max_ids=10)
    ids = [f"s{i:032x}" for i in range(60)]
    with ThreadPoolExecutor(60) as pool:
        futures = [pool.submit(batcher.get, i) for i in ids]
        deadline = time.monotonic() + 30
        while not (
            len(calls) == 2 and sum(map(len, calls)) + len(batcher._queue) == len(ids)
        ):  # both lanes hold a request and every other id waits in the queue
            assert time.monotonic() < deadline, (calls, len(batcher._queue))
            time.sleep(0.01)
        gate.set()
        got = [f.result(timeout=30) for f in futures]
    assert [g["JobId"] if g else None for g in got] == ids
    assert sorted(i for call in calls for i in call) == sorted(ids)
    sizes = sorted(len(c) for c in calls[2:])  # the requests of the ids that waited
    assert sizes[1:] == [10] * (len(sizes) - 1) and 0 < sizes[0] <= 10
    assert len(calls) <= 2 + 6  # 60 ids in about 6 requests, never 60


def test_a_lone_lookup_goes_at_once_and_unknown_ids_are_none() -> None:
    describe = FakeDescribe(delay=0)
    batcher = GetBatcher(describe, lanes=4, max_ids=10)
    assert batcher.get("missing-1") is None
    assert describe.calls == [["missing-1"]]


def test_transient_error_reaches_every_waiter() -> None:
    describe = FakeDescribe(fail=CiError(ErrorKind.TRANSIENT, "SlowDown", "busy", 503))
    batcher = GetBatcher(describe, lanes=1, max_ids=10)
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(batcher.get, f"s{i}") for i in range(5)]
        for fut in futures:
            with pytest.raises(CiError, match="SlowDown"):
                fut.result(timeout=10)


def test_refused_batch_is_split_in_halves_down_to_the_bad_id() -> None:
    """A queued request of 16 ids refused because of one is asked again in halves down to it.

    Fewer ids than ``max_ids`` join the queue in one step, so the batcher's lane takes them as
    one request whatever the threads' timing, and the requests that follow come in one order."""
    describe = FakeDescribe(delay=0, poison="bad")
    batcher = GetBatcher(describe, lanes=1, max_ids=32)
    good = [f"g{i}" for i in range(15)]
    ids = [*good[:7], "bad", *good[7:]]
    got = batcher.get_many(ids)
    bad = got["bad"]
    assert isinstance(bad, CiError) and bad.code == "InvalidArgument"
    assert all(got[i] == {"JobId": i} for i in good)
    # Two requests per level of the 16 ids, not 16 single requests.
    assert (
        describe.calls
        == [
            ids,  # refused as a whole
            ids[:8],  # refused: it holds the bad id
            ids[:4],
            ids[4:8],  # refused
            ids[4:6],
            ids[6:8],  # refused
            [ids[6]],
            ["bad"],  # asked for alone in the end
            ids[8:],
        ]
    )


def test_a_refused_lookup_fails_only_its_own_caller() -> None:
    describe = FakeDescribe(delay=0, poison="bad")
    batcher = GetBatcher(describe, lanes=1, max_ids=16)
    with pytest.raises(CiError, match="InvalidArgument"):
        batcher.get("bad")
    assert batcher.get("g1") == {"JobId": "g1"}


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [
        (503, "SlowDown", True),
        (500, "InternalError", True),
        (429, "TooManyRequests", True),
        (403, "SignatureDoesNotMatch", True),  # our key is wrong, not the message
        (403, "InvalidAccessKeyId", True),
        (404, "NoSuchBucket", True),
        (400, "InvalidArgument", False),
        (400, "MalformedXML", False),
    ],
)
def test_sdk_errors_are_classified(status: int, code: str, transient: bool) -> None:
    from qcloud_cos.cos_exception import CosServiceError

    from asrd.ci import classify

    info = {"code": code, "message": "m", "resource": "r", "requestid": "id"}
    err = classify(CosServiceError("GET", info, status))
    assert (err.code, err.status, err.transient) == (code, status, transient)


def test_get_many_asks_whole_requests_itself_and_queues_only_the_rest() -> None:
    """With one lane the caller's own requests and the dispatcher's share it without a
    deadlock; the caller's thread sends the whole requests, the batcher's lane the rest."""
    calls: list[tuple[str, list[str]]] = []  # (thread, ids) per describe

    class Recording(FakeDescribe):
        def __call__(self, ids: list[str]) -> dict[str, JobsDetail]:
            calls.append((threading.current_thread().name, ids))
            return super().__call__(ids)

    describe = Recording(delay=0, poison="s-poison")
    batcher = GetBatcher(describe, lanes=1, max_ids=10)
    ids = [f"s{i:032x}" for i in range(24)] + ["missing-1"]
    ids[3] = "s-poison"  # refused as a whole: its request is split, its neighbours found
    got = batcher.get_many(ids)
    assert list(got) == ids
    assert isinstance(got["s-poison"], CiError) and got["missing-1"] is None
    assert all(isinstance(got[i], dict) for i in ids if i not in ("s-poison", "missing-1"))
    caller = threading.current_thread().name
    mine = [c for t, c in calls if t == caller]
    # The whole requests from the caller's thread (the refused one split in halves there), the
    # five left over in one request from a lane, in whichever order they ran.
    for request in (ids[:10], ids[:5], ids[5:10], ids[10:20]):
        assert request in mine
    assert [(t.startswith("asrd-ci"), c) for t, c in calls if t != caller] == [(True, ids[20:])]
