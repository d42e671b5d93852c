"""The ledger's vocabulary: what its clients pass in and get back, and its errors. No storage
here (``sql``, ``sqlite``, ``postgres``); nothing of asrd but the canary's token rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from ..clienttoken import is_canary

# Job status in the ledger. PENDING: the create was sent, its answer not (yet) seen. OWED: CI
# has the job, some selected sink does not have its result. SETTLED: every selected sink has
# it. FAILED: no result will come (CI ended the job Failed, or does not know it).
PENDING, OWED, SETTLED, FAILED = "pending", "owed", "settled", "failed"
OPEN_STATUSES = (PENDING, OWED)


@dataclass(frozen=True)
class JobEntry:
    """One submitted job as the ledger knows it."""

    client_token: str
    job_id: str | None
    input: str
    status: str
    submitted_at: float
    deadline_at: float
    settled_at: float | None = None
    ci_state: str = ""
    checked_at: float | None = None
    reason: str = ""
    queue_id: str = ""  # the CI queue it was submitted to ("" = not known)
    user_data: str = ""  # the UserData it was submitted with

    def overdue(self, now: float) -> bool:
        return self.status in OPEN_STATUSES and self.deadline_at < now

    def to_dict(self, now: float) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "client_token": self.client_token,
            "input": self.input,
            "status": self.status,
            "overdue": self.overdue(now),
            "submitted_at": iso(self.submitted_at),
            "deadline_at": iso(self.deadline_at),
            "settled_at": iso(self.settled_at),
            "ci_state": self.ci_state or None,
            "checked_at": iso(self.checked_at),
            "reason": self.reason or None,
            "canary": is_canary(self.client_token),
            "queue_id": self.queue_id or None,
            "user_data": self.user_data or None,
        }


@dataclass(frozen=True)
class JobStats:
    owed: int  # pending or owed
    overdue: int  # of those, past their deadline
    oldest_owed_at: float | None  # submitted_at of the oldest still owed
    # Messages begun and not yet settled for good: in a worker's hands or waiting on the retry
    # topic (the attempts table; a message acknowledged or dead-lettered leaves it).
    deliveries_pending: int = 0


@dataclass(frozen=True)
class JobQuery:
    """A page of the jobs table, newest first, for people browsing it (the console).
    ``before`` is the (submitted_at, client_token) of the last row of the previous page: keyset
    paging, so a deep page costs what the first does."""

    statuses: tuple[str, ...] = ()
    overdue_at: float | None = None
    since: float | None = None
    until: float | None = None
    input_prefix: str = ""
    job_id: str = ""
    queue_id: str = ""
    user_data: str = ""  # text the UserData contains (any case)
    before: tuple[float, str] | None = None
    limit: int = 50


@dataclass(frozen=True)
class JobEvent:
    """One step of a job's timeline: what happened (``stage``), when, and a detail (the sink,
    CI's state, a reason)."""

    at: float
    stage: str
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"at": iso(self.at), "stage": self.stage, "detail": self.detail}


@dataclass(frozen=True)
class Usage:
    """One delivered job's audio, for usage reports: its CI queue and engine model."""

    job_id: str
    queue_id: str
    engine: str
    audio_seconds: float


@dataclass(frozen=True)
class UsageRow:
    """Audio of the jobs delivered in one group (a UTC day, a queue or an engine model), per
    engine model (prices are per engine)."""

    key: str
    engine: str
    jobs: int
    audio_seconds: float


USAGE_GROUPS = ("day", "queue", "engine")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Attempt:
    """How many times processing of one message has started, since when, and why it last failed."""

    count: int
    first_at: float
    last_reason: str


@dataclass
class LedgerWrites:
    """What settling a batch of messages leaves for the ledger, written in one transaction
    (``Ledger.commit``): the ledger's one write type for deliveries."""

    delivered: list[tuple[str, str]] = field(default_factory=list)  # (job id, sink)
    not_wanted: list[tuple[str, str]] = field(default_factory=list)  # (job id, sink)
    # (job id, CI state or None): every selected sink has the job (failed when CI ended it
    # Failed or Cancel).
    settled: list[tuple[str, str | None]] = field(default_factory=list)
    # Settled jobs' client tokens (job id -> token): a job's callback can be delivered before
    # the submit that created it has recorded its id (its create answer was lost and it is
    # still looking the job up), so a settle also finds the job's row by its token.
    tokens: dict[str, str] = field(default_factory=dict)
    usage: list[Usage] = field(default_factory=list)  # the settled jobs' audio
    cleared: list[str] = field(default_factory=list)  # message keys settled for good
    release: list[str] = field(default_factory=list)  # job ids whose claims ``owner`` gives up
    owner: str = ""


class LedgerError(Exception):
    """The ledger cannot be opened (a message safe to print: no secrets). ``config``: the
    configuration is at fault (exit 78); else the ledger may become reachable later."""

    def __init__(self, message: str, config: bool = True) -> None:
        super().__init__(message)
        self.config = config


class LedgerUnavailable(Exception):
    """The ledger cannot be read or written now (its disk full or failing, the server gone): an
    outage. Nothing may be acknowledged until it works again; no message is at fault."""

    SOURCE = "ledger"  # what the outage pause is called


class LockSession(Protocol):
    """Named locks that last as long as one connection to the shared ledger: the server
    releases them when that connection ends (the holder died or lost its network)."""

    def try_lock(self, name: str) -> bool:
        """Take ``name`` unless another session holds it; True when this session has it."""
        ...

    def alive(self) -> bool:
        """A cheap round trip; False once the connection is lost (its locks are gone)."""
        ...

    def close(self) -> None: ...
