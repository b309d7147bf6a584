"""Provenance: the semantic rules (422 naming the field, nothing stored) and the Croissant and PROV-JSON exports."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient

from tests.catalog.helpers import make_product, upload
from tests.conftest import Account, grant_platform_role, make_org, sequence_audit, sign_up

VALID: dict[str, Any] = {
    "sources": [
        {
            "kind": "public_web_crawl",
            "name": "Regional financial news sites",
            "url": "https://news.example.com/",
            "legal_basis": "text-and-data-mining exception; opt-outs honoured",
            "collected_from": "2025-01-01",
            "collected_to": "2025-03-31",
            "opt_out_evidence": {
                "robots_txt": "allowed",
                "tdm_reservation": False,
                "checked_at": "2025-01-01T08:00:00Z",
                "robots_txt_url": "https://news.example.com/robots.txt",
                "user_agent": "CorporaBot/1.0",
            },
        },
        {
            "kind": "synthetic",
            "name": "Generated question-answer pairs",
            "generator": "example-llm-7b v2",
            "collected_from": "2025-04-01",
            "collected_to": "2025-04-02",
        },
        {
            "kind": "derived",
            "name": "Earlier filings corpus",
            "derived_from": {"product": "filings-base", "version": "2.1.0"},
        },
        {
            "kind": "licensed",
            "name": "Exchange filings archive",
            "url": "https://example.com/filings",
            "rights_holder": "Example Exchange",
            "legal_basis": "licence agreement 2026-17",
            "collected_from": "2024-06-01",
            "collected_to": "2024-12-31",
        },
    ],
    "activities": [
        {
            "stage": "collect",
            "description": "crawl and download",
            "tool": "crawler 2.1",
            "operator": "Data acquisition team",
            "started_at": "2025-01-01T08:00:00Z",
            "ended_at": "2025-03-31T18:00:00Z",
            "parameters": {"max_depth": 3, "respect_robots": True},
        },
        {
            "stage": "clean",
            "description": "near-duplicate removal and PII scrubbing",
            "tool": "dedup 1.4",
            "metrics": {"dedup_rate": 0.12, "pii_removed_rate": 0.031, "noise_fraction": 0.02, "documents_out": 120000},
        },
        {
            "stage": "label",
            "description": "topic labels by two annotators",
            "tool": "labelstudio 1.12",
            "metrics": {"label_agreement": 0.87, "annotations_per_item": 2},
        },
        {
            "stage": "test",
            "description": "toxicity screening",
            "tool": "toxicity-classifier 0.3",
            "started_at": "2025-04-10T09:00:00+02:00",
            "ended_at": "2025-04-10T10:00:00+02:00",
            "metrics": {"harmful_content_rate": 0.002, "quality_score": 4.2},
        },
    ],
    "synthetic_fraction": 0.15,
}

FUTURE_DAY = (dt.date.today() + dt.timedelta(days=30)).isoformat()
FUTURE_TIME = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set (or, with ``...``, remove) the value at a dotted path like ``sources.0.generator``."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value

    return change


def _all(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for one in changes:
            one(data)

    return change


# (id, change to VALID, the field the 422 must name)
BAD: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("synthetic-without-generator", _set("sources.1.generator", ...), "provenance.sources[1].generator"),
    ("synthetic-blank-generator", _set("sources.1.generator", "  "), "provenance.sources[1].generator"),
    ("crawl-without-evidence", _set("sources.0.opt_out_evidence", ...), "provenance.sources[0].opt_out_evidence"),
    (
        "evidence-without-checked-at",
        _set("sources.0.opt_out_evidence.checked_at", ...),
        "provenance.sources[0].opt_out_evidence.checked_at",
    ),
    (
        "evidence-without-robots",
        _set("sources.0.opt_out_evidence.robots_txt", ...),
        "provenance.sources[0].opt_out_evidence.robots_txt",
    ),
    (
        "evidence-unknown-robots",
        _set("sources.0.opt_out_evidence.robots_txt", "probably fine"),
        "provenance.sources[0].opt_out_evidence.robots_txt",
    ),
    (
        "evidence-without-tdm",
        _set("sources.0.opt_out_evidence.tdm_reservation", ...),
        "provenance.sources[0].opt_out_evidence.tdm_reservation",
    ),
    (
        "evidence-unknown-tdm",
        _set("sources.0.opt_out_evidence.tdm_reservation", "maybe"),
        "provenance.sources[0].opt_out_evidence.tdm_reservation",
    ),
    (
        "evidence-unknown-key",
        _set("sources.0.opt_out_evidence.colour", "blue"),
        "provenance.sources[0].opt_out_evidence.colour",
    ),
    (
        "evidence-bad-checked-at",
        _set("sources.0.opt_out_evidence.checked_at", "last spring"),
        "provenance.sources[0].opt_out_evidence.checked_at",
    ),
    (
        "evidence-future-checked-at",
        _set("sources.0.opt_out_evidence.checked_at", FUTURE_TIME),
        "provenance.sources[0].opt_out_evidence.checked_at",
    ),
    ("source-url-not-a-uri", _set("sources.3.url", "example dot com"), "provenance.sources[3].url"),
    ("source-url-javascript", _set("sources.3.url", "javascript:alert(1)"), "provenance.sources[3].url"),
    ("source-url-data", _set("sources.0.url", "data:text/html,<script>alert(1)</script>"), "provenance.sources[0].url"),
    ("source-url-relative", _set("sources.3.url", "/filings"), "provenance.sources[3].url"),
    ("source-url-no-host", _set("sources.3.url", "https:///filings"), "provenance.sources[3].url"),
    ("source-url-ftp", _set("sources.3.url", "ftp://example.com/filings"), "provenance.sources[3].url"),
    ("source-url-bad-ipv6", _set("sources.3.url", "http://[::1/filings"), "provenance.sources[3].url"),
    ("derived-without-origin", _set("sources.2.derived_from", ...), "provenance.sources[2].derived_from"),
    (
        "derived-bad-product",
        _set("sources.2.derived_from.product", "Not A Slug"),
        "provenance.sources[2].derived_from.product",
    ),
    (
        "derived-bad-version",
        _set("sources.2.derived_from.version", "latest"),
        "provenance.sources[2].derived_from.version",
    ),
    (
        "derived-origin-on-licensed",
        _set("sources.3.derived_from", {"product": "other", "version": "1.0.0"}),
        "provenance.sources[3].derived_from",
    ),
    (
        "collected-backwards",
        _all(_set("sources.3.collected_from", "2025-01-02"), _set("sources.3.collected_to", "2025-01-01")),
        "provenance.sources[3].collected_to",
    ),
    ("collected-in-future", _set("sources.3.collected_to", FUTURE_DAY), "provenance.sources[3].collected_to"),
    ("collected-from-in-future", _set("sources.1.collected_from", FUTURE_DAY), "provenance.sources[1].collected_from"),
    (
        "activity-ends-before-start",
        _set("activities.0.ended_at", "2024-12-31T23:59:59Z"),
        "provenance.activities[0].ended_at",
    ),
    ("activity-in-future", _set("activities.3.started_at", FUTURE_TIME), "provenance.activities[3].started_at"),
    ("rate-above-one", _set("activities.1.metrics.dedup_rate", 12.0), "provenance.activities[1].metrics.dedup_rate"),
    (
        "agreement-below-zero",
        _set("activities.2.metrics.label_agreement", -0.1),
        "provenance.activities[2].metrics.label_agreement",
    ),
    (
        "fraction-metric-above-one",
        _set("activities.1.metrics.noise_fraction", 2),
        "provenance.activities[1].metrics.noise_fraction",
    ),
    (
        "harmful-rate-as-percent",
        _set("activities.3.metrics.harmful_content_rate", 0.2 * 100),
        "provenance.activities[3].metrics.harmful_content_rate",
    ),
    ("bad-metric-name", _set("activities.1.metrics.bad name", 1), "provenance.activities[1].metrics.bad name"),
    ("synthetic-without-fraction", _set("synthetic_fraction", ...), "provenance.synthetic_fraction"),
    ("synthetic-with-zero-fraction", _set("synthetic_fraction", 0), "provenance.synthetic_fraction"),
    (
        "fraction-without-synthetic-source",
        _set("sources", [copy.deepcopy(VALID["sources"][3])]),
        "provenance.synthetic_fraction",
    ),
    (
        "all-synthetic-but-partial-fraction",
        _set("sources", [copy.deepcopy(VALID["sources"][1])]),
        "provenance.synthetic_fraction",
    ),
    ("fraction-out-of-range", _set("synthetic_fraction", 1.5), "synthetic_fraction"),
]


@dataclasses.dataclass
class Provider:
    owner: Account
    org: str
    slug: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def provider(client: AsyncTestClient[Any]) -> Provider:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    return Provider(owner, org, await make_product(client, owner, org))


async def _create(client: AsyncTestClient[Any], provider: Provider, version: str, provenance: Any) -> Any:
    body = {"version": version, "changelog": "x", "licence_id": "CC-BY-4.0", "provenance": provenance}
    return await client.post(f"/api/v1/products/{provider.slug}/versions", json=body, headers=provider.owner.headers)


async def _stored(db: asyncpg.Connection, slug: str, version: str) -> tuple[int, int]:
    """Rows of the version, and audit events about it."""
    versions = await db.fetchval(
        "SELECT count(*) FROM product_versions v JOIN products p ON p.id = v.product_id "
        "WHERE p.slug = $1 AND v.version = $2",
        slug,
        version,
    )
    await sequence_audit(db)
    events = await db.fetchval("SELECT count(*) FROM audit_events WHERE target_id = $1", f"{slug}@{version}")
    return versions, events


@pytest.mark.parametrize(
    ("number", "change", "field"), [pytest.param(n, *case[1:], id=case[0]) for n, case in enumerate(BAD)]
)
async def test_bad_provenance_is_refused_naming_the_field_and_nothing_is_stored(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection,
    provider: Provider,
    number: int,
    change: Callable[[dict[str, Any]], None],
    field: str,
) -> None:
    provenance = copy.deepcopy(VALID)
    change(provenance)
    version = f"0.0.0-bad.{number}"
    refused = await _create(client, provider, version, provenance)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["type"] == "validation-error"
    assert any(e["field"].endswith(field) for e in problem["errors"]), problem
    assert await _stored(db, provider.slug, version) == (0, 0)


async def test_every_problem_is_reported_at_once(client: AsyncTestClient[Any], provider: Provider) -> None:
    provenance = copy.deepcopy(VALID)
    del provenance["sources"][1]["generator"]
    provenance["activities"][1]["metrics"]["dedup_rate"] = 3.0
    refused = await _create(client, provider, "0.0.1-two-problems", provenance)
    assert refused.status_code == 422, refused.text
    assert {e["field"] for e in refused.json()["errors"]} == {
        "provenance.sources[1].generator",
        "provenance.activities[1].metrics.dedup_rate",
    }


async def test_a_patch_with_bad_provenance_changes_nothing(
    client: AsyncTestClient[Any], db: asyncpg.Connection, provider: Provider
) -> None:
    created = await _create(client, provider, "0.9.0", VALID)
    assert created.status_code == 201, created.text
    path = f"/api/v1/products/{provider.slug}/versions/0.9.0"
    await sequence_audit(db)
    events = await db.fetchval("SELECT count(*) FROM audit_events WHERE target_id = $1", f"{provider.slug}@0.9.0")
    bad = copy.deepcopy(VALID)
    bad["activities"][0]["ended_at"] = "2024-01-01T00:00:00Z"
    refused = await client.patch(path, json={"provenance": bad}, headers=provider.owner.headers)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "provenance.activities[0].ended_at"
    assert _given((await client.get(path, headers=provider.owner.headers)).json()["provenance"]) == VALID
    await sequence_audit(db)
    assert await db.fetchval("SELECT count(*) FROM audit_events WHERE target_id = $1", f"{provider.slug}@0.9.0") == (
        events
    )
    # A good change goes through, and keeps the synthetic fraction in step.
    better = copy.deepcopy(VALID)
    better["synthetic_fraction"] = 0.2
    accepted = await client.patch(path, json={"provenance": better}, headers=provider.owner.headers)
    assert accepted.status_code == 200, accepted.text
    assert _given(accepted.json()["provenance"]) == better


async def test_complex_provenance_is_accepted_and_kept(client: AsyncTestClient[Any], provider: Provider) -> None:
    created = await _create(client, provider, "0.1.0", VALID)
    assert created.status_code == 201, created.text
    assert _given(created.json()["provenance"]) == VALID
    # The opt-out vocabulary's other spellings are accepted too.
    variant = copy.deepcopy(VALID)
    variant["sources"][0]["opt_out_evidence"] = {
        "robots_txt": "absent",
        "tdm_reservation": "reserved",
        "checked_at": "2025-01-01",
        "tdm_policy_url": "https://news.example.com/.well-known/tdmrep.json",
    }
    assert (await _create(client, provider, "0.1.1", variant)).status_code == 201


async def _published_version(client: AsyncTestClient[Any], db: asyncpg.Connection) -> tuple[str, dict[str, bytes]]:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    slug = await make_product(client, owner, org, languages=["en", "de"], tags=["filings", "news"])
    created = await _create(client, Provider(owner, org, slug), "1.0.0", VALID)
    assert created.status_code == 201, created.text
    files = {"data/news 2025.jsonl": b'{"text": "markets rallied"}\n' * 50, "data/filings.csv": b"id,text\n1,a\n" * 40}
    for path, content in files.items():
        done = await upload(client, owner, slug, "1.0.0", path, content)
        assert done.status_code == 200, done.text
    published = await client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers)
    assert published.status_code == 200, published.text
    if published.json()["state"] == "in_review":
        reviewer = await grant_platform_role(client, db, await sign_up(client), "reviewer")
        approved = await client.post(
            f"/api/v1/products/{slug}/versions/1.0.0/review", json={"decision": "approve"}, headers=reviewer.headers
        )
        assert approved.status_code == 200, approved.text
    return slug, files


@pytest.mark.filterwarnings("ignore:ConjunctiveGraph is deprecated:DeprecationWarning")
async def test_exports_of_a_published_version(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    slug, files = await _published_version(client, db)
    base = f"/api/v1/products/{slug}/versions/1.0.0"
    digests = {path: hashlib.sha256(content).hexdigest() for path, content in files.items()}

    response = await client.get(f"{base}/croissant")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/ld+json")
    croissant = response.json()
    assert croissant["@context"]["rai"] == "http://mlcommons.org/croissant/RAI/"
    assert croissant["@context"]["cr"] == "http://mlcommons.org/croissant/"
    assert "http://mlcommons.org/croissant/1.1" in croissant["conformsTo"]
    assert croissant["license"] == "https://spdx.org/licenses/CC-BY-4.0.html"
    assert croissant["version"] == "1.0.0"
    assert croissant["datePublished"]
    assert croissant["inLanguage"] == ["de", "en"]
    distribution = {d["name"]: d for d in croissant["distribution"]}
    assert {name: d["sha256"] for name, d in distribution.items()} == digests
    assert distribution["data/filings.csv"]["contentSize"] == f"{len(files['data/filings.csv'])} B"
    assert distribution["data/news 2025.jsonl"]["contentUrl"].endswith(f"{base}/files/data/news%202025.jsonl")
    assert all(d["@type"] == "cr:FileObject" and d["encodingFormat"] == "text/plain" for d in distribution.values())
    assert "Web Scraping" in croissant["rai:dataCollectionType"]
    assert croissant["rai:dataCollectionTimeframe"] == ["2024-06-01", "2025-04-02"]
    assert "crawl and download" in croissant["rai:dataCollection"]
    assert any("near-duplicate removal" in p for p in croissant["rai:dataPreprocessingProtocol"])
    assert any("topic labels" in p for p in croissant["rai:dataAnnotationProtocol"])
    assert any("pii_removed_rate = 0.031" in p for p in croissant["rai:personalSensitiveInformation"])
    assert "harmful_content_rate = 0.002" in croissant["rai:dataSocialImpact"]
    assert croissant["rai:dataUseCases"]
    assert len(croissant["prov:wasDerivedFrom"]) == 4
    assert len(croissant["prov:wasGeneratedBy"]) == 4

    mlc = pytest.importorskip("mlcroissant")
    dataset = mlc.Dataset(jsonld=croissant)  # raises ValidationError on any error
    metadata = dataset.metadata
    assert not metadata.ctx.issues.errors
    assert {f.name: f.sha256 for f in metadata.file_objects} == digests
    assert metadata.data_collection == croissant["rai:dataCollection"]

    response = await client.get(f"{base}/provenance")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    stages = sorted(a["cv:stage"] for a in document["activity"].values())
    assert stages == ["clean", "collect", "label", "test"]
    sources = {e["prov:label"] for e in document["entity"].values() if _has_type(e, "cv:Source")}
    assert sources == {s["name"] for s in VALID["sources"]}

    prov_model = pytest.importorskip("prov.model")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = prov_model.ProvDocument.deserialize(content=response.text, format="json")
    records = loaded.get_records()
    activities = [r for r in records if isinstance(r, prov_model.ProvActivity)]
    assert len(activities) == 4
    collect = next(a for a in activities if "collect" in str(a.get_attribute("cv:stage")))
    assert collect.get_startTime() == dt.datetime(2025, 1, 1, 8, tzinfo=dt.UTC)
    assert collect.get_endTime() == dt.datetime(2025, 3, 31, 18, tzinfo=dt.UTC)
    clean = next(a for a in activities if "clean" in str(a.get_attribute("cv:stage")))
    assert {0.12} == set(clean.get_attribute("metric:dedup_rate"))
    entities = {r.identifier.uri: r for r in records if isinstance(r, prov_model.ProvEntity)}
    assert sum(1 for i in entities if "#source-" in i) == 4
    assert sum(1 for i in entities if "/files/" in i) == 2
    agents = [r for r in records if isinstance(r, prov_model.ProvAgent)]
    assert {"example-llm-7b v2", "Example Exchange", "Data acquisition team"} <= {
        str(label) for a in agents for label in a.get_attribute("prov:label")
    }
    kinds = {type(r).__name__ for r in records if r.is_relation()}
    assert {"ProvGeneration", "ProvUsage", "ProvAttribution", "ProvAssociation", "ProvDerivation"} <= kinds
    derived = [
        r
        for r in records
        if isinstance(r, prov_model.ProvDerivation)
        and r.get_attribute("prov:usedEntity").pop().uri.endswith("products/filings-base/versions/2.1.0")
    ]
    assert len(derived) == 1


def _given(value: Any) -> Any:
    """The provenance without the optional fields left out (stored as null)."""
    if isinstance(value, dict):
        return {k: _given(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_given(v) for v in value]
    return value


def _has_type(record: dict[str, Any], name: str) -> bool:
    types = record.get("prov:type", [])
    types = types if isinstance(types, list) else [types]
    return any(t.get("$") == name for t in types if isinstance(t, dict))


async def test_draft_exports_are_hidden_from_outsiders(client: AsyncTestClient[Any], provider: Provider) -> None:
    created = await _create(client, provider, "0.2.0", VALID)
    assert created.status_code == 201, created.text
    stranger = await sign_up(client)
    for export in ("croissant", "provenance"):
        path = f"/api/v1/products/{provider.slug}/versions/0.2.0/{export}"
        anonymous = await client.get(path)
        assert anonymous.status_code == 404, anonymous.text
        assert anonymous.headers["content-type"].startswith("application/problem+json")
        assert (await client.get(path, headers=stranger.headers)).status_code == 404
        assert (await client.get(path, headers=provider.owner.headers)).status_code == 200
    missing = await client.get(f"/api/v1/products/{provider.slug}/versions/9.9.9/croissant")
    assert missing.status_code == 404


async def test_exports_are_documented(client: AsyncTestClient[Any]) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    for export, media_type in (("croissant", "application/ld+json"), ("provenance", "application/json")):
        operation = paths[f"/api/v1/products/{{slug}}/versions/{{version}}/{export}"]["get"]
        assert operation["summary"]
        assert operation["description"]
        assert any(m.startswith(media_type) for m in operation["responses"]["200"]["content"])
        assert "404" in operation["responses"]
