"""The settle policy: what becomes of a message, as a pure function of what is known about it.

verdict + attempt + settings + now → acknowledge / retry after N seconds / dead-letter with a
reason. No broker, no ledger, no clock of its own: the consumer applies the answer. The budget
of a message ("out of attempts") is decided by ``out_of_attempts`` and nowhere else.
"""

from __future__ import annotations

import random

from . import backoff
from .config import PulsarSettings
from .ledger import Attempt
from .vocabulary import Action as Action
from .vocabulary import Outcome, Verdict
from .vocabulary import Settlement as Settlement

DIED_ON_IT = "processing never finished (the daemon died on it)"
HELD = "held without spending an attempt: its sink has delivered nothing since its first try"


def out_of_attempts(made: int, attempt: Attempt, settings: PulsarSettings, now: float) -> str:
    """Why a message that failed ``made`` times since ``attempt.first_at`` gets no more tries,
    or ``""`` while it still has budget (attempts and time window)."""
    if made >= settings.max_attempts or _window_ended(attempt, settings, now):
        return f"gave up after {made} attempts in {now - attempt.first_at:.0f}s"
    return ""


def _window_ended(attempt: Attempt, settings: PulsarSettings, now: float) -> bool:
    return now - attempt.first_at > settings.retry_window_s


def before_processing(attempt: Attempt, settings: PulsarSettings, now: float) -> Settlement | None:
    """A message whose earlier starts used up its budget is parked without another try.

    Every start is counted before any work, so ``attempt.count - 1`` earlier tries failed or
    never finished (the process died on them: a poison message must not crash-loop).
    """
    exhausted = out_of_attempts(attempt.count - 1, attempt, settings, now)
    if not exhausted:
        return None
    return Settlement(Action.DEAD_LETTER, f"{exhausted}: {attempt.last_reason or DIED_ON_IT}")


def _unproven(verdict: Verdict, attempt: Attempt, settings: PulsarSettings, now: float) -> bool:
    """Whether the sinks that failed the message have delivered nothing since it was first
    tried, within its retry window. They may be down as a whole before their breaker has seen
    enough different jobs to open (one early job retried quickly), so the message is put back
    without spending an attempt until one of them delivers something (then a failure is the
    record's own) or the window ends."""
    worked_at = verdict.sinks_worked_at
    if worked_at is None or _window_ended(attempt, settings, now):
        return False
    return worked_at < attempt.first_at


def settle(
    verdict: Verdict,
    attempt: Attempt,
    settings: PulsarSettings,
    now: float,
    uniform: backoff.Uniform = random.uniform,
) -> Settlement:
    """What to do with a message the pipeline has judged (``uniform`` is the backoff jitter)."""
    if verdict.outcome is Outcome.DONE:
        return Settlement(Action.ACK, verdict.reason)
    if verdict.outcome is Outcome.IGNORED:
        foreign = Action.DEAD_LETTER if settings.foreign_messages == "dead-letter" else Action.ACK
        return Settlement(foreign, verdict.reason)
    if verdict.outcome is Outcome.DEAD:
        return Settlement(Action.DEAD_LETTER, verdict.reason)
    if verdict.outcome is Outcome.PAUSED:
        return Settlement(Action.RELEASE, verdict.reason)
    exhausted = out_of_attempts(attempt.count, attempt, settings, now)
    if exhausted and _unproven(verdict, attempt, settings, now):
        return Settlement(Action.RELEASE, f"{HELD}: {verdict.reason}")
    if exhausted:
        return Settlement(Action.DEAD_LETTER, f"{exhausted}: {verdict.reason}")
    wait_s = backoff.delay(attempt.count, settings.retry_base_s, settings.retry_max_s, uniform)
    return Settlement(Action.RETRY, verdict.reason, wait_s)
