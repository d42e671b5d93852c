"""The CI/COS API: a route table (CI asr routes, COS objects, the unsigned admin API under
``/-/``) and the dispatch that authenticates and injects faults around every signed call."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

from asrd.emulator import xmlio
from asrd.emulator.cmq import Cmq, queue_spec, topic_spec
from asrd.emulator.errors import ApiError, invalid
from asrd.emulator.faults import Faults
from asrd.emulator.http import Request, Response, Route
from asrd.emulator.jobs import JobStore
from asrd.emulator.lifecycle import JobRunner
from asrd.emulator.model import Template, now
from asrd.emulator.signature import Verifier
from asrd.emulator.storage import BUCKET_RE, BadKey, ObjectStore
from asrd.emulator.sts import METADATA_PREFIX, Issuer
from asrd.emulator.validate import (
    apply_queue_update,
    parse_create,
    parse_list_query,
    parse_template,
)

# <bucket>.cos.<region>.myqcloud.com (SDK with IP/Port) or <bucket>.ci.<region>.myqcloud.com
HOST_RE = re.compile(
    r"^(?P<bucket>[a-z0-9-]+-\d+)\.(?:cos|ci)\.(?P<region>[a-z0-9-]+)\.myqcloud\.com(?::\d+)?$"
)
CI_PATHS = ("/asr_jobs", "/asrqueue", "/template")  # the rest is COS
MALFORMED = (
    "The XML you provided was not well-formed or did not validate against our published schema."
)


@dataclass(frozen=True)
class Target:
    bucket: str | None
    region: str
    host: str


def _target(req: Request) -> Target:
    host = req.headers.get("host", "")
    m = HOST_RE.match(host.lower())
    if m:
        return Target(m["bucket"], m["region"], host)
    return Target(None, "", host)


@dataclass(frozen=True)
class Call:
    """One routed request with what the dispatch worked out for it (admin calls: no target)."""

    req: Request
    target: Target
    rid: str


Endpoint = Callable[["App", Call], Response]


class App:
    def __init__(
        self,
        verifier: Verifier,
        store: JobStore,
        objects: ObjectStore,
        runner: JobRunner,
        faults: Faults,
        stats: Counter[str],
        cmq: Cmq | None = None,
        queue_id_required: bool = True,
    ) -> None:
        self.verifier = verifier
        # The /asr_jobs documents make QueueId required on create and list (the newer /jobs
        # route does not); --queue-id-optional accepts its absence and uses the default queue.
        self.queue_id_required = queue_id_required
        self.issuer = Issuer(verifier.keys)  # temporary keys: metadata paths and STS
        self.cmq = cmq
        self.store = store
        self.objects = objects
        self.runner = runner
        self.faults = faults
        self.stats = stats
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}_{uuid.uuid4().hex[:8]}"

    def _request_id(self) -> str:
        raw = f"{int(time.time()):x}_{self._id_prefix}_{next(self._ids)}"
        return base64.b64encode(raw.encode()).decode().rstrip("=")

    def routes(self) -> list[Route[Endpoint]]:
        """The route table; ``/-/cmq`` administration only when the CMQ part runs."""
        return [*ADMIN_ROUTES, *(CMQ_ADMIN_ROUTES if self.cmq is not None else ()), *API_ROUTES]

    async def dispatch(self, req: Request, endpoint: Endpoint) -> Response:
        # The CVM metadata service and STS answer on this listener too (unsigned routes).
        if req.path.startswith(METADATA_PREFIX):
            return self.issuer.metadata(req)
        if "x-tc-action" in req.headers:
            return self.issuer.sts(req)
        if req.path.startswith("/-/"):
            if "authorization" not in req.headers:
                return endpoint(self, Call(req, Target(None, "", ""), ""))  # admin: unsigned
            endpoint = App._object  # a signed request to /-/... is an ordinary object call
        rid = self._request_id()
        target = _target(req)
        try:
            delay = self.faults.latency()
            if delay > 0:
                await asyncio.sleep(delay)
            t = now()
            injected = self.faults.request_error(t)
            if injected is not None:
                raise ApiError(*injected)
            service = "ci" if req.path.startswith(CI_PATHS) else "cos"
            failure = self.verifier.verify(req.method, req.path, req.query, req.headers, t, service)
            if failure is not None:
                raise ApiError(failure.status, failure.code, failure.message)
            resp = endpoint(self, Call(req, target, rid))
        except ApiError as err:
            self.stats[f"http_{err.status}"] += 1
            body = xmlio.error_body(err.code, err.message, target.host + req.path, rid)
            resp = Response(err.status, body)
        resp.headers.append(("x-ci-request-id", rid))
        resp.headers.append(("x-cos-request-id", rid))
        return resp

    @staticmethod
    def _ci_bucket(target: Target) -> str:
        if target.bucket is None:
            raise ApiError(404, "NoSuchBucket", "The bucket is not named by the Host header.")
        return target.bucket

    # ---- CI asr jobs -----------------------------------------------------------------------

    def _create(self, call: Call) -> Response:
        bucket, region = self._ci_bucket(call.target), call.target.region
        root, body = _parse_body(call.req)
        spec = parse_create(root, body, self.store.templates)
        if self.queue_id_required and spec.queue_id is None:
            raise invalid("QueueId is required")
        if not BUCKET_RE.match(spec.output_bucket):
            raise invalid(f"invalid Operation.Output.Bucket {spec.output_bucket!r}")
        job = self.store.add(bucket, region, spec, now())
        if job.state != "Pause":
            self.runner.start(job)
        self.stats["jobs_created"] += 1
        lost = self.faults.create_response_drop()
        if lost == "close":
            return Response(200, abort=True)
        if lost == "error":
            raise ApiError(500, "InternalError", "Internal error.")
        return Response(200, xmlio.wrap("Response", job.detail_xml()))

    def _get(self, call: Call) -> Response:
        bucket = self._ci_bucket(call.target)
        ids_text = call.req.path[len("/asr_jobs/") :]
        ids = [i.strip() for i in ids_text.split(",") if i.strip()]
        if not ids:
            raise invalid("no job id given")
        found: list[bytes] = []
        missing: list[bytes] = []
        for job_id in ids:
            job = self.store.get(bucket, job_id)
            if job is None:
                missing.append(xmlio.fragment("NonExistJobIds", job_id))
            else:
                found.append(job.detail_xml())
        return Response(200, xmlio.wrap("Response", b"".join(found + missing)))

    def _list(self, call: Call) -> Response:
        bucket = self._ci_bucket(call.target)
        query = parse_list_query(call.req.query)
        if self.queue_id_required and query.queue_id is None:
            raise invalid("queueId is required")
        page, token = self.store.list(bucket, query)
        self.stats["job_list_pages"] += 1
        parts = [job.detail_xml() for job in page]
        parts.append(xmlio.fragment("NextToken", token or None))
        return Response(200, xmlio.wrap("Response", b"".join(parts)))

    # ---- queues and templates --------------------------------------------------------------

    def _queues(self, call: Call) -> Response:
        req, bucket, rid = call.req, self._ci_bucket(call.target), call.rid
        t = now()
        self.store.queue(bucket, None, t)  # every bucket has its default queue
        wanted = [q for q in (req.query.get("queueIds") or "").split(",") if q]
        state = req.query.get("state") or "All"
        if state not in ("All", "Active", "Paused"):
            raise invalid("state must be All, Active or Paused")
        try:
            number = int(req.query.get("pageNumber") or "1")
            size = int(req.query.get("pageSize") or "10")
        except ValueError as exc:
            raise invalid("pageNumber and pageSize must be integers") from exc
        if number < 1 or not 1 <= size <= 100:
            raise invalid("pageNumber must be >= 1 and pageSize 1..100")
        queues = [q for q in self.store.queues.values() if q.bucket == bucket]
        if wanted:
            queues = [q for q in queues if q.queue_id in wanted]
        if state != "All":
            queues = [q for q in queues if q.state == state]
        page = queues[(number - 1) * size : number * size]
        content: dict[str, Any] = {
            "RequestId": rid,
            "TotalCount": str(len(queues)),
            "PageNumber": str(number),
            "PageSize": str(size),
            "QueueList": [q.to_xml_dict() for q in page] or None,
        }
        missing = [q for q in wanted if q not in self.store.queues]
        if missing:
            content["NonExistPIDs"] = missing
        return Response(200, xmlio.document("Response", content))

    def _update_queue(self, call: Call) -> Response:
        req, bucket, rid = call.req, self._ci_bucket(call.target), call.rid
        queue_id = req.path[len("/asrqueue/") :]
        if not re.fullmatch(r"p[0-9a-zA-Z]{1,64}", queue_id):
            raise invalid(f"invalid queue id {queue_id!r}")
        root, body = _parse_body(req)
        if root != "Request" or not isinstance(body, dict):
            raise invalid("root element must be Request")
        t = now()
        queue = self.store.queue(bucket, queue_id, t)
        apply_queue_update(queue, body, t)
        self.store.save_queue(queue)
        if queue.state == "Active":
            for job in self.store.paused(queue.queue_id):
                job.set_state("Submitted", t)
                self.store.save(job)
                self.runner.start(job)
        content = {"RequestId": rid, "Queue": queue.to_xml_dict()}
        return Response(200, xmlio.document("Response", content))

    def _create_template(self, call: Call) -> Response:
        bucket = self._ci_bucket(call.target)
        root, body = _parse_body(call.req)
        name, params = parse_template(root, body)
        template = Template("t1" + uuid.uuid4().hex, name, bucket, params, now())
        self.store.add_template(template)
        content = {"RequestId": call.rid, "Template": template.to_xml_dict()}
        return Response(200, xmlio.document("Response", content))

    # ---- COS objects -----------------------------------------------------------------------

    def _object(self, call: Call) -> Response:
        req, target = call.req, call.target
        bucket, key = target.bucket, req.path.lstrip("/")
        if bucket is not None and not key and req.method == "GET":
            return self._list_objects(req, bucket)
        if bucket is None:
            # Path-style fallback (/<bucket>/<key>) when the Host does not name the bucket.
            bucket, _, key = key.partition("/")
        try:
            if req.method == "PUT":
                etag = self.objects.put(bucket, key, req.body)
                return Response(200, headers=[("ETag", f'"{etag}"')])
            if req.method in ("GET", "HEAD"):
                obj = self.objects.get(bucket, key)
                if obj is None:
                    raise ApiError(404, "NoSuchKey", "The specified key does not exist.")
                headers = [
                    ("ETag", f'"{obj.etag}"'),
                    ("Last-Modified", formatdate(obj.mtime, usegmt=True)),
                ]
                return Response(
                    200, obj.data, headers=headers, content_type="application/octet-stream"
                )
            if req.method == "DELETE":
                self.objects.delete(bucket, key)
                return Response(204)
        except BadKey as exc:
            raise invalid(str(exc)) from exc
        raise _not_allowed(req.method)

    def _list_objects(self, req: Request, bucket: str) -> Response:
        """GET Bucket (list objects, version 1): keys in byte order, ``marker`` paging."""
        q = req.query
        try:
            max_keys = int(q.get("max-keys") or "1000")
        except ValueError as exc:
            raise invalid("max-keys must be an integer") from exc
        if not 1 <= max_keys <= 1000:
            raise invalid("max-keys must be between 1 and 1000")
        prefix, marker, delimiter = q.get("prefix", ""), q.get("marker", ""), q.get("delimiter", "")
        try:
            listing = self.objects.list(bucket, prefix, marker, delimiter, max_keys)
        except BadKey as exc:
            raise invalid(str(exc)) from exc
        self.stats["object_list_pages"] += 1
        content: dict[str, Any] = {
            "Name": bucket,
            "EncodingType": None,
            "Prefix": prefix or None,
            "Marker": marker or None,
            "MaxKeys": str(max_keys),
            "Delimiter": delimiter or None,
            "IsTruncated": "true" if listing.truncated else "false",
        }
        if listing.truncated:
            content["NextMarker"] = listing.next_marker
        if listing.objects:
            content["Contents"] = [
                {
                    "Key": o.key,
                    "LastModified": datetime.fromtimestamp(o.mtime, UTC).strftime(
                        "%Y-%m-%dT%H:%M:%S.000Z"
                    ),
                    "ETag": f'"{o.etag}"',
                    "Size": str(o.size),
                    "Owner": {"ID": "1250000000", "DisplayName": "1250000000"},
                    "StorageClass": "STANDARD",
                }
                for o in listing.objects
            ]
        if listing.prefixes:
            content["CommonPrefixes"] = [{"Prefix": p} for p in listing.prefixes]
        return Response(200, xmlio.document("ListBucketResult", content))

    # ---- admin -----------------------------------------------------------------------------

    def _healthz(self, call: Call) -> Response:
        return _json(200, {"status": "ok", "jobs": len(self.store)})

    def _faults(self, call: Call) -> Response:
        return _json(200, self._fault_state())

    def _set_faults(self, call: Call) -> Response:
        try:
            values = json.loads(call.req.body or b"{}")
            if not isinstance(values, dict):
                raise ValueError("expected a JSON object")
            reset = bool(values.pop("reset_counts", False))
            self.faults.config.update(values)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        if reset:
            self.faults.counts.clear()
        return _json(200, self._fault_state())

    def _credentials(self, call: Call) -> Response:
        return _json(200, self.verifier.keys.state())

    def _set_credentials(self, call: Call) -> Response:
        """``{"expire": [ids], "tokens": {id: token}, "issuer_down": bool, "ttl_s": s}``"""
        try:
            values = json.loads(call.req.body or b"{}")
            if not isinstance(values, dict):
                raise ValueError("expected a JSON object")
            self.verifier.keys.update(values)
        except (ValueError, TypeError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, self.verifier.keys.state())

    def _cmq_state(self, call: Call) -> Response:
        assert self.cmq is not None
        return _json(200, self.cmq.state())

    def _declare(self, call: Call) -> Response:
        """``PUT /-/cmq/queues/<region>/<name>`` or ``/-/cmq/topics/<region>/<name>``: declare at
        run time, as the console would (body: the flag's attributes as JSON, topics ``queues``)."""
        assert self.cmq is not None
        req, parts = call.req, call.req.path.split("/")[3:]
        if len(parts) != 3 or parts[0] not in ("queues", "topics"):
            return _json(404, {"error": "use /-/cmq/queues/<region>/<name> or /-/cmq/topics/..."})
        kind, region, name = parts
        try:
            values = json.loads(req.body or b"{}")
            if not isinstance(values, dict):
                raise ValueError("expected a JSON object")
            if kind == "queues":
                self.cmq.declare_queue(queue_spec(region, name, **values))
            else:
                queues = values.pop("queues", None)
                if not isinstance(queues, list) or not all(isinstance(q, str) for q in queues):
                    raise ValueError("queues must be a list of queue names")
                self.cmq.declare_topic(topic_spec(region, name, queues, **values))
        except (ValueError, TypeError) as exc:  # TypeError: "region"/"name" given in the body
            return _json(400, {"error": str(exc)})
        return _json(200, self.cmq.state())

    def _fault_state(self) -> dict[str, Any]:
        return {**self.faults.snapshot(), "stats": dict(sorted(self.stats.items()))}


def _answer(status: int, error: str) -> Endpoint:
    """An admin route that always gives one JSON error (wrong method, unknown path)."""

    def endpoint(app: App, call: Call) -> Response:
        return _json(status, {"error": error})

    return endpoint


def _method_not_allowed(app: App, call: Call) -> Response:
    raise _not_allowed(call.req.method)


# Rows of one path stay adjacent; a "*" row after a path's methods answers every other method.
ADMIN_ROUTES: tuple[Route[Endpoint], ...] = (
    Route("GET", "/-/healthz", App._healthz),
    Route("GET", "/-/faults", App._faults),
    Route("PUT", "/-/faults", App._set_faults),
    Route("*", "/-/faults", _answer(405, "use GET or PUT")),
    Route("GET", "/-/credentials", App._credentials),
    Route("PUT", "/-/credentials", App._set_credentials),
    Route("*", "/-/credentials", _answer(405, "use GET or PUT")),
)
CMQ_ADMIN_ROUTES: tuple[Route[Endpoint], ...] = (
    Route("GET", "/-/cmq", App._cmq_state),
    Route("PUT", "/-/cmq/{rest:.*}", App._declare),
    Route("*", "/-/cmq/{rest:.*}", _answer(405, "use PUT")),
)
API_ROUTES: tuple[Route[Endpoint], ...] = (
    Route("*", "/-/{rest:.*}", _answer(404, "unknown admin path")),
    Route("POST", "/asr_jobs", App._create),
    Route("GET", "/asr_jobs", App._list),
    Route("*", "/asr_jobs", _method_not_allowed),
    Route("GET", "/asr_jobs/{ids:.*}", App._get),
    Route("*", "/asr_jobs/{ids:.*}", _method_not_allowed),
    Route("GET", "/asrqueue", App._queues),
    Route("*", "/asrqueue", _method_not_allowed),
    Route("PUT", "/asrqueue/{queue:.*}", App._update_queue),
    Route("*", "/asrqueue/{queue:.*}", _method_not_allowed),
    Route("POST", "/template", App._create_template),
    Route("*", "/template", _method_not_allowed),
    Route("*", "/{key:.*}", App._object),  # COS objects: anything else
)


def _json(status: int, doc: dict[str, Any]) -> Response:
    return Response(status, json.dumps(doc).encode(), content_type="application/json")


def _not_allowed(method: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", f"The specified method {method} is not allowed.")


def _parse_body(req: Request) -> tuple[str, Any]:
    if not req.body.strip():
        raise ApiError(400, "MalformedXML", MALFORMED)
    try:
        return xmlio.parse(req.body)
    except xmlio.MalformedXML as exc:
        raise ApiError(400, "MalformedXML", MALFORMED) from exc
