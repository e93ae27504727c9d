"""Shared fixtures-as-functions for the target tests: events, target builders, receiver checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Mapping, Optional

import requests
from hypothesis import HealthCheck, settings

from bridge.event import AlertEvent
from bridge.targets.base import HttpRequest, Options, get_type
from tests.receivers import Incoming

__all__ = ["FUZZ", "T0", "build", "event", "problems", "recovery", "send"]

T0 = datetime(2025, 6, 2, 8, 15, tzinfo=timezone.utc)

#: Property tests render megabyte-sized inputs; a per-example deadline would be noise.
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def event(
    level: str = "CRITICAL",
    ident: str = "disk_used:host=db-7",
    message: str = "Disk almost full on db-7",
    details: str = "used_percent=97.4 (crit > 95)",
    tags: Optional[Mapping[str, str]] = None,
    previous: str = "OK",
    duration_s: float = 0,
    time: datetime = T0,
    **fields: Any,
) -> AlertEvent:
    """A Kapacitor event shaped like the reference's disk example."""
    series: Dict[str, Any] = {
        "name": "disk",
        "tags": dict(tags if tags is not None else {"host": "db-7"}),
        "columns": ["time", *(fields or {"used_percent": 97.4})],
        "values": [[time.isoformat(), *(fields or {"used_percent": 97.4}).values()]],
    }
    return AlertEvent(
        id=ident,
        level=level,
        time=time,
        message=message,
        details=details,
        duration_ns=int(duration_s * 1e9),
        previous_level=previous,
        data={"series": [series]},
    )


def recovery(ident: str = "disk_used:host=db-7", previous: str = "CRITICAL", **kw: Any) -> AlertEvent:
    """The OK that follows :func:`event` 26 minutes later."""
    kw.setdefault("message", f"{ident} is OK")
    kw.setdefault("details", "")
    return event(level="OK", ident=ident, previous=previous, duration_s=1560, time=T0 + timedelta(minutes=26), **kw)


def build(type_name: str, table: Mapping[str, Any], name: str = "t") -> Any:
    """Build a target the way config.py will: common keys stripped, then ``from_options``."""
    body = {k: v for k, v in table.items() if k not in ("type", "name")}
    return get_type(type_name).from_options(name, Options(f"target.{name}", body))


def problems(receiver: Any, request: HttpRequest) -> List[str]:
    """What the strict receiver would object to in ``request`` (no server needed)."""
    return receiver.problems(Incoming.from_request(request))


def send(request: HttpRequest, timeout: float = 5.0) -> requests.Response:
    """Deliver a rendered request to a running receiver, as the bridge's delivery would."""
    with requests.Session() as session:
        return session.request(
            request.method, request.url, headers=dict(request.headers), data=request.body, timeout=timeout
        )
