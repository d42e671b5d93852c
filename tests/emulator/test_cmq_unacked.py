"""TDMQ-CMQ's max unacknowledged time (``--cmq-queue …:max_unacked=S``): a message still undeleted
that long after it entered the queue is acknowledged by the server and gone, received or not."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests
from cmq.cmq_exception import CMQServerException
from cmq.queue import Message

from .conftest import Emulator
from .helpers import cmq_name

MakeEmulator = Callable[..., Emulator]


def _depth(emu: Emulator, name: str) -> dict[str, int]:
    state = requests.get(f"{emu.endpoint}/-/cmq", timeout=5).json()
    return next(q for q in state["queues"] if q["name"] == name)  # type: ignore[no-any-return]


def _receive_code(queue: object) -> int:
    with pytest.raises(CMQServerException) as err:
        queue.receive_message(0)  # type: ignore[attr-defined]
    return int(err.value.code)


def test_undeleted_messages_are_gone_after_the_max_unacknowledged_time(
    make_emulator: MakeEmulator,
) -> None:
    name = cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{name}:max_unacked=2")
    queue = emu.cmq().get_queue(name)
    queue.send_message(Message("received, never deleted"))
    queue.send_message(Message("never received"))
    # Only the send time counts, so the order of these calls against the clock decides nothing:
    # whether the receive below lands before or after the 2 s, both messages end up gone.
    try:
        first = queue.receive_message(0)
        handle = first.receiptHandle
    except CMQServerException as exc:
        assert exc.code == 7000  # the machine was slow enough that both are already gone
        handle = ""
    deadline = time.monotonic() + 30
    while _depth(emu, name)["auto_acked"] < 2:  # both are 2 s old once the clock says so
        assert time.monotonic() < deadline, _depth(emu, name)
        time.sleep(0.2)
    assert _receive_code(queue) == 7000
    if handle:
        with pytest.raises(CMQServerException) as err:
            queue.delete_message(handle)
        assert err.value.code == 4430
    depth = _depth(emu, name)
    assert (depth["active"], depth["inactive"], depth["max_unacked"]) == (0, 0, 2)


def test_a_message_deleted_in_time_is_not_counted(make_emulator: MakeEmulator) -> None:
    name = cmq_name()
    emu = make_emulator("--cmq-queue", f"gz:{name}:max_unacked=30")
    queue = emu.cmq().get_queue(name)
    queue.send_message(Message("moved"))
    queue.delete_message(queue.receive_message(0).receiptHandle)
    assert _depth(emu, name)["auto_acked"] == 0
    assert _receive_code(queue) == 7000


def test_max_unacked_is_checked(make_emulator: MakeEmulator) -> None:
    emu = make_emulator()
    bad = requests.put(f"{emu.endpoint}/-/cmq/queues/gz/q1", json={"max_unacked": 43201}, timeout=5)
    assert bad.status_code == 400 and "max_unacked" in bad.text
    ok = requests.put(f"{emu.endpoint}/-/cmq/queues/gz/q1", json={"max_unacked": 60}, timeout=5)
    assert ok.status_code in (200, 201, 204)
