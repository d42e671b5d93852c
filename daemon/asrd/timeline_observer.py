"""The observer that puts a job's dead-lettering in its timeline (the ledger's ``events``): a
step no ledger write marks otherwise. Only that step: a retry is not written, because while a
broker or sink is away the same message is retried again and again (without spending its
attempts), and a ledger write for each would flood the timeline and slow the workers down
exactly when they must catch up."""

from __future__ import annotations

import time

from .ledger import JobBook
from .observers import Observer
from .vocabulary import Action, MessageInfo, Settlement, Verdict


class TimelineObserver(Observer):
    def __init__(self, ledger: JobBook) -> None:
        self._ledger = ledger

    def settled(self, info: MessageInfo, verdict: Verdict, settlement: Settlement) -> None:
        if verdict.job_id and settlement.action is Action.DEAD_LETTER:
            detail = f"attempt {info.attempt}: {settlement.reason}"
            self._ledger.note_events([(verdict.job_id, "dead-lettered", detail)], time.time())
