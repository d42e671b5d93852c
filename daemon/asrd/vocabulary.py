"""The words the stages and their observers share: what became of a message (``Outcome``,
``Verdict``, ``Action``, ``Settlement``), what a chore found (``ReconcileReport``,
``SweepReport``), what observers learn of a message (``MessageInfo``), and what a CI job id is.

It sits at the bottom of the package and imports nothing of asrd, so every layer (the hooks
included) can name these without depending on the stages that produce them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

# CI's job ids: "s" and 32 hex digits (safe in file names and keys).
JOB_ID = re.compile(r"s[0-9a-f]{32}")


class BadMessage(Exception):
    """The body can never be processed; the text is the dead-letter reason."""


def valid_job_id(value: object) -> str:
    """The id if it has CI's job id form (safe in file names and keys); else ``BadMessage``."""
    if not isinstance(value, str) or not JOB_ID.fullmatch(value):
        shown = repr(value)[:80]
        raise BadMessage(f"JobId {shown} is not a CI job id (s + 32 hex digits)")
    return value


class Outcome(Enum):
    DONE = "done"  # delivered (or already delivered): acknowledge
    IGNORED = "ignored"  # not ours (another job type or event): acknowledge
    RETRY = "retry"  # transient: redeliver later
    DEAD = "dead"  # can never succeed: dead-letter with the reason
    # A setup fault (asrd's keys refused, a sink that cannot work): put the message back without
    # spending an attempt, and pause until the fault is gone.
    PAUSED = "paused"


@dataclass(frozen=True)
class Verdict:
    """The pipeline's answer about one message (or one job)."""

    outcome: Outcome
    reason: str = ""
    job_id: str = ""
    delivered: tuple[str, ...] = ()  # sinks that got the record on this attempt
    pause: str = ""  # PAUSED: what is out (the keys, the ledger, or a sink's name)
    # PAUSED only because a sink already paused was not called: nothing new to pause.
    waiting: bool = False
    # RETRY because sinks failed the record transiently: when the latest call that delivered
    # anything to one of those sinks began (wall clock; 0.0: never). A sink that has delivered
    # nothing since the message was first tried may be down as a whole, so the message is not
    # blamed for it. ``None``: not a sink failure.
    sinks_worked_at: float | None = None


class Action(Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    # Put back unacknowledged (redelivered later) with its attempt not counted: an outage.
    RELEASE = "release"


@dataclass(frozen=True)
class Settlement:
    """What the settle policy decided for one message."""

    action: Action
    reason: str = ""
    delay_s: float = 0.0  # only for RETRY: how long the copy waits on the retry-letter topic


@dataclass(frozen=True)
class MessageInfo:
    """What observers learn about one received message (never its body)."""

    message_id: str
    attempt: int
    published_ms: int  # when the first copy of the message reached the broker (epoch ms)


@dataclass(frozen=True)
class MovedCallback:
    """A notification the intake put on Pulsar (for the job's timeline)."""

    body: bytes
    received_at: float  # when the sender handed it over (CMQ's enqueue time; a URL's POST)
    via: str  # where it came from: "CMQ queue q (message m)", "URL callback"


@dataclass
class ReconcileReport:
    """One reconcile pass: jobs listed, already delivered, delivered now, not deliverable."""

    checked: int = 0
    already: int = 0
    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class SweepReport:
    """One deadline sweep over overdue jobs."""

    checked: int = 0
    delivered: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    still_running: dict[str, str] = field(default_factory=dict)  # job id -> CI state
    failed: dict[str, str] = field(default_factory=dict)  # job id or token -> reason
