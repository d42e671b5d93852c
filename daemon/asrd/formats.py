"""Plain-text renderings of a result record: txt, srt and vtt (json is the record itself)."""

from __future__ import annotations

import json

from .result import ResultRecord, Segment


def _clock(ms: int, sep: str) -> str:
    hours, rest = divmod(max(ms, 0), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{sep}{millis:03d}"


def _cues(segments: list[Segment]) -> list[Segment]:
    return [s for s in segments if s.text]


def to_json(record: ResultRecord) -> bytes:
    """The record as one line of compact UTF-8 JSON, the same bytes for every sink.

    Compact on purpose: with ``indent`` the json module falls back to its pure-Python encoder,
    several times slower on a full JobsDetail (use ``jq`` to read the files).
    """
    body = json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":"))
    return body.encode() + b"\n"


def to_txt(record: ResultRecord) -> bytes:
    return (record.transcript + "\n").encode() if record.transcript else b""


def to_srt(record: ResultRecord) -> bytes:
    blocks = [
        f"{i}\n{_clock(s.start_ms, ',')} --> {_clock(s.end_ms, ',')}\n{s.text}\n"
        for i, s in enumerate(_cues(record.segments), start=1)
    ]
    return "\n".join(blocks).encode()


def to_vtt(record: ResultRecord) -> bytes:
    blocks = [
        f"{_clock(s.start_ms, '.')} --> {_clock(s.end_ms, '.')}\n{s.text}\n"
        for s in _cues(record.segments)
    ]
    return ("WEBVTT\n\n" + "\n".join(blocks)).encode()


RENDERERS = {"json": to_json, "txt": to_txt, "srt": to_srt, "vtt": to_vtt}


def render(record: ResultRecord, fmt: str) -> bytes:
    return RENDERERS[fmt](record)
