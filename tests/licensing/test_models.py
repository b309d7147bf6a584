"""Model manifests: the purpose chain each item must close, what a manifest records, its EU training-content
summary, its attribution NOTICE, its TC260 corpus annex, and who may read it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from tests.catalog.helpers import make_product, upload
from tests.conftest import Account, grant_platform_role, make_org, sequence_audit, sign_up
from tests.licensing.helpers import download_body, market, publish

Client = AsyncTestClient[Any]

CRAWLED_DOMAINS = [f"site{n:02d}.example.org" for n in range(20)]
RICH_PROVENANCE: dict[str, Any] = {
    "sources": [
        {
            "kind": "licensed",
            "name": "Wire archive",
            "rights_holder": "Example Wire",
            "legal_basis": "licence agreement 2025-3",
            "collected_from": "2024-01-01",
            "collected_to": "2024-12-31",
        },
        *(
            {
                "kind": "public_web_crawl",
                "name": f"Crawl of {domain}",
                "url": f"https://www.{domain}/news",
                "collected_from": "2025-01-01",
                "collected_to": "2025-03-31",
                "opt_out_evidence": {
                    "robots_txt": "allowed",
                    "tdm_reservation": False,
                    "checked_at": "2025-01-01T00:00:00Z",
                    "user_agent": "CorporaBot/2.0",
                },
            }
            for domain in CRAWLED_DOMAINS
        ),
        {"kind": "synthetic", "name": "Paraphrases", "generator": "Qwen2.5-7B-Instruct"},
    ],
    "activities": [
        {"stage": "collect", "tool": "corpora-crawler 2.0", "description": "crawl news pages"},
        {
            "stage": "clean",
            "tool": "harm-filter 1.3",
            "description": "classifier removes illegal and harmful content",
            "metrics": {"harmful_content_rate": 0.01, "sampled_records": 5000},
        },
    ],
    "synthetic_fraction": 0.25,
}


async def corpus(
    client: Client,
    db: asyncpg.Connection,
    provider: Account,
    org: str,
    *,
    provenance: dict[str, Any],
    files: dict[str, bytes],
    licence: str = "CC-BY-4.0",
    version: str = "1.0.0",
    slug: str | None = None,
) -> str:
    """A published version of a (new, unless ``slug``) product of ``org`` with this provenance and these files."""
    slug = slug or await make_product(client, provider, org)
    created = await client.post(
        f"/api/v1/products/{slug}/versions",
        json={"version": version, "changelog": "c", "licence_id": licence, "provenance": provenance},
        headers=provider.headers,
    )
    assert created.status_code == 201, created.text
    for path, content in files.items():
        done = await upload(client, provider, slug, version, path, content)
        assert done.status_code == 200, done.text
    await publish(client, db, provider, slug, version)
    return slug


async def entitle(
    client: Client,
    provider: Account,
    slug: str,
    buyer: Account,
    buyer_org: str,
    *,
    purpose: str = "pretraining",
    licence: str = "CC-BY-4.0",
    versions: str = "all",
) -> str:
    offer = await client.post(
        f"/api/v1/products/{slug}/offers",
        json={
            "name": f"offer {uuid.uuid4().hex[:6]}",
            "licence_id": licence,
            "price": {"amount": 0, "currency": "EUR"},
            "term_days": 30,
            "quota": {"downloads": 100, "bytes": None},
            "versions": versions,
            "approval": "automatic",
            "purposes": [purpose],
        },
        headers=provider.headers,
    )
    assert offer.status_code == 201, offer.text
    order = await client.post(
        "/api/v1/orders",
        json={"offer_id": offer.json()["id"], "buyer_org": buyer_org, "purpose": purpose},
        headers={**buyer.headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert order.status_code == 201, order.text
    entitlement_id: str = order.json()["entitlement_id"]
    return entitlement_id


async def download(
    client: Client, buyer: Account, entitlement_id: str, slug: str, path: str, purpose: str, version: str = "1.0.0"
) -> None:
    body = {"entitlement_id": entitlement_id, "product": slug, "version": version, "path": path, "purpose": purpose}
    granted = await client.post("/api/v1/downloads", json=body, headers=buyer.headers)
    assert granted.status_code == 201, granted.text


def item(entitlement_id: str, product: str, use: str, version: str = "1.0.0") -> dict[str, str]:
    return {"entitlement_id": entitlement_id, "product": product, "version": version, "use": use}


def model(org: str, *items: dict[str, str], **fields: Any) -> dict[str, Any]:
    return {
        "org": org,
        "name": fields.pop("name", f"model-{uuid.uuid4().hex[:8]}"),
        "version": "1",
        "training": list(items),
        **fields,
    }


def canonical_digest(body: dict[str, Any]) -> str:
    """The manifest digest, computed here from the answer as the API documents it."""
    manifest = {k: v for k, v in body.items() if k not in ("id", "created_at", "manifest_digest")}
    encoded = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


async def test_each_broken_link_of_the_purpose_chain_is_refused_naming_the_item(
    client: Client, db: asyncpg.Connection
) -> None:
    m = await market(client, db, purposes=("research",), versions="latest")
    refusals: list[tuple[dict[str, Any], str, str]] = []

    # Another org's entitlement to the same product.
    stranger = await sign_up(client)
    stranger_org = await make_org(client, stranger, kind="buyer")
    theirs = await entitle(client, m.provider, m.product, stranger, stranger_org, purpose="research")
    await download(client, stranger, theirs, m.product, "data/a.txt", "research")
    refusals.append((model(m.buyer_org, item(theirs, m.product, "research")), "not-entitled", "is not one of"))
    # An entitlement for another product, and a version the product does not have.
    other = await market(client, db)
    refusals.append((model(m.buyer_org, item(m.entitlement_id, other.product, "research")), "not-entitled", "is for"))
    refusals.append(
        (model(m.buyer_org, item(m.entitlement_id, m.product, "research", "9.9.9")), "not-entitled", "no released")
    )
    # A use the entitlement was not granted for.
    refusals.append(
        (model(m.buyer_org, item(m.entitlement_id, m.product, "pretraining")), "not-entitled", "granted for research")
    )
    # Nothing of the version downloaded under it.
    refusals.append((model(m.buyer_org, item(m.entitlement_id, m.product, "research")), "never-downloaded", "no file"))
    for body, kind, detail in refusals:
        refused = await client.post("/api/v1/models", json=body, headers=m.buyer.headers)
        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert (problem["type"], problem["item"]) == (kind, 0), problem
        assert problem["detail"].startswith("training[0] ("), problem
        assert detail in problem["detail"], problem

    # A newer version: the entitlement covers only the latest, and 1.0.0 was never downloaded under it.
    await corpus(
        client,
        db,
        m.provider,
        m.provider_org,
        provenance=RICH_PROVENANCE,
        files={"x.txt": b"x"},
        slug=m.product,
        version="1.1.0",
    )
    await download(client, m.buyer, m.entitlement_id, m.product, "x.txt", "research", version="1.1.0")
    stale = await client.post(
        "/api/v1/models",
        json=model(m.buyer_org, item(m.entitlement_id, m.product, "research")),
        headers=m.buyer.headers,
    )
    assert stale.status_code == 422, stale.text
    assert stale.json()["type"] == "not-entitled"
    assert "latest version only (1.1.0)" in stale.json()["detail"]

    # The licence as accepted no longer permits the use (a snapshot stricter than the entitlement's purposes).
    second = model(m.buyer_org, item(m.entitlement_id, m.product, "research", "1.1.0"))
    await db.execute(
        "UPDATE entitlements SET terms = jsonb_set(terms, '{licence,uses}', '[\"evaluation\"]') WHERE id = $1::uuid",
        m.entitlement_id,
    )
    licence_refused = await client.post("/api/v1/models", json=second, headers=m.buyer.headers)
    assert licence_refused.status_code == 422, licence_refused.text
    assert licence_refused.json()["type"] == "not-entitled"
    assert "licence as accepted (CC-BY-4.0) does not permit research" in licence_refused.json()["detail"]

    # The second item is named when it is the one at fault; nothing was recorded by any refusal.
    await db.execute(
        "UPDATE entitlements SET terms = jsonb_set(terms, '{licence,uses}', '[\"research\"]') WHERE id = $1::uuid",
        m.entitlement_id,
    )
    mixed = model(
        m.buyer_org, item(m.entitlement_id, m.product, "research", "1.1.0"), item(theirs, m.product, "research")
    )
    named = await client.post("/api/v1/models", json=mixed, headers=m.buyer.headers)
    assert (named.status_code, named.json()["item"]) == (422, 1), named.text
    assert named.json()["detail"].startswith("training[1] (")
    recorded = await db.fetchval(
        "SELECT count(*) FROM model_manifests WHERE org_id = (SELECT id FROM organizations WHERE slug = $1)",
        m.buyer_org,
    )
    assert recorded == 0
    accepted = await client.post("/api/v1/models", json=second, headers=m.buyer.headers)
    assert accepted.status_code == 201, accepted.text


async def test_an_accepted_manifest_records_downloads_licence_verdict_and_digest(
    client: Client, db: asyncpg.Connection
) -> None:
    m = await market(client, db, purposes=("pretraining",))
    for path in ("data/a.txt", "data/b.txt", "data/a.txt"):  # a file downloaded twice counts once
        await client.post("/api/v1/downloads", json=download_body(m, path, "pretraining"), headers=m.buyer.headers)
    body = model(m.buyer_org, item(m.entitlement_id, m.product, "pretraining"), description="a small model")
    created = await client.post("/api/v1/models", json=body, headers=m.buyer.headers)
    assert created.status_code == 201, created.text
    manifest = created.json()
    version = (await client.get(f"/api/v1/products/{m.product}/versions/1.0.0")).json()
    [recorded] = manifest["items"]
    assert recorded["product"] == m.product
    assert recorded["version"] == "1.0.0"
    assert recorded["entitlement_id"] == m.entitlement_id
    assert recorded["use"] == "pretraining"
    assert recorded["manifest_digest"] == version["manifest_digest"]
    assert recorded["licence"] == "CC-BY-4.0"
    assert recorded["files_downloaded"] == 2
    assert recorded["bytes_downloaded"] == sum(len(c) for c in m.files.values())
    assert {(f["path"], f["sha256"]) for f in recorded["files"]} == {
        (p, hashlib.sha256(c).hexdigest()) for p, c in m.files.items()
    }
    assert manifest["verdict"]["allowed"] is True
    assert manifest["verdict"]["conflicts"] == []
    assert [a["product"] for a in manifest["verdict"]["duties"]["attribution"]] == [m.product]
    assert manifest["manifest_digest"] == canonical_digest(manifest)

    await sequence_audit(db)
    event = await db.fetchrow(
        "SELECT actor, details FROM audit_events WHERE action = 'model.created' AND target_id = $1", manifest["id"]
    )
    assert event is not None
    assert json.loads(event["details"])["manifest_digest"] == manifest["manifest_digest"]

    read = await client.get(f"/api/v1/models/{manifest['id']}", headers=m.buyer.headers)
    assert read.status_code == 200
    assert read.json() == manifest
    listed = await client.get("/api/v1/models", params={"org": m.buyer_org}, headers=m.buyer.headers)
    assert [i["id"] for i in listed.json()["items"]] == [manifest["id"]]
    again = await client.post("/api/v1/models", json=body, headers=m.buyer.headers)
    assert again.status_code == 409
    assert again.json()["type"] == "model-exists"

    # Another organisation (the provider included) sees none of it; platform auditors read it.
    for outsider in (m.provider, await sign_up(client)):
        for suffix in ("", "/summary", "/notice", "/tc260.csv"):
            hidden = await client.get(f"/api/v1/models/{manifest['id']}{suffix}", headers=outsider.headers)
            assert hidden.status_code == 404, (suffix, hidden.text)
        assert (await client.get("/api/v1/models", headers=outsider.headers)).json()["items"] == []
        listing = await client.get("/api/v1/models", params={"org": m.buyer_org}, headers=outsider.headers)
        assert listing.status_code == 404
        forged = await client.post(
            "/api/v1/models", json=model(m.buyer_org, body["training"][0]), headers=outsider.headers
        )
        assert forged.status_code == 404
    auditor = await grant_platform_role(client, db, await sign_up(client), "auditor")
    assert (await client.get(f"/api/v1/models/{manifest['id']}", headers=auditor.headers)).status_code == 200


async def test_summary_fills_the_eu_template_from_crawled_licensed_and_synthetic_sources(
    client: Client, db: asyncpg.Connection
) -> None:
    provider = await sign_up(client)
    provider_org = await make_org(client, provider, kind="provider")
    files = {"news.jsonl": b'{"text": "hello"}\n' * 4000}
    slug = await corpus(client, db, provider, provider_org, provenance=RICH_PROVENANCE, files=files)
    buyer = await sign_up(client)
    buyer_org = await make_org(client, buyer, kind="buyer")
    entitlement = await entitle(client, provider, slug, buyer, buyer_org)
    await download(client, buyer, entitlement, slug, "news.jsonl", "pretraining")
    made = await client.post(
        "/api/v1/models", json=model(buyer_org, item(entitlement, slug, "pretraining")), headers=buyer.headers
    )
    assert made.status_code == 201, made.text
    model_id, size = made.json()["id"], len(files["news.jsonl"])

    summary = (await client.get(f"/api/v1/models/{model_id}/summary", headers=buyer.headers)).json()
    general = summary["general"]
    assert general["provider"]["org"] == buyer_org
    assert general["modalities"] == ["text"]
    [text] = general["training_data_size"]
    assert (text["bytes"], text["unit"], text["bin"]) == (size, "tokens", "less than 1 billion tokens")
    assert general["latest_collection_date"] == "2025-03-31"

    licensed = summary["licensed_data"]
    assert licensed["used"]
    assert licensed["rights_holders"] == ["Example Wire"]
    assert licensed["licences"] == ["CC-BY-4.0"]
    crawled = summary["crawled_data"]
    assert crawled["used"]
    assert set(crawled["crawlers"]) == {"CorporaBot/2.0", "corpora-crawler 2.0"}
    assert len(crawled["collection_periods"]) == 20
    assert crawled["collection_periods"][0]["collected_from"] == "2025-01-01"
    assert crawled["domains_total"] == 20
    assert len(crawled["top_domains"]) == 2  # the top 10 % of 20 domains
    assert {d["domain"] for d in crawled["top_domains"]} <= set(CRAWLED_DOMAINS)
    synthetic = summary["synthetic_data"]
    assert synthetic["used"]
    assert synthetic["generators"] == ["Qwen2.5-7B-Instruct"]
    assert sum(d["bytes"] for d in synthetic["datasets"]) == round(size * 0.25)
    all_bytes = sum(
        d["bytes"] for key in ("licensed_data", "crawled_data", "synthetic_data") for d in summary[key]["datasets"]
    )
    assert all_bytes == size
    for unused in ("public_datasets", "user_data", "other_sources"):
        assert summary[unused] == {"used": False, "modalities": [], "datasets": []}, unused
    assert len(summary["tdm_opt_out"]["measures"]) == 20
    assert {m["robots_txt"] for m in summary["tdm_opt_out"]["measures"]} == {"allowed"}
    [filtering] = summary["illegal_content"]["measures"]
    assert filtering["tool"] == "harm-filter 1.3"
    assert filtering["metrics"]["harmful_content_rate"] == 0.01

    markdown = await client.get(
        f"/api/v1/models/{model_id}/summary", params={"format": "markdown"}, headers=buyer.headers
    )
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    for heading in (
        "## 1. General information",
        "### 2.2 Private datasets licensed from third parties",
        "### 2.3 Data crawled and scraped from online sources",
        "### 2.5 Synthetic data",
        "### 3.1 Respect of reservation of rights",
        "### 3.2 Removal of illegal content",
    ):
        assert heading in markdown.text, heading
    assert "Example Wire" in markdown.text
    assert "Qwen2.5-7B-Instruct" in markdown.text
    assert crawled["top_domains"][0]["domain"] in markdown.text

    # An SME lists the top 5 % of domains: one of twenty.
    sme = await client.post(
        "/api/v1/models", json=model(buyer_org, item(entitlement, slug, "pretraining"), sme=True), headers=buyer.headers
    )
    sme_summary = (await client.get(f"/api/v1/models/{sme.json()['id']}/summary", headers=buyer.headers)).json()
    assert len(sme_summary["crawled_data"]["top_domains"]) == 1
    assert sme_summary["crawled_data"]["top_domains_rule"].startswith("SME")


async def test_notice_names_attributed_corpora_and_the_tc260_annex_lists_every_source(
    client: Client, db: asyncpg.Connection
) -> None:
    provider = await sign_up(client)
    provider_org = await make_org(client, provider, kind="provider")
    attributed = await corpus(
        client, db, provider, provider_org, provenance=RICH_PROVENANCE, files={"a.txt": b"a" * 3000}
    )
    plain = await corpus(
        client,
        db,
        provider,
        provider_org,
        provenance={"sources": [{"kind": "public_domain", "name": "Old books", "url": "https://books.example.net/"}]},
        files={"b.txt": b"b" * 1000},
        licence="CC0-1.0",
    )
    buyer = await sign_up(client)
    buyer_org = await make_org(client, buyer, kind="buyer")
    first = await entitle(client, provider, attributed, buyer, buyer_org)
    second = await entitle(client, provider, plain, buyer, buyer_org, licence="CC0-1.0")
    await download(client, buyer, first, attributed, "a.txt", "pretraining")
    await download(client, buyer, second, plain, "b.txt", "pretraining")
    made = await client.post(
        "/api/v1/models",
        json=model(buyer_org, item(first, attributed, "pretraining"), item(second, plain, "pretraining"), name="Ada"),
        headers=buyer.headers,
    )
    assert made.status_code == 201, made.text
    model_id = made.json()["id"]

    notice = await client.get(f"/api/v1/models/{model_id}/notice", headers=buyer.headers)
    assert notice.status_code == 200
    assert notice.headers["content-type"].startswith("text/plain")
    assert f"({attributed} 1.0.0)" in notice.text
    assert "Creative Commons Attribution 4.0 International (CC-BY-4.0)" in notice.text
    assert "(c) Example Wire" in notice.text
    assert plain not in notice.text

    annex = await client.get(f"/api/v1/models/{model_id}/tc260.csv", headers=buyer.headers)
    assert annex.status_code == 200
    assert annex.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(annex.text)))
    assert len(rows) == len(RICH_PROVENANCE["sources"]) + 1
    assert abs(sum(float(r["share_of_training_data"]) for r in rows) - 1) < 1e-4
    books = next(r for r in rows if r["product"] == plain)
    assert (books["licence"], books["source_kind"], books["bytes"]) == ("CC0-1.0", "public_domain", "1000")
    assert books["share_of_training_data"] == "0.250000"
    assert books["sampling_requirement_met"] == "not recorded"
    wire = next(r for r in rows if r["source"] == "Wire archive")
    assert (wire["licence"], wire["rights_holder"]) == ("CC-BY-4.0", "Example Wire")
    assert (wire["harmful_content_rate"], wire["sampled_records"], wire["sampling_requirement_met"]) == (
        "0.01",
        "5000",
        "yes",
    )


async def test_summary_sizes_text_by_the_inspection_profile_where_present(
    client: Client, db: asyncpg.Connection
) -> None:
    provider = await sign_up(client)
    provider_org = await make_org(client, provider, kind="provider")
    files = {"a.jsonl": b'{"text": "hello"}\n' * 4000, "b.jsonl": b'{"text": "world"}\n' * 2000}
    slug = await corpus(client, db, provider, provider_org, provenance=RICH_PROVENANCE, files=files)
    buyer = await sign_up(client)
    buyer_org = await make_org(client, buyer, kind="buyer")
    entitlement = await entitle(client, provider, slug, buyer, buyer_org)
    for path in files:
        await download(client, buyer, entitlement, slug, path, "pretraining")
    made = await client.post(
        "/api/v1/models", json=model(buyer_org, item(entitlement, slug, "pretraining")), headers=buyer.headers
    )
    assert made.status_code == 201, made.text
    url = f"/api/v1/models/{made.json()['id']}/summary"

    async def text_size() -> dict[str, Any]:
        response = await client.get(url, headers=buyer.headers)
        assert response.status_code == 200, response.text
        [text] = response.json()["general"]["training_data_size"]
        size: dict[str, Any] = text
        return size

    async def profile(path: str, records: int, tokens: int) -> None:
        await db.execute(
            "INSERT INTO file_profiles (id, version_id, file_id, started_at, finished_at, profile)"
            " SELECT gen_random_uuid(), f.version_id, f.id, now(), now(), $3::jsonb FROM version_files f"
            " JOIN product_versions v ON v.id = f.version_id JOIN products p ON p.id = v.product_id"
            " WHERE p.slug = $1 AND f.path = $2"
            " ON CONFLICT (file_id) DO UPDATE SET started_at = now(), finished_at = now(), failed_at = NULL,"
            " error = NULL, profile = EXCLUDED.profile",
            slug,
            path,
            json.dumps({"path": path, "records": records, "tokens": tokens}),
        )

    # Not profiled: estimated from the bytes downloaded.
    await db.execute(
        "DELETE FROM file_profiles WHERE version_id IN (SELECT v.id FROM product_versions v"
        " JOIN products p ON p.id = v.product_id WHERE p.slug = $1)",
        slug,
    )
    size_a, size_b = len(files["a.jsonl"]), len(files["b.jsonl"])
    estimated = await text_size()
    assert (estimated["estimate"], estimated["tokens"], estimated["records"]) == ((size_a + size_b) // 4, None, None)
    assert estimated["basis"] == "tokens estimated at 4 bytes per token"

    # One file profiled: its counted tokens, the other file's bytes estimated.
    await profile("a.jsonl", 4000, 2_500_000_000)
    mixed = await text_size()
    assert (mixed["estimate"], mixed["tokens"], mixed["records"]) == (2_500_000_000 + size_b // 4, 2_500_000_000, 4000)
    assert mixed["bin"] == "1 billion to 10 trillion tokens"  # the profile's count moves it to the template's next bin
    assert "1 of 2 files" in mixed["basis"]

    # Both profiled: the profile's counts alone.
    await profile("b.jsonl", 2000, 12_000)
    counted = await text_size()
    assert (counted["estimate"], counted["tokens"], counted["records"]) == (2_500_012_000, 2_500_012_000, 6000)
    assert counted["basis"] == "tokens counted by the inspection profile"
    assert counted["bytes"] == size_a + size_b
