"""Who may press buttons on the status page: a session cookie and per-form CSRF tokens.

Reading the page needs nothing. Actions need the bridge token, typed once into the login
form; the answer is a cookie (HttpOnly, SameSite=Strict) holding an expiry and an HMAC of
it keyed by the token, so the token itself never reaches the page, sessions survive a
restart without any server-side state, and changing the token logs everybody out. Each
form carries a CSRF token derived from the session cookie; a POST needs both to match.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Optional

__all__ = ["COOKIE", "SESSION_SECONDS", "Auth"]

COOKIE = "oncall_session"
#: A login lasts a night shift, not forever.
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Auth:
    """Signs and checks sessions and CSRF tokens with a key derived from the bridge token."""

    token: Optional[str]

    @property
    def enabled(self) -> bool:
        """Without a configured token, actions are off (nobody could prove who they are)."""
        return bool(self.token)

    def _mac(self, purpose: str, value: str) -> str:
        assert self.token
        key = hashlib.sha256(b"kapacitor-oncall-ui\0" + self.token.encode()).digest()
        return hmac.new(key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()

    def check_token(self, given: str) -> bool:
        return self.enabled and hmac.compare_digest(given.strip().encode(), (self.token or "").encode())

    def new_session(self, now: Optional[float] = None) -> str:
        expires = int((time.time() if now is None else now) + SESSION_SECONDS)
        return f"{expires}.{self._mac('session', str(expires))}"

    def session_ok(self, cookie: Optional[str], now: Optional[float] = None) -> bool:
        if not self.enabled or not cookie or "." not in cookie:
            return False
        expires, _, mac = cookie.partition(".")
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(mac, self._mac("session", expires))

    def csrf(self, cookie: str) -> str:
        return self._mac("csrf", cookie)

    def csrf_ok(self, cookie: Optional[str], given: Optional[str]) -> bool:
        if not self.session_ok(cookie) or not given:
            return False
        assert cookie is not None
        return hmac.compare_digest(given, self.csrf(cookie))
