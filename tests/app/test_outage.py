"""Dependencies down: 503 with ``Retry-After``, nothing half-written, and recovery without a restart.

An app instance talks to PostgreSQL and the object store through TCP proxies (``tests/tcp_proxy.py``)
that the tests cut and restore while the app keeps running. Requests run in a worker thread with a
deadline, so an app that hangs fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient, TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import PASSWORD, make_org, sign_up, unique_email
from tests.tcp_proxy import (
    TcpProxy,
    http_upstream,
    postgres_upstream,
    proxied_database_url,
    proxied_endpoint,
)

PROBLEM = "application/problem+json"
DEADLINE = 8.0  # seconds for one request; the app's own timeouts must answer well before


@dataclasses.dataclass
class Outage:
    client: TestClient[Litestar]
    db_proxy: TcpProxy
    s3_proxy: TcpProxy

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, in a worker thread, refused to take longer than ``DEADLINE``."""
        request: Callable[[], httpx.Response] = lambda: self.client.request(method, path, **kwargs)  # noqa: E731
        started = time.monotonic()
        try:
            response = await asyncio.wait_for(asyncio.to_thread(request), DEADLINE)
        except TimeoutError:
            pytest.fail(f"{method} {path} did not answer within {DEADLINE}s")
        assert time.monotonic() - started < DEADLINE
        return response


@pytest.fixture(scope="module")
def proxies(settings: Settings) -> Iterator[tuple[TcpProxy, TcpProxy]]:
    assert settings.database_url is not None
    assert settings.s3_endpoint is not None
    db_proxy = TcpProxy(postgres_upstream(settings.database_url)).start()
    s3_proxy = TcpProxy(http_upstream(settings.s3_endpoint)).start()
    yield db_proxy, s3_proxy
    db_proxy.close()
    s3_proxy.close()


@pytest_asyncio.fixture(loop_scope="session")
async def outage(settings: Settings, proxies: tuple[TcpProxy, TcpProxy]) -> AsyncIterator[Outage]:
    db_proxy, s3_proxy = proxies
    db_proxy.start()
    s3_proxy.start()
    assert settings.database_url is not None
    assert settings.s3_endpoint is not None
    proxied = dataclasses.replace(
        settings,
        database_url=proxied_database_url(settings.database_url, db_proxy),
        s3_endpoint=proxied_endpoint(settings.s3_endpoint, s3_proxy),
    )
    with TestClient(app=create_app(proxied), base_url="http://testserver.local") as client:
        yield Outage(client, db_proxy, s3_proxy)
        # Whatever a test did, leave the dependencies up so the app shuts down cleanly.
        db_proxy.start()
        s3_proxy.start()


