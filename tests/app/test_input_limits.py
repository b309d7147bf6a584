"""Limits every request keeps whatever its schema: JSON depth, 64-bit integers, sane dates; and the token
endpoint's form bodies (RFC 6749 §4.3). Each limit is tried past its edge (refused, nothing changed) and at it
(accepted)."""

from __future__ import annotations

import copy
import json
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.validation import MAX_JSON_DEPTH
from tests.app.test_bad_input import assert_problem, counts, error_fields
from tests.catalog.helpers import PROVENANCE, make_product
from tests.conftest import PASSWORD, make_org, sign_up, unique_email

Client = AsyncTestClient[Litestar]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


RAW = "raw-json-goes-here"


def nested(depth: int) -> str:
    """JSON text nesting arrays and objects ``depth`` deep (too deep for json.dumps to write)."""
    opening = "".join('{"k":' if n % 2 else "[" for n in range(depth - 1))
    closing = "".join("}" if n % 2 else "]" for n in reversed(range(depth - 1)))
    return f'{opening}"leaf"{closing}'


def provenance_with(parameters: Any) -> dict[str, Any]:
    provenance = copy.deepcopy(PROVENANCE)
    provenance["activities"] = [{"stage": "clean", "description": "dedup", "parameters": {"p": parameters}}]
    return provenance


async def post_version(
    client: Client, headers: dict[str, str], slug: str, version: str, provenance: Any, raw: str = ""
) -> Any:
    body = {"version": version, "changelog": "c", "licence_id": "CC-BY-4.0", "provenance": provenance}
    content = json.dumps(body).replace(f'"{RAW}"', raw)
    return await client.post(f"/api/v1/products/{slug}/versions", content=content, headers=headers)


async def test_deep_json_in_a_free_form_field_is_refused(client: Client, db: asyncpg.Connection) -> None:
    owner = await sign_up(client)
    slug = await make_product(client, owner, await make_org(client, owner))
    headers = {**owner.headers, "Content-Type": "application/json"}
    before = await counts(db)
    # Thousands of levels used to end in a RecursionError (500).
    refused = await post_version(client, headers, slug, "1.0.0", provenance_with(RAW), nested(5000))
    assert "deep" in assert_problem(refused, 422, "validation-error")["detail"]
    refused = await post_version(client, headers, slug, "1.0.0", provenance_with(RAW), nested(MAX_JSON_DEPTH))
    assert_problem(refused, 422, "validation-error")
    assert await counts(db) == before
    # At the limit (the body's own object and the fields around the value take five levels): accepted.
    accepted = await post_version(client, headers, slug, "1.0.0", provenance_with(RAW), nested(MAX_JSON_DEPTH - 5))
    assert accepted.status_code == 201, accepted.text


async def test_brackets_inside_strings_do_not_count_as_depth(client: Client) -> None:
    owner = await sign_up(client)
    slug = await make_product(client, owner, await make_org(client, owner))
    headers = {**owner.headers, "Content-Type": "application/json"}
    text = '[{"\\"' * 2000
    accepted = await post_version(client, headers, slug, "1.0.0", provenance_with(text))
    assert accepted.status_code == 201, accepted.text


async def test_an_integer_beyond_64_bits_is_refused(client: Client, db: asyncpg.Connection) -> None:
    owner = await sign_up(client)
    slug = await make_product(client, owner, await make_org(client, owner))
    headers = {**owner.headers, "Content-Type": "application/json"}
    before = await counts(db)
    refused = await post_version(client, headers, slug, "1.0.0", provenance_with(2**70))
    assert "provenance.activities[0].parameters.p" in error_fields(assert_problem(refused, 422, "validation-error"))
    assert await counts(db) == before


@pytest.mark.parametrize(
    "moment",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1000-01-01T00:00:00Z", "2999-01-01T00:00:00Z"],
)
async def test_audit_listings_refuse_dates_outside_a_sane_range(client: Client, moment: str) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    for name in ("since", "until"):
        for path in ("/api/v1/audit/events", "/api/v1/audit/export"):
            refused = await client.get(path, params={"org": org, name: moment}, headers=owner.headers)
            assert name in error_fields(assert_problem(refused, 422, "validation-error")), refused.text
    fine = await client.get(
        "/api/v1/audit/events", params={"org": org, "since": "2020-01-01T00:00:00+14:00"}, headers=owner.headers
    )
    assert fine.status_code == 200, fine.text


@pytest.mark.parametrize("expires_at", ["9999-12-31T23:59:59-14:00", "2500-01-01T00:00:00Z", "0001-01-01T00:00:00Z"])
async def test_api_key_expiry_far_away_is_refused(client: Client, db: asyncpg.Connection, expires_at: str) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    before = await counts(db)
    refused = await client.post(
        "/api/v1/api-keys",
        json={"name": "k", "org": org, "scopes": ["catalog:read"], "expires_at": expires_at},
        headers=owner.headers,
    )
    assert "expires_at" in error_fields(assert_problem(refused, 422, "validation-error"))
    assert await counts(db) == before


async def test_token_endpoint_takes_oauth_forms(client: Client) -> None:
    account = await sign_up(client)
    signed_in = await client.post(
        "/api/v1/auth/token",
        content=f"grant_type=password&username={account.email.replace('@', '%40')}"
        f"&password={PASSWORD.replace(' ', '+')}&scope=",
        headers=FORM,
    )
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["token_type"] == "Bearer"
    refreshed = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": signed_in.json()["refresh_token"]},
    )
    assert refreshed.status_code == 200, refreshed.text
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {refreshed.json()['access_token']}"})
    assert me.json()["email"] == account.email


@pytest.mark.parametrize(
    ("form", "status", "field"),
    [
        ("grant_type=password&username=a%40b.co&username=c%40d.co&password=x", 422, "username"),
        ("grant_type=client_credentials&client_id=x", 422, None),
        ("grant_type=password&username=a%40b.co", 422, "password"),
        ("grant_type=password&username=a%40b.co&password=x&extra=1", 422, "extra"),
    ],
)
async def test_bad_token_forms_are_refused(client: Client, form: str, status: int, field: str | None) -> None:
    refused = await client.post("/api/v1/auth/token", content=form, headers=FORM)
    body = assert_problem(refused, status)
    if field is not None:
        assert field in error_fields(body), body


async def test_a_form_is_still_refused_where_only_json_is_taken(client: Client) -> None:
    refused = await client.post(
        "/api/v1/users", data={"email": unique_email(), "password": PASSWORD, "display_name": "F"}
    )
    assert_problem(refused, 415, "unsupported-media-type")


async def test_the_schema_shows_both_token_body_types(client: Client) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    content = document["paths"]["/api/v1/auth/token"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-www-form-urlencoded"}
    assert content["application/json"]["schema"] == content["application/x-www-form-urlencoded"]["schema"]
