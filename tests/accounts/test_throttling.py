"""Sign-in and sign-up throttles, tried the way an attacker would: concurrently, from one address and from many.

Addresses come from a trusted proxy's ``X-Forwarded-For`` (the production path for a service behind a load
balancer), so one app instance sees many clients; the app is served over real HTTP, so requests sent at once
are handled at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
from litestar.testing import AsyncTestClient

from app.auth.service import ACCOUNT_FAILURE_FACTOR
from app.main import create_app
from app.settings import Settings
from tests.accounts.test_auth import BASE_URL, WRONG_PASSWORD, FromAddress, assert_problem
from tests.conftest import PASSWORD, sequence_audit, sign_up, unique_email
from tests.live_server import live_server

PROXY = "127.0.0.1"


@contextlib.asynccontextmanager
async def behind_proxy(settings: Settings, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a new app instance, served over real HTTP (requests run concurrently), that believes
    ``X-Forwarded-For`` from its proxy at 127.0.0.1."""
    configured = dataclasses.replace(settings, trusted_proxies=(ipaddress.ip_network(f"{PROXY}/32"),), **changes)
    with live_server(create_app(configured)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as proxied:
            yield proxied


def address(n: int) -> str:
    return f"198.51.100.{n}"


def via(client_address: str) -> dict[str, str]:
    return {"X-Forwarded-For": client_address}


async def login_from(client: httpx.AsyncClient, client_address: str, email: str, password: str) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/token",
        json={"grant_type": "password", "username": email, "password": password},
        headers=via(client_address),
    )


async def failed_checks(db: asyncpg.Connection, user_id: str) -> int:
    await sequence_audit(db)
    count: int = await db.fetchval(
        "SELECT count(*) FROM audit_events WHERE action = 'auth.login_failed' AND target_id = $1", user_id
    )
    return count


async def test_concurrent_wrong_passwords_check_no_more_than_the_limit(
    client: AsyncTestClient[Any], settings: Settings, db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    attempts = 40
    async with behind_proxy(settings) as proxied:
        answers = await asyncio.gather(
            *(login_from(proxied, address(10), account.email, WRONG_PASSWORD) for _ in range(attempts))
        )
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {401: settings.login_max_failures, 429: attempts - settings.login_max_failures}, statuses
    for answer in answers:
        if answer.status_code == 429:
            assert_problem(answer, 429, "login-throttled")
            assert int(answer.headers["retry-after"]) > 0
    # Each 401 is one password actually checked and audited; the refused ones never reached the check.
    assert await failed_checks(db, account.id) == settings.login_max_failures


async def test_failures_from_one_address_do_not_lock_the_account_elsewhere(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    account = await sign_up(client)
    async with behind_proxy(settings) as proxied:
        for _ in range(settings.login_max_failures):
            assert_problem(await login_from(proxied, address(20), account.email, WRONG_PASSWORD), 401)
        # Address A is locked out of the account, even with the right password...
        assert_problem(await login_from(proxied, address(20), account.email, PASSWORD), 429, "login-throttled")
        # ...address B signs in.
        signed_in = await login_from(proxied, address(21), account.email, PASSWORD)
        assert signed_in.status_code == 200, signed_in.text
        assert signed_in.json()["access_token"]


async def test_guessing_spread_over_many_addresses_meets_the_account_ceiling_exactly(
    client: AsyncTestClient[Any], settings: Settings, db: asyncpg.Connection
) -> None:
    """One failure allowed per address: the account-wide ceiling still stops a botnet, exactly, under concurrency."""
    account = await sign_up(client)
    ceiling = ACCOUNT_FAILURE_FACTOR  # login_max_failures=1
    attempts = ceiling + 15
    async with behind_proxy(settings, login_max_failures=1) as proxied:
        answers = await asyncio.gather(
            *(login_from(proxied, f"203.0.113.{n + 1}", account.email, WRONG_PASSWORD) for n in range(attempts))
        )
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {401: ceiling, 429: attempts - ceiling}, statuses
    assert await failed_checks(db, account.id) == ceiling


async def test_a_locked_address_does_not_push_the_account_towards_its_ceiling(
    client: AsyncTestClient[Any], settings: Settings, db: asyncpg.Connection
) -> None:
    """Refused attempts count nowhere: one address hammering a locked account cannot lock it for everyone."""
    account = await sign_up(client)
    async with behind_proxy(settings, login_max_failures=1) as proxied:
        assert_problem(await login_from(proxied, address(30), account.email, WRONG_PASSWORD), 401)
        for _ in range(ACCOUNT_FAILURE_FACTOR + 5):
            assert_problem(await login_from(proxied, address(30), account.email, WRONG_PASSWORD), 429)
        assert (await login_from(proxied, address(31), account.email, PASSWORD)).status_code == 200
    assert await failed_checks(db, account.id) == 1


async def sign_up_from(client: httpx.AsyncClient, client_address: str | None, email: str) -> httpx.Response:
    return await client.post(
        "/api/v1/users",
        json={"email": email, "password": PASSWORD, "display_name": "Someone"},
        headers=via(client_address) if client_address else None,
    )


async def test_sign_up_is_throttled_per_client_address(client: AsyncTestClient[Any], settings: Settings) -> None:
    limit = 3
    async with behind_proxy(settings, signup_max_per_address=limit) as proxied:
        for _ in range(limit):
            assert (await sign_up_from(proxied, address(40), unique_email("signup"))).status_code == 201
        refused_email = unique_email("signup")
        refused = await sign_up_from(proxied, address(40), refused_email)
        assert_problem(refused, 429, "signup-throttled")
        assert 0 < int(refused.headers["retry-after"]) <= settings.signup_window_seconds
        # Nothing was created for the refused sign-up; another address still signs up.
        token = await proxied.post(
            "/api/v1/auth/token", json={"grant_type": "password", "username": refused_email, "password": PASSWORD}
        )
        assert token.status_code == 401
        assert (await sign_up_from(proxied, address(41), unique_email("signup"))).status_code == 201


async def test_a_forged_forwarded_for_from_an_untrusted_peer_does_not_escape_the_sign_up_limit(
    settings: Settings,
) -> None:
    limit = 2
    configured = dataclasses.replace(
        settings, trusted_proxies=(ipaddress.ip_network(f"{PROXY}/32"),), signup_max_per_address=limit
    )
    # An address no other test signs up from (192.0.2.x is used elsewhere): a shared one would count their
    # sign-ups against this limit.
    peer = str(ipaddress.ip_address("198.18.0.0") + uuid.uuid4().int % 2**17)
    async with AsyncTestClient(app=FromAddress(create_app(configured), peer), base_url=BASE_URL) as direct:
        answers = [await sign_up_from(direct, address(50 + n), unique_email("forged")) for n in range(limit + 1)]
    assert [a.status_code for a in answers] == [201] * limit + [429]


async def test_concurrent_password_hashing_is_bounded(client: AsyncTestClient[Any], settings: Settings) -> None:
    """With one hash at a time and a short queue, a burst of sign-ups is answered 201 or 429, never queued
    without end and never a 5xx."""
    burst = 30
    async with behind_proxy(settings, password_hash_concurrency=1) as proxied:
        answers = await asyncio.gather(
            *(sign_up_from(proxied, address(60 + n), unique_email("burst")) for n in range(burst))
        )
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) == {201, 429}, statuses
    assert statuses[201] >= 1
    for answer in answers:
        if answer.status_code == 429:
            assert_problem(answer, 429, "busy")
            assert answer.headers["retry-after"] == "1"
