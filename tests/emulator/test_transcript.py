"""The deterministic recogniser's time line and text formats (unit level)."""

from __future__ import annotations

import re

from asrd.emulator import transcript

LINE = re.compile(r"^\[(\d+):(\d+\.\d{3}),(\d+):(\d+\.\d{3})\] (.+)$")


def test_result_lines_match_segments_and_audio_time() -> None:
    tr = transcript.build([f"sentence number {i} is here." for i in range(40)])
    text = transcript.result_text(tr)
    lines = text.split("\n")
    assert len(lines) == 40
    for line, seg in zip(lines, tr.segments, strict=True):
        m = LINE.match(line)
        assert m, line
        start = int(m[1]) * 60000 + round(float(m[2]) * 1000)
        end = int(m[3]) * 60000 + round(float(m[4]) * 1000)
        assert (start, end, m[5]) == (seg.start_ms, seg.end_ms, seg.text)
    assert lines[-1].startswith("[1:")  # minutes count past the first one
    assert float(transcript.audio_time(tr)) * 1000 == tr.audio_ms > tr.segments[-1].end_ms


def test_detail_words_are_relative_to_the_sentence() -> None:
    tr = transcript.build(["", "你好\uff0c世界。", "  ", "two words"])
    assert [s.text for s in tr.segments] == ["你好\uff0c世界。", "two words"]
    detail = transcript.result_detail(tr)
    assert [w["Word"] for w in detail[0]["Words"]] == ["你", "好\uff0c", "世", "界。"]
    assert detail[1]["Words"][0]["OffsetStartMs"] == "0"
    assert detail[1]["StartMs"] == str(tr.segments[1].start_ms)
    assert detail[1]["WordsNum"] == "2"
    assert transcript.build(["Hello, world!"], drop_punctuation=True).segments[0].text == (
        "Hello world"
    )


def test_srt_and_name_fallback() -> None:
    tr = transcript.build(transcript.sentences_from_name("in/meeting_2024-01-02.mp3"))
    assert tr.segments[0].text == "This is the recording meeting 2024 01 02."
    srt = transcript.srt_text(tr)
    assert srt.startswith("1\n00:00:00,160 --> 00:00:0")
    assert "\n2\n" in srt
    assert transcript.result_text(transcript.build([])) == ""
