"""The intake as one unit for the entry points: the CMQ queue mover and the URL receiver over one
producer, started and stopped together (either part optional)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pulsar

from ..config import Settings
from ..credentials import for_intake
from ..observers import Observers
from ..outage import Outage
from .forward import Forwarder
from .queue import QueueIntake, cmq_clients
from .url import UrlReceiver

__all__ = ["Feeds"]


@dataclass
class Feeds:
    """What puts CI's notifications on the Pulsar topic."""

    forwarder: Forwarder
    queue: QueueIntake | None
    url: UrlReceiver | None
    thread: threading.Thread | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        client: pulsar.Client,
        observers: Observers,
        outage: Outage | None = None,
    ) -> Feeds:
        forwarder = Forwarder(client, settings.pulsar.topic)
        cmq = settings.intake.cmq
        queue = None
        if cmq is not None:
            keys = for_intake(cmq, settings.ci)
            clients = cmq_clients(cmq, keys)
            queue = QueueIntake(cmq, clients, forwarder, observers, outage, keys)
        url = settings.intake.url
        receiver = UrlReceiver(url, forwarder, observers) if url else None
        return cls(forwarder, queue, receiver)

    def start(self, stop: threading.Event) -> None:
        if self.queue is not None:
            # A daemon thread: a long poll in flight at stop is abandoned, its messages stay in
            # CMQ and come back after the visibility timeout.
            self.thread = threading.Thread(
                target=self.queue.run, args=(stop,), name="asrd-intake", daemon=True
            )
            self.thread.start()

    def reachable(self, settings: Settings) -> bool:
        cmq = settings.intake.cmq
        return (
            self.queue is None
            or cmq is None
            or self.queue.health.reachable(cmq.unreachable_after_s)
        )

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=1.0)
        self.forwarder.close()
        if self.queue is not None:
            self.queue.close()
