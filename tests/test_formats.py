"""SRT and WebVTT output read back by maintained parsers (``srt``, ``webvtt-py``): escaping,
multi-line and blank text, ``-->`` in text, times past an hour."""

from __future__ import annotations

import html
from dataclasses import replace
from datetime import timedelta

import pytest
import srt
import webvtt

from asrd import formats
from asrd.result import ResultRecord, Segment, normalise

from .test_callback_and_result import detail

HOUR = 3_600_000
SEGMENTS = [
    Segment(0, 1_500, "今天天气很好。\n我们去公园散步吧。"),  # Chinese, two lines
    Segment(1_500, 2_000, ""),  # blank: no cue
    Segment(2_000, 3_000, "  \n\n"),  # only blank lines: no cue
    Segment(3_000, 4_000, "A --> B & <b>not bold</b> &amp; 1 < 2 > 0"),
    Segment(4_000, 5_000, "第一段\n\n第二段在空行之后\n"),  # a blank line inside the text
    Segment(HOUR + 61_001, 2 * HOUR + 5_999, "过了一个小时 --> still here"),
    Segment(100 * HOUR, 100 * HOUR + 1, "a hundred hours"),
]
# What a reader shows: every line kept except blank ones, in order.
EXPECTED = [
    (0, 1_500, "今天天气很好。\n我们去公园散步吧。"),
    (3_000, 4_000, "A --> B & <b>not bold</b> &amp; 1 < 2 > 0"),
    (4_000, 5_000, "第一段\n第二段在空行之后"),
    (HOUR + 61_001, 2 * HOUR + 5_999, "过了一个小时 --> still here"),
    (100 * HOUR, 100 * HOUR + 1, "a hundred hours"),
]


@pytest.fixture
def record() -> ResultRecord:
    return replace(normalise(detail(Result="")), segments=SEGMENTS)


def ms(delta: timedelta) -> int:
    return round(delta.total_seconds() * 1000)


def vtt_ms(clock: str) -> int:
    h, m, rest = clock.split(":")
    s, milli = rest.split(".")
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(milli)


def test_srt_reads_back(record: ResultRecord) -> None:
    text = formats.to_srt(record).decode()
    subs = list(srt.parse(text))
    got = [(ms(s.start), ms(s.end), html.unescape(s.content)) for s in subs]
    assert got == EXPECTED
    assert [s.index for s in subs] == list(range(1, len(EXPECTED) + 1))
    # Nothing a player would take for markup or a timing line is left in the payload.
    for s in subs:
        assert "-->" not in s.content and "<" not in s.content


def test_vtt_reads_back(record: ResultRecord) -> None:
    text = formats.to_vtt(record).decode()
    captions = list(webvtt.from_string(text))
    got = [(vtt_ms(c.start), vtt_ms(c.end), html.unescape(c.text)) for c in captions]
    assert got == EXPECTED
    for c in captions:
        assert "-->" not in c.text and "<" not in c.text
        # A bare & would begin a character reference: every & starts a known one.
        assert all(part.startswith(("amp;", "lt;", "gt;")) for part in c.text.split("&")[1:])


def test_a_record_without_cues_is_still_a_valid_file(record: ResultRecord) -> None:
    empty = replace(record, segments=[Segment(0, 1, ""), Segment(1, 2, "\n \n")])
    assert list(srt.parse(formats.to_srt(empty).decode())) == []
    assert list(webvtt.from_string(formats.to_vtt(empty).decode())) == []
