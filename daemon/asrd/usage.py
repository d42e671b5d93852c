"""Audio hours and their estimated cost, from the ledger's usage table (one row per delivered
job: its CI queue, engine model and ``AudioTime``): ``asrd usage`` and the console's usage page.

Cost is an estimate from ``[usage] prices`` (per audio hour, by engine model); no price is
built in, and an engine without a price has no cost (shown as unknown, never as 0).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from .config import UsageSettings
from .ledger import JobBook


@dataclass(frozen=True)
class UsageLine:
    key: str  # a UTC day, a queue or an engine model
    jobs: int
    audio_hours: float
    cost: float | None  # None: no price for some of its engines


def report(ledger: JobBook, since: float, by: str, prices: UsageSettings) -> list[UsageLine]:
    lines: dict[str, UsageLine] = {}
    for row in ledger.usage(since, by):
        hours = row.audio_seconds / 3600
        price = prices.prices.get(row.engine)
        cost = None if price is None else hours * price
        seen = lines.get(row.key)
        if seen is None:
            lines[row.key] = UsageLine(row.key, row.jobs, hours, cost)
        else:
            total = None if seen.cost is None or cost is None else seen.cost + cost
            lines[row.key] = UsageLine(
                row.key, seen.jobs + row.jobs, seen.audio_hours + hours, total
            )
    return list(lines.values())


def to_csv(lines: list[UsageLine], by: str, prices: UsageSettings) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    priced = bool(prices.prices)
    header = [by, "jobs", "audio_hours"]
    writer.writerow([*header, f"cost_{prices.currency or 'estimate'}"] if priced else header)
    for line in lines:
        row = [line.key, str(line.jobs), f"{line.audio_hours:.4f}"]
        if priced:
            row.append("" if line.cost is None else f"{line.cost:.2f}")
        writer.writerow(row)
    return out.getvalue()
