"""The emulator's TDMQ-CMQ endpoint driven by the official CMQ SDK (``qcloud-cmq-sdk-py3``).

The SDK raises ``CMQServerException`` for every non-zero ``code``, including 7000 ("no message").
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from cmq.cmq_exception import CMQServerException, CMQServerNetworkException
from cmq.queue import Message
from cmq.topic import Message as TopicMessage

from asrd.emulator.cmq_api import compute_signature, string_to_sign

from .conftest import Emulator, start_emulator
from .helpers import cmq_name

MakeEmulator = Callable[..., Emulator]


def code_of(call: Callable[[], Any]) -> tuple[int, str]:
    with pytest.raises(CMQServerException) as err:
        call()
    return err.value.code, err.value.message


def test_signature_matches_the_reference_vector() -> None:
    """docs/tencent-cloud.md §3.2, a worked example (computed with the SDK's Sign.make, checked
    with hmac)."""
    params = {
        "Action": "ReceiveMessage",
        "Nonce": "12345",
        "RequestClient": "SDK_Python_1.3",
        "SecretId": "AKIDexample",
        "SignatureMethod": "HmacSHA1",
        "Timestamp": "1700000000",
        "pollingWaitSeconds": "10",
        "queueName": "ci-callback",
        "Signature": "ignored",
    }
    text = string_to_sign("post", "gz.mqadapter.cmq.tencentyun.com", "/v2/index.php", params)
    assert text == (
        "POSTgz.mqadapter.cmq.tencentyun.com/v2/index.php?Action=ReceiveMessage&Nonce=12345"
        "&RequestClient=SDK_Python_1.3&SecretId=AKIDexample&SignatureMethod=HmacSHA1"
        "&Timestamp=1700000000&pollingWaitSeconds=10&queueName=ci-callback"
    )
    assert compute_signature("secretExample", text, "HmacSHA1") == "Ll/dBYY4IIu2rBsGDy50deNAmdY="
    assert compute_signature("secretExample", text, None) == "Ll/dBYY4IIu2rBsGDy50deNAmdY="
    params["SignatureMethod"] = "HmacSHA256"
    text = string_to_sign("POST", "gz.mqadapter.cmq.tencentyun.com", "/v2/index.php", params)
    assert (
        compute_signature("secretExample", text, "HmacSHA256")
        == "4P/kIlI9/8v/aGntWRVocXQ9xjwYwx+pfz1t683ijlQ="
    )
    # "_" in a key is signed as "." (a PHP form-key convention every SDK follows).
    assert string_to_sign("GET", "h", "/", {"a_b": "1"}) == "GETh/?a.b=1"


def test_send_receive_delete(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{q}")
    queue = emu.cmq().get_queue(q)
    body = "@hello world & 中文 + <xml/>"[1:]  # see §6 defect 1 for a leading "@"
    t0 = int(time.time())
    sent = queue.send_message(Message(body))
    got = queue.receive_message(0)
    assert got.msgBody == body and got.msgId == sent.msgId
    assert got.dequeueCount == 1
    assert t0 <= got.enqueueTime <= time.time()
    assert got.firstDequeueTime >= got.enqueueTime
    assert 29 <= got.nextVisibleTime - time.time() <= 31  # default visibility timeout 30 s
    assert got.receiptHandle
    assert code_of(lambda: queue.receive_message(0)) == (7000, "(10200)no message")
    queue.delete_message(got.receiptHandle)
    assert code_of(lambda: queue.delete_message(got.receiptHandle))[0] == 4430
    depth = emu.cmq_state()["queues"][0]
    assert (depth["active"], depth["inactive"], depth["delayed"]) == (0, 0, 0)


def test_batch_send_receive_delete(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{q}")
    queue = emu.cmq().get_queue(q)
    sent = queue.batch_send_message([Message(f"m{i}") for i in range(16)])
    assert len({m.msgId for m in sent}) == 16
    first = queue.batch_receive_message(10, 0)
    rest = queue.batch_receive_message(16, 0)  # fewer than asked: answered, not blocked
    assert len(first) == 10 and len(rest) == 6
    assert sorted(m.msgBody for m in first + rest) == sorted(f"m{i}" for i in range(16))
    assert {m.msgId for m in first + rest} == {m.msgId for m in sent}
    queue.batch_delete_message([m.receiptHandle for m in first])
    queue.batch_delete_message([m.receiptHandle for m in rest])
    assert code_of(lambda: queue.batch_receive_message(16, 0))[0] == 7000
    with pytest.raises(CMQServerException) as err:
        queue.batch_send_message([Message(str(i)) for i in range(17)])
    assert err.value.code == 4000 and err.value.message.startswith("(10370)")
    assert code_of(lambda: queue.batch_receive_message(17, 0))[0] == 4000


def test_batch_delete_partial_failure_lists_the_bad_handles(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{q}")
    queue = emu.cmq().get_queue(q)
    queue.batch_send_message([Message("a"), Message("b")])
    got = queue.batch_receive_message(2, 0)
    handles = [got[0].receiptHandle, "not-a-handle", got[1].receiptHandle]
    with pytest.raises(CMQServerException) as err:
        queue.batch_delete_message(handles)
    assert err.value.code == 6010
    assert [e["receiptHandle"] for e in err.value.data["errorList"]] == ["not-a-handle"]
    assert err.value.data["errorList"][0]["code"] == 4430
    assert code_of(lambda: queue.receive_message(0))[0] == 7000  # the valid two were deleted


def test_long_poll_wakes_on_a_send_and_times_out_empty(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{q}")
    queue = emu.cmq().get_queue(q)
    t0 = time.monotonic()
    assert code_of(lambda: queue.receive_message(2))[0] == 7000
    assert 1.9 <= time.monotonic() - t0 < 3.0

    def send_later() -> None:
        time.sleep(0.7)
        emu.cmq().get_queue(q).send_message(Message("late"))

    sender = threading.Thread(target=send_later)
    t0 = time.monotonic()
    sender.start()
    got = queue.receive_message(10)
    waited = time.monotonic() - t0
    sender.join()
    assert got.msgBody == "late"
    assert 0.6 <= waited < 3.0
    # Batch receive polls the same way.
    threading.Thread(target=send_later).start()
    t0 = time.monotonic()
    assert [m.msgBody for m in queue.batch_receive_message(16, 10)] == ["late"]
    assert time.monotonic() - t0 < 3.0


def test_long_polls_do_not_block_other_requests(make_emulator: MakeEmulator) -> None:
    """Many waiting polls are coroutines: other queues' calls are answered meanwhile."""
    idle, busy = cmq_name(), cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{idle}", "--cmq-queue", f"gz:{busy}")
    results: list[int] = []

    def poll() -> None:
        results.append(code_of(lambda: emu.cmq().get_queue(idle).receive_message(3))[0])

    pollers = [threading.Thread(target=poll) for _ in range(20)]
    for t in pollers:
        t.start()
    time.sleep(0.3)
    queue = emu.cmq().get_queue(busy)
    t0 = time.monotonic()
    queue.send_message(Message("x"))
    assert queue.receive_message(0).msgBody == "x"
    assert time.monotonic() - t0 < 1.0
    for t in pollers:
        t.join()
    assert results == [7000] * 20


