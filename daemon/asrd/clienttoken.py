"""The client token: what makes a create safe to repeat, carried in the job's ``UserData``.

Format (docs/operations.md, "Submitting at scale"): ``UserData = "asrd:" + TOKEN`` when the
caller gave no user data, else ``"asrd:" + TOKEN + " " + USER_DATA``. TOKEN is 1-64 characters of
``[A-Za-z0-9_.-]`` (asrd derives 32 hex digits from the input and the row's parameters). CI
allows 1,024 printable ASCII characters of UserData, so the caller's own user data may be at
most ``1024 - 6 - len(TOKEN)`` characters (986 with a derived token). Results delivered to the
sinks show only the caller's part in ``user_data``.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping

PREFIX = "asrd:"
MAX_USER_DATA = 1024
TOKEN_RULE = "1-64 characters of letters, digits, '_', '.' and '-'"  # noqa: S105 - a rule
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_USER_DATA = re.compile(r"asrd:([A-Za-z0-9_.-]{1,64})(?: (.*))?", re.DOTALL)


def valid_token(token: str) -> bool:
    return bool(_TOKEN.fullmatch(token))


def derive(fields: Mapping[str, object]) -> str:
    """A deterministic token from what defines the job (same row, same token)."""
    canonical = json.dumps(
        {k: v for k, v in fields.items() if v not in (None, "")}, sort_keys=True
    ).encode()
    return hashlib.sha256(canonical).hexdigest()[:32]


# Tokens of `asrd check --canary` jobs: their records go to no sink (reserved prefix).
CANARY = "canary-"


def canary() -> str:
    return CANARY + uuid.uuid4().hex


def is_canary(token: str | None) -> bool:
    return bool(token) and str(token).startswith(CANARY)


def fresh() -> str:
    """A token for a one-off submit that names no token of its own."""
    return uuid.uuid4().hex


def printable(text: str) -> bool:
    return all(32 <= ord(c) < 127 for c in text)


def compose(token: str, user_data: str | None) -> str:
    """``UserData`` for a job: the token, then the caller's user data. Raises ValueError."""
    if not valid_token(token):
        raise ValueError(f"client token {token!r} is not {TOKEN_RULE}")
    head = PREFIX + token
    if not user_data:
        return head
    room = MAX_USER_DATA - len(head) - 1
    if len(user_data) > room or not printable(user_data):
        raise ValueError(
            f"user data must be printable ASCII of at most {room} characters "
            f"(CI allows {MAX_USER_DATA}, the client token takes the rest)"
        )
    return f"{head} {user_data}"


def split(user_data: str | None) -> tuple[str | None, str | None]:
    """``(token, caller's user data)`` from a job's ``UserData``; no token when not asrd's."""
    if user_data is None:
        return None, None
    m = _USER_DATA.fullmatch(user_data)
    if m is None:
        return None, user_data
    return m.group(1), m.group(2)
