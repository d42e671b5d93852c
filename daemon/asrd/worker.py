"""One received message from attempt accounting to settlement: count the attempt in the ledger,
ask the pipeline, ask the settle policy, and have the transport carry the answer out. Observers
hear every step; nothing here knows about metrics or log formats.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from .broker import Inbound
from .config import PulsarSettings
from .ledger import Attempts, LedgerUnavailable, LedgerWrites
from .observers import Observers
from .settle import before_processing, settle
from .vocabulary import Action, MessageInfo, Outcome, Settlement, Verdict

BatchHandler = Callable[[list[bytes]], list[Verdict]]


class Transport(Protocol):
    def ack(self, m: Inbound) -> None: ...

    def retry(self, m: Inbound, attempt: int, delay_s: float) -> str: ...

    def dead_letter(self, m: Inbound, reason: str, attempts: int) -> str: ...

    def release(self, m: Inbound) -> None: ...


class Worker:
    def __init__(
        self,
        settings: PulsarSettings,
        handle: BatchHandler,
        ledger: Attempts,
        transport: Transport,
        observers: Observers,
        on_pause: Callable[[str, str], object] = lambda source, reason: None,
    ) -> None:
        """``handle``: a verdict per message body, in order (``Pipeline.handle_batch``).
        ``on_pause``: told what is out and why when a message meets an outage (it pauses
        work)."""
        self._settings = settings
        self._handle = handle
        self._ledger = ledger
        self._transport = transport
        self._obs = observers
        self._on_pause = on_pause

    def process_batch(self, ms: list[Inbound]) -> None:
        """Process received messages (a single message is a batch of one): attempts counted in
        one ledger transaction, the pipeline asked once, each message settled on its own,
        attempts of the settled ones forgotten in one transaction."""
        try:
            attempts = self._ledger.begin_attempts([m.key for m in ms])
        except LedgerUnavailable as exc:
            self._ledger_out(ms, exc)
            return
        now = time.time()
        infos, early, todo, todo_infos = [], {}, [], []
        for m in ms:
            attempt = attempts[m.key]
            info = MessageInfo(m.origin_id, attempt.count, m.published_ms)
            self._obs.message_received(info)
            infos.append(info)
            settlement = before_processing(attempt, self._settings, now)
            if settlement is not None:
                early[m.key] = settlement
            else:
                todo.append(m)
                todo_infos.append(info)
        self._obs.consuming(todo, todo_infos)
        started = time.monotonic()
        first = next((i for m, i in zip(ms, infos, strict=True) if m.key not in early), None)
        verdicts = dict(zip((m.key for m in todo), self._judge(todo, first), strict=True))
        seconds = time.monotonic() - started
        cleared: list[str] = []
        for m, info in zip(ms, infos, strict=True):
            attempt = attempts[m.key]
            if m.key in early:
                settlement = early[m.key]
                verdict = Verdict(Outcome.DEAD, settlement.reason)
            else:
                verdict = verdicts[m.key]
                settlement = settle(verdict, attempt, self._settings, time.time())
            self._obs.verdict(info, verdict, seconds)
            if self._carry_out(m, info, verdict, settlement):
                cleared.append(m.key)
        if cleared:
            self._bookkeeping(lambda: self._ledger.commit(LedgerWrites(cleared=cleared)))

    def _ledger_out(self, ms: list[Inbound], exc: LedgerUnavailable) -> None:
        """The ledger cannot count attempts: nothing is processed or acknowledged; the messages
        go back and work pauses until it can."""
        self._on_pause(LedgerUnavailable.SOURCE, str(exc))
        for m in ms:
            self._transport.release(m)

    def _bookkeeping(self, write: Callable[[], object]) -> None:
        """A ledger write after the message is settled (attempt counts): if the ledger is out,
        the count stays behind (pruned later) and work pauses."""
        try:
            write()
        except LedgerUnavailable as exc:
            self._on_pause(LedgerUnavailable.SOURCE, str(exc))

    def _judge(self, todo: list[Inbound], first: MessageInfo | None) -> list[Verdict]:
        """The pipeline's verdicts on ``todo`` (``first``: the first one's info, for the log)."""
        if not todo or first is None:
            return []
        try:
            return self._handle([m.data for m in todo])
        except LedgerUnavailable as exc:
            return [_ledger_paused(exc)] * len(todo)
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker or lose messages
            self._obs.pipeline_crashed(first, exc)
            return [Verdict(Outcome.RETRY, f"internal error: {type(exc).__name__}: {exc}")] * len(
                todo
            )

    def _carry_out(
        self,
        m: Inbound,
        info: MessageInfo,
        verdict: Verdict,
        settlement: Settlement,
    ) -> bool:
        """Settle the message; True when its attempts may be forgotten."""
        if settlement.action is Action.RELEASE:
            # An outage is not the message's fault: its attempt is taken back, it is put back
            # unacknowledged, and work pauses (the consumer stops receiving until it is over).
            # A message held for a sink not yet known to be down pauses nothing.
            self._bookkeeping(lambda: self._ledger.undo_attempts([m.key]))
            if verdict.outcome is Outcome.PAUSED and not verdict.waiting:
                self._on_pause(verdict.pause, settlement.reason)
            self._transport.release(m)
            self._obs.settled(info, verdict, settlement)
            return False
        if settlement.action is Action.RETRY:
            self._bookkeeping(lambda: self._ledger.note_failure(m.key, settlement.reason))
            error = self._transport.retry(m, info.attempt, settlement.delay_s)
        elif settlement.action is Action.DEAD_LETTER:
            error = self._transport.dead_letter(m, settlement.reason, info.attempt)
        else:
            self._transport.ack(m)
            error = ""
        if error:
            self._obs.publish_failed(info, settlement, error)
            return False
        forget = settlement.action is not Action.RETRY
        if settlement.action is Action.DEAD_LETTER:
            self._obs.dead_lettered(info, settlement.reason)
        self._obs.settled(info, verdict, settlement)
        return forget


def _ledger_paused(exc: LedgerUnavailable) -> Verdict:
    """The pipeline met the ledger out (its deliveries cannot be recorded): put back, no
    attempt spent (sinks that got the record get it again, idempotently)."""
    return Verdict(Outcome.PAUSED, str(exc), pause=LedgerUnavailable.SOURCE)
