"""A job created with ``FlashAsr=true`` is answered as Flash ASR: ``FlashResult`` with its
snake_case nodes (docs/tencent-cloud.md §1.5) in place of ``ResultDetail``, without any
``--shape``."""

from __future__ import annotations

from qcloud_cos import CosS3Client

from .helpers import BUCKET, REGION, unique, wait_state


def test_flash_jobs_get_a_flash_result(client: CosS3Client) -> None:
    key = f"in/{unique()}.wav"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"RIFF not really audio")
    client.put_object(
        Bucket=BUCKET, Key=f"{key}.transcript.txt", Body="第一句。\nSecond one.".encode()
    )
    job = client.ci_create_asr_job(
        Bucket=BUCKET,
        InputObject=key,
        OutputBucket=BUCKET,
        OutputRegion=REGION,
        OutputObject=key + ".txt",
        SpeechRecognition={"EngineModelType": "16k_zh", "FlashAsr": "true", "Format": "wav"},
    )["JobsDetail"]
    done = wait_state(client, str(job["JobId"]))
    result = done["Operation"]["SpeechRecognitionResult"]
    assert "ResultDetail" not in result
    channel = result["FlashResult"]  # one channel: the SDK gives it as a dict
    assert channel["channel_id"] == "0"
    sentences = channel["sentence_list"]
    assert [s["text"] for s in sentences] == ["第一句。", "Second one."]
    first_word = sentences[1]["word_list"][0]
    # Flash times count from the audio start, not from the sentence start.
    assert int(first_word["start_time"]) == int(sentences[1]["start_time"])
