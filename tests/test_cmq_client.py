"""Pure logic of asrd's CMQ client and URL receiver: the string to sign (a worked
example), and unwrapping a CMQ topic's HTTP push envelope. The client against a CMQ server is
tested end to end in test_intake.py."""

from __future__ import annotations

import json
import re

from tencentcloud.common.sign import Sign

from asrd.cmq import string_to_sign
from asrd.config import CMQ_NAME
from asrd.intake.url import unwrap_push

# docs/tencent-cloud.md §3.2: computed with the official SDK's Sign.make, cross-checked with hmac.
PARAMS = {
    "Action": "ReceiveMessage",
    "Nonce": "12345",
    "RequestClient": "SDK_Python_1.3",
    "SecretId": "AKIDexample",
    "SignatureMethod": "HmacSHA1",
    "Timestamp": "1700000000",
    "pollingWaitSeconds": "10",
    "queueName": "ci-callback",
}


def test_string_to_sign_matches_the_reference_vector() -> None:
    s = string_to_sign("post", "gz.mqadapter.cmq.tencentyun.com", "/v2/index.php", PARAMS)
    assert s == (
        "POSTgz.mqadapter.cmq.tencentyun.com/v2/index.php?Action=ReceiveMessage&Nonce=12345"
        "&RequestClient=SDK_Python_1.3&SecretId=AKIDexample&SignatureMethod=HmacSHA1"
        "&Timestamp=1700000000&pollingWaitSeconds=10&queueName=ci-callback"
    )
    assert Sign.sign("secretExample", s, "HmacSHA1") == "Ll/dBYY4IIu2rBsGDy50deNAmdY="
    sha256 = string_to_sign(
        "POST",
        "gz.mqadapter.cmq.tencentyun.com",
        "/v2/index.php",
        {**PARAMS, "SignatureMethod": "HmacSHA256"},
    )
    assert Sign.sign("secretExample", sha256, "HmacSHA256") == (
        "4P/kIlI9/8v/aGntWRVocXQ9xjwYwx+pfz1t683ijlQ="
    )


def test_array_keys_sign_with_dots_and_raw_values() -> None:
    s = string_to_sign("POST", "h:9", "/", {"receiptHandle_1": "a b&c", "Action": "X"})
    assert s == "POSTh:9/?Action=X&receiptHandle.1=a b&c"


def test_queue_name_rule() -> None:
    assert re.fullmatch(CMQ_NAME, "asr-callbacks")
    assert re.fullmatch(CMQ_NAME, "a" * 64)
    for bad in ("", "1abc", "a_b", "a" * 65, "a.b"):
        assert not re.fullmatch(CMQ_NAME, bad)


def test_push_envelope_is_unwrapped_and_raw_bodies_pass() -> None:
    inner = "<Response><EventName>TaskFinish</EventName></Response>"
    envelope = {
        "TopicOwner": 100015036,
        "topicName": "asr",
        "subscriptionName": "s",
        "msgId": "1",
        "msgBody": inner,
        "publishTime": 11203432,
    }
    assert unwrap_push(json.dumps(envelope).encode()) == inner.encode()
    raw_json = json.dumps({"EventName": "TaskFinish", "JobsDetail": {"msgBody": "x"}}).encode()
    assert unwrap_push(raw_json) == raw_json
    assert unwrap_push(inner.encode()) == inner.encode()
    assert unwrap_push(b"{not json") == b"{not json"
