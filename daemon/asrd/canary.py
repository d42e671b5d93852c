"""``asrd check --canary``: one short job through the whole production path, stage by stage.

It submits a job (bundled audio uploaded under ``[canary] prefix``, or ``[canary] object``) with
the configured callback and a canary client token, then watches what a running daemon does with
it: CI finishes it; the notification comes off CMQ (or in by URL) onto the Pulsar topic (a
reader, which takes nothing from the subscription, sees the intake's copy and its properties);
the consumer reads the job back from CI and the pipeline settles it in the ledger (the canary's
record goes to no sink). The answer is a table of stages with times, and success only when the
record came through that path: a job the reconciler delivered proves nothing about callbacks.
"""

from __future__ import annotations

import array
import io
import math
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import pulsar

from . import clienttoken
from .broker import make_client
from .ci import CiClient, CiError
from .cli_submit import make_submitter
from .config import Settings
from .intake.queue import CMQ_DEQUEUE_COUNT, CMQ_MSG_ID, CMQ_QUEUE
from .intake.url import SOURCE
from .ledger import FAILED, SETTLED, JobBook
from .submit import JobSpec

__all__ = ["AUDIO_NAME", "Stage", "Watch", "audio", "run"]

AUDIO_NAME = "asrd-canary.wav"
TERMINAL = ("Success", "Failed", "Cancel")


