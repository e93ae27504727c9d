"""Routes of the status page.

``GET /`` (also ``/ui`` and ``/ui/``) renders the whole page; ``GET /ui/live`` renders the
part that changes, which the page re-fetches every few seconds. Actions are POST forms:
they need a signed-in session (see :mod:`bridge.ui.auth`), a matching CSRF token and, when
the browser sends one, a same-origin ``Origin``. Every answer forbids framing and caching.
Store reads and writes run off the event loop.
"""

from __future__ import annotations

import asyncio
import importlib.resources
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Mapping, Optional
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from .. import silences
from ..errors import StoreError
from ..log import get_logger
from ..rejections import json_error
from ..status import Snapshot, summarise
from .api import SilenceAPI, write_silence
from .auth import COOKIE, SESSION_SECONDS, Auth
from .render import environment

if TYPE_CHECKING:
    from ..server import Service

__all__ = ["REFRESH_SECONDS", "SECURITY_HEADERS", "setup_ui"]

log = get_logger("bridge.ui")

#: One-shot cookie with the outcome of the last action ("ok:..." / "bad:...").
FLASH = "oncall_flash"
#: How often the page re-fetches its live part.
REFRESH_SECONDS = 10
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it Chromium sends "Origin: null" on form posts, and the same-origin
    # check below needs the real origin. same-origin still sends nothing to other sites.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _UI:
    def __init__(self, service: "Service") -> None:
        self.service = service
        self.auth = Auth(service.config.server.token)
        self.env = environment()
        self.targets = {name: t.type for name, t in service.config.targets.items()}
        self.listen = service.config.server.listen
        self.static = {
            name: (importlib.resources.files("bridge.ui") / "static" / name).read_bytes()
            for name in ("style.css", "live.js")
        }

    # -- helpers ---------------------------------------------------------------------

    def _read(self) -> Snapshot:
        return self.service.outbox.status(self.targets, listen=self.listen)

    async def _snapshot(self) -> Snapshot:
        return await asyncio.get_running_loop().run_in_executor(None, self._read)

    def _context(self, request: web.Request, **extra: Any) -> Dict[str, Any]:
        cookie = request.cookies.get(COOKIE)
        signed_in = self.auth.session_ok(cookie)
        flash = unquote(request.cookies.get(FLASH, ""))[:400]
        bad, _, message = flash.partition(":")
        return {
            "auth_enabled": self.auth.enabled,
            "signed_in": signed_in,
            "csrf": self.auth.csrf(cookie) if signed_in and cookie else "",
            "refresh": _refresh(request),
            "message": message,
            "message_bad": bad == "bad",
            **extra,
        }

    def _html(self, template: str, context: Mapping[str, Any], status: int = 200) -> web.Response:
        body = self.env.get_template(template).render(**context)
        return web.Response(text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS)

    @staticmethod
    def _back(message: str, bad: bool = False) -> web.Response:
        """303 to the page, carrying the outcome in a one-shot cookie (not the URL, so
        nobody can link to a page that shows words of their choosing)."""
        response = web.Response(status=303, headers={"Location": "/", **SECURITY_HEADERS})
        value = quote(("bad:" if bad else "ok:") + message[:300])
        response.set_cookie(FLASH, value, max_age=60, path="/", httponly=True, samesite="Strict")
        return response

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """A browser's ``Origin`` (if sent) must name this very host: no cross-site posts."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        return urlsplit(origin).netloc == request.host

    async def _authorised(self, request: web.Request) -> Optional[web.Response]:
        """None when the POST may proceed, else the refusal."""
        if not self.auth.enabled:
            return self._back("actions are disabled: this bridge has no [server] token", bad=True)
        form = await request.post()
        cookie = request.cookies.get(COOKIE)
        if not self._same_origin(request):
            log.warning("ui.refused", reason="cross-origin", path=request.path)
            return json_error(403, "cross-origin form post refused")
        if not self.auth.session_ok(cookie):
            return web.Response(status=303, headers={"Location": "/ui/login", **SECURITY_HEADERS})
        csrf = form.get("csrf")
        if not isinstance(csrf, str) or not self.auth.csrf_ok(cookie, csrf):
            log.warning("ui.refused", reason="csrf", path=request.path)
            return json_error(403, "missing or stale form token; reload")
        return None

    # -- pages -----------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        try:
            snap = await self._snapshot()
        except StoreError as exc:
            return json_error(503, f"store unreadable: {exc}", headers=SECURITY_HEADERS)
        context = self._context(request, snap=snap, totals=summarise(snap.targets))
        response = self._html("page.html", context)
        if FLASH in request.cookies:
            response.del_cookie(FLASH, path="/")
        return response

    async def live(self, request: web.Request) -> web.Response:
        try:
            snap = await self._snapshot()
        except StoreError as exc:
            return json_error(503, f"store unreadable: {exc}", headers=SECURITY_HEADERS)
        return self._html("live.html", self._context(request, snap=snap, totals=summarise(snap.targets)))

    async def static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self.static.get(name)
        if body is None:
            raise web.HTTPNotFound()
        kind = _STATIC_TYPES[name[name.rfind("."):]]
        headers = {**SECURITY_HEADERS, "Cache-Control": "max-age=300"}
        return web.Response(body=body, content_type=kind, headers=headers)

    async def login_form(self, request: web.Request) -> web.Response:
        return self._html("login.html", self._context(request))

    async def login(self, request: web.Request) -> web.Response:
        if not self._same_origin(request):
            return json_error(403, "cross-origin form post refused")
        form = await request.post()
        given = form.get("token")
        if not isinstance(given, str) or not self.auth.check_token(given):
            log.warning("ui.login_failed", remote=request.remote)
            context = self._context(request, message="wrong token", message_bad=True)
            return self._html("login.html", context, status=401)
        log.info("ui.login", remote=request.remote)
        response = self._back("signed in")
        response.set_cookie(
            COOKIE,
            self.auth.new_session(),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        refused = await self._authorised(request)
        if refused is not None:
            return refused
        response = self._back("signed out")
        response.del_cookie(COOKIE, path="/")
        return response

    # -- actions ---------------------------------------------------------------------

    def _seq(self, request: web.Request) -> int:
        raw = request.match_info["seq"]
        if not raw.isdigit():
            raise web.HTTPNotFound()
        return int(raw)

    async def replay(self, request: web.Request) -> web.Response:
        refused = await self._authorised(request)
        if refused is not None:
            return refused
        seq = self._seq(request)
        loop = asyncio.get_running_loop()
        row = await loop.run_in_executor(None, self.service.outbox.load, seq)
        if row is None or row.state != "dead":
            return self._back(f"#{seq} is not a dead letter (any more)", bad=True)
        target, key = row.target, row.key
        result = await loop.run_in_executor(None, self.service.outbox.replay, target, key)
        log.info("ui.replayed", target=target, id=key, rows=result.count, superseded=len(result.superseded),
                 remote=request.remote)
        if result.superseded and not result.count:
            # Order-safe replay: a later event of this id already carries the newer state.
            return self._back(f"not replayed: a later event of {key} supersedes it (use the CLI's --force)",
                              bad=True)
        return self._back(f"replayed {result.count} dead letter(s) of {key} to {target}")

    async def drop(self, request: web.Request) -> web.Response:
        refused = await self._authorised(request)
        if refused is not None:
            return refused
        seq = self._seq(request)
        loop = asyncio.get_running_loop()
        dropped = await loop.run_in_executor(None, self.service.outbox.drop_dead, seq)
        if not dropped:
            return self._back(f"#{seq} is not a dead letter (any more)", bad=True)
        log.info("ui.dropped", seq=seq, remote=request.remote)
        return self._back(f"dropped dead letter #{seq}")

    async def add_silence(self, request: web.Request) -> web.Response:
        refused = await self._authorised(request)
        if refused is not None:
            return refused
        form = await request.post()
        lines = str(form.get("matchers", "")).splitlines()
        comment = str(form.get("comment", ""))
        try:
            matchers = silences.parse_matchers(lines)
            seconds = silences.parse_duration(str(form.get("duration", "")))
            made = silences.new_silence(matchers, seconds, comment, f"status page ({request.remote})")
            await write_silence(self.service, lambda store: store.add_silence(made))
        except silences.SilenceError as exc:
            return self._back(f"silence not added: {exc}", bad=True)
        log.info("silence.added", silence=made.id, matchers=made.text, until=made.ends_at, by=made.created_by)
        return self._back(f"silence {made.id} added: {made.text}")

    async def expire_silence(self, request: web.Request) -> web.Response:
        refused = await self._authorised(request)
        if refused is not None:
            return refused
        silence_id = request.match_info["id"]
        try:
            await write_silence(self.service, lambda store: store.expire_silence(silence_id))
        except silences.SilenceError as exc:
            return self._back(str(exc), bad=True)
        log.info("silence.expired", silence=silence_id, remote=request.remote)
        return self._back(f"silence {silence_id} expired; held alerts are released now")


def _refresh(request: web.Request) -> int:
    """``?refresh=N`` (1..300 s) overrides the default, e.g. for a wall screen."""
    raw = request.query.get("refresh", "")
    return min(300, max(1, int(raw))) if raw.isdigit() else REFRESH_SECONDS


def _guard(handler: Handler) -> Handler:
    """Store trouble on an action is a page message, not a stack trace."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreError as exc:
            log.error("ui.store_error", path=request.path, error=str(exc))
            return _UI._back(f"store error: {exc}", bad=True)

    return guarded


def setup_ui(app: web.Application, service: "Service") -> "_UI":
    """Register the page's routes on ``app``; returns the handler object (silences add to it)."""
    ui = _UI(service)
    router = app.router
    for path in ("/", "/ui", "/ui/"):
        router.add_get(path, ui.page)
    router.add_get("/ui/live", ui.live)
    router.add_get("/ui/static/{name}", ui.static_file)
    router.add_get("/ui/login", ui.login_form)
    router.add_post("/ui/login", ui.login)
    router.add_post("/ui/logout", _guard(ui.logout))
    router.add_post("/ui/dead/{seq}/replay", _guard(ui.replay))
    router.add_post("/ui/dead/{seq}/drop", _guard(ui.drop))
    router.add_post("/ui/silences", _guard(ui.add_silence))
    router.add_post("/ui/silences/{id}/expire", _guard(ui.expire_silence))
    SilenceAPI(service).register(app)
    return ui
