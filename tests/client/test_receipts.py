"""Receipts are checked against the published JWKS before ``corpora pull`` keeps them: forged, re-signed or
mismatched receipts are refused."""

from __future__ import annotations

from typing import Any

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.testing import AsyncTestClient

from client.receipts import ReceiptInvalid, ReceiptVerifier
from tests.licensing.helpers import download_body, market


async def _grants(client: AsyncTestClient[Any], db: asyncpg.Connection) -> tuple[dict[str, Any], dict[str, Any]]:
    m = await market(client, db)
    first = await client.post("/api/v1/downloads", json=download_body(m, "data/a.txt"), headers=m.buyer.headers)
    second = await client.post("/api/v1/downloads", json=download_body(m, "data/b.txt"), headers=m.buyer.headers)
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    return {**first.json(), "path": "data/a.txt"}, {**second.json(), "path": "data/b.txt"}


async def test_receipts_verify_and_forgeries_are_refused(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    jwks = (await client.get("/.well-known/jwks.json")).json()
    fetched: list[int] = []

    def fetch() -> dict[str, Any]:
        fetched.append(1)
        return dict(jwks)

    verifier = ReceiptVerifier(fetch)
    a, b = await _grants(client, db)
    claims = verifier.verify(a["receipt"], a)
    assert (claims["download_id"], claims["sha256"]) == (a["download_id"], a["sha256"])

    # The same claims, signed by someone else under the platform's key id.
    header = jwt.get_unverified_header(a["receipt"])
    forged = jwt.encode(
        claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": header["kid"], "typ": header["typ"]}
    )
    with pytest.raises(ReceiptInvalid, match="signature"):
        verifier.verify(forged, a)
    # A genuine receipt of another grant does not vouch for this file.
    with pytest.raises(ReceiptInvalid, match="another grant"):
        verifier.verify(b["receipt"], a)
    # A key the platform never published: the keys are fetched again (a rotation), then the receipt refused.
    unknown = jwt.encode(
        claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "nope", "typ": header["typ"]}
    )
    before = len(fetched)
    with pytest.raises(ReceiptInvalid, match="does not list"):
        verifier.verify(unknown, a)
    assert len(fetched) == before + 1
    with pytest.raises(ReceiptInvalid, match="not a JWS"):
        verifier.verify("not-a-receipt", a)
