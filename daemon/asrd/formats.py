"""Plain-text renderings of a result record: txt, srt and vtt (json is the record itself)."""

from __future__ import annotations

import html
import json

from .result import ResultRecord


def _clock(ms: int, sep: str) -> str:
    hours, rest = divmod(max(ms, 0), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{sep}{millis:03d}"


def cue_text(text: str) -> str:
    """A segment's text as a cue payload (SRT and WebVTT alike).

    ``&``, ``<`` and ``>`` become character references: a ``<`` would open a tag, a bare ``&``
    starts one in WebVTT, and ``-->`` must never appear in a cue. Blank lines are dropped,
    since a blank line ends the cue. ``html.unescape`` gives the text back.
    """
    lines = (html.escape(line.strip(), quote=False) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _cues(record: ResultRecord) -> list[tuple[int, int, str]]:
    cues = ((s.start_ms, s.end_ms, cue_text(s.text)) for s in record.segments)
    return [cue for cue in cues if cue[2]]


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
        f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n"
        for i, (start, end, text) in enumerate(_cues(record), start=1)
    ]
    return "\n".join(blocks).encode()


def to_vtt(record: ResultRecord) -> bytes:
    blocks = [
        f"{_clock(start, '.')} --> {_clock(end, '.')}\n{text}\n"
        for start, end, text in _cues(record)
    ]
    return ("WEBVTT\n\n" + "\n".join(blocks)).encode()


RENDERERS = {"json": to_json, "txt": to_txt, "srt": to_srt, "vtt": to_vtt}


def render(record: ResultRecord, fmt: str) -> bytes:
    return RENDERERS[fmt](record)
