"""The audit trail over HTTP."""

from __future__ import annotations

from litestar import Router

router = Router(path="/audit", route_handlers=[])