def test_a_poll_whose_client_left_takes_no_message(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{q}")
    account = emu.cmq()
    # Start a long poll from a raw socket, then drop the connection before anything arrives.
    client = account.cmq_client
    from cmq.cmq_http import RequestInternal

    req = RequestInternal("POST", "/v2/index.php")
    client.build_req_inter("ReceiveMessage", {"queueName": q, "pollingWaitSeconds": 10}, req)
    with socket.create_connection(("127.0.0.1", emu.cmq_port or 0)) as s:
        host = f"127.0.0.1:{emu.cmq_port}"
        s.sendall(
            f"POST /v2/index.php HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(req.data)}"
            f"\r\n\r\n{req.data}".encode()
        )
        time.sleep(0.3)
    time.sleep(0.2)
    account.get_queue(q).send_message(Message("kept"))
    got = account.get_queue(q).receive_message(3)
    assert got.msgBody == "kept" and got.dequeueCount == 1


def test_visibility_timeout_redelivers_with_a_new_handle(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{q}:visibility=1")
    queue = emu.cmq().get_queue(q)
    queue.send_message(Message("again"))
    first = queue.receive_message(0)
    assert 0 <= first.nextVisibleTime - time.time() <= 1.5
    assert code_of(lambda: queue.receive_message(0))[0] == 7000  # invisible meanwhile
    t0 = time.monotonic()
    second = queue.receive_message(5)  # the long poll returns when it becomes visible again
    assert 0.3 <= time.monotonic() - t0 < 2.5
    assert second.msgId == first.msgId and second.msgBody == "again"
    assert second.dequeueCount == 2 and second.firstDequeueTime == first.firstDequeueTime
    assert second.receiptHandle != first.receiptHandle
    assert code_of(lambda: queue.delete_message(first.receiptHandle))[0] == 4430  # stale
    queue.delete_message(second.receiptHandle)
    # A handle also expires with its visibility timeout, even if nobody received since.
    queue.send_message(Message("late delete"))
    third = queue.receive_message(0)
    time.sleep(1.2)
    assert code_of(lambda: queue.delete_message(third.receiptHandle))[0] == 4430


def test_delay_seconds(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{q}")
    queue = emu.cmq().get_queue(q)
    queue.send_message(Message("later"), delayTime=1)
    assert code_of(lambda: queue.receive_message(0))[0] == 7000
    assert emu.cmq_state()["queues"][0]["delayed"] == 1
    t0 = time.monotonic()
    assert queue.receive_message(5).msgBody == "later"
    assert 0.3 <= time.monotonic() - t0 < 2.5


def test_errors_unknown_queue_signature_size(make_emulator: MakeEmulator) -> None:
    q, small = cmq_name(), cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{q}", "--cmq-queue", f"gz:{small}:maxsize=2048")
    queue = emu.cmq().get_queue(q)
    assert code_of(lambda: emu.cmq().get_queue("nothere").send_message(Message("x")))[0] == 4440
    assert code_of(lambda: emu.cmq().get_queue("nothere").receive_message(0))[0] == 4440
    wrong_key = emu.cmq(secret_key="not-the-key").get_queue(q)
    assert code_of(lambda: wrong_key.send_message(Message("x")))[0] == 4100
    unknown_id = emu.cmq(secret_id="AKIDnobody").get_queue(q)
    assert code_of(lambda: unknown_id.receive_message(0))[0] == 4100
    assert code_of(lambda: queue.send_message(Message("x" * 65537)))[0] == 4400
    queue.send_message(Message("x" * 65536))  # the default limit itself is fine
    assert len(queue.receive_message(0).msgBody) == 65536
    assert code_of(lambda: emu.cmq().get_queue(small).send_message(Message("y" * 2049)))[0] == (
        4400
    )
    emu.cmq().get_queue(small).send_message(Message("y" * 2048))
    # A batch with one oversize body is refused as a whole.
    with pytest.raises(CMQServerException) as err:
        emu.cmq().get_queue(small).batch_send_message([Message("ok"), Message("z" * 3000)])
    assert err.value.code == 4400
    assert [m.msgBody for m in emu.cmq().get_queue(small).batch_receive_message(16, 0)] == [
        "y" * 2048
    ]
    assert code_of(lambda: emu.cmq().get_queue("1-bad-name").receive_message(0))[0] == 4000
    stats = emu.counters()
    assert stats["cmq_error_4100"] == 2 and stats["cmq_error_4440"] == 2


def test_hmac_sha256_and_get(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{q}")
    account = emu.cmq()
    account.set_sign("sha256")
    queue = account.get_queue(q)
    queue.send_message(Message("sha256 signed"))
    account.cmq_client.set_method("GET")  # the SDK's GET mode: everything in the query string
    assert queue.receive_message(0).msgBody == "sha256 signed"
    bad = emu.cmq(secret_key="wrong")
    bad.set_sign("sha256")
    assert code_of(lambda: bad.get_queue(q).send_message(Message("x")))[0] == 4100


def test_topic_fans_out_to_its_queues(make_emulator: MakeEmulator) -> None:
    a, b, other, topic = cmq_name(), cmq_name(), cmq_name(), cmq_name("t")
    emu = make_emulator(
        *("--cmq-queue", f"gz:{a}", "--cmq-queue", f"gz:{b}", "--cmq-queue", f"gz:{other}"),
        *("--cmq-topic", f"gz:{topic}:{a},{b}"),
    )
    account = emu.cmq()
    t = account.get_topic(topic)
    t.publish_message(TopicMessage("<Response>raw</Response>", ["tag1"]), routingKey="k")
    t.batch_publish_message([TopicMessage("one"), TopicMessage("two")])
    for name in (a, b):
        bodies = [m.msgBody for m in account.get_queue(name).batch_receive_message(16, 0)]
        assert sorted(bodies) == ["<Response>raw</Response>", "one", "two"]
    assert code_of(lambda: account.get_queue(other).receive_message(0))[0] == 7000
    assert code_of(lambda: account.get_topic("t-none").publish_message(TopicMessage("x")))[0] == (
        4440
    )
    assert code_of(lambda: t.publish_message(TopicMessage("x" * 70000)))[0] == 4400
    assert emu.cmq_state()["topics"] == [
        {"region": "gz", "name": topic, "queues": [a, b], "maxsize": 65536}
    ]


def test_regions_come_from_the_host_or_the_default(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--cmq-default-region", "sh", "--cmq-queue", f"sh:{q}")
    account = emu.cmq()
    account.get_queue(q).send_message(Message("in sh"))
    assert account.get_queue(q).receive_message(0).msgBody == "in sh"
    gz = make_emulator("--cmq-queue", f"sh:{q}")  # default region gz: the sh queue is elsewhere
    assert code_of(lambda: gz.cmq().get_queue(q).receive_message(0))[0] == 4440


@pytest.mark.slow  # two emulator processes, one after the other
def test_messages_and_declarations_survive_a_restart(tmp_path: Path) -> None:
    q, topic = cmq_name(), cmq_name("t")
    emu = start_emulator(
        tmp_path, "--cmq-queue", f"gz:{q}:visibility=5", "--cmq-topic", f"gz:{topic}:{q}"
    )
    try:
        queue = emu.cmq().get_queue(q)
        queue.batch_send_message([Message("kept"), Message("received"), Message("deleted")])
        queue.send_message(Message("delayed"), delayTime=3)
        delayed_sent = time.monotonic()
        got = {m.msgBody: m for m in queue.batch_receive_message(16, 0)}
        assert sorted(got) == ["deleted", "kept", "received"]
        queue.delete_message(got["deleted"].receiptHandle)
    finally:
        assert emu.stop() == 0
    emu = start_emulator(tmp_path)  # no declarations on the command line this time
    try:
        account = emu.cmq()
        queue = account.get_queue(q)
        # Visibility is not kept across a restart: received messages are receivable at once.
        # The delay is kept: the delayed message comes with them only if the restart took
        # longer than its delay (a busy machine), else a long poll waits for it.
        bodies = sorted(m.msgBody for m in queue.batch_receive_message(16, 0))
        if "delayed" in bodies:
            bodies.remove("delayed")
        else:
            assert queue.receive_message(10).msgBody == "delayed"
        assert time.monotonic() - delayed_sent >= 3
        assert bodies == ["kept", "received"]
        account.get_topic(topic).publish_message(TopicMessage("via topic"))
        assert queue.receive_message(0).msgBody == "via topic"
        assert emu.cmq_state()["queues"][0]["visibility"] == 5
    finally:
        assert emu.stop() == 0


@pytest.mark.slow  # a process per bad command line
def test_ready_lines_and_bad_declarations(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "asrd.emulator", "--data-dir", str(tmp_path), "--key", "a:b"]
    bad = {
        ("--cmq-queue", "gz"): "--cmq-queue",
        ("--cmq-queue", "gz:1abc"): "--cmq-queue",
        ("--cmq-queue", "GZ:abc"): "--cmq-queue",
        ("--cmq-queue", "gz:abc:visibility=0"): "--cmq-queue",
        ("--cmq-queue", "gz:abc:maxsize=2000000"): "--cmq-queue",
        ("--cmq-queue", "gz:abc:colour=red"): "--cmq-queue",
        ("--cmq-queue", "gz:" + "a" * 65): "--cmq-queue",
        ("--cmq-topic", "gz:t"): "--cmq-topic",
        ("--cmq-topic", "gz:t:q1"): "--cmq-topic",  # q1 not declared
        ("--cmq-listen", "nowhere"): "--cmq-listen",
        ("--cmq-default-region", "Guangzhou"): "--cmq-default-region",
    }
    for args, flag in bad.items():
        r = subprocess.run([*base, *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, args
        last = r.stderr.strip().splitlines()[-1]  # after argparse's usage summary
        assert last.startswith(f"asrd emulator: error: argument {flag}: "), (args, r.stderr)
    proc = subprocess.Popen(
        [*base, "--listen", "127.0.0.1:0", "--cmq-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first, second = proc.stdout.readline(), proc.stdout.readline()
        assert re.fullmatch(r"asrd emulator listening on http://127\.0\.0\.1:\d+\n", first)
        assert re.fullmatch(r"asrd emulator CMQ listening on http://127\.0\.0\.1:\d+\n", second)
        assert first.rsplit(":", 1)[1] != second.rsplit(":", 1)[1]
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    assert proc.stdout.read() == ""


def test_injected_cmq_errors(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{q}", "--fault-cmq-error-rate", "1")
    queue = emu.cmq().get_queue(q)
    assert code_of(lambda: queue.send_message(Message("x")))[0] == 6000
    emu.faults(cmq_error_code=4420)
    assert code_of(lambda: queue.receive_message(0))[0] == 4420
    emu.faults(cmq_error_code=503)
    with pytest.raises(CMQServerNetworkException) as err:
        queue.send_message(Message("x"))
    assert err.value.status == 503
    with pytest.raises(requests.HTTPError):
        emu.faults(cmq_error_code=500)
    assert emu.stats()["counts"]["cmq_error"] == 3
    emu.faults(cmq_error_rate=0.0)
    queue.send_message(Message("through"))
    assert queue.receive_message(0).msgBody == "through"


def test_declare_at_run_time_through_the_admin_api(tmp_path: Path) -> None:
    q, topic = cmq_name(), cmq_name("t")
    emu = start_emulator(tmp_path)
    try:
        url = f"{emu.endpoint}/-/cmq"
        r = requests.put(f"{url}/queues/gz/{q}", json={"visibility": 7, "maxsize": 2048}, timeout=5)
        assert r.status_code == 200
        assert r.json()["queues"][0] | {"visibility": 7, "maxsize": 2048} == r.json()["queues"][0]
        assert requests.put(f"{url}/topics/gz/{topic}", json={"queues": [q]}, timeout=5).ok
        emu.cmq().get_topic(topic).publish_message(TopicMessage("declared live"))
        assert emu.cmq().get_queue(q).receive_message(0).msgBody == "declared live"
        bad = [
            ("queues/gz/9bad", {}),
            ("queues/GZ/ok", {}),
            ("queues/gz/ok", {"visibility": 0}),
            ("queues/gz/ok", {"maxsize": "big"}),
            ("queues/gz/ok", {"colour": 1}),
            ("queues/gz/ok", {"region": "sh"}),
            ("topics/gz/t", {"queues": ["nothere"]}),
            ("topics/gz/t", {"queues": []}),
            ("topics/gz/t", {}),
        ]
        for path, body in bad:
            r = requests.put(f"{url}/{path}", json=body, timeout=5)
            assert r.status_code == 400 and r.json()["error"], (path, body, r.text)
        assert requests.put(f"{url}/queues/gz", json={}, timeout=5).status_code == 404
        assert requests.delete(f"{url}/queues/gz/{q}", timeout=5).status_code == 405
    finally:
        assert emu.stop() == 0
    emu = start_emulator(tmp_path)  # declarations made at run time are journaled too
    try:
        assert [x["name"] for x in emu.cmq_state()["queues"]] == [q]
        assert emu.cmq_state()["queues"][0]["visibility"] == 7
    finally:
        assert emu.stop() == 0
