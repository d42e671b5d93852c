"""Who may use the console, and the headers every page carries.

The API's rule holds here too: with ``[http] token`` set (required off loopback) a browser
must first exchange the token for a session cookie (signed with a key derived from the token,
HttpOnly, SameSite=Strict, limited to ``/ui``); without one, loopback needs none. Every action
is a POST carrying a CSRF token tied to the session. itsdangerous signs both (the signing is
Flask's, maintained; nothing hand-rolled).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "asrd_console"
SESSION_MAX_AGE_S = 12 * 3600
# No inline script or style anywhere: the pages load /ui/static/* only, and forms post back here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class Session:
    sid: str
    fresh: bool  # just made: the response must set the cookie


class Guard:
    """Sessions and CSRF tokens. ``token``: the API's bearer token ("" = loopback, no login);
    without one the signing key is random per process (a restart asks for a new cookie, which
    a loopback browser gets without asking)."""

    def __init__(self, token: str) -> None:
        self.token = token
        key = token or secrets.token_hex(32)
        self._sessions = URLSafeTimedSerializer(key, salt="asrd-console-session")
        self._csrf = URLSafeTimedSerializer(key, salt="asrd-console-csrf")

    @property
    def login_required(self) -> bool:
        return bool(self.token)

    def token_matches(self, given: str) -> bool:
        return bool(self.token) and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer_matches(self, header: str | None) -> bool:
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def new_session(self) -> Session:
        return Session(secrets.token_hex(16), fresh=True)

    def cookie_value(self, session: Session) -> str:
        return self._sessions.dumps(session.sid)

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie names, if it is ours and not expired."""
        if not cookie:
            return None
        try:
            sid = self._sessions.loads(cookie, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        return Session(str(sid), fresh=False) if isinstance(sid, str) else None

    def csrf_token(self, session: Session) -> str:
        return self._csrf.dumps(session.sid)

    def csrf_valid(self, session: Session | None, given: str) -> bool:
        if session is None or not given:
            return False
        try:
            sid = self._csrf.loads(given, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return False
        return isinstance(sid, str) and hmac.compare_digest(sid, session.sid)
