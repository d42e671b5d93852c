"""Job lifecycle on the event loop: Submitted → Running → Success | Failed, result, callback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections import Counter
from urllib.parse import urlparse

from asrd.emulator import shapes, transcript
from asrd.emulator.cmq import Cmq
from asrd.emulator.faults import Faults
from asrd.emulator.jobs import JobStore
from asrd.emulator.model import Job, Queue, now
from asrd.emulator.notify import Delivery, Notifier, callback_body, workflow_finish_body
from asrd.emulator.storage import BadKey, ObjectStore

log = logging.getLogger("asrd.emulator.jobs")

# UNCONFIRMED: the real failure code/message for a missing input object is not documented.
INPUT_MISSING = ("InputFileNotExist", "The input object does not exist.")
OUTPUT_INVALID = ("InvalidOutput", "The output object cannot be written.")
# UNCONFIRMED: CI's own retry policy for callbacks is not documented; a broker restart of a
# few seconds must not lose a notification, so retry with a growing pause (1+2+4+8 s).
DELIVERY_ATTEMPTS = 5


def resolve_delivery(job: Job, queue: Queue) -> Delivery | None:
    """Job settings override the queue's NotifyConfig, which applies only when it is On."""
    nc = queue.notify
    queue_on = nc.state == "On" and "TaskFinish" in nc.event
    kind = job.callback_type or (nc.type if queue_on else "Url")
    fmt = job.callback_format or (nc.result_format if queue_on else "XML")
    if kind == "TDMQ":
        mq = job.mq
        if mq is None and queue_on and nc.mq_name:
            region, mode, name = nc.mq_region, nc.mq_mode, nc.mq_name
        elif mq is not None:
            region, mode, name = mq.region, mq.mode, mq.name
        else:
            return None
        props = {"MqRegion": region, "MqMode": mode, "MqName": name, "JobId": job.job_id}
        return Delivery("TDMQ", name, fmt, props)
    if job.callback == "no":  # documented: disables the queue's callback for this job
        return None
    url = job.callback or (nc.url if queue_on else "")
    if not url:
        return None
    return Delivery("Url", url, fmt, {"JobId": job.job_id})


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        objects: ObjectStore,
        notifier: Notifier,
        faults: Faults,
        job_delay: float,
        stats: Counter[str],
        cmq: Cmq,
        tdmq_to_pulsar: bool = False,
        shapes: frozenset[str] = frozenset(),
    ) -> None:
        self.shapes = shapes  # see shapes.py
        self.store = store
        self.objects = objects
        self.notifier = notifier
        self.cmq = cmq
        self.tdmq_to_pulsar = tdmq_to_pulsar
        self.faults = faults
        self.job_delay = job_delay
        self.stats = stats
        self._tasks: set[asyncio.Future[None]] = set()

    def start(self, job: Job) -> None:
        if "workflow" in self.shapes and job.workflow is None:
            # As if a workflow had started it on the upload of its input object.
            size = 0
            if job.input_object is not None:
                with contextlib.suppress(BadKey):
                    obj = self.objects.get(job.bucket, job.input_object)
                    size = len(obj.data) if obj is not None else 0
            job.workflow = shapes.workflow_node(job.job_id)
            job.cos_headers = shapes.cos_headers(size)
            job.set_state(job.state, now())  # drops the rendered cache
        loop = asyncio.get_running_loop()
        # Scheduled even with no delay, so the create answer still shows Submitted.
        half = self.job_delay / 2
        loop.call_later(half, self._run, job)
        if self.faults.job_stall():
            return  # Running for ever: a job the service never finishes
        loop.call_later(self.job_delay, self._finish, job)

    def _run(self, job: Job) -> None:
        if job.state == "Submitted":
            # Not journaled: a job cut short by a restart runs again from the start anyway.
            job.set_state("Running", now())

    def _transcribe(self, job: Job) -> tuple[str, str] | None:
        """Fill ``job.result`` and write the output objects; a (code, message) on failure."""
        sentences: list[str]
        if job.input_object is not None:
            try:
                if not self.objects.exists(job.bucket, job.input_object):
                    return INPUT_MISSING
                sidecar = self.objects.get(job.bucket, job.input_object + ".transcript.txt")
            except BadKey:
                return INPUT_MISSING
            if sidecar is not None:
                sentences = sidecar.data.decode("utf-8", "replace").splitlines()
            else:
                sentences = transcript.sentences_from_name(job.input_object)
        else:
            # Url inputs are not downloaded; what they "say" comes from the URL path.
            sentences = transcript.sentences_from_name(urlparse(job.input_url or "").path)
        fmt = int(job.params.get("ResTextFormat", "0"))
        tr = transcript.build(sentences, drop_punctuation=fmt == 1)
        text = transcript.result_text(tr)
        body = transcript.srt_text(tr) if job.params.get("OutputFileType") == "srt" else text
        detail = transcript.result_detail(tr) if fmt >= 1 else None
        try:
            self.objects.put(job.output_bucket, job.output_object, body.encode())
            if detail is not None:
                self.objects.put(
                    job.output_bucket,
                    job.output_object + ".detail",
                    json.dumps(detail, ensure_ascii=False).encode(),
                )
        except (BadKey, OSError):
            return OUTPUT_INVALID
        result: dict[str, object] = {"AudioTime": transcript.audio_time(tr)}
        if detail is not None:
            result["DetailObjectName"] = job.output_object + ".detail"
        result["ObjectName"] = job.output_object
        lines = text.splitlines()
        result["Result"] = (lines or None) if "repeated-result" in self.shapes else (text or None)
        if "flash" in self.shapes or job.params.get("FlashAsr") == "true":
            result["FlashResult"] = shapes.flash_result(tr)
        else:
            result["ResultDetail"] = detail or None
        job.result = result
        return None

    def _finish(self, job: Job) -> None:
        if job.state in ("Success", "Failed", "Cancel"):
            return
        final = dataclasses.replace(job, _cache=None)
        failure = self.faults.job_failure() or self._transcribe(final)
        t = now()
        if failure is not None:
            final.result = None
            final.code, final.message = failure
            final.set_state("Failed", t)
        else:
            if "message-success" in self.shapes:
                final.message = "Success"
            final.set_state("Success", t)
        self.stats[f"jobs_{final.state.lower()}"] += 1
        copies, delay, early = self.faults.callback_plan()
        delivery = resolve_delivery(final, self.store.queue(job.bucket, job.queue_id, t))
        loop = asyncio.get_running_loop()
        if early > 0:
            # The notification goes out now, while get keeps answering Running for a while.
            if job.state == "Submitted":
                job.set_state("Running", t)
            loop.call_later(early, self._commit, job, final)
        else:
            self._commit(job, final)
        if delivery is None or copies == 0:
            return
        detail = final.detail()
        bodies = [callback_body(detail, delivery.fmt, self.shapes)]
        if "workflow-finish" in self.shapes:
            bodies.append(workflow_finish_body(detail, delivery.fmt))
        for _ in range(copies):
            for body, ctype in bodies:
                if delay > 0:
                    loop.call_later(delay, self._spawn_delivery, delivery, body, ctype)
                else:
                    self._spawn_delivery(delivery, body, ctype)

    def _commit(self, job: Job, final: Job) -> None:
        job.code, job.message, job.result = final.code, final.message, final.result
        job.started = final.started
        job.set_state(final.state, final.ended or now())
        self.store.save(job)

    def _spawn_delivery(self, delivery: Delivery, body: bytes, ctype: str) -> None:
        task = asyncio.ensure_future(self._deliver(delivery, body, ctype))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: Delivery, body: bytes, ctype: str) -> None:
        if delivery.kind == "TDMQ" and not self.tdmq_to_pulsar:
            # CI writes into TDMQ-CMQ once; a refused write (too big, no such queue) is lost.
            props = delivery.properties
            if self.cmq.deliver_callback(props["MqRegion"], props["MqMode"], props["MqName"], body):
                self.stats["callback_sent_tdmq"] += 1
            return
        loop = asyncio.get_running_loop()
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                await loop.run_in_executor(
                    self.notifier.pool, self.notifier.deliver, delivery, body, ctype
                )
            except Exception as exc:  # noqa: BLE001 - any delivery failure is retried then counted
                log.warning("callback to %s failed (attempt %d): %s", delivery.target, attempt, exc)
                if attempt == DELIVERY_ATTEMPTS:
                    self.stats["callback_failed"] += 1
                    return
                await asyncio.sleep(2 ** (attempt - 1))
            else:
                self.stats[f"callback_sent_{delivery.kind.lower()}"] += 1
                return

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for deliveries already under way, then give up on the rest."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
