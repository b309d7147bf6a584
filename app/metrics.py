"""Prometheus metrics of every HTTP request: count, duration and requests in flight, per route.

A lean ASGI middleware rather than litestar's Prometheus plugin middleware, which builds a ``Request`` and
resolves four labelled children on every call: here the labelled children are looked up once per route
and status and kept. Routes are labelled by their path template (``/api/v1/products/{slug:str}``), so
label cardinality is bounded by the routes, not by the ids in URLs.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("corpora_http_requests", "HTTP requests answered", ["method", "path", "status_code"])
SERVER_ERRORS = Counter("corpora_http_server_errors", "HTTP requests answered with 5xx", ["method", "path"])
DURATION = Histogram("corpora_http_request_duration_seconds", "Time to answer an HTTP request", ["method", "path"])
IN_PROGRESS = Gauge(
    "corpora_http_requests_in_progress", "HTTP requests being answered", ["method", "path"], multiprocess_mode="livesum"
)
EXCLUDED_PATHS = frozenset({"/metrics", "/healthz"})


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._route_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._request_counters: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] in EXCLUDED_PATHS:
            await self.app(scope, receive, send)
            return
        route = (scope["method"], scope.get("path_template") or scope["path"])
        children = self._route_children.get(route)
        if children is None:
            children = self._route_children[route] = (IN_PROGRESS.labels(*route), DURATION.labels(*route))
        in_progress, duration = children
        status = 500  # what the client sees if the app fails before answering

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        in_progress.inc()
        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            in_progress.dec()
            duration.observe(time.perf_counter() - started)
            key = (*route, status)
            counter = self._request_counters.get(key)
            if counter is None:
                counter = self._request_counters[key] = REQUESTS.labels(*key)
            counter.inc()
            if status >= 500:
                SERVER_ERRORS.labels(*route).inc()
