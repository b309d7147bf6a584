"""Shared fixtures: a real PostgreSQL and a real S3 server for the whole run, a fresh database and bucket
per test process.

With ``CORPORA_DATABASE_URL`` / ``CORPORA_S3_ENDPOINT`` set, those servers are used (a new database
and a new bucket are created on them); otherwise embedded ones are started once, in a temporary dir.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.engine import make_url

from app.embedded import start_postgres, start_seaweedfs
from app.jobs.worker import drain, open_deps
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings

PASSWORD = "correct horse battery staple"
pytest_plugins = ["tests.webhook_helpers"]  # the webhook receiver and loopback-egress fixtures
METRICS_TOKEN = "metrics-scrape-token"
METRICS_HEADERS = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; return its URL."""
    connection = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@dataclasses.dataclass(frozen=True)
class Servers:
    database_url: str  # a fresh, migrated database for this run
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str
    data_dir: Path


# Set by the process that started the embedded servers, read by every test process (xdist workers included).
_STARTED_DATABASE = "CORPORA_TEST_SERVER_URL"
_STARTED_S3 = "CORPORA_TEST_S3_ENDPOINT"
S3_ACCESS_KEY, S3_SECRET_KEY = "corpora-test", "corpora-test-secret"


def pytest_configure(config: pytest.Config) -> None:
    """Start one embedded PostgreSQL and one SeaweedFS for the whole run, before xdist starts its workers.

    Each test process then creates its own database and bucket on them. Servers named by
    ``CORPORA_DATABASE_URL`` / ``CORPORA_S3_ENDPOINT`` are used instead when set.
    """
    if hasattr(config, "workerinput") or os.environ.get(_STARTED_DATABASE):
        return
    # Not pytest's tmp_path: it prunes old numbered dirs, which would pull the data from under a server
    # that another test run (in parallel) still uses. Removed at exit, after the embedded servers stop.
    path = Path(tempfile.mkdtemp(prefix="corpora-test-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    if not os.environ.get("CORPORA_DATABASE_URL"):
        os.environ[_STARTED_DATABASE] = start_postgres(path)
    if not os.environ.get("CORPORA_S3_ENDPOINT"):
        seaweed = start_seaweedfs(path, S3_ACCESS_KEY, S3_SECRET_KEY)
        atexit.register(seaweed.stop)
        os.environ[_STARTED_S3] = seaweed.endpoint


@pytest.fixture(scope="session")
def servers_dir() -> Path:
    """This test process's own directory (signing keys and other local state)."""
    path = Path(tempfile.mkdtemp(prefix="corpora-test-worker-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def servers(servers_dir: Path) -> Servers:
    server_url = os.environ.get("CORPORA_DATABASE_URL") or os.environ[_STARTED_DATABASE]
    database_url = await create_database(server_url, f"corpora_test_{secrets.token_hex(4)}")
    await asyncio.to_thread(upgrade, database_url)
    if os.environ.get("CORPORA_S3_ENDPOINT"):
        endpoint = os.environ["CORPORA_S3_ENDPOINT"]
        access = os.environ.get("CORPORA_S3_ACCESS_KEY", "")
        secret = os.environ.get("CORPORA_S3_SECRET_KEY", "")
    else:
        endpoint, access, secret = os.environ[_STARTED_S3], S3_ACCESS_KEY, S3_SECRET_KEY
    return Servers(
        database_url=database_url,
        s3_endpoint=endpoint,
        s3_access_key=access,
        s3_secret_key=secret,
        s3_bucket=f"corpora-test-{secrets.token_hex(4)}",
        data_dir=servers_dir,
    )


@pytest.fixture(scope="session")
def settings(servers: Servers) -> Settings:
    return Settings(
        database_url=servers.database_url,
        s3_endpoint=servers.s3_endpoint,
        s3_access_key=servers.s3_access_key,
        s3_secret_key=servers.s3_secret_key,
        s3_bucket=servers.s3_bucket,
        data_dir=servers.data_dir,
        login_max_failures=5,
        login_window_seconds=60,
        # Every test signs up from the test client's one address.
        signup_max_per_address=1_000_000,
        max_body_bytes=64 * 1024,
        metrics_token=METRICS_TOKEN,
        # No background sequencer: a test sequences recorded audit events when it reads them (sequence_audit),
        # so nothing appends to the log behind its back.
        audit_sequence_every_ms=0,
    )


@pytest.fixture(scope="session")
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app, base_url="http://testserver.local") as test_client:
        yield test_client


RunJobs = Callable[..., Awaitable[None]]


@pytest_asyncio.fixture(loop_scope="session")
async def run_jobs(app: Litestar, settings: Settings) -> AsyncIterator[RunJobs]:
    """``await run_jobs()`` runs every job that is due, in-process, until the queue has none due.

    A job that raises fails the test (``raise_errors=False`` to let retries happen quietly); jobs scheduled
    for later (retries with backoff) stay queued.
    """
    async with open_deps(settings, keyring=app.state.keyring, pool_size=2) as deps:

        async def run(*, raise_errors: bool = True, concurrency: int = 1) -> None:
            errors: list[BaseException] = []
            await drain(deps, concurrency=concurrency, errors=errors)
            if errors and raise_errors:
                raise errors[0]

        yield run


@pytest_asyncio.fixture(loop_scope="session")
async def db(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    """A direct superuser connection to the test database, for arranging and inspecting state."""
    connection = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    yield connection
    await connection.close()


async def sequence_audit(db: asyncpg.Connection) -> int:
    """Sequence every committed audit event into the log now, as the service's sequencer does shortly after each
    commit; how many. Call it before reading audit events that requests recorded."""
    total = 0
    while sequenced := await db.fetchval("SELECT audit_sequence(10000)"):
        total += sequenced
    return total


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def unique_slug(prefix: str = "org") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclasses.dataclass
class Account:
    id: str
    email: str
    token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def sign_up(client: AsyncTestClient[Any], email: str | None = None) -> Account:
    email = email or unique_email()
    created = await client.post(
        "/api/v1/users", json={"email": email, "password": PASSWORD, "display_name": email.split("@")[0]}
    )
    assert created.status_code == 201, created.text
    token = await client.post(
        "/api/v1/auth/token", json={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    assert token.status_code == 200, token.text
    body = token.json()
    return Account(created.json()["id"], email, body["access_token"], body["refresh_token"])


async def make_org(client: AsyncTestClient[Any], owner: Account, kind: str = "both") -> str:
    slug = unique_slug()
    response = await client.post(
        "/api/v1/orgs", json={"slug": slug, "name": f"Org {slug}", "kind": kind}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    return slug


async def grant_platform_role(
    client: AsyncTestClient[Any], db: asyncpg.Connection, account: Account, role: str
) -> Account:
    """Grant a platform role directly in the database and sign in again so the token carries it."""
    await db.execute("INSERT INTO platform_role_grants (user_id, role) VALUES ($1, $2)", uuid.UUID(account.id), role)
    token = await client.post(
        "/api/v1/auth/token", json={"grant_type": "password", "username": account.email, "password": PASSWORD}
    )
    assert token.status_code == 200, token.text
    body = token.json()
    return dataclasses.replace(account, token=body["access_token"], refresh_token=body["refresh_token"])
