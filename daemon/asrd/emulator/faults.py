"""Fault injection: settings (changeable at run time through ``/-/faults``) and counters."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

ERROR_CODES = {"ServiceUnavailable": 503, "InternalError": 500}
# CMQ: in-band codes (HTTP 200) for an internal error or QPS throttling, or a gateway HTTP status.
CMQ_ERROR_CODES = (6000, 4420, 502, 503)
DROP_MODES = ("close", "error", "mixed")


@dataclass
class FaultConfig:
    latency_ms: float = 0.0  # fixed extra latency per API call
    latency_max_ms: float = 0.0  # > latency_ms: uniform random in [latency_ms, latency_max_ms]
    error_rate: float = 0.0  # share of API calls answered with a 5xx
    error_code: str = "ServiceUnavailable"  # ServiceUnavailable | InternalError | mixed
    throttle_rps: int = 0  # > 0: calls beyond this many per second get 503 SlowDown
    job_fail_rate: float = 0.0  # share of jobs that end Failed with job_fail_code
    job_fail_code: str = "InternalError"
    job_fail_message: str = "injected failure"
    callback_drop_rate: float = 0.0  # callbacks never sent
    callback_duplicate_rate: float = 0.0  # callbacks sent twice
    callback_delay_rate: float = 0.0  # callbacks sent callback_delay_s after the job ends
    callback_delay_s: float = 2.0
    callback_early_rate: float = 0.0  # callbacks sent while get still shows Running
    callback_early_s: float = 1.0  # how long get keeps showing Running after such a callback
    cmq_error_rate: float = 0.0  # share of CMQ API calls answered with cmq_error_code
    cmq_error_code: int = 6000  # 6000 | 4420 (in the JSON) or 502 | 503 (HTTP status)
    # The job is created, then the create's answer is lost: the connection closes without a
    # response ("close"), or a 500 InternalError comes back ("error"), or either ("mixed").
    create_response_drop_rate: float = 0.0
    create_response_drop_mode: str = "mixed"
    job_stall_rate: float = 0.0  # jobs that start Running and never finish

    def update(self, values: dict[str, Any]) -> None:
        """Apply a partial update; unknown keys or wrong types raise ValueError, nothing applied."""
        known = {f.name: f for f in fields(self)}
        staged: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"unknown fault setting {key!r}")
            current = getattr(self, key)
            if isinstance(current, str):
                if not isinstance(value, str):
                    raise ValueError(f"{key} must be a string")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number")
            elif isinstance(current, int) and not isinstance(current, bool):
                value = int(value)
            else:
                value = float(value)
            if key.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be between 0 and 1")
            if isinstance(value, int | float) and value < 0:
                raise ValueError(f"{key} must not be negative")
            staged[key] = value
        code = staged.get("error_code", self.error_code)
        if code not in (*ERROR_CODES, "mixed"):
            raise ValueError("error_code must be ServiceUnavailable, InternalError or mixed")
        if staged.get("cmq_error_code", self.cmq_error_code) not in CMQ_ERROR_CODES:
            raise ValueError(f"cmq_error_code must be one of {list(CMQ_ERROR_CODES)}")
        mode = staged.get("create_response_drop_mode", self.create_response_drop_mode)
        if mode not in DROP_MODES:
            raise ValueError("create_response_drop_mode must be close, error or mixed")
        for key, value in staged.items():
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    """Decisions for one request or job, drawn from a seeded generator; every hit is counted."""

    def __init__(self, config: FaultConfig, seed: int | None = None) -> None:
        self.config = config
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)  # noqa: S311 - test randomness, not security
        self._window = 0
        self._window_count = 0

    def _hit(self, rate: float, name: str) -> bool:
        if rate > 0 and (rate >= 1 or self._rng.random() < rate):
            self.counts[name] += 1
            return True
        return False

    def latency(self) -> float:
        """Seconds to wait before answering (0 when off)."""
        c = self.config
        if c.latency_ms <= 0 and c.latency_max_ms <= 0:
            return 0.0
        ms = c.latency_ms
        if c.latency_max_ms > c.latency_ms:
            ms = self._rng.uniform(c.latency_ms, c.latency_max_ms)
        self.counts["latency"] += 1
        return ms / 1000.0

    def request_error(self, now: float) -> tuple[int, str, str] | None:
        """``(status, code, message)`` for an injected API error, or None."""
        c = self.config
        if c.throttle_rps > 0:
            second = int(now)
            if second != self._window:
                self._window, self._window_count = second, 0
            self._window_count += 1
            if self._window_count > c.throttle_rps:
                self.counts["throttled"] += 1
                return 503, "SlowDown", "Please reduce your request rate."
        if self._hit(c.error_rate, "error"):
            code = c.error_code
            if code == "mixed":
                code = self._rng.choice(sorted(ERROR_CODES))
            self.counts[f"error_{code}"] += 1
            unavailable = code == "ServiceUnavailable"
            message = "Service is unavailable." if unavailable else "Internal error."
            return ERROR_CODES[code], code, message
        return None

    def cmq_error(self) -> int | None:
        """The code (or HTTP status) for an injected CMQ API error, or None."""
        if self._hit(self.config.cmq_error_rate, "cmq_error"):
            return self.config.cmq_error_code
        return None

    def job_failure(self) -> tuple[str, str] | None:
        if self._hit(self.config.job_fail_rate, "job_failed"):
            return self.config.job_fail_code, self.config.job_fail_message
        return None

    def create_response_drop(self) -> str | None:
        """After a job was created: ``"close"`` or ``"error"`` to lose the answer, else None."""
        c = self.config
        if not self._hit(c.create_response_drop_rate, "create_response_dropped"):
            return None
        mode = c.create_response_drop_mode
        if mode == "mixed":
            mode = self._rng.choice(("close", "error"))
        self.counts[f"create_response_dropped_{mode}"] += 1
        return mode

    def job_stall(self) -> bool:
        return self._hit(self.config.job_stall_rate, "job_stalled")

    def callback_plan(self) -> tuple[int, float, float]:
        """``(copies, delay seconds, early seconds)`` for one job's notification."""
        c = self.config
        if self._hit(c.callback_drop_rate, "callback_dropped"):
            return 0, 0.0, 0.0
        copies = 2 if self._hit(c.callback_duplicate_rate, "callback_duplicated") else 1
        delay = c.callback_delay_s if self._hit(c.callback_delay_rate, "callback_delayed") else 0.0
        early = c.callback_early_s if self._hit(c.callback_early_rate, "callback_early") else 0.0
        return copies, delay, early

    def snapshot(self) -> dict[str, Any]:
        return {"faults": self.config.as_dict(), "counts": dict(sorted(self.counts.items()))}
