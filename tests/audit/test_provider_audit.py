"""A provider reads the grant events of its own products: the buyer organisation named, the buyer's member a
stable pseudonym, no user id, email, request id or client address; nothing of another provider's products;
the buyer's own view unchanged; and the provider's evidence bundle verifies offline, checked here by a verifier
written here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from app.audit.bundle_format import verify_bundle
from tests.audit.test_audit_proofs import _verify_bundle_cli, jws_claims, leaf_hashes, mth, root_from_path
from tests.conftest import Servers, sequence_audit, sign_up
from tests.licensing.helpers import Market, download_body, market

EVENTS = "/api/v1/audit/events"
EXPORT = "/api/v1/audit/export"
BUNDLE = "/api/v1/audit/bundle"
GRANT_ACTIONS = {"download.granted", "download.refreshed"}


async def _trade(client: AsyncTestClient[Any], m: Market) -> list[str]:
    """Two grants and a refresh by the buyer; the download ids."""
    ids = []
    for path in ("data/a.txt", "data/b.txt"):
        granted = await client.post("/api/v1/downloads", json=download_body(m, path), headers=m.buyer.headers)
        assert granted.status_code == 201, granted.text
        ids.append(granted.json()["download_id"])
    refreshed = await client.post("/api/v1/downloads/refresh", json={"download_ids": ids[:1]}, headers=m.buyer.headers)
    assert refreshed.status_code == 200, refreshed.text
    return ids


async def _secrets(db: asyncpg.Connection, download_ids: list[str]) -> set[str]:
    """What must never reach the provider: the buyer member's actor and the request ids of the grant events.
    (Their client address is the test client's, shared by every caller here: the redacted events' address is
    checked to be null instead.)"""
    await sequence_audit(db)
    rows = await db.fetch(
        "SELECT actor, request_id, client_addr FROM audit_events"
        " WHERE target_type = 'download' AND target_id = ANY($1)",
        download_ids,
    )
    assert len(rows) == 3
    assert all(row["client_addr"] and row["request_id"] for row in rows)
    found = {row["actor"] for row in rows} | {row["request_id"] for row in rows}
    assert any(value.startswith("user:") for value in found)
    return found


async def _events(client: AsyncTestClient[Any], headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = await client.get(EVENTS, params={"limit": 500, **params}, headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_provider_reads_its_products_grants_with_the_buyer_named_and_the_actor_pseudonymised(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    ours, theirs = await market(client, db), await market(client, db)
    ids = await _trade(client, ours)
    other_ids = await _trade(client, theirs)
    hidden = await _secrets(db, ids) | {ours.buyer.id, ours.buyer.email}

    response = await client.get(EVENTS, params={"org": ours.provider_org, "limit": 500}, headers=ours.provider.headers)
    assert response.status_code == 200, response.text
    for secret in hidden:
        assert secret not in response.text
    grants = [e for e in response.json()["items"] if e["action"] in GRANT_ACTIONS]
    assert sorted(e["action"] for e in grants) == ["download.granted", "download.granted", "download.refreshed"]
    assert {e["target_id"] for e in grants} == set(ids)  # none of the other provider's
    for event in grants:
        assert event["org"] == ours.buyer_org
        assert event["redacted"] is True
        assert event["actor"].startswith("pseudonym:")
        assert (event["request_id"], event["client_addr"]) == (None, None)
    assert len({e["actor"] for e in grants}) == 1  # one buyer member, one stable pseudonym
    again = await _events(client, ours.provider.headers, org=ours.provider_org)
    assert {e["actor"] for e in again if e["action"] in GRANT_ACTIONS} == {grants[0]["actor"]}
    # The provider's own events are not redacted.
    assert all("redacted" not in e for e in response.json()["items"] if e["org"] == ours.provider_org)

    # Without `org`, and narrowed by product, the same grant events; never the other provider's.
    unscoped = await _events(client, ours.provider.headers)
    assert {e["target_id"] for e in unscoped if e["action"] in GRANT_ACTIONS} == set(ids)
    by_product = await _events(client, ours.provider.headers, org=ours.provider_org, product=ours.product)
    assert {e["target_id"] for e in by_product if e["action"] in GRANT_ACTIONS} == set(ids)
    assert await _events(client, ours.provider.headers, product=theirs.product) == []
    # An actor filter never confirms who acted in a redacted event.
    actor = next(iter(v for v in hidden if v.startswith("user:")))
    assert await _events(client, ours.provider.headers, actor=actor) == []

    # Export, JSON Lines and CSV: the same events, redacted the same way.
    exported = await client.get(EXPORT, params={"org": ours.provider_org}, headers=ours.provider.headers)
    assert exported.status_code == 200, exported.text
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert {e["target_id"] for e in lines if e["action"] in GRANT_ACTIONS} == set(ids)
    assert {e["actor"] for e in lines if e["action"] in GRANT_ACTIONS} == {grants[0]["actor"]}
    as_csv = await client.get(EXPORT, params={"org": ours.provider_org, "format": "csv"}, headers=ours.provider.headers)
    assert as_csv.status_code == 200, as_csv.text
    for body in (exported.text, as_csv.text):
        for secret in hidden:
            assert secret not in body

    # The other provider sees its own buyer's grants under a pseudonym of its own: views do not join.
    their_grants = [
        e
        for e in await _events(client, theirs.provider.headers, org=theirs.provider_org)
        if e["action"] in GRANT_ACTIONS
    ]
    assert {e["target_id"] for e in their_grants} == set(other_ids)
    assert not {e["actor"] for e in their_grants} & {grants[0]["actor"]}

    # The buyer's own view is unchanged: its member, request and address, not redacted.
    bought = [e for e in await _events(client, ours.buyer.headers, org=ours.buyer_org) if e["action"] in GRANT_ACTIONS]
    assert {e["target_id"] for e in bought} == set(ids)
    assert all(e["actor"] == f"user:{ours.buyer.id}" and "redacted" not in e for e in bought)
    assert all(e["request_id"] for e in bought)

    # Another organisation's trail stays closed: the buyer's and the other provider's are 404 to this provider,
    # and a stranger reads no grant of anyone.
    for org in (ours.buyer_org, theirs.provider_org):
        refused = await client.get(EVENTS, params={"org": org}, headers=ours.provider.headers)
        assert refused.status_code == 404, refused.text
        assert (await client.get(BUNDLE, params={"org": org}, headers=ours.provider.headers)).status_code == 404
    stranger = await sign_up(client)
    assert (await client.get(EVENTS, headers=stranger.headers)).status_code == 403


async def test_a_providers_bundle_proves_the_redacted_grants_and_an_altered_leaf_fails_it(
    client: AsyncTestClient[Any], db: asyncpg.Connection, servers: Servers, tmp_path: Path
) -> None:
    m = await market(client, db)
    ids = await _trade(client, m)
    await sequence_audit(db)
    hidden = await _secrets(db, ids) | {m.buyer.id, m.buyer.email}
    response = await client.get(BUNDLE, params={"org": m.provider_org}, headers=m.provider.headers)
    assert response.status_code == 200, response.text
    raw = response.content
    for secret in hidden:
        assert secret.encode() not in raw
    bundle = json.loads(raw)
    redacted = [e for e in bundle["events"] if e.get("redacted")]
    assert {e["target_id"] for e in redacted} == set(ids)
    assert all(e["actor"].startswith("pseudonym:") for e in redacted)
    assert all(e["request_id"] is None and e["client_addr"] is None for e in redacted)

    # Checked here, independently of the server's code: the signature, the root of the tree recomputed from
    # the stored leaves, and every event's leaf proven in it (a redacted one by its leaf hash alone).
    checkpoint = bundle["checkpoint"]
    claims = jws_claims(checkpoint["jws"], bundle["jwks"])
    assert (claims["tree_size"], claims["root_hash"]) == (checkpoint["tree_size"], checkpoint["root_hash"])
    leaves = await leaf_hashes(servers)
    assert mth(leaves[: checkpoint["tree_size"]]).hex() == checkpoint["root_hash"]
    for event in bundle["events"]:
        assert bytes.fromhex(event["leaf_hash"]) == leaves[event["seq"] - 1]
        audit_path = [bytes.fromhex(h) for h in event["audit_path"]]
        root = root_from_path(bytes.fromhex(event["leaf_hash"]), event["seq"] - 1, checkpoint["tree_size"], audit_path)
        assert root.hex() == checkpoint["root_hash"]

    good = tmp_path / "provider-bundle.json"
    good.write_bytes(raw)
    verified = _verify_bundle_cli(good)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["redacted_events"] == len(redacted)

    # One hex digit of a redacted event's leaf hash changed: the CLI names that event.
    target = redacted[len(redacted) // 2]
    at = raw.index(b'"leaf_hash":"%s"' % target["leaf_hash"].encode()) + len(b'"leaf_hash":"')
    altered = bytearray(raw)
    altered[at] = ord("0") if raw[at : at + 1] != b"0" else ord("1")
    bad = tmp_path / "altered.json"
    bad.write_bytes(bytes(altered))
    failed = _verify_bundle_cli(bad)
    assert failed.returncode != 0
    assert f"event {target['seq']}" in failed.stderr
    assert verify_bundle(bytes(altered)).first_bad_event == target["seq"]
