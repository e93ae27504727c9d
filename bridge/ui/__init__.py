"""The bridge's status page: server-rendered HTML (Jinja2) at ``/`` and ``/ui/...``.

See :mod:`bridge.ui.routes` for the routes and :mod:`bridge.ui.auth` for how actions are
authorised. No JavaScript build chain: one small script refreshes the live part in place.
"""

from __future__ import annotations

from .routes import setup_ui

__all__ = ["setup_ui"]
