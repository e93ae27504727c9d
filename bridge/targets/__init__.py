"""Platform targets, one module per ``type``; each registers itself on import."""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    TRUNCATED,
    EmailMessage,
    HttpRequest,
    Options,
    RateLimit,
    Request,
    Target,
    get_type,
    register,
    registered_types,
    truncate,
)

__all__ = [
    "TRUNCATED",
    "EmailMessage",
    "HttpRequest",
    "Options",
    "RateLimit",
    "Request",
    "Target",
    "get_type",
    "register",
    "registered_types",
    "truncate",
]

_loaded = False


def _load_all() -> None:
    """Import every module of this package once so all types are registered."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True
