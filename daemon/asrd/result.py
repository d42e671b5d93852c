"""CI ``JobsDetail`` (as the SDK returns it) → the normalised, versioned result record.

The SDK hands back strings, ``None`` for empty elements, and a dict or a list depending on how
many times an element repeated; everything here accepts both. A detail that cannot be made
into a record raises ``InvalidResult`` (permanent: retrying will not change CI's answer).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from . import clienttoken
from .vocabulary import BadMessage, valid_job_id

SCHEMA_VERSION = 1
TERMINAL_STATES = frozenset({"Success", "Failed", "Cancel"})
KNOWN_STATES = TERMINAL_STATES | {"Submitted", "Running", "Pause"}

# [m:s.mmm,m:s.mmm] text — minutes:seconds from the audio start; an optional third field is a
# speaker id (seen from the raw ASR engine, UNCONFIRMED for CI).
_CI_TIME = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})T(?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})"
    r"(?P<frac>\.\d{1,6})?(?P<off>Z|[+-]\d{2}:?\d{2})"
)
_LINE = re.compile(r"^\[(\d+):(\d+(?:\.\d+)?),(\d+):(\d+(?:\.\d+)?)(?:,(\d+))?\]\s*(.*)$")


class InvalidResult(Exception):
    """CI's answer cannot be turned into a record."""


@dataclass(frozen=True)
class Word:
    start_ms: int
    end_ms: int
    text: str


@dataclass(frozen=True)
class Segment:
    start_ms: int
    end_ms: int
    text: str
    speaker: str | None = None
    words: list[Word] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"start_ms": self.start_ms, "end_ms": self.end_ms, "text": self.text}
        if self.speaker is not None:
            out["speaker"] = self.speaker
        if self.words is not None:
            out["words"] = [asdict(w) for w in self.words]
        return out


@dataclass(frozen=True)
class ResultRecord:
    job_id: str
    state: str
    code: str
    message: str
    tag: str
    queue_id: str
    input: dict[str, str]
    output: dict[str, str]
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    audio_time: float | None
    transcript: str
    segments: list[Segment]
    user_data: str | None
    raw: dict[str, Any]
    delivered_at: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def client_token(self) -> str | None:
        """The client token ``asrd submit`` put in the job's UserData (None if not asrd's)."""
        operation = self.raw.get("Operation")
        user_data = operation.get("UserData") if isinstance(operation, dict) else None
        token, _ = clienttoken.split(user_data if isinstance(user_data, str) else None)
        return token

    @property
    def canary(self) -> bool:
        """A job of `asrd check --canary` (its client token says so): for no sink."""
        return clienttoken.is_canary(self.client_token)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form. ``raw`` is shared, not copied (``asdict`` would deep-copy it)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["segments"] = [s.to_dict() for s in self.segments]
        # Field order: the schema version first, the raw answer last, for people reading files.
        return {"schema_version": data.pop("schema_version"), **data, "raw": data.pop("raw")}


def engine_of(record: ResultRecord) -> str:
    """The engine model the job ran with (``16k_zh``...), as CI echoes its parameters; "" when
    CI does not say (a job made from a template)."""
    operation = record.raw.get("Operation")
    recognition = operation.get("SpeechRecognition") if isinstance(operation, dict) else None
    engine = recognition.get("EngineModelType") if isinstance(recognition, dict) else None
    return engine if isinstance(engine, str) else ""


