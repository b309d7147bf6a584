"""Identity that depends on text is decided on its Unicode-normalised form: one account per address whatever
its case or compatibility form, and no two file paths of a version that one disk would take for one file."""

from __future__ import annotations

import hashlib
import unicodedata
import uuid
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from tests.catalog.helpers import make_product, make_version
from tests.conftest import PASSWORD, make_org, sign_up


async def test_an_address_and_its_case_and_compatibility_lookalikes_are_one_account(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    local = f"ada{uuid.uuid4().hex[:8]}"
    first = await sign_up(client, f"{local.capitalize()}@Example.com")

    def fullwidth(text: str) -> str:
        return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in text)

    def all_fullwidth(text: str) -> str:  # the at sign and the dots too
        return "".join(chr(ord(c) + 0xFEE0) for c in text)

    for lookalike in (
        f"{local.upper()}@EXAMPLE.COM",
        f"{fullwidth(local)}@{fullwidth('Example')}.com",
        all_fullwidth(f"{local}@example.com"),
    ):
        taken = await client.post(
            "/api/v1/users", json={"email": lookalike, "password": PASSWORD, "display_name": "Twin"}
        )
        assert taken.status_code == 409, taken.text
        assert taken.json()["type"] == "email-taken"
        signed_in = await client.post(
            "/api/v1/auth/token", json={"grant_type": "password", "username": lookalike, "password": PASSWORD}
        )
        assert signed_in.status_code == 200, signed_in.text
        me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {signed_in.json()['access_token']}"})
        assert me.json()["id"] == first.id
    assert await db.fetchval("SELECT count(*) FROM users WHERE email LIKE $1", f"%{local}%") == 1
    # What normalises to no address is refused as one, in any form.
    for not_an_address in (all_fullwidth(f"{local}@example"), f"{local}.example.com"):
        refused = await client.post(
            "/api/v1/users", json={"email": not_an_address, "password": PASSWORD, "display_name": "Twin"}
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == "email"


async def _plan(client: AsyncTestClient[Any], headers: dict[str, str], slug: str, path: str) -> Any:
    content = path.encode()
    return await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/files",
        json={
            "path": path,
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "media_type": "text/plain",
        },
        headers=headers,
    )


async def test_paths_are_nfc_and_may_not_collide_after_case_folding(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    owner = await sign_up(client)
    slug = await make_product(client, owner, await make_org(client, owner, kind="provider"))
    await make_version(client, owner, slug)

    decomposed = unicodedata.normalize("NFD", "données/Café.txt")
    planned = await _plan(client, owner.headers, slug, decomposed)
    assert planned.status_code == 201, planned.text
    assert planned.json()["path"] == "données/Café.txt"  # stored composed (NFC)

    for twin in ("données/Café.txt".upper(), "DONNÉES/café.TXT", "\uff44\uff4f\uff4e\uff4eé\uff45\uff53/Café.txt"):
        refused = await _plan(client, owner.headers, slug, twin)
        assert refused.status_code == 409, (twin, refused.text)
        assert refused.json()["type"] == "path-exists"
        assert "données/Café.txt" in refused.json()["detail"]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM version_files f JOIN product_versions v ON v.id = f.version_id "
            "JOIN products p ON p.id = v.product_id WHERE p.slug = $1",
            slug,
        )
        == 1
    )


async def test_paths_that_mislead_or_climb_out_once_normalised_are_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    owner = await sign_up(client)
    slug = await make_product(client, owner, await make_org(client, owner, kind="provider"))
    await make_version(client, owner, slug)
    misleading = [
        "invoice_\u202efdp.exe",  # right-to-left override: shown as "invoice_exe.pdf"
        "a\u2066b.txt",  # left-to-right isolate
        "\u2024\u2024/x.txt",  # one-dot leaders: NFKC "../x.txt"
        "data/\u2024/x.txt",  # NFKC "data/./x.txt"
        "a\uff0fb.txt",  # fullwidth solidus: NFKC "a/b.txt"
        "a\ufe68b.txt",  # small reverse solidus: NFKC "a\\b.txt"
        "a\ue000.txt",  # private use
    ]
    for path in misleading:
        refused = await _plan(client, owner.headers, slug, path)
        assert refused.status_code == 422, (path, refused.text)
        assert refused.json()["errors"][0]["field"] == "path"
    assert (
        await db.fetchval(
            "SELECT count(*) FROM version_files f JOIN product_versions v ON v.id = f.version_id "
            "JOIN products p ON p.id = v.product_id WHERE p.slug = $1",
            slug,
        )
        == 0
    )
