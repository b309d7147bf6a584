"""A real local HTTP receiver for webhooks, an independent Standard Webhooks verifier, and an app that may
deliver to loopback addresses (``CORPORA_EGRESS_ALLOW_PRIVATE=true``), for the tests that use them."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.jobs.worker import drain, open_deps
from app.main import create_app
from app.settings import Settings
from tests.conftest import Account

Client = AsyncTestClient[Litestar]


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1 in a thread: records every request, answers with the statuses queued."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.statuses: list[int] = []  # answered in order; then 200
        self.delay = 0.0
        self.redirect_to: str | None = None
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.delay:
                    time.sleep(receiver.delay)
                if receiver.redirect_to is not None:
                    self.send_response(307)
                    self.send_header("location", receiver.redirect_to)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{uuid.uuid4().hex[:8]}"

    def to(self, url: str) -> list[Received]:
        path = url.split(str(self.server.server_address[1]), 1)[1]
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, received: Received, *, tolerance: int = 300) -> None:
    """Standard Webhooks verification written from the specification, not with the server's library."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id = received.headers["webhook-id"]
    timestamp = received.headers["webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) < tolerance, "stale webhook-timestamp"
    signed = f"{msg_id}.{timestamp}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    signatures = [s.split(",", 1) for s in received.headers["webhook-signature"].split(" ")]
    assert any(v == "v1" and hmac.compare_digest(sig, expected) for v, sig in signatures), "bad signature"


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="session")
def loopback_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, egress_allow_private=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def hooks_client(loopback_settings: Settings, app: Litestar) -> AsyncIterator[Client]:
    """A client of an app that accepts loopback webhook URLs (the receiver's)."""
    hooks_app = create_app(loopback_settings, keyring=app.state.keyring)
    async with AsyncTestClient(app=hooks_app, base_url="http://testserver.local") as test_client:
        yield test_client


@dataclasses.dataclass
class Worker:
    """Runs due jobs (deliveries included) in-process with loopback egress allowed."""

    sessionmaker: async_sessionmaker[AsyncSession]
    deps: Any

    async def run(self) -> None:
        errors: list[BaseException] = []
        await drain(self.deps, concurrency=4, errors=errors)
        if errors:
            raise errors[0]


@pytest_asyncio.fixture(loop_scope="session")
async def worker(loopback_settings: Settings, app: Litestar) -> AsyncIterator[Worker]:
    async with open_deps(loopback_settings, keyring=app.state.keyring, pool_size=4) as deps:
        yield Worker(deps.sessionmaker, deps)


async def create_webhook(
    client: Client, account: Account, org: str, url: str, events: list[str], *, expect: int = 201
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/webhooks", json={"org": org, "url": url, "events": events}, headers=account.headers
    )
    assert response.status_code == expect, response.text
    body: dict[str, Any] = response.json()
    return body
