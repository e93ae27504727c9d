"""``/api/silences``: the same silences as the CLI and the page, for scripts.

``GET /api/silences`` lists them (``?all=1`` includes ended ones). ``POST /api/silences``
(JSON ``{"matchers": [...], "for": "2h", "comment": "...", "created_by": "..."}``) adds
one, ``POST /api/silences/{id}/expire`` ends one; both need ``Authorization: Bearer
<[server] token>`` when a token is set, and a JSON content type (so a cross-site page
cannot post here without a CORS preflight, which is never granted).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import TYPE_CHECKING, Awaitable, Callable, Optional, TypeVar

from aiohttp import web

from .. import silences
from ..backend import Store
from ..errors import StoreError
from ..log import get_logger
from ..rejections import json_error

if TYPE_CHECKING:
    from ..server import Service

__all__ = ["SilenceAPI", "write_silence"]

log = get_logger("bridge.api")
T = TypeVar("T")


async def write_silence(service: "Service", change: Callable[[Store], T]) -> T:
    """Run a silences change on the store (off the event loop), then make it effective here at
    once (other PostgreSQL replicas are told by NOTIFY; another process on SQLite reads it
    within a second)."""
    loop = asyncio.get_running_loop()
    result: T = await loop.run_in_executor(None, change, service.outbox)
    await loop.run_in_executor(None, service.silencer.refresh)
    return result


class SilenceAPI:
    def __init__(self, service: "Service") -> None:
        self.service = service
        token = service.config.server.token
        self.token = token.encode() if token else None

    def _refused(self, request: web.Request) -> Optional[web.Response]:
        if self.token is not None:
            scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), self.token):
                return web.json_response(
                    {"status": "error", "error": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="kapacitor-oncall-bridge"'},
                )
        if request.content_type != "application/json":
            return json_error(415, "send Content-Type: application/json")
        return None

    async def list(self, request: web.Request) -> web.Response:
        include = request.query.get("all") in ("1", "true")
        store = self.service.outbox

        def read() -> str:
            now = time.time()
            return silences.dumps(store.list_silences(include_ended=include, now=now), now)

        body = await asyncio.get_running_loop().run_in_executor(None, read)
        return web.Response(text=body, content_type="application/json")

    async def add(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            doc = json.loads(await request.read())
        except ValueError as exc:
            return json_error(400, f"body: not JSON ({exc})", field="body")
        if not isinstance(doc, dict):
            return json_error(400, "body: expected a JSON object", field="body")
        raw = doc.get("matchers")
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
            return json_error(400, "matchers: expected a list of strings like \"id=~cpu:host=web-.*\"", field="matchers")
        duration, comment = doc.get("for"), doc.get("comment")
        if not isinstance(duration, str):
            return json_error(400, "for: expected a duration string like \"2h\"", field="for")
        if not isinstance(comment, str):
            return json_error(400, "comment: expected a string saying why", field="comment")
        by = doc.get("created_by")
        by = by if isinstance(by, str) and by.strip() else f"api ({request.remote})"
        try:
            matchers = silences.parse_matchers(raw)
            seconds = silences.parse_duration(duration)
            made = await write_silence(
                self.service, lambda store: store.add_silence(silences.new_silence(matchers, seconds, comment, by))
            )
        except silences.SilenceError as exc:
            return json_error(400, str(exc))
        log.info("silence.added", silence=made.id, matchers=made.text, until=made.ends_at, by=made.created_by)
        return web.json_response({"status": "ok", "silence": made.as_json(time.time())}, status=201)

    async def expire(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        silence_id = request.match_info["id"]
        try:
            ended = await write_silence(self.service, lambda store: store.expire_silence(silence_id))
        except silences.SilenceError as exc:
            return json_error(404, str(exc))
        log.info("silence.expired", silence=ended.id)
        return web.json_response({"status": "ok", "silence": ended.as_json(time.time())})

    def register(self, app: web.Application) -> None:
        app.router.add_get("/api/silences", _unavailable(self.list))
        app.router.add_post("/api/silences", _unavailable(self.add))
        app.router.add_post("/api/silences/{id}/expire", _unavailable(self.expire))


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _unavailable(handler: Handler) -> Handler:
    """The store being unreachable (a database down) is a 503 that says so, not a 500."""

    async def guarded(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except StoreError as exc:
            log.error("api.store_error", path=request.path, error=str(exc))
            return json_error(503, f"store unavailable: {exc}")

    return guarded
