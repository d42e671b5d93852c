"""Connection pools that close keep-alive connections left idle (``asrd.httppool``): the queue
itself, and the CI client's pool after a burst of overlapping calls against a real HTTP server
(the webhook sink's: tests/test_webhook_sink.py)."""

from __future__ import annotations

import contextlib
import threading

import pytest

from asrd.ci import CiClient, CiError
from asrd.config import CallbackSettings, CiSettings
from asrd.httppool import IdleExpiringQueue

from .receiver import Received, Receiver
from .support import wait_for


def test_idle_queue_keeps_recent_connections_and_reuses_the_newest() -> None:
    closed: list[str] = []

    class Conn:
        def __init__(self, name: str) -> None:
            self.name = name

        def close(self) -> None:
            closed.append(self.name)

    q = IdleExpiringQueue(4)
    q.put(None)
    q.put(Conn("old"))
    q.put(Conn("new"))
    assert q.idle() == 2
    assert q.get().name == "new"  # newest first, as urllib3's own queue
    assert closed == []  # nothing is idle for long yet
    q.idle_s = 0.0
    q.put(Conn("back"))  # any use of the queue closes what idled past the limit
    assert closed == ["old"]
    assert q.qsize() == 3  # the slot stays: urllib3 opens a new connection there when needed
    assert q.get().name == "back"
    assert q.get() is None and q.get() is None


def test_ci_connections_a_burst_opened_are_closed_once_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CI answering slowly makes calls overlap, each on a connection of its own; once CI is
    fast again they must not all stay open for good (the soak saw about 10 more descriptors
    per worker after each slow-CI fault, for the rest of the run)."""
    burst = 8
    everyone_in = threading.Barrier(burst)

    def reply(_: Received) -> tuple[int, float]:
        if len(r.received) <= burst:  # the burst's calls wait for one another
            with contextlib.suppress(threading.BrokenBarrierError):
                everyone_in.wait(timeout=30)
        return 200, 0.0  # read whole (then refused as no describe): the connection is kept

    r = Receiver(reply)
    settings = CiSettings(
        region="ap-guangzhou",
        bucket="media-1250000000",
        secret_id="AKIDtest",
        secret_key="test-key",
        endpoint=f"http://127.0.0.1:{r.port}",
        max_connections=burst,
        callback=CallbackSettings(type="url", url="http://127.0.0.1:1/cb"),
    )
    client = CiClient(settings)

    def call() -> None:
        with contextlib.suppress(CiError):
            client.probe()  # what it says is not the point here: the connections are

    try:
        threads = [threading.Thread(target=call) for _ in range(burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len({got.client_port for got in r.received}) == burst
        assert r.open_connections() == burst
        monkeypatch.setattr(IdleExpiringQueue, "idle_s", 0.0)  # all of them idle too long now
        call()
        wait_for(lambda: r.open_connections() <= 1, 10, "the idle connections to be closed")
    finally:
        r.close()
