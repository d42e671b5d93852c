"""Routing: which configured sinks want a record. ``Router.wanted`` is the one place that says."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ..config import When
from ..result import ResultRecord
from .base import Sink


def user_data_fields(user_data: str | None) -> dict[str, str]:
    """The fields of a job's ``UserData``: a JSON object, or ``key=value&...`` text."""
    text = (user_data or "").strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            return {}
        if isinstance(doc, dict):
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in doc.items()}
        return {}
    return dict(parse_qsl(text, keep_blank_values=True)) if "=" in text else {}


@dataclass(frozen=True)
class Route:
    sink: Sink
    when: When

    def selects(self, record: ResultRecord) -> bool:
        w = self.when
        if record.state not in w.state or (w.queue_id and record.queue_id not in w.queue_id):
            return False
        source = record.input.get("object") or record.input.get("url") or ""
        if w.input_prefix and not source.startswith(tuple(w.input_prefix)):
            return False
        if w.user_data:
            fields = user_data_fields(record.user_data)
            for key, accepted in w.user_data.items():
                if fields.get(key) not in ([accepted] if isinstance(accepted, str) else accepted):
                    return False
        return True


class Router:
    """The configured routes, asked once per record which of them want it."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)
        self.names = frozenset(r.sink.name for r in self.routes)

    def wanted(self, record: ResultRecord) -> list[Route]:
        if record.canary:
            # The canary proves the path up to here; its record is nobody's result. The ledger
            # still settles it (every sink "does not want it"), which the canary waits for.
            return []
        return [r for r in self.routes if r.selects(record)]
