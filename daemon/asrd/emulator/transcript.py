"""Deterministic "recognition": sentences → timed segments, words, Result text and SRT."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

WORD_MS = 320  # every word "takes" this long
GAP_MS = 240  # silence between sentences
LEAD_MS = 160  # silence before the first sentence
TAIL_MS = 500  # silence after the last one


@dataclass(frozen=True)
class Word:
    text: str
    start_ms: int  # relative to the sentence start, as the service reports it
    end_ms: int


@dataclass(frozen=True)
class Segment:
    text: str
    start_ms: int
    end_ms: int
    words: tuple[Word, ...]
    speaker: int = 0


@dataclass(frozen=True)
class Transcript:
    segments: tuple[Segment, ...]
    audio_ms: int


def sentences_from_name(name: str) -> list[str]:
    """What a job "hears" when no sidecar exists: two sentences derived from the object name."""
    stem = PurePosixPath(name.rstrip("/") or "audio").stem or "audio"
    words = [w for w in re.split(r"[^0-9A-Za-z\u4e00-\u9fff]+", stem) if w] or ["audio"]
    return [f"This is the recording {' '.join(words)}.", "The emulator transcribed it."]


def _is_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _split_words(sentence: str) -> list[str]:
    # Spaced languages split on whitespace; CJK text has no spaces, one word per character
    # (punctuation attached to the previous character, as the engine reports it).
    if not _is_cjk(sentence) or " " in sentence.strip():
        return sentence.split()
    words: list[str] = []
    for ch in sentence:
        if ch.isspace():
            continue
        if words and unicodedata.category(ch).startswith("P"):
            words[-1] += ch
        else:
            words.append(ch)
    return words


def strip_punct(word: str) -> str:
    return "".join(ch for ch in word if not unicodedata.category(ch).startswith("P"))


def build(sentences: list[str], *, drop_punctuation: bool = False) -> Transcript:
    """Lay sentences out on a time line; empty lines are skipped."""
    segments: list[Segment] = []
    t = LEAD_MS
    for raw in sentences:
        words = _split_words(raw.strip())
        if drop_punctuation:
            words = [w for w in (strip_punct(w) for w in words) if w]
        if not words:
            continue
        timed = tuple(Word(w, i * WORD_MS, (i + 1) * WORD_MS - 40) for i, w in enumerate(words))
        sep = "" if _is_cjk(raw) and " " not in raw.strip() else " "
        end = t + timed[-1].end_ms
        segments.append(Segment(sep.join(words), t, end, timed))
        t = end + GAP_MS
    last = segments[-1].end_ms if segments else 0
    return Transcript(tuple(segments), last + TAIL_MS)


def _clock(ms: int) -> str:
    """``M:S.mmm`` as in docs/tencent-cloud.md §1.5 (minutes keep counting, no hours)."""
    return f"{ms // 60000}:{(ms % 60000) / 1000:.3f}"


def result_text(tr: Transcript) -> str:
    return "\n".join(f"[{_clock(s.start_ms)},{_clock(s.end_ms)}] {s.text}" for s in tr.segments)


def srt_text(tr: Transcript) -> str:
    def ts(ms: int) -> str:
        h, rest = divmod(ms, 3_600_000)
        m, rest = divmod(rest, 60_000)
        s, milli = divmod(rest, 1000)
        return f"{h:02d}:{m:02d}:{s:02d},{milli:03d}"

    blocks = [
        f"{i}\n{ts(s.start_ms)} --> {ts(s.end_ms)}\n{s.text}\n"
        for i, s in enumerate(tr.segments, start=1)
    ]
    return "\n".join(blocks)


def audio_time(tr: Transcript) -> str:
    """Seconds as the service prints them (``19.7124``), trailing zeros dropped."""
    return f"{tr.audio_ms / 1000:.4f}".rstrip("0").rstrip(".")


def result_detail(tr: Transcript) -> list[dict[str, Any]]:
    """``ResultDetail`` entries (one per sentence) with words, field names as in
    docs/tencent-cloud.md §1.5."""
    out: list[dict[str, Any]] = []
    for s in tr.segments:
        dur = max(s.end_ms - s.start_ms, 1)
        out.append(
            {
                "EndMs": str(s.end_ms),
                "FinalSentence": s.text,
                "SliceSentence": " ".join(w.text for w in s.words),
                "SpeakerId": str(s.speaker),
                "SpeechSpeed": f"{len(s.words) * 1000 / dur:.1f}",
                "StartMs": str(s.start_ms),
                "Words": [
                    {
                        "OffsetEndMs": str(w.end_ms),
                        "OffsetStartMs": str(w.start_ms),
                        "VoiceType": "0",
                        "Word": w.text,
                    }
                    for w in s.words
                ],
                "WordsNum": str(len(s.words)),
            }
        )
    return out
