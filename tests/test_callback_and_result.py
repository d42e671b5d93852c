"""Pure logic: callback bodies → events, JobsDetail → records, records → txt/srt/vtt."""

from __future__ import annotations

import json

import pytest

from asrd import callback, formats
from asrd.result import InvalidResult, normalise, parse_result_text

JOB = "s886c0a7c2a6611ed847a618901112dcf"

XML_CALLBACK = f"""<Response><EventName>TaskFinish</EventName><JobsDetail>
<State>Success</State><Tag>SpeechRecognition</Tag><Code>Success</Code><Message/>
<JobId>{JOB}</JobId></JobsDetail></Response>""".encode()


def detail(**result: object) -> dict[str, object]:
    """A finished job as ``ci_get_asr_job`` returns it (strings, None for empty)."""
    return {
        "Code": "Success",
        "CreationTime": "2020-08-20T17:43:01+0800",
        "StartTime": "2020-08-20T17:43:02+0800",
        "EndTime": "2020-08-20T17:43:25+0800",
        "Input": {"BucketId": "b-1250000000", "Object": "16k.mp3", "Region": "ap-chongqing"},
        "JobId": JOB,
        "Message": None,
        "Operation": {
            "Output": {"Bucket": "b-1250000000", "Object": "music.txt", "Region": "ap-chongqing"},
            "UserData": "order-1",
            "SpeechRecognitionResult": {"AudioTime": "19.7124", **result},
        },
        "QueueId": "p5275b560c7fd498db9a36e5e202827b6",
        "State": "Success",
        "Tag": "SpeechRecognition",
    }


def test_xml_and_json_callbacks_give_the_same_event() -> None:
    as_json = json.dumps(
        {
            "EventName": "TaskFinish",
            "JobsDetail": [{"JobId": JOB, "Tag": "SpeechRecognition", "State": "Success"}],
        }
    ).encode()
    x, j = callback.parse(XML_CALLBACK), callback.parse(as_json)
    assert (x.job_id, x.state, x.body_format) == (JOB, "Success", "xml")
    assert (j.job_id, j.state, j.body_format) == (JOB, "Success", "json")
    assert x.is_asr_task_finish and j.is_asr_task_finish


def test_other_events_and_job_types_are_not_ours() -> None:
    wf = callback.parse(b'{"EventName":"WorkflowFinish","WorkflowExecution":{}}')
    assert not wf.is_asr_task_finish
    other = callback.parse(XML_CALLBACK.replace(b"SpeechRecognition", b"Transcode"))
    assert not other.is_asr_task_finish


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"hello", "neither XML nor JSON"),
        (b"<Response><EventName>TaskFinish</EventName>", "not well-formed"),
        (XML_CALLBACK.replace(JOB.encode(), b"../../etc/passwd"), "not a CI job id"),
        (b'<!DOCTYPE r [<!ENTITY x "y">]><Response>&x;</Response>', "refused"),
        (b"[" * 50_000 + b"]" * 50_000, "nested"),
        (b'{"EventName":"TaskFinish"}', "no JobsDetail"),
        (b"{" + b" " * 100 + b"}", "no JobsDetail"),
    ],
)
def test_bad_bodies_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(callback.BadMessage, match=reason):
        callback.parse(body)


def test_oversized_body_refused_before_parsing() -> None:
    with pytest.raises(callback.BadMessage, match="exceeds"):
        callback.parse(b"<" + b"x" * 2048, max_bytes=1024)


def test_result_text_minutes_colon_seconds() -> None:
    segs = parse_result_text("[0:0.160,1:0.640]  Test test\n[1:0.640,1:2.000,1] two")
    assert [(s.start_ms, s.end_ms, s.text, s.speaker) for s in segs] == [
        (160, 60640, "Test test", None),
        (60640, 62000, "two", "1"),
    ]


def test_normalise_from_result_text() -> None:
    rec = normalise(detail(Result="[0:3.320,0:19.712] 悯农", ResultDetail=None))
    d = rec.to_dict()
    assert d["schema_version"] == 1
    assert d["created_at"] == "2020-08-20T17:43:01+08:00"
    assert d["audio_time"] == pytest.approx(19.7124)
    assert d["segments"] == [{"start_ms": 3320, "end_ms": 19712, "text": "悯农"}]
    assert d["transcript"] == "悯农"
    assert d["user_data"] == "order-1"
    assert d["input"] == {"bucket": "b-1250000000", "region": "ap-chongqing", "object": "16k.mp3"}


def test_normalise_keeps_only_the_callers_user_data() -> None:
    """asrd's client token (in front of UserData) is not the caller's business."""

    def with_user_data(value: str) -> dict[str, object]:
        d = detail()
        d["Operation"] = {**d["Operation"], "UserData": value}  # type: ignore[dict-item]
        return d

    assert normalise(with_user_data("asrd:0123abcd order-1")).user_data == "order-1"
    assert normalise(with_user_data("asrd:0123abcd")).user_data is None
    assert normalise(with_user_data("asrd: not a token")).user_data == "asrd: not a token"


