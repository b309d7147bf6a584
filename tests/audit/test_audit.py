"""The audit trail over HTTP against the shared database: a gap-free chain under concurrency, the append-only
triggers, who sees which events, export, and the signed checkpoints."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import io
import json
from typing import Any

import asyncpg
import jwt
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import checkpoints
from app.audit.service import verify_chain
from tests.conftest import (
    Account,
    Servers,
    asyncpg_dsn,
    grant_platform_role,
    make_org,
    sequence_audit,
    sign_up,
    unique_slug,
)

EVENTS = "/api/v1/audit/events"


@dataclasses.dataclass(frozen=True)
class People:
    """Signed up once for the module (password hashing is slow): two org owners, two users, an auditor."""

    owner_a: Account
    owner_b: Account
    plain: Account
    colleague: Account
    auditor: Account
    org_a: str
    org_b: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def people(client: AsyncTestClient[Any], servers: Servers) -> People:
    owner_a, owner_b, plain, colleague, auditor = [await sign_up(client) for _ in range(5)]
    connection = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    try:
        auditor = await grant_platform_role(client, connection, auditor, "auditor")
    finally:
        await connection.close()
    org_a = await make_org(client, owner_a)
    org_b = await make_org(client, owner_b)
    for owner, org, member in ((owner_b, org_b, plain), (owner_a, org_a, colleague)):
        added = await client.post(
            f"/api/v1/orgs/{org}/members", json={"email": member.email, "role": "member"}, headers=owner.headers
        )
        assert added.status_code == 201, added.text
    return People(owner_a, owner_b, plain, colleague, auditor, org_a, org_b)


async def _all_events(client: AsyncTestClient[Any], account: Account, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": 500, **({"cursor": cursor} if cursor else {})}
        response = await client.get(EVENTS, params=query, headers=account.headers)
        assert response.status_code == 200, response.text
        items.extend(response.json()["items"])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return items


async def test_concurrent_changes_leave_a_gap_free_chain_that_verifies(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection,
    sessionmaker: async_sessionmaker[AsyncSession],
    people: People,
) -> None:
    owner = people.owner_a
    slugs = [unique_slug("conc") for _ in range(50)]
    responses = await asyncio.gather(
        *(
            client.post("/api/v1/orgs", json={"slug": s, "name": s, "kind": "buyer"}, headers=owner.headers)
            for s in slugs
        )
    )
    assert [r.status_code for r in responses] == [201] * 50
    await sequence_audit(db)

    seqs = [row["seq"] for row in await db.fetch("SELECT seq FROM audit_events ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1)), "sequence numbers have gaps or duplicates"
    head = await db.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1")
    assert head["seq"] == seqs[-1]
    created = await db.fetch(
        "SELECT seq, target_id FROM audit_events WHERE action = 'org.created' AND target_id = ANY($1::text[])", slugs
    )
    assert sorted(r["target_id"] for r in created) == sorted(slugs)
    assert len({r["seq"] for r in created}) == 50

    async with sessionmaker() as session:
        report = await verify_chain(session)
    assert report.ok, report
    assert report.events_checked >= head["seq"]
    assert report.head_hash == head["hash"].hex() or report.head_seq > head["seq"]

    verified = await client.get("/api/v1/audit/verify", headers=people.auditor.headers)
    assert verified.status_code == 200, verified.text
    body = verified.json()
    assert body["ok"] is True, body
    assert body["first_bad_event"] is None
    assert body["events_checked"] >= head["seq"]
    assert set(body) >= {"ok", "events_checked", "head_hash", "first_bad_event"}


@pytest.mark.parametrize("replica", [False, True], ids=["origin", "replica-role"])
async def test_triggers_refuse_update_delete_and_truncate(db: asyncpg.Connection, replica: bool) -> None:
    await sequence_audit(db)
    seq = await db.fetchval("SELECT max(seq) FROM audit_events")
    assert seq is not None
    statements: list[tuple[str, tuple[Any, ...]]] = [
        ("UPDATE audit_events SET action = 'forged' WHERE seq = $1", (seq,)),
        ("DELETE FROM audit_events WHERE seq = $1", (seq,)),
        ("TRUNCATE audit_events", ()),
        ("DELETE FROM audit_head", ()),
        ("TRUNCATE audit_head", ()),
    ]
    for statement, args in statements:
        async with db.transaction():
            if replica:
                await db.execute("SET LOCAL session_replication_role = replica")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await db.execute(statement, *args)
    assert await db.fetchval("SELECT count(*) FROM audit_events WHERE seq = $1", seq) == 1


async def test_members_see_only_their_orgs_events_and_plain_users_are_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection, people: People
) -> None:
    await sequence_audit(db)
    owner_a, plain, colleague, auditor = people.owner_a, people.plain, people.colleague, people.auditor
    org_a, org_b = people.org_a, people.org_b

    seen_by_a = await _all_events(client, owner_a)
    assert {e["org"] for e in seen_by_a} >= {org_a}
    assert {e["action"] for e in seen_by_a if e["org"] == org_a} >= {"org.created", "org.member_added"}
    assert not [e for e in seen_by_a if e["org"] == org_b]
    assert not [e for e in seen_by_a if e["org"] is None]

    not_mine = await client.get(EVENTS, params={"org": org_b}, headers=owner_a.headers)
    assert not_mine.status_code == 404
    assert not_mine.headers["content-type"].startswith("application/problem+json")
    unknown = await client.get(EVENTS, params={"org": "no-such-org-anywhere"}, headers=owner_a.headers)
    assert unknown.status_code == 404
    not_mine_export = await client.get("/api/v1/audit/export", params={"org": org_b}, headers=owner_a.headers)
    assert not_mine_export.status_code == 404

    # A plain member of org A sees A but may not read its trail (403), and has no all-events view.
    assert (await client.get(EVENTS, params={"org": org_a}, headers=colleague.headers)).status_code == 403
    for account in (colleague, plain):
        refused = await client.get(EVENTS, headers=account.headers)
        assert refused.status_code == 403
        assert refused.json()["type"] == "forbidden"
        assert (await client.get("/api/v1/audit/verify", headers=account.headers)).status_code == 403
        assert (await client.get("/api/v1/audit/export", headers=account.headers)).status_code == 403
        assert (await client.get("/api/v1/audit/checkpoints", headers=account.headers)).status_code == 403
    # An org owner is not a platform auditor.
    assert (await client.get("/api/v1/audit/verify", headers=owner_a.headers)).status_code == 403
    assert (await client.get("/api/v1/audit/checkpoints", headers=owner_a.headers)).status_code == 403

    orgs_seen = {e["org"] for e in await _all_events(client, auditor)}
    assert {org_a, org_b, None} <= orgs_seen
    only_b = await _all_events(client, auditor, org=org_b)
    assert only_b
    assert {e["org"] for e in only_b} == {org_b}

    for path in ("events", "export", "verify", "checkpoints"):
        anonymous = await client.get(f"/api/v1/audit/{path}")
        assert anonymous.status_code == 401, path
        assert anonymous.headers["content-type"].startswith("application/problem+json")


async def test_api_keys_need_the_audit_read_scope_and_stay_in_their_org(
    client: AsyncTestClient[Any], db: asyncpg.Connection, people: People
) -> None:
    owner = people.owner_a
    other = await make_org(client, owner)
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()

    async def key(scopes: list[str]) -> dict[str, str]:
        created = await client.post(
            "/api/v1/api-keys",
            json={"name": "audit", "org": people.org_a, "scopes": scopes, "expires_at": expires},
            headers=owner.headers,
        )
        assert created.status_code == 201, created.text
        return {"Authorization": f"Bearer {created.json()['key']}"}

    reader = await key(["audit:read"])
    await sequence_audit(db)
    listed = await client.get(EVENTS, headers=reader)
    assert listed.status_code == 200
    assert {e["org"] for e in listed.json()["items"]} == {people.org_a}
    assert (await client.get(EVENTS, params={"org": other}, headers=reader)).status_code == 404
    assert (await client.get("/api/v1/audit/verify", headers=reader)).status_code == 403

    no_scope = await key(["catalog:read"])
    refused = await client.get(EVENTS, headers=no_scope)
    assert refused.status_code == 403
    assert "audit:read" in refused.json()["detail"]


async def test_events_filters_and_keyset_pages(
    client: AsyncTestClient[Any], db: asyncpg.Connection, people: People
) -> None:
    owner = people.owner_b
    org = await make_org(client, owner)
    for member in (people.plain, people.colleague, people.owner_a, people.auditor):
        response = await client.post(
            f"/api/v1/orgs/{org}/members", json={"email": member.email, "role": "member"}, headers=owner.headers
        )
        assert response.status_code == 201
    await sequence_audit(db)

    first = await client.get(EVENTS, params={"org": org, "limit": 2}, headers=owner.headers)
    assert first.status_code == 200
    page = first.json()
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    seqs = [e["seq"] for e in page["items"]]
    assert seqs == sorted(seqs, reverse=True), "newest first by default"
    rest = await _all_events(client, owner, org=org)
    assert len(rest) == 5
    assert [e["seq"] for e in rest][:2] == seqs
    second = await client.get(
        EVENTS, params={"org": org, "limit": 2, "cursor": page["next_cursor"]}, headers=owner.headers
    )
    assert [e["seq"] for e in second.json()["items"]] == [e["seq"] for e in rest][2:4]

    ascending = await client.get(EVENTS, params={"org": org, "order": "asc"}, headers=owner.headers)
    assert [e["seq"] for e in ascending.json()["items"]] == sorted(e["seq"] for e in rest)
    bad_cursor = await client.get(EVENTS, params={"org": org, "cursor": "!!nope"}, headers=owner.headers)
    assert bad_cursor.status_code == 400
    assert bad_cursor.json()["type"] == "invalid-cursor"
    mixed = await client.get(
        EVENTS, params={"org": org, "order": "asc", "cursor": page["next_cursor"]}, headers=owner.headers
    )
    assert mixed.status_code == 400
    backwards = await client.get(EVENTS, params={"order": "up"}, headers=owner.headers)
    assert backwards.status_code == 422
    assert backwards.json()["errors"] == [
        {"field": "order", "message": "unknown value 'up'; expected one of desc, asc"}
    ]
    too_many = await client.get(EVENTS, params={"limit": 501}, headers=owner.headers)
    assert too_many.status_code == 422
    assert too_many.headers["content-type"].startswith("application/problem+json")

    added = await _all_events(client, owner, org=org, action="org.member_added")
    assert len(added) == 4
    assert {e["action"] for e in added} == {"org.member_added"}
    by_owner = await _all_events(client, owner, org=org, actor=f"user:{owner.id}")
    assert len(by_owner) == 5
    assert await _all_events(client, owner, org=org, actor="user:someone-else") == []
    created_at = dt.datetime.fromisoformat(ascending.json()["items"][0]["occurred_at"])
    later = (created_at + dt.timedelta(microseconds=1)).isoformat()
    assert len(await _all_events(client, owner, org=org, since=later)) == 4
    assert len(await _all_events(client, owner, org=org, until=later)) == 1

    event = rest[-1]
    assert set(event) == {
        "seq",
        "occurred_at",
        "actor",
        "org",
        "action",
        "target_type",
        "target_id",
        "request_id",
        "client_addr",
        "details",
        "prev_hash",
        "hash",
    }
    stored = await db.fetchrow("SELECT prev_hash, hash FROM audit_events WHERE seq = $1", event["seq"])
    assert (event["prev_hash"], event["hash"]) == (stored["prev_hash"].hex(), stored["hash"].hex())
    assert event["action"] == "org.created"
    assert event["target_id"] == org
    assert event["org"] == org
    assert event["actor"] == f"user:{owner.id}"
    assert event["details"]["kind"] == "both"


async def test_export_jsonl_and_csv(client: AsyncTestClient[Any], db: asyncpg.Connection, people: People) -> None:
    owner, member = people.owner_a, people.plain
    org = await make_org(client, owner)
    await client.post(
        f"/api/v1/orgs/{org}/members", json={"email": member.email, "role": "auditor"}, headers=owner.headers
    )
    await sequence_audit(db)
    expected = [e["seq"] for e in reversed(await _all_events(client, owner, org=org))]
    assert len(expected) == 2

    jsonl = await client.get("/api/v1/audit/export", params={"format": "jsonl", "org": org}, headers=member.headers)
    assert jsonl.status_code == 200
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in jsonl.headers["content-disposition"]
    lines = jsonl.text.splitlines()
    assert len(lines) == 2
    rows = [json.loads(line) for line in lines]
    assert [r["seq"] for r in rows] == expected
    assert rows[0]["action"] == "org.created"
    assert rows[0]["org"] == org
    assert rows[1]["details"] == {"org": org, "email": member.email, "role": "auditor"}
    assert all(len(r["hash"]) == 64 and len(r["prev_hash"]) == 64 for r in rows)

    exported = await client.get("/api/v1/audit/export", params={"format": "csv", "org": org}, headers=member.headers)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert [int(r["seq"]) for r in table] == expected
    assert table[0]["org"] == org
    assert table[0]["action"] == "org.created"
    assert json.loads(table[1]["details"])["role"] == "auditor"
    assert table[1]["hash"] == rows[1]["hash"]

    default = await client.get("/api/v1/audit/export", params={"org": org}, headers=owner.headers)
    assert default.headers["content-type"].startswith("application/x-ndjson")
    assert len(default.text.splitlines()) == 2

    unknown = await client.get("/api/v1/audit/export", params={"format": "xml"}, headers=owner.headers)
    assert unknown.status_code == 422
    assert unknown.headers["content-type"].startswith("application/problem+json")
    # The problem names the parameter the client sent and the values it takes.
    assert unknown.json()["errors"] == [
        {"field": "format", "message": "unknown value 'xml'; expected one of jsonl, csv"}
    ]
    assert unknown.json()["detail"].startswith("format: ")

    everything = await client.get("/api/v1/audit/export", headers=people.auditor.headers)
    seqs = [json.loads(line)["seq"] for line in everything.text.splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_checkpoints_are_signed_listed_and_checked(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection,
    app: Litestar,
    sessionmaker: async_sessionmaker[AsyncSession],
    people: People,
) -> None:
    auditor = people.auditor
    state = app.state
    await sequence_audit(db)
    written = await checkpoints.write_checkpoint(state.settings, sessionmaker, state.object_store, state.keyring)
    assert written is not None
    head = await db.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1")
    assert written.key == f"audit/checkpoints/{written.seq:020d}.jws"
    assert written.seq <= head["seq"]
    again = await checkpoints.write_checkpoint(state.settings, sessionmaker, state.object_store, state.keyring)
    assert again is not None
    assert again.seq >= written.seq, "writing a checkpoint of an unchanged head again only replaces it"

    listed = await client.get("/api/v1/audit/checkpoints", params={"limit": 500}, headers=auditor.headers)
    assert listed.status_code == 200
    items = {item["key"]: item for item in listed.json()["items"]}
    item = items[written.key]
    assert item["valid"] is True
    assert item["seq"] == written.seq
    assert item["hash"] == written.hash.hex()
    stored = await db.fetchval("SELECT hash FROM audit_events WHERE seq = $1", written.seq)
    assert item["hash"] == stored.hex()

    # Anyone can check a checkpoint with the published keys.
    jwks = (await client.get("/.well-known/jwks.json")).json()
    header = jwt.get_unverified_header(item["jws"])
    assert header["alg"] == "EdDSA"
    assert header["kid"] == item["kid"]
    key = jwt.PyJWK({k: v for k, v in next(k for k in jwks["keys"] if k["kid"] == item["kid"]).items()})
    claims = jwt.decode(item["jws"], key.key, algorithms=["EdDSA"], options={"verify_aud": False})
    assert claims["seq"] == written.seq
    assert claims["hash"] == written.hash.hex()
    assert claims["iss"]

    page = await client.get("/api/v1/audit/checkpoints", params={"limit": 1}, headers=auditor.headers)
    assert len(page.json()["items"]) == 1
    if page.json()["next_cursor"]:
        following = await client.get(
            "/api/v1/audit/checkpoints",
            params={"limit": 1, "cursor": page.json()["next_cursor"]},
            headers=auditor.headers,
        )
        assert following.json()["items"][0]["key"] > page.json()["items"][0]["key"]

    verified = (await client.get("/api/v1/audit/verify", headers=auditor.headers)).json()
    assert verified["ok"] is True, verified
    assert verified["checkpoints_checked"] >= 1
    assert verified["last_checkpoint_seq"] >= written.seq
    assert verified["bad_checkpoints"] == []


def test_openapi_documents_the_audit_endpoints(app: Litestar) -> None:
    paths = app.openapi_schema.to_schema()["paths"]
    for path in ("events", "export", "verify", "checkpoints"):
        operation = paths[f"/api/v1/audit/{path}"]["get"]
        assert operation["summary"], path
        assert operation["description"], path
        assert operation["security"] == [{"BearerToken": []}], path
        assert {"401", "403"} <= set(operation["responses"]), path
