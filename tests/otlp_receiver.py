"""A small OTLP/HTTP trace receiver for the tests and the benchmark: ``POST /v1/traces`` with an
``ExportTraceServiceRequest`` (protobuf, decoded with opentelemetry-proto), the spans kept in
memory as plain dicts; and a waterfall of one trace as SVG (written by hand: a few rectangles need
no plotting library)."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass
class Span:
    name: str
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace id, span id)
    error: bool


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    return getattr(v, kind) if kind else None


def decode(body: bytes) -> list[Span]:
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        res = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    Span(
                        s.name,
                        str(res.get("service.name", "")),
                        s.trace_id.hex(),
                        s.span_id.hex(),
                        s.parent_span_id.hex(),
                        s.start_time_unix_nano,
                        s.end_time_unix_nano,
                        {a.key: _value(a.value) for a in s.attributes},
                        [(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                        s.status.code == 2,  # STATUS_CODE_ERROR
                    )
                )
    return out


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    spans: list[Span] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def snapshot(self) -> list[Span]:
        with self.lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start(keep: bool = True) -> Receiver:
    """A receiver on a free port, serving on a thread (``keep``: False decodes and drops, for
    the benchmark)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            spans = decode(body)
            with receiver.lock:
                receiver.requests += 1
                if keep:
                    receiver.spans.extend(spans)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


def waterfall_svg(spans: list[Span], title: str) -> str:
    """One trace as a waterfall: a row per span, parents before children, bars on a time axis
    (linked spans from another trace drawn hatched)."""
    by_id = {s.span_id: s for s in spans}
    trace = spans[0].trace_id if spans else ""
    roots = [s for s in spans if s.parent_id not in by_id]
    rows: list[tuple[int, Span]] = []

    def walk(span: Span, depth: int) -> None:
        rows.append((depth, span))
        for child in sorted(
            (s for s in spans if s.parent_id == span.span_id), key=lambda s: s.start_ns
        ):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda s: (s.trace_id != trace, s.start_ns)):
        walk(root, 0)
    t0 = min(s.start_ns for s in spans)
    t1 = max(s.end_ns for s in spans)
    width, label_w, row_h, top = 960, 330, 22, 48
    plot_w = width - label_w - 20
    scale = plot_w / max(t1 - t0, 1)
    height = top + row_h * len(rows) + 30
    colours = {"asrd-submit": "#4e79a7", "asrd-run": "#59a14f"}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse">'
        '<path d="M0,6 L6,0" stroke="#888" stroke-width="1"/></pattern></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<text x="10" y="38" fill="#555">trace {trace} · {(t1 - t0) / 1e9:.2f} s · '
        "blue: asrd submit, green: asrd run, hatched: linked from another trace, "
        "red edge: error</text>",
    ]
    for i, (depth, s) in enumerate(rows):
        y = top + i * row_h
        x = label_w + (s.start_ns - t0) * scale
        w = max((s.end_ns - s.start_ns) * scale, 1.5)
        fill = "url(#hatch)" if s.trace_id != trace else colours.get(s.service, "#f28e2b")
        stroke = ' stroke="#e15759" stroke-width="2"' if s.error else ""
        extra = s.attributes.get("asrd.sink") or s.attributes.get("asrd.attempt") or ""
        label = f"{s.name}" + (f" ({extra})" if extra and s.name == "pulsar.consume" else "")
        ms = (s.end_ns - s.start_ns) / 1e6
        out.append(
            f'<text x="{10 + depth * 14}" y="{y + 15}">{escape(label)}</text>'
            f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{fill}"{stroke}/>'
            f'<text x="{min(x + w + 4, width - 70):.1f}" y="{y + 15}" fill="#555">'
            f"{ms:.1f} ms</text>"
        )
    out.append("</svg>")
    return "\n".join(out)
