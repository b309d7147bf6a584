"""Proofs of the audit log: RFC 9162 inclusion and consistency proofs checked by a verifier written here (not
the server's code), evidence bundles that verify offline with the CLI and fail on one altered byte, and other
organisations' events kept out."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import checkpoints
from tests.catalog.helpers import make_product, make_version, upload
from tests.conftest import Account, Servers, asyncpg_dsn, grant_platform_role, make_org, sequence_audit, sign_up
from tests.licensing.test_licensing import make_offer, order_ok

INCLUSION = "/api/v1/audit/proofs/inclusion"
CONSISTENCY = "/api/v1/audit/proofs/consistency"
BUNDLE = "/api/v1/audit/bundle"


# ----------------------------------------------------------------- an independent RFC 9162 §2.1 implementation


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: list[bytes]) -> bytes:
    """MTH of a list of leaf hashes, straight from the definition."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return _h(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


def root_from_path(leaf: bytes, index: int, size: int, audit_path: list[bytes]) -> bytes:
    """Recompute the root bottom-up from the path, by tracking the leaf's range in the tree."""

    def walk(lo: int, hi: int, items: list[bytes]) -> bytes:
        if hi - lo == 1:
            assert not items
            return leaf
        k = 1
        while k * 2 < hi - lo:
            k *= 2
        *rest, sibling = items
        if index < lo + k:
            return _h(b"\x01" + walk(lo, lo + k, rest) + sibling)
        return _h(b"\x01" + sibling + walk(lo + k, hi, rest))

    return walk(0, size, audit_path)


