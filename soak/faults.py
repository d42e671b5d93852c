"""The fault schedule: which kinds, how long each holds, in what order and which overlap.

A full run repeats a round of every kind (each fault spaced by ``gap_s``), and in every other
long fault a short one (a worker or broker or PostgreSQL restart) starts 15 s in, so faults
overlap. A run too short for a whole round gets one fault of each *cheap* kind instead, their
holds shortened to fit. Pure planning: ``soak.run`` carries the faults out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    hold_s: float  # how long the fault lasts (0: an instant, such as a SIGKILL)
    cheap: bool = False  # part of the short run that `make test` does
    then: str = ""  # a kind that follows this one at once (a second phase)
    cost_s: float = 0.0  # for an instant: what it costs the schedule (a restart takes a while)


KINDS = {
    k.name: k
    for k in [
        Kind("kill-worker", 0, cheap=True, cost_s=5),
        Kind("webhook-500", 60, cheap=True, then="webhook-timeout"),
        Kind("webhook-timeout", 60),
        Kind("broker-restart", 0, cheap=True, cost_s=40),
        Kind("ci-503", 30),
        Kind("pg-restart", 0, cost_s=10),
        Kind("disk-full", 60, cheap=True),
        Kind("kill-daemon", 0, cheap=True, cost_s=10),
        Kind("cmq-unreachable", 30),
        Kind("ci-slowdown", 30),
        Kind("net-degraded", 60, cheap=True, then="net-partition"),
        Kind("net-partition", 20),
        Kind("pg-outage", 30),
        Kind("ci-slow", 60),
        Kind("clock-skew", 60),
        Kind("ledger-full", 30),  # the SQLite variant's ledger disk
    ]
}
# What each ledger's run leaves out: PostgreSQL's faults on SQLite and the other way round; one
# process (workers = 1 on SQLite) has no worker of its own to kill.
NOT_FOR = {
    "postgres": {"ledger-full"},
    "sqlite": {"pg-restart", "pg-outage", "kill-worker"},
}
# The order of a round; second phases follow their first.
ROUND = [k for k in KINDS if k not in {v.then for v in KINDS.values()}]
OVERLAYS = ["kill-worker", "pg-restart", "broker-restart", "kill-worker"]
# Faults an overlay must not land in: the daemon is being replaced, or the same server is down.
NO_OVERLAY = {"kill-daemon", "clock-skew", "pg-outage", "pg-restart", "broker-restart"}


@dataclass
class Planned:
    kind: str
    hold_s: float
    gap_before_s: float
    overlay: str = ""  # a kind started 15 s into this one


def cost(kind: str, hold_s: float) -> float:
    return hold_s if hold_s > 0 else KINDS[kind].cost_s


def plan(
    duration_s: float, gap_s: float, lead_s: float = 30.0, ledger: str = "postgres"
) -> list[Planned]:
    """Faults for a run of ``duration_s``: the first after ``lead_s``, the last ending at least
    ``gap_s`` before the load stops."""
    budget = duration_s - lead_s - gap_s
    skip = NOT_FOR[ledger]
    round_cost = sum(gap_s + cost(k, KINDS[k].hold_s) for k in KINDS if k not in skip)
    if budget < round_cost:
        return _short(budget, gap_s, ledger=ledger)
    out: list[Planned] = []
    used = 0.0
    n = 0
    while True:
        for name in ROUND:
            if name in skip:
                continue
            if name == "clock-skew" and n % 2:  # one skewed restart every other round
                continue
            chain = [name] + ([KINDS[name].then] if KINDS[name].then else [])
            need = sum(gap_s + cost(k, KINDS[k].hold_s) for k in chain)
            if used + need > budget:
                return out
            for i, k in enumerate(chain):
                hold = KINDS[k].hold_s
                overlay = ""
                if hold >= 30 and k not in NO_OVERLAY and len(out) % 2 == 0:
                    overlay = OVERLAYS[len(out) // 2 % len(OVERLAYS)]
                    overlay = "" if overlay in skip else overlay
                out.append(Planned(k, hold, gap_s if i == 0 else 0.0, overlay))
            used += need
        n += 1


def named(duration_s: float, gap_s: float, names: list[str], lead_s: float = 30.0) -> list[Planned]:
    """The kinds ``names`` (second phases follow their first) over and over, each spaced by
    ``gap_s``, until the run ends: to study one kind's effect (memory, descriptors) alone."""
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise ValueError(
            f"SOAK_KINDS: unknown fault kind {unknown[0]!r} (kinds: {', '.join(KINDS)})"
        )
    budget = duration_s - lead_s - gap_s
    out: list[Planned] = []
    used = 0.0
    while True:
        for name in names:
            chain = [name] + ([KINDS[name].then] if KINDS[name].then else [])
            need = sum(gap_s + cost(k, KINDS[k].hold_s) for k in chain)
            if used + need > budget:
                return out
            for i, k in enumerate(chain):
                out.append(Planned(k, KINDS[k].hold_s, gap_s if i == 0 else 0.0))
            used += need


def _short(
    budget: float, gap_s: float, every: bool = False, ledger: str = "postgres"
) -> list[Planned]:
    """One of each cheap kind (``every``: of every kind), long faults shortened (to no less
    than 10 s) to fit."""
    skip = NOT_FOR[ledger]
    names = [k for k in KINDS.values() if (k.cheap or every) and k.name not in skip]
    if ledger == "sqlite" and not every:
        names.append(KINDS["ledger-full"])
    gaps = len(names) * gap_s
    held = sum(k.hold_s for k in names)
    room = budget - gaps - sum(k.cost_s for k in names)
    scale = max(0.0, min(1.0, room / held)) if held else 1.0
    return [
        Planned(k.name, max(10.0, round(k.hold_s * scale)) if k.hold_s else 0.0, gap_s)
        for k in names
    ]