def as_list(value: Any) -> list[Any]:
    """The SDK gives one repeated element as a dict and several as a list; ``None`` when empty."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str | int | float):
        return str(value)
    raise InvalidResult(f"expected text, got {type(value).__name__}")


def _int(value: Any, what: str) -> int:
    try:
        return int(float(_str(value)))
    except ValueError:
        raise InvalidResult(f"{what} {value!r} is not a number") from None


def ci_time(value: Any) -> str | None:
    """``2020-08-20T17:43:01+0800`` → ISO 8601 ``2020-08-20T17:43:01+08:00``; ``-`` → ``None``."""
    text = _str(value).strip()
    if not text or text == "-":
        return None
    # A regular expression and a range check instead of strptime, which is slow enough to show
    # in a profile of the daemon.
    m = _CI_TIME.fullmatch(text)
    if m is None:
        raise InvalidResult(f"time {text!r} is not in CI's format")
    try:
        datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"]))
    except ValueError:
        raise InvalidResult(f"time {text!r} is not a real date and time") from None
    offset = "Z" if m["off"] == "Z" else f"{m['off'][:3]}:{m['off'][-2:]}"
    return f"{m['y']}-{m['mo']}-{m['d']}T{m['h']}:{m['mi']}:{m['s']}{m['frac'] or ''}{offset}"


def _ms(minutes: str, seconds: str) -> int:
    return round((int(minutes) * 60 + float(seconds)) * 1000)


def parse_result_text(text: str) -> list[Segment]:
    """Segments from the ``Result`` text; lines without a timestamp continue the previous one."""
    segments: list[Segment] = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            segments.append(Segment(_ms(m[1], m[2]), _ms(m[3], m[4]), m[6].strip(), m[5] or None))
        elif line.strip() and segments:
            last = segments[-1]
            segments[-1] = Segment(
                last.start_ms, last.end_ms, f"{last.text} {line.strip()}", last.speaker
            )
    return segments


def _detail_segments(details: list[Any]) -> list[Segment]:
    segments = []
    for d in details:
        if not isinstance(d, dict):
            continue
        start = _int(d.get("StartMs"), "StartMs")
        words = [
            Word(
                start + _int(w.get("OffsetStartMs"), "OffsetStartMs"),
                start + _int(w.get("OffsetEndMs"), "OffsetEndMs"),
                _str(w.get("Word")),
            )
            for w in as_list(d.get("Words"))
            if isinstance(w, dict)
        ]
        speaker = d.get("SpeakerId")
        segments.append(
            Segment(
                start,
                _int(d.get("EndMs"), "EndMs"),
                _str(d.get("FinalSentence")),
                _str(speaker) if speaker is not None else None,
                words or None,
            )
        )
    return segments


def _flash_segments(results: list[Any]) -> list[Segment]:
    segments = []
    for channel in results:
        if not isinstance(channel, dict):
            continue
        for s in as_list(channel.get("sentence_list")):
            if not isinstance(s, dict):
                continue
            words = [
                Word(
                    _int(w.get("start_time"), "start_time"),
                    _int(w.get("end_time"), "end_time"),
                    _str(w.get("word")),
                )
                for w in as_list(s.get("word_list"))
                if isinstance(w, dict)
            ]
            speaker = s.get("speaker_id")
            segments.append(
                Segment(
                    _int(s.get("start_time"), "start_time"),
                    _int(s.get("end_time"), "end_time"),
                    _str(s.get("text")),
                    _str(speaker) if speaker is not None else None,
                    words or None,
                )
            )
    return sorted(segments, key=lambda seg: seg.start_ms)


def _location(node: Any, bucket_key: str) -> dict[str, str]:
    if not isinstance(node, dict):
        return {}
    out = {}
    for src, dst in (
        (bucket_key, "bucket"),
        ("Region", "region"),
        ("Object", "object"),
        ("Url", "url"),
    ):
        if node.get(src):
            out[dst] = _str(node[src])
    return out


def normalise(detail: dict[str, Any]) -> ResultRecord:
    """Build the record from one ``JobsDetail``. Raises ``InvalidResult``."""
    if not isinstance(detail, dict):
        raise InvalidResult("JobsDetail is not a structure")
    try:
        job_id = valid_job_id(detail.get("JobId"))
    except BadMessage as exc:
        raise InvalidResult(str(exc)) from None
    state = _str(detail.get("State"))
    if state not in KNOWN_STATES:
        raise InvalidResult(f"job {job_id} has unknown State {state!r}")
    operation = detail.get("Operation") or {}
    if not isinstance(operation, dict):
        raise InvalidResult(f"job {job_id} Operation is not a structure")
    result = operation.get("SpeechRecognitionResult") or {}
    if not isinstance(result, dict):
        raise InvalidResult(f"job {job_id} SpeechRecognitionResult is not a structure")
    # CI can repeat <Result> (several elements, or a list in JSON): one text, in order.
    text = "\n".join(_str(part) for part in as_list(result.get("Result")))
    segments = (
        _detail_segments(as_list(result.get("ResultDetail")))
        or _flash_segments(as_list(result.get("FlashResult")))
        or parse_result_text(text)
    )
    joined = "\n".join(s.text for s in segments if s.text)
    transcript = joined if segments else text.strip()
    audio = result.get("AudioTime")
    try:
        audio_time = float(_str(audio)) if audio not in (None, "") else None
    except ValueError:
        raise InvalidResult(f"job {job_id} AudioTime {audio!r} is not a number") from None
    raw_user_data = operation.get("UserData")
    # The client token asrd put in front (clienttoken.py) is asrd's, not the caller's.
    _, user_data = clienttoken.split(_str(raw_user_data) if raw_user_data is not None else None)
    return ResultRecord(
        job_id=job_id,
        state=state,
        code=_str(detail.get("Code")),
        message=_str(detail.get("Message")),
        tag=_str(detail.get("Tag")),
        queue_id=_str(detail.get("QueueId")),
        input=_location(detail.get("Input"), "BucketId"),
        output=_location(operation.get("Output"), "Bucket"),
        created_at=ci_time(detail.get("CreationTime")),
        started_at=ci_time(detail.get("StartTime")),
        ended_at=ci_time(detail.get("EndTime")),
        audio_time=audio_time,
        transcript=transcript,
        segments=segments,
        user_data=user_data,
        raw=detail,
    )


def stamped(record: ResultRecord) -> ResultRecord:
    """The record with ``delivered_at`` set to now (UTC)."""
    return replace(record, delivered_at=datetime.now(UTC).isoformat(timespec="milliseconds"))
