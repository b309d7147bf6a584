"""Bad input to the catalogue gets a clear 4xx problem and stores nothing; others' products stay out of reach."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tests.catalog.helpers import PROVENANCE, make_product, make_version, unique_product_slug, upload
from tests.conftest import Account, make_org, sequence_audit, sign_up

SHA = hashlib.sha256(b"x").hexdigest()


async def _provider(client: AsyncTestClient[Any]) -> tuple[Account, str, str]:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    slug = await make_product(client, owner, org)
    await make_version(client, owner, slug)
    return owner, org, slug


def _assert_problem(response: Any, status: int, type_: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    if type_ is not None:
        assert body["type"] == type_
    return body


@pytest.mark.parametrize(
    "path",
    [
        *["../x", "/etc/passwd", "a/../../b", "a/./b", "a//b", "nul\u0000byte", "back\\slash", "dir/", " lead", "a/.."],
        *["C:/x", "c:x", "Z:", "C:\\x"],  # Windows drive prefixes
        *[".corpora/receipts.json", ".corpora/receipts/abc.jws", ".corpora", ".Corpora/x"],  # where pull keeps receipts
    ],
)
async def test_unsafe_file_paths_are_refused(client: AsyncTestClient[Any], db: asyncpg.Connection, path: str) -> None:
    owner, _, slug = await _provider(client)
    before = await db.fetchval("SELECT count(*) FROM version_files")
    response = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/files",
        json={"path": path, "size": 1, "sha256": SHA},
        headers=owner.headers,
    )
    body = _assert_problem(response, 422)
    assert any(e["field"] == "path" for e in body.get("errors") or []), body
    assert await db.fetchval("SELECT count(*) FROM version_files") == before


async def test_paths_near_the_reserved_ones_are_fine(client: AsyncTestClient[Any]) -> None:
    owner, _, slug = await _provider(client)
    for path in ("data/.corpora/x", ".corpora.txt", "corpora/x", "a/C:/x", "notes:2024.txt"):
        response = await client.post(
            f"/api/v1/products/{slug}/versions/1.0.0/files",
            json={"path": path, "size": 1, "sha256": SHA},
            headers=owner.headers,
        )
        assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "media_type",
    [
        "not a type",
        "text",
        "text/",
        "/plain",
        "text/*",
        "text/plain\n",
        "text/plain\r\nX-Injected: 1",
        "text/plain;",
        "text/plain; charset",
        "text/plain; charset=utf 8",
        'text/plain; charset="utf-8',
        "tëxt/plain",
    ],
)
async def test_malformed_media_types_are_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection, media_type: str
) -> None:
    owner, _, slug = await _provider(client)
    before = await db.fetchval("SELECT count(*) FROM version_files")
    response = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/files",
        json={"path": "ok.txt", "size": 1, "sha256": SHA, "media_type": media_type},
        headers=owner.headers,
    )
    body = _assert_problem(response, 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == ["media_type"], body
    assert await db.fetchval("SELECT count(*) FROM version_files") == before


async def test_media_types_with_parameters_are_kept(client: AsyncTestClient[Any]) -> None:
    owner, _, slug = await _provider(client)
    for number, media_type in enumerate(
        ["text/csv", "application/vnd.api+json", "text/plain; charset=utf-8", 'text/plain;charset="utf-8"']
    ):
        base = f"/api/v1/products/{slug}/versions/1.0.0/files"
        body = {"path": f"f{number}.txt", "size": 1, "sha256": SHA, "media_type": media_type}
        planned = await client.post(base, json=body, headers=owner.headers)
        assert planned.status_code == 201, planned.text
        assert planned.json()["upload"]["headers"]["Content-Type"] == media_type


@pytest.mark.parametrize(
    ("field", "value"),
    [("size", -1), ("size", 10**16), ("size", "12"), ("sha256", "abc"), ("sha256", "G" * 64), ("sha256", SHA.upper())],
)
async def test_bad_sizes_and_digests_are_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection, field: str, value: Any
) -> None:
    owner, _, slug = await _provider(client)
    before = await db.fetchval("SELECT count(*) FROM version_files")
    body = {"path": "ok.txt", "size": 1, "sha256": SHA, field: value}
    response = await client.post(f"/api/v1/products/{slug}/versions/1.0.0/files", json=body, headers=owner.headers)
    _assert_problem(response, 422, "validation-error")
    assert await db.fetchval("SELECT count(*) FROM version_files") == before


async def test_duplicate_path_in_a_version_is_refused(client: AsyncTestClient[Any]) -> None:
    owner, _, slug = await _provider(client)
    assert (await upload(client, owner, slug, "1.0.0", "same.txt", b"one")).status_code == 200
    again = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/files",
        json={"path": "same.txt", "size": 3, "sha256": hashlib.sha256(b"two").hexdigest()},
        headers=owner.headers,
    )
    _assert_problem(again, 409, "path-exists")


@pytest.mark.parametrize(
    "version", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "latest", "99999999999999999999.0.0", "1.2147483648.0"]
)
async def test_invalid_semver_is_refused(client: AsyncTestClient[Any], version: str) -> None:
    owner, _, slug = await _provider(client)
    response = await client.post(
        f"/api/v1/products/{slug}/versions",
        json={"version": version, "licence_id": "MIT", "provenance": PROVENANCE},
        headers=owner.headers,
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "version"


async def test_duplicate_version_and_unknown_licences_are_refused(client: AsyncTestClient[Any]) -> None:
    owner, _, slug = await _provider(client)
    duplicate = await client.post(
        f"/api/v1/products/{slug}/versions", json={"version": "1.0.0", "licence_id": "MIT"}, headers=owner.headers
    )
    _assert_problem(duplicate, 409, "version-exists")
    for licence in ["Not-A-Licence-1.0", "MIT AND Apache-2.0", "LicenseRef-nobody-x"]:
        bad = await client.post(
            f"/api/v1/products/{slug}/versions", json={"version": "1.1.0", "licence_id": licence}, headers=owner.headers
        )
        body = _assert_problem(bad, 422)
        assert "licence" in body["detail"], body
    ok = await client.post(
        f"/api/v1/products/{slug}/versions",
        json={"version": "1.1.0", "licence_id": "Apache-2.0"},
        headers=owner.headers,
    )
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("industry", "astrology"),
        ("modality", "smell"),
        ("access", "free"),
        ("languages", ["english!"]),
        ("slug", "Bad Slug"),
    ],
)
async def test_bad_product_fields_are_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection, field: str, value: Any
) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    body = {
        "org": org,
        "slug": unique_product_slug(),
        "title": "t",
        "industry": "finance",
        "modality": "text",
        "access": "open",
        field: value,
    }
    before = await db.fetchval("SELECT count(*) FROM products")
    response = await client.post("/api/v1/products", json=body, headers=owner.headers)
    _assert_problem(response, 422)
    assert await db.fetchval("SELECT count(*) FROM products") == before


async def test_languages_are_normalised_bcp47(client: AsyncTestClient[Any]) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    slug = await make_product(client, owner, org, languages=["ZH-hans", "en-us", "pt-BR"])
    product = await client.get(f"/api/v1/products/{slug}", headers=owner.headers)
    assert product.json()["languages"] == ["en-US", "pt-BR", "zh-Hans"]


async def test_publishing_empty_or_changing_published_versions_is_refused(client: AsyncTestClient[Any]) -> None:
    owner, _, slug = await _provider(client)
    empty = await client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers)
    _assert_problem(empty, 422, "version-incomplete")
    assert (await upload(client, owner, slug, "1.0.0", "a.txt", b"content")).status_code == 200
    await client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers)
    for attempt in [
        client.patch(f"/api/v1/products/{slug}/versions/1.0.0", json={"changelog": "x"}, headers=owner.headers),
        client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers),
        client.post(
            f"/api/v1/products/{slug}/versions/1.0.0/files",
            json={"path": "b.txt", "size": 1, "sha256": SHA},
            headers=owner.headers,
        ),
    ]:
        _assert_problem(await attempt, 409, "version-frozen")


async def test_other_orgs_products_are_out_of_reach(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    owner, _, slug = await _provider(client)
    outsider = await sign_up(client)
    await make_org(client, outsider, kind="provider")
    # A draft product of another org does not exist for the outsider.
    for response in [
        await client.get(f"/api/v1/products/{slug}", headers=outsider.headers),
        await client.get(f"/api/v1/products/{slug}"),
        await client.get(f"/api/v1/products/{slug}/versions/1.0.0", headers=outsider.headers),
        await client.post(
            f"/api/v1/products/{slug}/versions/1.0.0/files",
            json={"path": "x.txt", "size": 1, "sha256": SHA},
            headers=outsider.headers,
        ),
        await client.patch(f"/api/v1/products/{slug}", json={"title": "mine"}, headers=outsider.headers),
        await client.post(
            f"/api/v1/products/{slug}/versions",
            json={"version": "9.0.0", "licence_id": "MIT"},
            headers=outsider.headers,
        ),
    ]:
        _assert_problem(response, 404, "not-found")
    # Once listed it is visible, but still not theirs to change.
    assert (await upload(client, owner, slug, "1.0.0", "a.txt", b"content")).status_code == 200
    await db.execute(
        "UPDATE products SET status = 'published' WHERE slug = $1", slug
    )  # listing without review, to test the write path alone
    visible = await client.get(f"/api/v1/products/{slug}", headers=outsider.headers)
    assert visible.status_code == 200
    _assert_problem(
        await client.patch(f"/api/v1/products/{slug}", json={"title": "mine"}, headers=outsider.headers), 403
    )
    assert (await client.get(f"/api/v1/products/{slug}")).json()["title"] != "mine"


async def test_buyers_and_auditors_cannot_publish_products(client: AsyncTestClient[Any]) -> None:
    buyer = await sign_up(client)
    buyer_org = await make_org(client, buyer, kind="buyer")
    response = await client.post(
        "/api/v1/products",
        json={
            "org": buyer_org,
            "slug": unique_product_slug(),
            "title": "t",
            "industry": "finance",
            "modality": "text",
            "access": "open",
        },
        headers=buyer.headers,
    )
    _assert_problem(response, 403)
    owner, org, slug = await _provider(client)
    auditor = await sign_up(client)
    added = await client.post(
        f"/api/v1/orgs/{org}/members", json={"email": auditor.email, "role": "auditor"}, headers=owner.headers
    )
    assert added.status_code == 201
    # The org's auditor reads the draft but cannot change it.
    assert (await client.get(f"/api/v1/products/{slug}", headers=auditor.headers)).status_code == 200
    _assert_problem(await client.patch(f"/api/v1/products/{slug}", json={"title": "x"}, headers=auditor.headers), 403)


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "  \n"}], ids=["no reason", "empty", "blank"])
async def test_withdrawal_needs_a_reason(
    client: AsyncTestClient[Any], db: asyncpg.Connection, body: dict[str, Any]
) -> None:
    owner, _, slug = await _provider(client)
    await db.execute(
        "UPDATE product_versions SET state = 'published', manifest_digest = $2, submitted_at = now(), "
        "published_at = now() WHERE product_id = (SELECT id FROM products WHERE slug = $1)",
        slug,
        "sha256:" + "0" * 64,
    )
    base = f"/api/v1/products/{slug}/versions/1.0.0"
    events = "SELECT count(*) FROM audit_events WHERE target_id = $1"
    await sequence_audit(db)
    before = await db.fetchval(events, f"{slug}@1.0.0")
    problem = _assert_problem(await client.post(f"{base}/withdraw", json=body, headers=owner.headers), 422)
    assert problem["type"] == "validation-error"
    assert [e["field"] for e in problem["errors"]] == ["reason"]
    row = await db.fetchrow(
        "SELECT state, withdrawn_at, withdrawn_reason FROM product_versions"
        " WHERE product_id = (SELECT id FROM products WHERE slug = $1)",
        slug,
    )
    assert dict(row) == {"state": "published", "withdrawn_at": None, "withdrawn_reason": None}
    await sequence_audit(db)
    assert await db.fetchval(events, f"{slug}@1.0.0") == before

    withdrawn = await client.post(f"{base}/withdraw", json={"reason": "rights dispute"}, headers=owner.headers)
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["state"] == "withdrawn"
