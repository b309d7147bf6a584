"""The client address that audit events and login throttling see: the TCP peer, or, behind a trusted
reverse proxy, the nearest untrusted hop of X-Forwarded-For; a forged header from anyone else is ignored."""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
from typing import Any

import asyncpg
import httpx
import pytest

from app.auth.middleware import client_address
from app.main import create_app
from app.settings import Settings, SettingsError
from tests.conftest import PASSWORD, sequence_audit, unique_email

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("192.0.2.10", "203.0.113.7", "192.0.2.10"),  # not from a proxy: the header is anyone's to forge
        ("10.1.2.3", None, "10.1.2.3"),
        ("10.1.2.3", "203.0.113.7", "203.0.113.7"),
        ("10.1.2.3", "198.51.100.1, 203.0.113.7, 10.0.0.9", "203.0.113.7"),  # left of the client: forgeable
        ("fd00::1", "2001:db8::5", "2001:db8::5"),
        ("10.1.2.3", "10.0.0.1, 10.0.0.2", "10.0.0.1"),  # proxies all the way: the first one
        ("10.1.2.3", "not-an-address", "10.1.2.3"),
        ("10.1.2.3", "198.51.100.1, 203.0.113.7:4431", "10.1.2.3"),  # an unreadable hop: the proxy it came from
        (None, "203.0.113.7", None),
    ],
)
def test_client_address(peer: str | None, forwarded_for: str | None, expected: str | None) -> None:
    assert client_address(peer, forwarded_for, PROXIES) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address("10.1.2.3", "203.0.113.7", ()) == "10.1.2.3"


def test_trusted_proxies_setting() -> None:
    settings = Settings.from_env({"CORPORA_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1 ,fd00::/8"})
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.1/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert Settings.from_env(settings.as_env()).trusted_proxies == settings.trusted_proxies
    with pytest.raises(SettingsError, match="CORPORA_TRUSTED_PROXIES"):
        Settings.from_env({"CORPORA_TRUSTED_PROXIES": "10.0.0.0/8,proxy.internal"})


async def _signed_up_from(settings: Settings, db: asyncpg.Connection, peer: str, forwarded_for: list[str]) -> Any:
    """Sign up through an app whose TCP peer is ``peer``, with an X-Forwarded-For line per item of
    ``forwarded_for``; the address its audit event recorded."""
    request_id = f"xff-{secrets.token_hex(6)}"
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as api:
            created = await api.post(
                "/api/v1/users",
                json={"email": unique_email(), "password": PASSWORD, "display_name": "xff"},
                headers=[("X-Request-Id", request_id), *(("X-Forwarded-For", line) for line in forwarded_for)],
            )
    finally:
        await app.state.engine.dispose()
    assert created.status_code == 201, created.text
    await sequence_audit(db)
    return await db.fetchval("SELECT client_addr FROM audit_events WHERE request_id = $1", request_id)


async def test_audit_records_the_forwarded_client_only_behind_a_trusted_proxy(
    settings: Settings, db: asyncpg.Connection
) -> None:
    behind_proxy = dataclasses.replace(settings, trusted_proxies=PROXIES)
    assert await _signed_up_from(behind_proxy, db, "10.1.2.3", ["203.0.113.7"]) == "203.0.113.7"
    assert await _signed_up_from(behind_proxy, db, "192.0.2.10", ["203.0.113.7"]) == "192.0.2.10"
    assert await _signed_up_from(settings, db, "10.1.2.3", ["203.0.113.7"]) == "10.1.2.3"
    # The client's own line first, the proxy's after it: the proxy's line names the client.
    assert await _signed_up_from(behind_proxy, db, "10.1.2.3", ["198.51.100.1", "203.0.113.7"]) == "203.0.113.7"
