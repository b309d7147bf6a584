"""Outbound requests to user-given URLs: refused for private targets, bounded in time and size."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.egress import Egress, EgressRefused, is_public
from app.notifications.models import EventType
from app.notifications.service import publish
from tests.conftest import RunJobs, make_org, sign_up
from tests.webhook_helpers import Receiver, Worker, create_webhook

Client = AsyncTestClient[Litestar]


class Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        Handler.hits.append(self.path)
        if self.path == "/big":
            self.send_response(200)
            self.send_header("content-length", str(1024 * 1024))
            self.end_headers()
            self.wfile.write(b"x" * 1024 * 1024)
        elif self.path == "/slow":
            time.sleep(3)
            self.send_response(200)
            self.end_headers()
        elif self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("location", self.path.split("?to=", 1)[1])
            self.send_header("content-length", "0")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("content-length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700::6810:84e5", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),  # noqa: S104 - a target being refused
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::7f00:1", False),
        ("2002:7f00:1::", False),
    ],
)
def test_addresses_judged_public_or_not(address: str, public: bool) -> None:
    import ipaddress

    assert is_public(ipaddress.ip_address(address)) is public


async def test_private_targets_refused_unless_allowed(server: str) -> None:
    strict = Egress()
    try:
        for url in [f"{server}/", server.replace("127.0.0.1", "localhost") + "/"]:
            with pytest.raises(EgressRefused, match="private, loopback or link-local"):
                await strict.request("GET", url)
    finally:
        await strict.aclose()
    lenient = Egress(allow_private=True)
    try:
        response = await lenient.request("GET", f"{server}/")
        assert (response.status_code, response.body) == (200, b"hello")
    finally:
        await lenient.aclose()


async def test_response_size_and_time_are_bounded(server: str) -> None:
    egress = Egress(allow_private=True)
    try:
        response = await egress.request("GET", f"{server}/big", max_bytes=1000)
        assert response.truncated
        assert len(response.body) == 1000
        started = time.monotonic()
        with pytest.raises((TimeoutError, httpx.TimeoutException)):
            await egress.request("GET", f"{server}/slow", timeout=0.5)
        assert time.monotonic() - started < 2
    finally:
        await egress.aclose()


async def test_redirects_are_not_followed_unless_asked_and_each_hop_is_checked(server: str) -> None:
    egress = Egress(allow_private=True)
    try:
        target = f"{server}/target-{uuid.uuid4().hex}"
        response = await egress.request("GET", f"{server}/redirect?to={target}")
        assert response.status_code == 302
        assert target.removeprefix(server) not in Handler.hits
        followed = await egress.request("GET", f"{server}/redirect?to={target}", max_redirects=1)
        assert followed.status_code == 200
        assert followed.url == target
        for unsafe in ["file:///etc/passwd", "http://user:pw@127.0.0.1/", "gopher://127.0.0.1/"]:
            with pytest.raises(EgressRefused):
                await egress.request("GET", f"{server}/redirect?to={unsafe}", max_redirects=1)
    finally:
        await egress.aclose()


async def test_delivery_to_an_address_no_longer_allowed_is_refused_at_connection(
    hooks_client: Client, worker: Worker, run_jobs: RunJobs, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """A webhook registered while private targets were allowed gets nothing once they are not."""
    owner = await sign_up(hooks_client)
    org = await make_org(hooks_client, owner)
    url = receiver.url
    hook = await create_webhook(hooks_client, owner, org, url, ["order.created"])
    async with worker.sessionmaker() as session, session.begin():
        org_id = await db.fetchval("SELECT id FROM organizations WHERE slug = $1", org)
        await publish(session, org_id, EventType.ORDER_CREATED, {"order_id": "x"})
    await run_jobs()  # a worker with the default settings: private targets refused
    assert receiver.to(url) == []
    error = await db.fetchval(
        "SELECT a.error FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id "
        "WHERE d.endpoint_id = $1",
        uuid.UUID(hook["id"]),
    )
    assert error.startswith("refused:")
