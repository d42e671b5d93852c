"""The settle policy as a pure function: verdict + attempt + settings + now → what to do."""

from __future__ import annotations

import pytest

from asrd.config import PulsarSettings
from asrd.ledger import Attempt
from asrd.pipeline import Outcome, Verdict
from asrd.settle import (
    DIED_ON_IT,
    HELD,
    Action,
    Settlement,
    before_processing,
    out_of_attempts,
    settle,
)

NOW = 1_000_000.0
SETTINGS = PulsarSettings(
    topic="t", max_attempts=3, retry_base_s=2.0, retry_max_s=10.0, retry_window_s=600.0
)


def top(low: float, high: float) -> float:
    """Jitter that always picks the upper end, so delays are exact."""
    return high


def attempt(count: int, age_s: float = 0.0, last_reason: str = "") -> Attempt:
    return Attempt(count, NOW - age_s, last_reason)


def decide(outcome: Outcome, count: int, age_s: float = 0.0, **kw: object) -> Settlement:
    settings = SETTINGS.model_copy(update=kw) if kw else SETTINGS
    return settle(Verdict(outcome, "why"), attempt(count, age_s), settings, NOW, top)


def test_done_and_ignored_are_acknowledged_whatever_the_attempt() -> None:
    assert decide(Outcome.DONE, 1) == Settlement(Action.ACK, "why")
    assert decide(Outcome.DONE, 99, age_s=10_000) == Settlement(Action.ACK, "why")
    assert decide(Outcome.IGNORED, 1) == Settlement(Action.ACK, "why")


def test_foreign_messages_can_be_dead_lettered() -> None:
    got = decide(Outcome.IGNORED, 1, foreign_messages="dead-letter")
    assert got == Settlement(Action.DEAD_LETTER, "why")


def test_dead_is_dead_lettered_at_once_with_its_reason() -> None:
    assert decide(Outcome.DEAD, 1) == Settlement(Action.DEAD_LETTER, "why")


@pytest.mark.parametrize(("count", "delay"), [(1, 2.0), (2, 4.0)])
def test_retry_backs_off_exponentially(count: int, delay: float) -> None:
    assert decide(Outcome.RETRY, count) == Settlement(Action.RETRY, "why", delay)


def test_retry_delay_is_capped_and_jittered_into_its_upper_half() -> None:
    settings = SETTINGS.model_copy(update={"max_attempts": 100})
    capped = settle(Verdict(Outcome.RETRY, "x"), attempt(20), settings, NOW, top)
    assert capped.delay_s == 10.0
    low = settle(Verdict(Outcome.RETRY, "x"), attempt(20), settings, NOW, lambda a, b: a)
    assert low.delay_s == 5.0


def test_the_last_attempt_dead_letters_instead_of_retrying() -> None:
    got = decide(Outcome.RETRY, 3, age_s=12)
    assert got.action is Action.DEAD_LETTER
    assert got.reason == "gave up after 3 attempts in 12s: why"


def test_the_time_window_ends_retries_too() -> None:
    got = decide(Outcome.RETRY, 2, age_s=601)
    assert got.action is Action.DEAD_LETTER and got.reason.startswith("gave up after 2 attempts")


def sink_failed(count: int, age_s: float, worked_ago_s: float) -> Settlement:
    """A message the sinks failed transiently, ``age_s`` after its first try; the latest of
    those sinks last delivered something ``worked_ago_s`` ago."""
    verdict = Verdict(Outcome.RETRY, "sink app: HTTP 500", sinks_worked_at=NOW - worked_ago_s)
    return settle(verdict, attempt(count, age_s), SETTINGS, NOW, top)


def test_a_sink_that_delivered_nothing_since_the_first_try_holds_the_message() -> None:
    # The budget is spent, but the sink has taken nothing since: it may be down as a whole.
    held = sink_failed(3, age_s=12, worked_ago_s=13)
    assert held == Settlement(Action.RELEASE, f"{HELD}: sink app: HTTP 500")
    # Within the budget it is an ordinary retry, whatever the sink did.
    assert sink_failed(2, age_s=12, worked_ago_s=13).action is Action.RETRY


def test_a_sink_that_delivered_others_since_blames_the_record() -> None:
    got = sink_failed(3, age_s=12, worked_ago_s=11)
    assert got == Settlement(
        Action.DEAD_LETTER, "gave up after 3 attempts in 12s: sink app: HTTP 500"
    )


def test_a_held_message_is_dead_lettered_when_its_window_ends() -> None:
    got = sink_failed(3, age_s=601, worked_ago_s=700)
    assert got.action is Action.DEAD_LETTER and got.reason.startswith("gave up after 3 attempts")


def test_out_of_attempts_is_one_rule() -> None:
    assert out_of_attempts(2, attempt(3), SETTINGS, NOW) == ""
    assert out_of_attempts(3, attempt(3), SETTINGS, NOW) == "gave up after 3 attempts in 0s"
    assert out_of_attempts(0, attempt(1, age_s=600.5), SETTINGS, NOW).startswith("gave up")


def test_a_fresh_message_is_always_processed() -> None:
    assert before_processing(attempt(1), SETTINGS, NOW) is None
    # Two earlier tries failed: within the budget of three, so it gets its third.
    assert before_processing(attempt(3, age_s=5), SETTINGS, NOW) is None


def test_a_message_the_daemon_kept_dying_on_is_parked_without_another_try() -> None:
    got = before_processing(attempt(4), SETTINGS, NOW)
    assert got == Settlement(Action.DEAD_LETTER, f"gave up after 3 attempts in 0s: {DIED_ON_IT}")
    noted = before_processing(attempt(4, last_reason="CI 503"), SETTINGS, NOW)
    assert noted is not None and noted.reason.endswith(": CI 503")
