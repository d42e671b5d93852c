"""systemd integration: ``sd_notify`` readiness, stopping and watchdog pings (no libsystemd)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to ``$NOTIFY_SOCKET``; False when not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract socket namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def start_watchdog(alive: Callable[[], bool], stop: threading.Event) -> threading.Thread | None:
    """Ping ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC`` while ``alive()`` holds, so a stuck
    receive loop gets the service restarted."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return None
    interval = int(usec) / 2e6

    def run() -> None:
        while not stop.wait(interval):
            if alive():
                notify("WATCHDOG=1")

    thread = threading.Thread(target=run, name="asrd-watchdog", daemon=True)
    thread.start()
    return thread


def loop_alive(last_tick: Callable[[], float], max_age_s: float) -> Callable[[], bool]:
    return lambda: time.monotonic() - last_tick() < max_age_s
