"""GET /me is served from a per-process cache; changes committed anywhere must still show at once or within
the delivery of PostgreSQL's notification, also after the listening connection was lost."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from app.accounts.me_cache import LISTENER_NAME
from tests.conftest import Account, make_org, sign_up


async def eventually(check: Callable[[], Awaitable[bool]], *, seconds: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


async def me_org_names(client: AsyncTestClient[Any], account: Account) -> dict[str, str]:
    response = await client.get("/api/v1/me", headers=account.headers)
    assert response.status_code == 200, response.text
    return {org["slug"]: org["name"] for org in response.json()["orgs"]}


async def org_made_elsewhere(db: asyncpg.Connection) -> tuple[uuid.UUID, str]:
    """An organisation written straight to the database, as another service process would."""
    slug = f"elsewhere-{uuid.uuid4().hex[:8]}"
    org_id = await db.fetchval(
        "INSERT INTO organizations (id, slug, name, kind) VALUES ($1, $2, $3, 'buyer') RETURNING id",
        uuid.uuid4(),
        slug,
        "Elsewhere",
    )
    return org_id, slug


async def listening(db: asyncpg.Connection) -> bool:
    """Whether the app's cache holds its LISTEN connection (only then does it cache anything)."""
    count = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
        LISTENER_NAME,
    )
    return bool(count)


async def test_me_reads_its_own_writes(client: AsyncTestClient[Any]) -> None:
    owner = await sign_up(client)
    assert await me_org_names(client, owner) == {}
    slug = await make_org(client, owner)
    assert slug in await me_org_names(client, owner)  # no wait: the writing process evicts at commit


async def test_me_sees_changes_committed_by_other_processes(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    assert await eventually(lambda: listening(db), seconds=10)
    user = await sign_up(client)
    await make_org(client, user)
    await me_org_names(client, user)  # now cached

    org_id, slug = await org_made_elsewhere(db)
    await db.execute(
        "INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, 'member')", org_id, uuid.UUID(user.id)
    )
    assert await eventually(lambda: _has_org(client, user, slug)), "a membership added elsewhere never showed"

    await db.execute("UPDATE organizations SET name = 'Renamed' WHERE id = $1", org_id)
    assert await eventually(lambda: _org_named(client, user, slug, "Renamed")), "an org rename never showed"

    await db.execute("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2", org_id, uuid.UUID(user.id))
    assert await eventually(lambda: _lacks_org(client, user, slug)), "a removed membership kept showing"

    await db.execute("UPDATE users SET disabled_at = now() WHERE id = $1", uuid.UUID(user.id))

    async def refused() -> bool:
        return (await client.get("/api/v1/me", headers=user.headers)).status_code == 401

    assert await eventually(refused), "a disabled account kept its /me answer"


async def test_me_stays_fresh_after_losing_the_listening_connection(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    assert await eventually(lambda: listening(db), seconds=10)
    user = await sign_up(client)
    await me_org_names(client, user)  # cached

    terminated = await db.fetchval(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = $1 AND datname = current_database()) AS t",
        LISTENER_NAME,
    )
    assert terminated >= 1
    org_id, slug = await org_made_elsewhere(db)
    await db.execute(
        "INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, 'member')", org_id, uuid.UUID(user.id)
    )
    assert await eventually(lambda: _has_org(client, user, slug)), "a change made while not listening never showed"

    assert await eventually(lambda: listening(db), seconds=10), "the cache never listened again"
    await me_org_names(client, user)  # cached again
    await db.execute("UPDATE organizations SET name = 'After reconnect' WHERE id = $1", org_id)
    assert await eventually(lambda: _org_named(client, user, slug, "After reconnect"))


async def _has_org(client: AsyncTestClient[Any], user: Account, slug: str) -> bool:
    return slug in await me_org_names(client, user)


async def _lacks_org(client: AsyncTestClient[Any], user: Account, slug: str) -> bool:
    return slug not in await me_org_names(client, user)


async def _org_named(client: AsyncTestClient[Any], user: Account, slug: str, name: str) -> bool:
    return (await me_org_names(client, user)).get(slug) == name