def audio(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    """The bundled canary audio: a short quiet 440 Hz tone, 16 kHz mono 16-bit WAV (what the
    default 16k engines take), made here rather than shipped as a file."""
    tone = (math.sin(2 * math.pi * 440 * i / rate) for i in range(int(seconds * rate)))
    samples = array.array("h", (int(3000 * x) for x in tone))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buf.getvalue()


@dataclass
class Stage:
    name: str
    cause: str  # the likely cause when this is the first stage that did not happen
    at: float | None = None
    detail: str = ""

    def done(self, at: float, detail: str) -> None:
        if self.at is None:
            self.at, self.detail = at, detail


@dataclass
class Watch:
    """The stages of one canary job and what was seen of each."""

    stages: list[Stage]
    started: float = field(default_factory=time.time)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def complete(self) -> bool:
        return all(s.at is not None for s in self.stages)

    def first_missing(self) -> Stage | None:
        return next((s for s in self.stages if s.at is None), None)

    def table(self) -> str:
        width = max(len(s.name) for s in self.stages)
        lines = [f"{'stage':<{width}}  {'after':>8}  detail"]
        for s in self.stages:
            after = f"{s.at - self.started:7.1f}s" if s.at is not None else "       -"
            lines.append(f"{s.name:<{width}}  {after:>8}  {s.detail or 'not seen'}")
        return "\n".join(lines)


def stages_for(settings: Settings) -> list[Stage]:
    cb, p = settings.ci.callback, settings.pulsar
    cmq = settings.intake.cmq
    if cb.type == "url":
        received = Stage(
            "callback received",
            "no URL callback reached the receiver: is ci.callback.url reachable from CI, and "
            "is a daemon with [intake.url] serving it?",
        )
    else:
        queue = cmq.queue if cmq is not None else cb.mq_name
        received = Stage(
            "CMQ received",
            f"nothing came off CMQ queue {queue!r}: CI's callback target (ci.callback "
            f"mq_region/mq_mode/mq_name = {cb.mq_region}/{cb.mq_mode}/{cb.mq_name}) is not the "
            "queue the intake reads, the intake (asrd run or asrd intake with [intake.cmq]) is "
            "not running, or its key may not receive",
        )
    return [
        Stage("created", "CI refused the job: check the [ci] key, bucket and queue id"),
        Stage(
            "CI finished",
            "CI has not finished the job: the CI queue may be paused or busy (asrd jobs show)",
        ),
        received,
        Stage(
            "on the Pulsar topic",
            f"the intake did not produce to {p.topic}: check the intake's log and the broker",
        ),
        Stage(
            "read back",
            f"no consumer took the message: is asrd run subscribed as {p.subscription!r} on "
            f"{p.topic}, with its credentials valid?",
        ),
        Stage(
            "through the pipeline",
            "the daemon did not settle the job: see its log (CI look-up or ledger trouble)",
        ),
    ]


def _input_object(settings: Settings, ci: CiClient) -> str:
    if settings.canary.object:
        return settings.canary.object
    key = settings.canary.prefix + AUDIO_NAME
    ci.put_object(key, audio(), content_type="audio/wav")
    return key


def _on_topic(msg: Any, watch: Watch) -> None:
    props = msg.properties()
    at = msg.publish_timestamp() / 1000
    if props.get(CMQ_QUEUE):
        count = props.get(CMQ_DEQUEUE_COUNT, "?")
        watch.stage("CMQ received").done(
            at,
            f"queue {props[CMQ_QUEUE]}, message {props.get(CMQ_MSG_ID, '?')}, "
            f"received {count} time(s)",
        )
    elif props.get(SOURCE):
        name = "callback received" if props[SOURCE] == "url" else "CMQ received"
        if any(s.name == name for s in watch.stages):
            watch.stage(name).done(at, f"by {props[SOURCE]}")
    watch.stage("on the Pulsar topic").done(at, f"{msg.topic_name()}, id {msg.message_id()}")


def _follow(
    settings: Settings,
    ci: CiClient,
    ledger: JobBook,
    reader: Any,
    job_id: str,
    watch: Watch,
    clock: Callable[[], float],
) -> None:
    deadline = clock() + settings.canary.timeout_s
    needle = job_id.encode()
    while clock() < deadline and not watch.complete:
        if watch.stage("CI finished").at is None:
            try:
                detail = ci.get_job(job_id, retry=False)
            except CiError:
                detail = None  # counted as not finished yet; the deadline names the stage
            if detail is not None and str(detail.get("State", "")) in TERMINAL:
                state, code = detail.get("State"), detail.get("Code", "")
                watch.stage("CI finished").done(time.time(), f"{state}, code {code}")
        try:
            msg = reader.read_next(timeout_millis=500)
        except pulsar.Timeout:
            msg = None
        if msg is not None and needle in msg.data():
            _on_topic(msg, watch)
        entry = ledger.job(job_id)
        # Failed in CI is settled as "failed": the path still worked.
        if entry is not None and entry.status in (SETTLED, FAILED) and entry.settled_at:
            state = entry.ci_state or "?"
            watch.stage("read back").done(entry.settled_at, f"CI said {state}")
            watch.stage("through the pipeline").done(
                entry.settled_at, "settled in the ledger as a canary (no sink)"
            )


def run(
    settings: Settings,
    ledger: JobBook,
    out: TextIO,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Submit and follow one canary job; 0 when it came through every stage in time."""
    ci = CiClient(settings.ci)
    watch = Watch(stages_for(settings))
    client = make_client(settings.pulsar)
    try:
        # Before the job exists, so its message cannot pass unseen; a reader takes nothing
        # from the daemon's subscription.
        reader = client.create_reader(settings.pulsar.topic, pulsar.MessageId.latest)
        key = _input_object(settings, ci)
        token = clienttoken.canary()
        outcome = make_submitter(settings, ci, ledger).submit(
            JobSpec(input_object=key, client_token=token), token
        )
        if not outcome.ok or not outcome.job_id:
            watch.stage("created").cause = f"CI refused the job: {outcome.error}"
        else:
            watch.stage("created").done(time.time(), f"job {outcome.job_id}, input {key}")
            _follow(settings, ci, ledger, reader, outcome.job_id, watch, clock)
        reader.close()
    finally:
        client.close()
    print(watch.table(), file=out)
    missing = watch.first_missing()
    if missing is None:
        print("canary: the record came through every stage of the callback path", file=out)
        return 0
    through_other_path = (
        watch.stage("through the pipeline").at is not None
        and watch.stage("on the Pulsar topic").at is None
    )
    if through_other_path:
        print(
            f"canary: stage {missing.name!r} did not happen: the job was delivered by the "
            f"reconciler or the deadline sweep, not by its callback; {missing.cause}",
            file=out,
        )
    elif missing.name == "created":
        print(f"canary: stage 'created' did not happen: {missing.cause}", file=out)
    else:
        print(
            f"canary: stage {missing.name!r} did not happen within "
            f"{settings.canary.timeout_s:g}s: {missing.cause}",
            file=out,
        )
    return 1