def assert_unavailable(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    if response.headers["content-type"].startswith(PROBLEM):
        body: dict[str, Any] = response.json()
        assert body["status"] == 503
        assert body["type"] == "dependency-unavailable"
        assert body["title"]
        assert body["detail"]
        return body
    return {}


def assert_unavailable_problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers.get("content-type", "").startswith(PROBLEM), response.headers
    return assert_unavailable(response)


async def test_proxied_app_works(outage: Outage, db: asyncpg.Connection) -> None:
    """The control: through the proxies, the app is ready and serves requests."""
    for _ in range(5):  # /readyz gives each check 1.5 s, which a cold start on a busy machine may need more than
        ready = await outage.call("GET", "/readyz")
        if ready.status_code == 200:
            break
    assert ready.status_code == 200, ready.text
    email = unique_email("proxied")
    created = await outage.call(
        "POST", "/api/v1/users", json={"email": email, "password": PASSWORD, "display_name": "P"}
    )
    assert created.status_code == 201, created.text
    assert outage.db_proxy.connections_seen > 0
    assert outage.s3_proxy.connections_seen > 0


async def test_database_down_answers_503_and_recovers(
    outage: Outage, client: AsyncTestClient[Litestar], db: asyncpg.Connection
) -> None:
    account = await sign_up(client)  # through the shared app, straight to the database
    org = await make_org(client, account)
    key = await client.post(
        "/api/v1/api-keys",
        json={
            "name": "outage",
            "org": org,
            "scopes": ["catalog:read"],
            "expires_at": (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat(),
        },
        headers=account.headers,
    )
    assert key.status_code == 201, key.text
    api_key_headers = {"Authorization": f"Bearer {key.json()['key']}"}
    # Warm the pool so the outage also breaks connections the app already holds.
    assert (await outage.call("GET", "/api/v1/me", headers=account.headers)).status_code == 200

    outage.db_proxy.stop()
    email = unique_email("during-outage")
    signup = {"email": email, "password": PASSWORD, "display_name": "Outage"}

    assert_unavailable_problem(await outage.call("POST", "/api/v1/users", json=signup))
    assert_unavailable_problem(await outage.call("GET", "/api/v1/me", headers=account.headers))
    assert_unavailable_problem(await outage.call("GET", "/api/v1/me", headers=api_key_headers))
    login = {"grant_type": "password", "username": account.email, "password": PASSWORD}
    assert_unavailable_problem(await outage.call("POST", "/api/v1/auth/token", json=login))
    ready = await outage.call("GET", "/readyz")
    assert_unavailable(ready)
    assert ready.json()["checks"]["database"].startswith("unavailable")
    assert ready.json()["checks"]["object_store"] == "ok"
    # Liveness does not depend on the database.
    assert (await outage.call("GET", "/healthz")).status_code == 200

    assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 0

    outage.db_proxy.start()
    assert (await outage.call("GET", "/readyz")).status_code == 200
    created = await outage.call("POST", "/api/v1/users", json=signup)
    assert created.status_code == 201, created.text
    me = await outage.call("GET", "/api/v1/me", headers=account.headers)
    assert me.status_code == 200, me.text
    assert me.json()["id"] == account.id
    assert (await outage.call("GET", "/api/v1/me", headers=api_key_headers)).status_code == 200
    assert (await outage.call("POST", "/api/v1/auth/token", json=login)).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 1


async def test_database_hanging_answers_503(outage: Outage, db: asyncpg.Connection) -> None:
    """A database that accepts connections but never answers: the app gives up and says so."""
    assert (await outage.call("GET", "/readyz")).status_code == 200
    outage.db_proxy.blackhole()
    attempts = outage.db_proxy.connections_seen
    email = unique_email("hang")
    signup = {"email": email, "password": PASSWORD, "display_name": "Hang"}
    # The first request may fail fast on a pooled connection that the cut killed; by the second at the
    # latest the app opens a new connection into the silence and must time out on its own.
    for _ in range(2):
        assert_unavailable_problem(await outage.call("POST", "/api/v1/users", json=signup))
    assert outage.db_proxy.connections_seen > attempts, "no new connection was tried against the hung database"
    outage.db_proxy.start()
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 0
    created = await outage.call("POST", "/api/v1/users", json=signup)
    assert created.status_code == 201, created.text


async def test_object_store_down_makes_readyz_503_and_recovers(outage: Outage) -> None:
    assert (await outage.call("GET", "/readyz")).status_code == 200
    outage.s3_proxy.stop()
    ready = await outage.call("GET", "/readyz")
    assert_unavailable(ready)
    assert ready.json()["checks"]["object_store"].startswith("unavailable")
    assert ready.json()["checks"]["database"] == "ok"
    outage.s3_proxy.start()
    recovered = await outage.call("GET", "/readyz")
    assert recovered.status_code == 200, recovered.text
    assert recovered.json()["checks"] == {"database": "ok", "object_store": "ok"}


async def test_object_store_hanging_makes_readyz_503(outage: Outage) -> None:
    assert (await outage.call("GET", "/readyz")).status_code == 200
    outage.s3_proxy.blackhole()
    ready = await outage.call("GET", "/readyz")
    assert_unavailable(ready)
    assert ready.json()["checks"]["object_store"].startswith("unavailable")
    outage.s3_proxy.start()
    assert (await outage.call("GET", "/readyz")).status_code == 200
