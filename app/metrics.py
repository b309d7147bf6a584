"""The service's Prometheus metrics (every HTTP request's count, duration and requests in flight, per route,
and the download counters) and the access log (one JSON line per request, ``app.access_log``).

A lean ASGI middleware rather than litestar's Prometheus plugin middleware, which builds a ``Request`` and
resolves four labelled children on every call: here the labelled children are looked up once per route
and status and kept. Routes are labelled by their path template (``/api/v1/products/{slug:str}``), so
label cardinality is bounded by the routes, not by the ids in URLs.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram, values

from app.access_log import access_log
from app.admission import ARRIVED_AT
from app.auth.middleware import REQUEST_ID_HEADER
from app.errors import answered_status

_encode = msgspec.json.Encoder().encode

_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)
if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
    # In multiprocess mode every update asks for the process id to notice a fork (and switch files); os.getpid()
    # is a system call, several per request. A fork hook keeps the answer instead. Metrics made from here on
    # use it, which is why the service's metrics are all defined in this module.
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _pid)  # type: ignore[no-untyped-call]

REQUESTS = Counter("corpora_http_requests", "HTTP requests answered", ["method", "path", "status_code"])
SERVER_ERRORS = Counter("corpora_http_server_errors", "HTTP requests answered with 5xx", ["method", "path"])
DURATION = Histogram("corpora_http_request_duration_seconds", "Time to answer an HTTP request", ["method", "path"])
IN_PROGRESS = Gauge(
    "corpora_http_requests_in_progress", "HTTP requests being answered", ["method", "path"], multiprocess_mode="livesum"
)
EXCLUDED_PATHS = frozenset({"/metrics", "/healthz"})
# Requests in flight are counted in the process and written to the gauge at most this often: in multiprocess mode
# every gauge update is a locked write to a memory-mapped file, two per request (about 5 µs of /me's 135).
IN_PROGRESS_EVERY_SECONDS = 0.25

GRANTS = Counter("corpora_download_grants", "Download grants issued", ["mode"])
REFRESHES = Counter("corpora_download_refreshes", "Download URLs refreshed without a new charge")
REFUSALS = Counter("corpora_download_refusals", "Download grants refused", ["reason"])
BYTES_SERVED = Counter("corpora_download_bytes_served", "Bytes streamed through proxy downloads")


class RequestMetrics:
    def __init__(self, app: ASGIApp, *, log_access: bool = False) -> None:
        self.app = app
        self.log_access = log_access
        self._route_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._request_counters: dict[tuple[str, str, int], Any] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        self._in_flight_due: asyncio.AbstractEventLoop | None = None  # the loop a write is due on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        if scope["path"] in EXCLUDED_PATHS:
            await self.app(scope, receive, _with_request_id(scope, send))
            return
        route = (scope["method"], scope.get("path_template") or scope["path"])
        children = self._route_children.get(route)
        if children is None:
            children = self._route_children[route] = (IN_PROGRESS.labels(*route), DURATION.labels(*route))
        duration = children[1]
        status = 500  # what the client sees if the app fails before answering

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                _stamp_request_id(scope, message)
            await send(message)

        started = time.perf_counter()
        scope.setdefault("state", {})[ARRIVED_AT] = started  # admission by arrival (app/admission.py)
        self._count_in_flight(route, 1)
        try:
            await self.app(scope, receive, send_noting_status)
        except Exception as exc:  # refused in a middleware (a bad token, the database down): answered further out
            status = answered_status(exc)
            raise
        finally:
            self._count_in_flight(route, -1)
            elapsed = time.perf_counter() - started
            duration.observe(elapsed)
            if self.log_access:
                _log_access(scope, route, status, elapsed)
            key = (*route, status)
            counter = self._request_counters.get(key)
            if counter is None:
                counter = self._request_counters[key] = REQUESTS.labels(*key)
            counter.inc()
            if status >= 500:
                SERVER_ERRORS.labels(*route).inc()

    def _count_in_flight(self, route: tuple[str, str], change: int) -> None:
        self._in_flight[route] = self._in_flight.get(route, 0) + change
        loop = asyncio.get_running_loop()
        if self._in_flight_due is not loop:
            self._in_flight_due = loop
            loop.call_later(IN_PROGRESS_EVERY_SECONDS, self._write_in_flight)

    def _write_in_flight(self) -> None:
        """The counts as they are now, into the gauge; routes with none left in flight are written once more (0)
        and then forgotten."""
        self._in_flight_due = None
        for route, count in list(self._in_flight.items()):
            self._route_children[route][0].set(count)
            if count == 0:
                del self._in_flight[route]


def _stamp_request_id(scope: Scope, message: HTTPResponseStartEvent) -> None:
    """The response names the request id ``AuthMiddleware`` gave the request (here, to save a layer of ``send``)."""
    request_id = (scope.get("state") or {}).get("request_id")
    if request_id is not None:
        message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]


def _with_request_id(scope: Scope, send: Send) -> Send:
    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            _stamp_request_id(scope, message)
        await send(message)

    return send_with_id


def _log_access(scope: Scope, route: tuple[str, str], status: int, elapsed: float) -> None:
    state = scope.get("state") or {}
    user = scope.get("user")
    line = _encode(
        {
            "request_id": state.get("request_id"),
            "method": route[0],
            "route": route[1],
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "actor": getattr(user, "actor", None),
            "client": state.get("client_addr"),
        }
    )
    access_log.write(line)
