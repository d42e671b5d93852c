"""Is this host's clock off? A service's ``Date`` header against our clock.

CI and CMQ refuse a signature made too far from their own time (CI: a key time that has not
begun or has ended; CMQ: a ``Timestamp`` minutes away), and their answers read like refused
keys. asrd pauses either way (the message is not at fault), but the line telling an operator
to renew keys sends them the wrong way when the clock is the cause. So when keys are refused,
asrd asks the service for its time with one unsigned request (any answer, even a refusal,
carries ``Date``, HTTP's own header) and names the clock when it is off by more than
``SKEW_S``. The answer is kept ``CACHE_S`` seconds: a pause is reported once, but many
messages may meet it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import requests

SKEW_S = 30.0  # more than any signature window's slack, far less than the windows themselves
CACHE_S = 30.0

_cache: dict[str, tuple[float, float | None]] = {}  # url -> (monotonic when asked, offset)
_lock = threading.Lock()


def _date_of(url: str, timeout_s: float) -> str:
    answer = requests.head(url, timeout=timeout_s, allow_redirects=False)
    return str(answer.headers.get("Date", ""))


def offset(
    url: str,
    timeout_s: float = 5.0,
    date_of: Callable[[str, float], str] = _date_of,
    now: Callable[[], float] = time.time,
) -> float | None:
    """Seconds this host's clock is ahead of the server at ``url`` (negative: behind); None when
    the server cannot be asked or gives no usable ``Date``. The mean of our clock before and
    after the request stands for the moment the server wrote its header."""
    before = now()
    try:
        header = date_of(url, timeout_s)
    except requests.RequestException:
        return None
    after = now()
    try:
        theirs = parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return None
    return (before + after) / 2 - theirs


def skew_note(url: str, service: str, probe: Callable[[str], float | None] = offset) -> str:
    """``"this host's clock is N s ahead of <service>'s ..."`` when it is off by more than
    ``SKEW_S``, else ``""``. Asks at most once per ``CACHE_S`` per URL."""
    key = url
    with _lock:
        cached = _cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < CACHE_S:
        off = cached[1]
    else:
        off = probe(url)
        with _lock:
            _cache[key] = (time.monotonic(), off)
    if off is None or abs(off) <= SKEW_S:
        return ""
    way = "ahead of" if off > 0 else "behind"
    host = urlsplit(url).hostname or url
    return (
        f"this host's clock is {abs(off):.0f} s {way} {service}'s ({host}'s Date header): "
        "signed requests are refused until the clock is right (check NTP); the keys may be fine"
    )
