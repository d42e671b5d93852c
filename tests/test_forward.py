"""The intake's forwarder on a real broker: one thread of its own starts every caller's sends
(memory: benchmarks/intake_memory.py), and each caller still gets a result for each of its own
messages, every one persisted with its properties."""

from __future__ import annotations

import threading

from asrd.intake.forward import Forwarder, Outgoing

from .conftest import Broker
from .support import quiet_client

CALLERS = 4
PER_CALL = 16
CALLS = 5


def test_concurrent_callers_each_get_a_result_per_message_and_every_message_arrives(
    broker: Broker, topic: str
) -> None:
    client = quiet_client(broker.service_url)
    consumer = client.subscribe(topic, "check")  # before the sends: it sees them all
    forwarder = Forwarder(client, topic)
    results: dict[int, list[list[str | None]]] = {c: [] for c in range(CALLERS)}

    def caller(c: int) -> None:
        for call in range(CALLS):
            batch = [
                Outgoing(f"{c}-{call}-{i}".encode(), {"CALLER": str(c)}) for i in range(PER_CALL)
            ]
            results[c].append(forwarder.send_all(batch, wait_s=60))

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(CALLERS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got: dict[bytes, str] = {}
        for _ in range(CALLERS * CALLS * PER_CALL):
            msg = consumer.receive(timeout_millis=30_000)
            got[msg.data()] = msg.properties()["CALLER"]
            consumer.acknowledge(msg)
    finally:
        forwarder.close()
        consumer.close()
        client.close()
    for c in range(CALLERS):
        assert results[c] == [[None] * PER_CALL] * CALLS
    expected = {
        f"{c}-{call}-{i}".encode(): str(c)
        for c in range(CALLERS)
        for call in range(CALLS)
        for i in range(PER_CALL)
    }
    assert got == expected
