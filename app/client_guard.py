"""Slow and vanishing clients: a deadline on reading a request body, a bound on bodies read at once, and a
client that goes away answered as what it is (not a server error).

Granian reads the headers (``CORPORA_HEADER_TIMEOUT_SECONDS``) and bounds each worker's connections
(``CORPORA_MAX_CONNECTIONS``), but hands the body to the app as it trickles in, with no deadline. Here:

- the whole body must arrive within ``CORPORA_BODY_TIMEOUT_SECONDS`` of the request reaching the app,
  else 408 and the connection is closed;
- a worker reads at most ``CORPORA_MAX_PENDING_BODIES`` bodies at once; beyond that a request with a body
  is refused at once (503, ``Retry-After``, connection closed) instead of waiting its turn, so a flood of
  stalled bodies cannot pile up in memory;
- a client that disconnects before its body is read ends the request as 499 (nginx's "client closed
  request"): logged at INFO, counted as 499, never as a 5xx.

Requests without a body (``GET /api/v1/me``) pass straight through and cost nothing here, but for one check:
a query string sent as raw UTF-8 bytes (``?q=金融`` not percent-encoded) is percent-encoded here, as the
parser behind Litestar decodes raw bytes as Latin-1 and only percent-escapes as UTF-8.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from app.errors import ClientGone, ProblemError

log = logging.getLogger("corpora.clients")


_NON_ASCII = re.compile(rb"[\x80-\xff]")


def _percent(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match[0][0]


def _has_body(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return value.strip() not in (b"0", b"")
        if key == b"transfer-encoding":
            return True
    return False


class ClientGuard:
    def __init__(self, app: ASGIApp, *, body_timeout: float, max_pending_bodies: int) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.max_pending_bodies = max_pending_bodies
        self.pending_bodies = 0  # per worker process: the app is built after the fork

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and not scope["query_string"].isascii():
            scope["query_string"] = _NON_ASCII.sub(_percent, scope["query_string"])
        if scope["type"] != ScopeType.HTTP or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        if self.pending_bodies >= self.max_pending_bodies:
            raise ProblemError(
                503,
                "too-many-requests-in-flight",
                "Service unavailable",
                "too many requests are still sending their bodies; retry shortly",
                headers={"Retry-After": "1", "Connection": "close"},
            )
        self.pending_bodies += 1
        pending = True
        deadline = time.monotonic() + self.body_timeout

        def release() -> None:
            nonlocal pending
            if pending:
                pending = False
                self.pending_bodies -= 1

        async def guarded_receive() -> ReceiveMessage:
            if not pending:  # the body was read; what is left to receive is the end of the exchange
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                release()
                log.info("request body not received within %ss: %s %s", self.body_timeout, *_route(scope))
                raise ProblemError(
                    408,
                    "request-timeout",
                    "Request timeout",
                    f"the request body did not arrive within {self.body_timeout:g} seconds; send it at once",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.disconnect":
                release()
                raise ClientGone()
            if not message.get("more_body", False):
                release()
            return message

        try:
            # The 499 answered for a client gone is sent on regardless: the server drops it, the metrics count it.
            await self.app(scope, guarded_receive, send)
        except ClientGone:
            # Raised here when no exception handler ran (the body was read by a middleware).
            log.info("client went away before its request was read: %s %s", *_route(scope))
        finally:
            release()


def _route(scope: Scope) -> tuple[str, str]:
    return str(scope.get("method", "")), scope.get("path_template") or scope["path"]
