"""The CMQ endpoint on the wire: requests no SDK here sends (GET, no Content-Type on ``/``,
0-based or broken batch indices, STS tokens, region Host headers), signed by this test's own
implementation of docs/tencent-cloud.md §3.2."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from .conftest import Emulator
from .helpers import SECRET_ID, SECRET_KEY, TOKEN, TOKEN_ID, TOKEN_KEY, cmq_name

MakeEmulator = Callable[..., Emulator]


def signed(
    params: dict[str, Any],
    method: str,
    host: str,
    path: str,
    secret_id: str = SECRET_ID,
    secret_key: str = SECRET_KEY,
    sha256: bool = False,
) -> dict[str, str]:
    out = {k: str(v) for k, v in params.items()}
    out.setdefault("SecretId", secret_id)
    out.setdefault("Timestamp", str(int(time.time())))
    out.setdefault("Nonce", str(random.randint(1, 2**31)))
    if sha256:
        out["SignatureMethod"] = "HmacSHA256"
    text = method + host + path + "?" + "&".join(f"{k}={out[k]}" for k in sorted(out))
    digest = hashlib.sha256 if sha256 else hashlib.sha1
    mac = hmac.new(secret_key.encode(), text.encode(), digest).digest()
    out["Signature"] = base64.b64encode(mac).decode()
    return out


class Wire:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.host = f"127.0.0.1:{emu.cmq_port}"

    def call(
        self,
        params: dict[str, Any],
        method: str = "POST",
        path: str = "/v2/index.php",
        host: str | None = None,
        content_type: str | None = None,
        **sign: Any,
    ) -> dict[str, Any]:
        host = host or self.host
        form = urlencode(signed(params, method, host, path, **sign))
        url = f"{self.emu.cmq_endpoint}{path}"
        headers = {"Host": host}
        if method == "GET":
            r = requests.get(f"{url}?{form}", headers=headers, timeout=40)
        else:
            if content_type:
                headers["Content-Type"] = content_type
            r = requests.request(method, url, data=form.encode(), headers=headers, timeout=40)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/json"
        doc = dict(r.json())
        assert doc["requestId"] and isinstance(doc["code"], int)
        return doc


@pytest.fixture
def wire_queue(make_emulator: MakeEmulator) -> tuple[Wire, str]:
    q = cmq_name()
    return Wire(make_emulator("--cmq-queue", f"gz:{q}")), q


def test_get_query_string_and_post_without_content_type(wire_queue: tuple[Wire, str]) -> None:
    wire, q = wire_queue
    body = "a+b & c=d % 中文"
    sent = wire.call({"Action": "SendMessage", "queueName": q, "msgBody": body}, method="GET")
    assert sent["code"] == 0 and sent["message"] == "" and sent["msgId"]
    got = wire.call({"Action": "ReceiveMessage", "queueName": q}, path="/")  # no Content-Type
    assert got["code"] == 0 and got["msgBody"] == body and got["msgId"] == sent["msgId"]
    assert set(got) == {
        "code",
        "message",
        "requestId",
        "msgBody",
        "msgId",
        "receiptHandle",
        "enqueueTime",
        "firstDequeueTime",
        "nextVisibleTime",
        "dequeueCount",
    }
    deleted = wire.call(
        {"Action": "DeleteMessage", "queueName": q, "receiptHandle": got["receiptHandle"]},
        path="/",
        content_type="application/x-www-form-urlencoded",
    )
    assert deleted["code"] == 0
    empty = wire.call({"Action": "ReceiveMessage", "queueName": q}, method="GET", path="/")
    assert (empty["code"], empty["message"]) == (7000, "(10200)no message")
    # Extra parameters (SDK tags, the official SDK's UserpollingWaitSeconds) are ignored.
    extra = {"RequestClient": "SDK_GO_1.2.0", "clientRequestId": "x", "UserpollingWaitSeconds": 30}
    sent = wire.call({"Action": "SendMessage", "queueName": q, "msgBody": "x", **extra})
    assert sent["code"] == 0


def test_batch_index_rules(wire_queue: tuple[Wire, str]) -> None:
    wire, q = wire_queue

    def batch(indices: list[int] | range, action: str = "BatchSendMessage") -> dict[str, Any]:
        key = "msgBody" if action == "BatchSendMessage" else "receiptHandle"
        return wire.call({"Action": action, "queueName": q, **{f"{key}.{i}": "m" for i in indices}})

    zero_based = batch(range(16))  # GOSDK style
    assert zero_based["code"] == 0 and len(zero_based["msgList"]) == 16
    assert batch(range(1, 17))["code"] == 0  # PYSDK style
    for indices, module in (
        ([2, 3], 10380),
        ([1, 3], 10380),
        ([0, 2], 10380),
        (range(17), 10370),
        (range(1, 18), 10370),
        ([], 10390),
    ):
        doc = batch(list(indices))
        assert doc["code"] == 4000 and doc["message"].startswith(f"({module})"), (indices, doc)
    doc = wire.call({"Action": "BatchSendMessage", "queueName": q, "msgBody.01": "m"})
    assert doc["code"] == 4000 and doc["message"].startswith("(10310)")
    doc = batch([1, 3], "BatchDeleteMessage")
    assert doc["code"] == 4000 and doc["message"].startswith("(10380)")
    received = wire.call({"Action": "BatchReceiveMessage", "queueName": q, "numOfMsg": 16})
    handles = {
        f"receiptHandle.{i}": m["receiptHandle"] for i, m in enumerate(received["msgInfoList"])
    }
    deleted = wire.call({"Action": "BatchDeleteMessage", "queueName": q, **handles})
    assert deleted["code"] == 0


def test_parameter_errors(wire_queue: tuple[Wire, str]) -> None:
    wire, q = wire_queue
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"Action": "ChangeMessageVisibility", "queueName": q}, 4000, "(10280)"),
        ({"queueName": q}, 4000, "(10280)"),
        ({"Action": "SendMessage", "queueName": q}, 4000, "(10390)"),
        ({"Action": "SendMessage", "msgBody": "x"}, 4000, "(10390)"),
        ({"Action": "SendMessage", "queueName": q, "msgBody": ""}, 4000, "(10390)"),
        ({"Action": "SendMessage", "queueName": "9q", "msgBody": "x"}, 4000, "(10110)"),
        ({"Action": "SendMessage", "queueName": "q_1", "msgBody": "x"}, 4000, "(10110)"),
        ({"Action": "SendMessage", "queueName": "q" * 65, "msgBody": "x"}, 4000, "(10110)"),
        (
            {"Action": "SendMessage", "queueName": q, "msgBody": "x", "delaySeconds": "-1"},
            4000,
            "(10350)",
        ),
        (
            {"Action": "SendMessage", "queueName": q, "msgBody": "x", "delaySeconds": "soon"},
            4000,
            "(10360)",
        ),
        ({"Action": "ReceiveMessage", "queueName": q, "pollingWaitSeconds": 31}, 4000, "(10350)"),
        ({"Action": "BatchReceiveMessage", "queueName": q, "numOfMsg": 0}, 4000, "(10350)"),
        ({"Action": "BatchReceiveMessage", "queueName": q, "numOfMsg": 17}, 4000, "(10350)"),
        ({"Action": "BatchReceiveMessage", "queueName": q}, 4000, "(10390)"),
        ({"Action": "DeleteMessage", "queueName": q, "receiptHandle": "nope"}, 4430, ""),
        ({"Action": "SendMessage", "queueName": "q" + q, "msgBody": "x"}, 4440, ""),
    ]
    for params, code, prefix in cases:
        doc = wire.call(params)
        assert doc["code"] == code and doc["message"].startswith(prefix), (params, doc)
    # A repeated parameter is refused.
    form = urlencode(
        signed({"Action": "SendMessage", "queueName": q, "msgBody": "x"}, "POST", wire.host, "/")
    )
    r = requests.post(f"{wire.emu.cmq_endpoint}/", data=(form + "&msgBody=y").encode(), timeout=10)
    assert r.json()["code"] == 4000 and r.json()["message"].startswith("(10330)")
    # Only GET and POST; other paths are not the API.
    r = requests.put(f"{wire.emu.cmq_endpoint}/v2/index.php", data=form.encode(), timeout=10)
    assert r.status_code == 200 and r.json()["message"].startswith("(10410)")
    r = requests.post(f"{wire.emu.cmq_endpoint}/v3/index.php", data=form.encode(), timeout=10)
    assert r.status_code == 404 and r.json()["code"] == 4000


def test_authentication(wire_queue: tuple[Wire, str]) -> None:
    wire, q = wire_queue
    send = {"Action": "SendMessage", "queueName": q, "msgBody": "x"}
    assert wire.call(send, sha256=True)["code"] == 0
    assert wire.call(send, secret_key="wrong")["code"] == 4100
    assert wire.call(send, secret_key="wrong", sha256=True)["code"] == 4100
    assert wire.call({**send, "Timestamp": int(time.time()) - 301})["code"] == 4100
    assert wire.call({**send, "Timestamp": int(time.time()) + 301})["code"] == 4100
    assert wire.call({**send, "Timestamp": int(time.time()) - 250})["code"] == 0
    # The signature covers the path used and the Host header.
    form = signed(send, "POST", wire.host, "/v2/index.php")
    r = requests.post(f"{wire.emu.cmq_endpoint}/", data=urlencode(form).encode(), timeout=10)
    assert r.json()["code"] == 4100
    form = signed(send, "POST", "127.0.0.1", "/")  # host without the port
    r = requests.post(f"{wire.emu.cmq_endpoint}/", data=urlencode(form).encode(), timeout=10)
    assert r.json()["code"] == 4100
    # An unsigned parameter added afterwards breaks it too.
    form = signed(send, "POST", wire.host, "/")
    r = requests.post(
        f"{wire.emu.cmq_endpoint}/", data=(urlencode(form) + "&delaySeconds=0").encode(), timeout=10
    )
    assert r.json()["code"] == 4100
    missing = {k: v for k, v in signed(send, "POST", wire.host, "/").items() if k != "Signature"}
    r = requests.post(f"{wire.emu.cmq_endpoint}/", data=urlencode(missing).encode(), timeout=10)
    assert r.json()["code"] == 4100
    # A temporary key needs its Token, which is signed like any parameter.
    sts = {"secret_id": TOKEN_ID, "secret_key": TOKEN_KEY}
    assert wire.call({**send, "Token": TOKEN}, **sts)["code"] == 0
    assert wire.call(send, **sts)["code"] == 4100
    assert wire.call({**send, "Token": "other"}, **sts)["code"] == 4100


def test_region_from_the_host_header(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--cmq-queue", f"sh:{q}", "--cmq-queue", f"gz:{q}")
    wire = Wire(emu)
    for host in ("cmq-sh.public.tencenttdmq.com", "sh.mqadapter.cmq.tencentyun.com:8080"):
        doc = wire.call({"Action": "SendMessage", "queueName": q, "msgBody": host}, host=host)
        assert doc["code"] == 0
    for host in ("cmq-queue-sh.api.qcloud.com", "cmq-sh.publicxxx.tencenttdmq.com"):
        got = wire.call({"Action": "ReceiveMessage", "queueName": q}, host=host)
        assert got["code"] == 0 and "sh" in got["msgBody"]
    # The gz queue of the same name (default region for a bare IP) is a different queue.
    assert wire.call({"Action": "ReceiveMessage", "queueName": q})["code"] == 7000
    other = cmq_name()
    doc = wire.call(
        {"Action": "SendMessage", "queueName": other, "msgBody": "x"},
        host="cmq-bj.public.tencenttdmq.com",
    )
    assert doc["code"] == 4440
