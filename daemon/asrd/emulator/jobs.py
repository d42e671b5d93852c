"""The in-memory job store (creation order, list paging), journaled to survive restarts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from asrd.emulator.journal import Journal
from asrd.emulator.model import Job, NotifyConfig, Queue, Template, default_queue_id, new_job_id
from asrd.emulator.validate import CreateRequest, ListQuery


class JobStore:
    """Jobs in creation order; all access happens on the event loop thread."""

    def __init__(self, journal: Journal | None = None) -> None:
        self._jobs: dict[str, Job] = {}
        self._order: list[Job] = []
        self._seq = 0
        self.queues: dict[str, Queue] = {}
        self.templates: dict[str, Template] = {}
        self._journal = journal

    def restore(self, records: Iterable[dict[str, Any]]) -> list[Job]:
        """Replay journal records (other kinds are skipped); returns the unfinished jobs."""
        jobs: dict[str, Job] = {}
        for record in records:
            rec = dict(record)  # the records are shared with the other stores
            kind = rec.pop("kind", None)
            try:
                if kind == "template":
                    t = Template(**rec)
                    self.templates[t.template_id] = t
                elif kind == "queue":
                    notify = NotifyConfig(**rec.pop("notify"))
                    q = Queue(**rec, notify=notify)
                    self.queues[q.queue_id] = q
                elif kind == "job":
                    job = Job.from_record(rec, self.templates)
                    jobs[job.job_id] = job
            except (TypeError, KeyError) as exc:
                raise ValueError(f"journal record of kind {kind!r} unreadable: {exc}") from exc
        self._order = sorted(jobs.values(), key=lambda j: j.seq)
        # seq n must sit at index n-1 (list paging relies on it); renumber after gaps.
        for i, job in enumerate(self._order, start=1):
            job.seq = i
        self._jobs = {j.job_id: j for j in self._order}
        self._seq = len(self._order)
        return [j for j in self._order if j.state in ("Submitted", "Running")]

    def snapshot(self) -> list[dict[str, Any]]:
        """Only the latest record per id (compaction, so the journal does not grow forever)."""
        return (
            [{"kind": "template", **asdict(t)} for t in self.templates.values()]
            + [{"kind": "queue", **asdict(q)} for q in self.queues.values()]
            + [j.to_record() for j in self._order]
        )

    def save(self, job: Job) -> None:
        """Record a job's new state (called after every change)."""
        if self._journal is not None:
            self._journal.write(job.to_record())

    def save_queue(self, queue: Queue) -> None:
        if self._journal is not None:
            rec = asdict(queue)
            self._journal.write({"kind": "queue", **rec})

    def add_template(self, template: Template) -> None:
        self.templates[template.template_id] = template
        if self._journal is not None:
            self._journal.write({"kind": "template", **asdict(template)})

    def queue(self, bucket: str, queue_id: str | None, now: float) -> Queue:
        """The job's queue; unknown ids are created on first use like buckets are."""
        qid = queue_id or default_queue_id(bucket)
        q = self.queues.get(qid)
        if q is None:
            # UNCONFIRMED: the real service rejects unknown queue ids; the emulator has no
            # queue-creation API, so any id is accepted and materialised here.
            q = Queue(qid, bucket, "queue-" + qid[1:9], created=now, updated=now)
            self.queues[qid] = q
            self.save_queue(q)
        return q

    def add(self, bucket: str, region: str, req: CreateRequest, now: float) -> Job:
        self._seq += 1
        queue = self.queue(bucket, req.queue_id, now)
        job = Job(
            job_id=new_job_id(),
            seq=self._seq,
            bucket=bucket,
            region=region,
            queue_id=queue.queue_id,
            input_object=req.input_object,
            input_url=req.input_url,
            output_bucket=req.output_bucket,
            output_region=req.output_region,
            output_object=req.output_object,
            params=req.params,
            template=req.template,
            user_data=req.user_data,
            job_level=req.job_level,
            callback=req.callback,
            callback_format=req.callback_format,
            callback_type=req.callback_type,
            mq=req.mq,
            created=now,
        )
        if queue.state == "Paused":
            job.state = "Pause"  # waits until the queue is active again
        self._jobs[job.job_id] = job
        self._order.append(job)
        self.save(job)
        return job

    def paused(self, queue_id: str) -> list[Job]:
        return [j for j in self._order if j.queue_id == queue_id and j.state == "Pause"]

    def get(self, bucket: str, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.bucket == bucket else None

    def __len__(self) -> int:
        return len(self._jobs)

    def list(self, bucket: str, q: ListQuery) -> tuple[list[Job], str]:
        # seq n sits at index n-1, so a token lets the scan start right where the last page ended.
        seq_iter: Iterable[Job]
        if q.descending:
            top = len(self._order) if q.after_seq is None else max(0, q.after_seq - 1)
            seq_iter = (self._order[i] for i in range(min(top, len(self._order)) - 1, -1, -1))
        else:
            start = 0 if q.after_seq is None else max(0, q.after_seq)
            seq_iter = (self._order[i] for i in range(start, len(self._order)))
        page: list[Job] = []
        more = False
        for job in seq_iter:
            if job.bucket != bucket or (q.queue_id and job.queue_id != q.queue_id):
                continue
            if q.states is not None and job.state not in q.states:
                continue
            created = int(job.created)  # the service compares at the printed 1 s resolution
            if (q.start is not None and created < q.start) or (
                q.end is not None and created > q.end
            ):
                continue
            if len(page) == q.size:
                more = True
                break
            page.append(job)
        token = f"{page[-1].seq:016x}" if more else ""
        return page, token
