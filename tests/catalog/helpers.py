"""Helpers for catalogue tests: products, versions and uploads through the real presigned URLs."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from tests.conftest import Account

PROVENANCE: dict[str, Any] = {
    "sources": [
        {
            "kind": "licensed",
            "name": "Exchange filings archive",
            "url": "https://example.com/filings",
            "rights_holder": "Example Exchange",
            "legal_basis": "licence agreement 2026-17",
            "collected_from": "2025-01-01",
            "collected_to": "2025-12-31",
        }
    ],
    "activities": [
        {"stage": "collect", "tool": "crawler 2.1", "description": "download filings"},
        {"stage": "clean", "tool": "dedup", "description": "near-duplicate removal", "metrics": {"dedup_rate": 0.12}},
    ],
}


def unique_product_slug() -> str:
    return f"corpus-{uuid.uuid4().hex[:10]}"


async def make_product(client: AsyncTestClient[Any], owner: Account, org: str, **fields: Any) -> str:
    slug: str = fields.pop("slug", unique_product_slug())
    body = {
        "org": org,
        "slug": slug,
        "title": f"Corpus {slug}",
        "summary": "A test corpus",
        "description": "Filings and news",
        "industry": "finance",
        "modality": "text",
        "languages": ["en"],
        "tags": ["filings"],
        "access": "open",
        **fields,
    }
    response = await client.post("/api/v1/products", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text
    return slug


async def make_version(
    client: AsyncTestClient[Any], owner: Account, slug: str, version: str = "1.0.0", licence: str = "CC-BY-4.0"
) -> None:
    response = await client.post(
        f"/api/v1/products/{slug}/versions",
        json={"version": version, "changelog": "first", "licence_id": licence, "provenance": PROVENANCE},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text


async def upload(
    client: AsyncTestClient[Any],
    owner: Account,
    slug: str,
    version: str,
    path: str,
    content: bytes,
    *,
    declared_sha256: str | None = None,
) -> httpx.Response:
    """Plan, upload to the object store with a plain HTTP client, and complete; returns the completion."""
    sha = declared_sha256 or hashlib.sha256(content).hexdigest()
    base = f"/api/v1/products/{slug}/versions/{version}/files"
    planned = await client.post(
        base,
        json={"path": path, "size": len(content), "sha256": sha, "media_type": "text/plain"},
        headers=owner.headers,
    )
    assert planned.status_code == 201, planned.text
    plan = planned.json()
    async with httpx.AsyncClient(timeout=60) as s3:
        if plan["upload"]["kind"] == "single":
            put = await s3.put(plan["upload"]["url"], content=content, headers=plan["upload"]["headers"])
            assert put.status_code == 200, put.text
            body: dict[str, Any] = {}
        else:
            size = plan["upload"]["part_size"]
            parts = []
            for part in plan["upload"]["parts"]:
                start = (part["part_number"] - 1) * size
                put = await s3.put(part["url"], content=content[start : start + size])
                assert put.status_code == 200, put.text
                parts.append({"part_number": part["part_number"], "etag": put.headers["etag"]})
            body = {"parts": parts}
    return await client.post(f"{base}/{plan['file_id']}/complete", json=body, headers=owner.headers)