def b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jws_claims(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """Verify an EdDSA compact JWS with the raw Ed25519 key of the JWKS; its claims."""
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(b64(header_b64))
    (key,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    assert header["alg"] == "EdDSA"
    Ed25519PublicKey.from_public_bytes(b64(key["x"])).verify(b64(signature_b64), f"{header_b64}.{payload_b64}".encode())
    claims: dict[str, Any] = json.loads(b64(payload_b64))
    return claims


# ----------------------------------------------------------------------------------------------- fixtures


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(client: AsyncTestClient[Any], servers: Servers) -> dict[str, Any]:
    owner_a, owner_b, auditor = [await sign_up(client) for _ in range(3)]
    connection = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    try:
        auditor = await grant_platform_role(client, connection, auditor, "auditor")
    finally:
        await connection.close()
    org_a = await make_org(client, owner_a)
    org_b = await make_org(client, owner_b)
    for owner, org in ((owner_a, org_a), (owner_b, org_b), (owner_a, org_a)):
        invited = await client.post(
            f"/api/v1/orgs/{org}/members",
            json={"email": (await sign_up(client)).email, "role": "member"},
            headers=owner.headers,
        )
        assert invited.status_code == 201, invited.text
    connection = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    try:
        await sequence_audit(connection)
    finally:
        await connection.close()
    return {"a": owner_a, "b": owner_b, "auditor": auditor, "org_a": org_a, "org_b": org_b}


async def leaf_hashes(servers: Servers) -> list[bytes]:
    connection = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    try:
        rows = await connection.fetch("SELECT seq, leaf_hash FROM audit_events ORDER BY seq")
    finally:
        await connection.close()
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    return [bytes(r["leaf_hash"]) for r in rows]


async def events_of(client: AsyncTestClient[Any], who: Account, org: str) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/audit/events", params={"org": org, "limit": 500}, headers=who.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# ------------------------------------------------------------------------------------------------- tests


async def test_inclusion_proofs_verify_against_the_tree_recomputed_here(
    client: AsyncTestClient[Any], servers: Servers, world: dict[str, Any]
) -> None:
    owner: Account = world["a"]
    leaves = await leaf_hashes(servers)
    size = len(leaves)
    for event in await events_of(client, owner, world["org_a"]):
        seq = event["seq"]
        for tree_size in {seq, (seq + size) // 2, size}:
            response = await client.get(INCLUSION, params={"seq": seq, "tree_size": tree_size}, headers=owner.headers)
            assert response.status_code == 200, response.text
            proof = response.json()
            assert proof["leaf_index"] == seq - 1
            assert proof["tree_size"] == tree_size
            assert bytes.fromhex(proof["leaf_hash"]) == leaves[seq - 1]
            audit_path = [bytes.fromhex(h) for h in proof["audit_path"]]
            assert audit_path == path(seq - 1, leaves[:tree_size])
            assert root_from_path(leaves[seq - 1], seq - 1, tree_size, audit_path) == mth(leaves[:tree_size])

    # Another organisation's event is not proven to this caller; sizes beyond the log are refused.
    other = (await events_of(client, world["b"], world["org_b"]))[0]["seq"]
    assert (await client.get(INCLUSION, params={"seq": other}, headers=owner.headers)).status_code == 404
    mine = (await events_of(client, owner, world["org_a"]))[0]["seq"]
    too_big = await client.get(INCLUSION, params={"seq": mine, "tree_size": 10**9}, headers=owner.headers)
    assert too_big.status_code == 422, too_big.text
    beyond = await client.get(INCLUSION, params={"seq": mine, "tree_size": mine - 1 or 1}, headers=owner.headers)
    assert beyond.status_code == (200 if mine == 1 else 422)


async def test_consistency_proofs_match_the_definition(
    client: AsyncTestClient[Any], servers: Servers, world: dict[str, Any]
) -> None:
    leaves = await leaf_hashes(servers)
    size = len(leaves)
    for first, second in [(1, size), (size // 3 or 1, size), (7, 8), (64, size), (size // 2 or 1, size - 1), (5, 5)]:
        if not 1 <= first <= second <= size:
            continue
        response = await client.get(CONSISTENCY, params={"first": first, "second": second}, headers=world["a"].headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["first"], body["second"]) == (first, second)
        assert [bytes.fromhex(h) for h in body["proof"]] == subproof(first, leaves[:second], True)
    refused = await client.get(CONSISTENCY, params={"first": 3, "second": 2}, headers=world["a"].headers)
    assert refused.status_code == 422


async def test_listed_checkpoints_name_the_chain_head_and_the_tree_they_sign(
    client: AsyncTestClient[Any],
    servers: Servers,
    world: dict[str, Any],
    app: Litestar,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    state = app.state
    written = await checkpoints.write_checkpoint(state.settings, sessionmaker, state.object_store, state.keyring)
    assert written is not None
    listed = await client.get("/api/v1/audit/checkpoints", params={"limit": 500}, headers=world["auditor"].headers)
    assert listed.status_code == 200, listed.text
    jwks = (await client.get("/.well-known/jwks.json")).json()
    leaves = await leaf_hashes(servers)
    connection = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    try:
        heads = {r["seq"]: bytes(r["hash"]).hex() for r in await connection.fetch("SELECT seq, hash FROM audit_events")}
    finally:
        await connection.close()
    items = [item for item in listed.json()["items"] if item["valid"] and item["root_hash"] is not None]
    assert written.key in {item["key"] for item in items}, listed.text
    for item in items:
        claims = jws_claims(item["jws"], jwks)
        signed = (claims["seq"], claims["head_hash"], claims["tree_size"], claims["root_hash"])
        assert (item["seq"], item["head_hash"], item["tree_size"], item["root_hash"]) == signed
        assert item["tree_size"] == item["seq"]
        assert item["head_hash"] == heads[item["seq"]]
        assert item["root_hash"] == mth(leaves[: item["tree_size"]]).hex()


def _verify_bundle_cli(path: Path) -> subprocess.CompletedProcess[str]:
    """``corpora audit verify-bundle`` in a process with no server settings at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPORA_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "audit", "verify-bundle", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_a_bundle_verifies_offline_and_one_altered_byte_fails_it(
    client: AsyncTestClient[Any], servers: Servers, world: dict[str, Any], tmp_path: Path
) -> None:
    owner: Account = world["a"]
    response = await client.get(BUNDLE, params={"org": world["org_a"]}, headers=owner.headers)
    assert response.status_code == 200, response.text
    raw = response.content
    bundle = json.loads(raw)
    assert bundle["format"] == "corpora-evidence-bundle/1"

    # Checked here too, independently: the signature, the tree it names, each event's hashes and proof.
    checkpoint = bundle["checkpoint"]
    claims = jws_claims(checkpoint["jws"], bundle["jwks"])
    assert (claims["tree_size"], claims["root_hash"]) == (checkpoint["tree_size"], checkpoint["root_hash"])
    leaves = await leaf_hashes(servers)
    assert mth(leaves[: checkpoint["tree_size"]]).hex() == checkpoint["root_hash"]
    org_ids = {e["org_id"] for e in bundle["events"]}
    assert len(org_ids) == 1
    mine = {e["seq"] for e in await events_of(client, owner, world["org_a"])}
    assert {e["seq"] for e in bundle["events"]} == {s for s in mine if s <= checkpoint["tree_size"]}
    for event in bundle["events"]:
        leaf = bytes.fromhex(event["leaf_hash"])
        audit_path = [bytes.fromhex(h) for h in event["audit_path"]]
        root = root_from_path(leaf, event["seq"] - 1, checkpoint["tree_size"], audit_path)
        assert root.hex() == checkpoint["root_hash"]

    good = tmp_path / "bundle.json"
    good.write_bytes(raw)
    verified = _verify_bundle_cli(good)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["ok"] is True

    # One byte of one event's details changed (a digit of the member count, or a letter of a role).
    target = bundle["events"][len(bundle["events"]) // 2]
    start = raw.index(b'"seq":%d,' % target["seq"])
    details_at = raw.index(b'"details":', start) + len(b'"details":')
    end = raw.index(b',"prev_hash"', details_at)
    letter = next(i for i in range(details_at, end) if raw[i : i + 1].isalpha())
    altered = bytearray(raw)
    altered[letter] = ord("X") if raw[letter : letter + 1] != b"X" else ord("Y")
    bad = tmp_path / "altered.json"
    bad.write_bytes(bytes(altered))
    failed = _verify_bundle_cli(bad)
    assert failed.returncode != 0
    assert f"event {target['seq']}" in failed.stderr
    assert json.loads(failed.stdout)["first_bad_event"] == target["seq"]


async def test_bundles_never_hold_another_organisations_events(
    client: AsyncTestClient[Any], world: dict[str, Any]
) -> None:
    owner_a: Account = world["a"]
    everything = await client.get(BUNDLE, headers=owner_a.headers)
    assert everything.status_code == 200, everything.text
    b_events = {e["seq"] for e in await events_of(client, world["b"], world["org_b"])}
    assert b_events
    assert not b_events & {e["seq"] for e in everything.json()["events"]}
    assert (await client.get(BUNDLE, params={"org": world["org_b"]}, headers=owner_a.headers)).status_code == 404
    unknown = await client.get(BUNDLE, params={"product": "no-such-product-here"}, headers=owner_a.headers)
    assert unknown.status_code == 404

    # A platform auditor's bundle of org B holds B's events, and only those.
    audited = await client.get(BUNDLE, params={"org": world["org_b"]}, headers=world["auditor"].headers)
    assert audited.status_code == 200, audited.text
    seqs = {e["seq"] for e in audited.json()["events"]}
    assert seqs
    assert seqs <= b_events


async def test_events_export_and_bundles_filter_by_product(
    client: AsyncTestClient[Any], db: asyncpg.Connection, world: dict[str, Any]
) -> None:
    owner: Account = world["a"]
    slug = await make_product(client, owner, world["org_a"])
    await sequence_audit(db)
    listed = await client.get(
        "/api/v1/audit/events", params={"org": world["org_a"], "product": slug}, headers=owner.headers
    )
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert [e["action"] for e in items] == ["product.created"]
    exported = await client.get("/api/v1/audit/export", params={"product": slug}, headers=owner.headers)
    assert exported.status_code == 200, exported.text
    assert [json.loads(line)["seq"] for line in exported.text.splitlines()] == [items[0]["seq"]]
    bundled = await client.get(BUNDLE, params={"product": slug}, headers=owner.headers)
    assert [e["seq"] for e in bundled.json()["events"]] == [items[0]["seq"]]
    missing = await client.get("/api/v1/audit/export", params={"product": "no-such-product-x"}, headers=owner.headers)
    assert missing.status_code == 404
    # B's owner does not read A's product events through the filter.
    other = await client.get("/api/v1/audit/events", params={"product": slug}, headers=world["b"].headers)
    assert other.status_code == 200
    assert other.json()["items"] == []


async def test_the_product_filter_finds_every_event_of_the_product_and_no_other(
    client: AsyncTestClient[Any], db: asyncpg.Connection, world: dict[str, Any]
) -> None:
    """Versions, files and samples name the product in their target or their ``version``; order decisions name
    the order only; a model names its products. All of them are found by ``product=``."""
    owner: Account = world["a"]
    reviewer = await grant_platform_role(client, db, await sign_up(client), "reviewer")
    slug, other = await make_product(client, owner, world["org_a"]), await make_product(client, owner, world["org_a"])
    for product in (slug, other):
        await make_version(client, owner, product)
        assert (await upload(client, owner, product, "1.0.0", "a.txt", b"alpha\n")).status_code == 200
    rejected = await upload(client, owner, slug, "1.0.0", "b.txt", b"beta\n", declared_sha256="0" * 64)
    assert rejected.json()["type"] == "checksum-mismatch"
    assert (await client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers)).is_success
    approved = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/review", json={"decision": "approve"}, headers=reviewer.headers
    )
    assert approved.status_code == 200, approved.text
    offer = await make_offer(client, owner, slug, approval="manual")
    order = await order_ok(client, world["b"], offer["id"], world["org_b"])
    cancelled = await client.post(f"/api/v1/orders/{order['id']}/cancel", headers=world["b"].headers)
    assert cancelled.status_code == 200, cancelled.text
    await sequence_audit(db)

    found = await client.get(
        "/api/v1/audit/events", params={"product": slug, "limit": 100}, headers=world["auditor"].headers
    )
    assert found.status_code == 200, found.text
    actions = {e["action"] for e in found.json()["items"]}
    assert {
        "product.created",
        "version.created",
        "file.upload_started",
        "file.verified",
        "file.rejected",
        "version.submitted",
        "version.approved",
        "offer.created",
        "order.created",
        "order.cancelled",
    } <= actions, actions
    everything = await client.get(
        "/api/v1/audit/events", params={"org": world["org_a"], "limit": 100}, headers=world["auditor"].headers
    )
    of_other = {
        e["seq"]
        for e in everything.json()["items"]
        if e["target_id"] in (other, f"{other}@1.0.0") or (e["details"] or {}).get("version") == f"{other}@1.0.0"
    }
    assert len(of_other) >= 4  # the other product's creation, its version's, and its file's two
    assert of_other.isdisjoint(e["seq"] for e in found.json()["items"])


async def test_any_altered_hash_or_proof_digit_names_its_event(
    client: AsyncTestClient[Any], world: dict[str, Any]
) -> None:
    """Proofs sharing upper nodes are checked once, but an altered digit anywhere in any event's hashes or audit
    path (walked or only compared with an earlier proof) still fails the bundle at that event."""
    from app.audit.bundle_format import verify_bundle

    response = await client.get(BUNDLE, params={"org": world["org_a"]}, headers=world["a"].headers)
    assert response.status_code == 200, response.text
    raw = response.content
    assert verify_bundle(raw).ok
    events = json.loads(raw)["events"]
    assert len(events) > 2
    for event in events:
        start = raw.index(b'{"seq":%d,"occurred_at"' % event["seq"])
        digests = [event["prev_hash"], event["hash"], event["leaf_hash"], *event["audit_path"]]
        for digest in digests:
            at = raw.index(digest.encode(), start) + len(digest) - 1  # the last digit
            altered = bytearray(raw)
            altered[at] = ord("0") if raw[at : at + 1] != b"0" else ord("1")
            report = verify_bundle(bytes(altered))
            assert not report.ok
            assert report.first_bad_event == event["seq"], (event["seq"], digest, report.problem)
