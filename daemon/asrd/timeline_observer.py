"""The observer that puts a job's failed attempts and its dead-lettering in its timeline (the
ledger's ``events``): the steps no ledger write marks otherwise. A message that is done needs
nothing here (its deliveries and settling are written with the ledger's own changes)."""

from __future__ import annotations

import time

from .ledger import Ledger
from .observers import MessageInfo, Observer
from .pipeline import Verdict
from .settle import Action, Settlement


class TimelineObserver(Observer):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def settled(self, info: MessageInfo, verdict: Verdict, settlement: Settlement) -> None:
        if not verdict.job_id or settlement.action is Action.ACK:
            return
        if settlement.action is Action.RETRY:
            step = "attempt failed"
            detail = (
                f"attempt {info.attempt}: {verdict.reason}; retry in {settlement.delay_s:.1f} s"
            )
        else:
            step, detail = "dead-lettered", f"attempt {info.attempt}: {settlement.reason}"
        self._ledger.note_events([(verdict.job_id, step, detail)], time.time())