def test_normalise_prefers_result_detail_with_absolute_word_times() -> None:
    one = {
        "StartMs": "3320", "EndMs": "19712", "FinalSentence": "悯农", "SpeakerId": "0",
        "Words": [
            {"Word": "悯", "OffsetStartMs": "0", "OffsetEndMs": "2190"},
            {"Word": "农", "OffsetStartMs": "2190", "OffsetEndMs": "4000"},
        ],
    }  # fmt: skip
    rec = normalise(detail(Result="[0:3.320,0:19.712] 悯农", ResultDetail=one))
    [seg] = rec.to_dict()["segments"]
    assert seg["speaker"] == "0"
    assert seg["words"][1] == {"start_ms": 5510, "end_ms": 7320, "text": "农"}


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"JobId": "../x"}, "not a CI job id"),
        ({"State": "Exploded"}, "unknown State"),
        ({"CreationTime": "yesterday"}, "CI's format"),
        ({"Operation": "nope"}, "not a structure"),
    ],
)
def test_invalid_details(patch: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidResult, match=reason):
        normalise({**detail(Result=""), **patch})


def test_subtitle_formats() -> None:
    rec = normalise(detail(Result="[0:1.000,0:2.500] one\n[61:0.000,61:1.250] two"))
    assert formats.to_srt(rec).decode() == (
        "1\n00:00:01,000 --> 00:00:02,500\none\n\n2\n01:01:00,000 --> 01:01:01,250\ntwo\n"
    )
    assert formats.to_vtt(rec).decode().startswith("WEBVTT\n\n00:00:01.000 --> 00:00:02.500\none\n")
    assert formats.to_txt(rec) == b"one\ntwo\n"
    assert json.loads(formats.to_json(rec))["job_id"] == JOB


def test_stdout_sink_writes_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    from asrd.config import StdoutSinkSettings
    from asrd.sinks.stdout import StdoutSink

    sink = StdoutSink(StdoutSinkSettings(name="out", type="stdout"))
    sink.deliver(normalise(detail(Result="[0:1.000,0:2.000] 你好")))
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out)["transcript"] == "你好"


def test_what_ci_really_sends_json_wrapped_in_response_with_message_success() -> None:
    body = json.dumps(
        {
            "Response": {
                "EventName": "TaskFinish",
                "JobsDetail": [
                    {
                        "JobId": JOB,
                        "Tag": "SpeechRecognition",
                        "State": "Success",
                        "Message": "Success",
                    }
                ],
            }
        }
    ).encode()
    event = callback.parse(body)
    assert (event.job_id, event.state, event.is_asr_task_finish) == (JOB, "Success", True)


def test_workflow_triggered_job_and_workflow_finish() -> None:
    xml = XML_CALLBACK.replace(
        b"<State>Success</State>",
        b"<State>Success</State><Input><BucketId>b-1250000000</BucketId><Object>a.mp3</Object>"
        b"<CosHeaders><Key>Content-Type</Key><Value>audio/mpeg</Value></CosHeaders>"
        b"<CosHeaders><Key>Size</Key><Value>12</Value></CosHeaders></Input>"
        b"<Workflow><Name>asr_1</Name><RunId>r1</RunId><WorkflowId>w1</WorkflowId>"
        b"<WorkflowName>wf</WorkflowName></Workflow>",
    )
    event = callback.parse(xml)
    assert event.is_asr_task_finish and event.job_id == JOB
    d = detail(Result="[0:0.000,0:1.000] hi")
    d["Input"] = {**d["Input"], "CosHeaders": [{"Key": "Size", "Value": "12"}]}  # type: ignore[dict-item]
    d["Workflow"] = {"Name": "asr_1", "RunId": "r1", "WorkflowId": "w1", "WorkflowName": "wf"}
    record = normalise(d)
    assert record.input == {"bucket": "b-1250000000", "region": "ap-chongqing", "object": "16k.mp3"}
    assert record.raw["Workflow"]["RunId"] == "r1"
    finish = callback.parse(
        b"<Response><EventName>WorkflowFinish</EventName><WorkflowExecution><RunId>r1</RunId>"
        b"</WorkflowExecution></Response>"
    )
    assert finish.event_name == "WorkflowFinish" and not finish.is_asr_task_finish


def test_repeated_result_elements_are_joined_in_order() -> None:
    record = normalise(detail(Result=["[0:0.000,0:1.000] 第一句。", "[0:1.000,0:2.500] second"]))
    assert [s.text for s in record.segments] == ["第一句。", "second"]
    assert record.transcript == "第一句。\nsecond"
    assert [(s.start_ms, s.end_ms) for s in record.segments] == [(0, 1000), (1000, 2500)]
