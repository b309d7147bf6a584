"""Metered usage: the buyer's view per entitlement, product and day, the provider's aggregated view, CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from tests.conftest import sign_up
from tests.licensing.helpers import download_body, market


async def test_buyer_and_provider_see_their_usage_and_nothing_else(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    m = await market(client, db)
    a, b = len(m.files["data/a.txt"]), len(m.files["data/b.txt"])
    grants = []
    for path in ("data/a.txt", "data/a.txt", "data/b.txt"):
        granted = await client.post("/api/v1/downloads", json=download_body(m, path), headers=m.buyer.headers)
        assert granted.status_code == 201, granted.text
        grants.append(granted.json()["download_id"])
    refreshed = await client.post(
        "/api/v1/downloads/refresh", json={"download_ids": grants[:1]}, headers=m.buyer.headers
    )
    assert refreshed.status_code == 200, refreshed.text  # a refresh is not a new grant: usage does not change
    today = dt.datetime.now(dt.UTC).date().isoformat()

    mine = (await client.get("/api/v1/usage", headers=m.buyer.headers)).json()
    assert mine["buyer"] == [
        {
            "entitlement_id": m.entitlement_id,
            "buyer_org": m.buyer_org,
            "product": m.product,
            "day": today,
            "grants": 3,
            "bytes_charged": 2 * a + b,
            "bytes_served": 0,  # presigned: the bytes go straight from the object store
        }
    ]
    assert mine["provider"] == []

    theirs = (await client.get("/api/v1/usage", headers=m.provider.headers)).json()
    assert theirs["buyer"] == []
    # Aggregated per product and buyer org: no entitlement, member or download named.
    assert theirs["provider"] == [
        {
            "product": m.product,
            "buyer_org": m.buyer_org,
            "day": today,
            "grants": 3,
            "bytes_charged": 2 * a + b,
            "bytes_served": 0,
        }
    ]

    stranger = (await client.get("/api/v1/usage", headers=(await sign_up(client)).headers)).json()
    assert (stranger["buyer"], stranger["provider"]) == ([], [])


async def test_usage_as_csv(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    m = await market(client, db)
    granted = await client.post("/api/v1/downloads", json=download_body(m, "data/b.txt"), headers=m.buyer.headers)
    assert granted.status_code == 201, granted.text

    response = await client.get("/api/v1/usage", headers={**m.buyer.headers, "Accept": "text/csv"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows == [
        {
            "view": "buyer",
            "day": dt.datetime.now(dt.UTC).date().isoformat(),
            "product": m.product,
            "buyer_org": m.buyer_org,
            "entitlement_id": m.entitlement_id,
            "grants": "1",
            "bytes_charged": str(len(m.files["data/b.txt"])),
            "bytes_served": "0",
        }
    ]

    # CSV only when it is preferred: a client that refuses it, or asks for anything, gets JSON.
    for accept in ("text/csv;q=0, application/json", "*/*", "application/json;q=0.9, text/csv;q=0.5"):
        answer = await client.get("/api/v1/usage", headers={**m.buyer.headers, "Accept": accept})
        assert answer.headers["content-type"].startswith("application/json"), accept
        assert answer.json()["buyer"][0]["grants"] == 1


async def test_usage_needs_a_scope_and_a_sane_period(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    m = await market(client, db)
    key = await client.post(
        "/api/v1/api-keys",
        json={
            "name": "catalogue only",
            "org": m.buyer_org,
            "scopes": ["catalog:read"],
            "expires_at": (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat(),
        },
        headers=m.buyer.headers,
    )
    assert key.status_code == 201, key.text
    refused = await client.get("/api/v1/usage", headers={"Authorization": f"Bearer {key.json()['key']}"})
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    for days in ("0", "367", "soon"):
        bad = await client.get(f"/api/v1/usage?days={days}", headers=m.buyer.headers)
        assert bad.status_code == 422, (days, bad.text)
        assert [e["field"] for e in bad.json()["errors"]] == ["days"]
