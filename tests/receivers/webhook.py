"""A plain webhook endpoint: any JSON POST; Kapacitor-shaped bodies are tracked by ``id``."""

from __future__ import annotations

from typing import Any, List, Tuple

from ._base import Answer, Incoming, Receiver, decode, json_answer

__all__ = ["WebhookReceiver"]


class WebhookReceiver(Receiver):
    """Accepts ``POST /hook`` with a JSON body; ``level: OK`` resolves the ``id``."""

    type_name = "webhook"
    path = "/hook"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def inspect(self, req: Incoming) -> Tuple[int, List[str]]:
        if req.method != "POST" or req.path != self.path:
            return 404, [f"no such endpoint: {req.method} {req.path}"]
        _, problems = decode(req)
        return 400, problems

    def accept(self, req: Incoming) -> Answer:
        body: Any = req.json()
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            if body.get("level") == "OK":
                if body["id"] in self._incidents:
                    self._resolve(body["id"])
            else:
                self._open(body["id"])
        return json_answer(200, {"ok": True})
