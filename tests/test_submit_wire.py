"""What ``asrd submit`` puts on the wire, captured by a real HTTP server standing in for CI.

The SDK's ``ci_create_asr_job`` silently drops ``CallBackType``; this proves asrd's own body
carries ``CallBackType=TDMQ`` and the MQ settings, signed by the SDK.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import xmltodict

from .support import BUCKET, SECRET_ID, asrd, write_config

JOB_ID = "s" + "0123456789abcdef" * 2
QUEUE_ID = "p" + "fedcba9876543210" * 2
CREATE_RESPONSE = f"""<Response><JobsDetail><Code>Success</Code><Message/><JobId>{JOB_ID}</JobId>
<State>Submitted</State><Tag>SpeechRecognition</Tag></JobsDetail></Response>""".encode()


class Capture(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append((self.command, self.path, dict(self.headers), body))
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(CREATE_RESPONSE)}\r\n\r\n"
        ).encode()
        self.wfile.write(head + CREATE_RESPONSE)  # one send: no Nagle/delayed-ACK stall

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def capture() -> Iterator[tuple[str, list[tuple[str, str, dict[str, str], bytes]]]]:
    Capture.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Capture.requests
    server.shutdown()


def test_submit_sends_callbacktype_tdmq(
    tmp_path: Path, capture: tuple[str, list[tuple[str, str, dict[str, str], bytes]]]
) -> None:
    endpoint, seen = capture
    cfg = write_config(tmp_path, endpoint, "pulsar://127.0.0.1:6650", callback_format="XML")
    out = asrd(
        "submit", "--config", str(cfg.path), "--input", "in/a b.mp3",
        "--user-data", "order-42", "--job-level", "2",
        env={"ASRD_CI__QUEUE_ID": QUEUE_ID},  # configured: no look-up request first
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == JOB_ID

    [(method, path, headers, body)] = seen
    assert (method, path) == ("POST", "/asr_jobs")
    assert headers["Host"] == f"{BUCKET}.cos.ap-guangzhou.myqcloud.com"
    auth = dict(p.split("=", 1) for p in headers["Authorization"].split("&"))
    assert auth["q-sign-algorithm"] == "sha1"
    assert auth["q-ak"] == SECRET_ID
    assert "content-type" in auth["q-header-list"].split(";")
    req = xmltodict.parse(body)["Request"]
    assert req["CallBackType"] == "TDMQ"
    assert req["CallBackFormat"] == "XML"
    assert req["CallBackMqConfig"] == {"MqRegion": "gz", "MqMode": "Queue", "MqName": cfg.mq_name}
    assert req["Tag"] == "SpeechRecognition"
    assert req["QueueId"] == QUEUE_ID
    assert req["Input"] == {"Object": "in/a b.mp3"}
    op = req["Operation"]
    # The client token goes in front of the caller's user data (docs/operations.md).
    token, _, mine = op["UserData"].partition(" ")
    assert mine == "order-42"
    assert token.startswith("asrd:") and len(token) == len("asrd:") + 32
    assert op["JobLevel"] == "2"
    assert op["Output"] == {
        "Bucket": BUCKET,
        "Region": "ap-guangzhou",
        "Object": "asr-results/in/a b.mp3.txt",
    }
    assert op["SpeechRecognition"]["EngineModelType"] == "16k_zh"
    # The secret key never reaches the command line or the request.
    assert b"asrdtestsecretkey" not in body
