"""GET /api/v1/products: Chinese and English full-text search, filters, facet counts, visibility, pagination.

Other tests share the database, so every query here is confined to an organisation the test created
(``org=<slug>``) and the expected numbers are those of the test's own products.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.audit.service import AuditContext
from app.db import create_engine
from catalog import search
from catalog.terms import product_terms, query_terms
from demo.seed import seed_catalogue
from tests.catalog.helpers import make_product, make_version
from tests.conftest import Account, Servers, grant_platform_role, make_org, sequence_audit, sign_up

Client = AsyncTestClient[Litestar]
PROBLEM = "application/problem+json"


async def listed(client: Client, db: asyncpg.Connection, owner: Account, org: str, **fields: Any) -> str:
    """A product with a released version 1.0.0 under ``licence`` (CC-BY-4.0), listed in the catalogue.

    The upload, publish and review flow is tested in test_catalog_uploads.py; here the version is released
    directly in the database, which is all the search reads.
    """
    licence = fields.pop("licence", "CC-BY-4.0")
    slug = await make_product(client, owner, org, **fields)
    await make_version(client, owner, slug, licence=licence)
    await db.execute(
        "UPDATE product_versions SET state = 'published', manifest_digest = $2, submitted_at = now(), "
        "published_at = now() WHERE product_id = (SELECT id FROM products WHERE slug = $1)",
        slug,
        "sha256:" + "0" * 64,
    )
    await db.execute("UPDATE products SET status = 'published' WHERE slug = $1", slug)
    return slug


async def find(client: Client, headers: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
    response = await client.get("/api/v1/products", params=params, headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["corpora-facets"] in ("exact", "estimated")
    body: dict[str, Any] = response.json()
    return body


def slugs(body: dict[str, Any]) -> list[str]:
    return [item["slug"] for item in body["items"]]


def facet(body: dict[str, Any], name: str) -> dict[str, int]:
    return {entry["value"]: entry["count"] for entry in body["facets"][name]}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["detail"]
    return body


async def provider(client: Client) -> tuple[Account, str]:
    owner = await sign_up(client)
    return owner, await make_org(client, owner, kind="provider")


async def test_chinese_queries_find_words_inside_unspaced_text(client: Client, db: asyncpg.Connection) -> None:
    owner, org = await provider(client)
    news = await listed(client, db, owner, org, title="金融新闻语料", summary="二〇二四年财经报道", tags=["新闻"])
    gold = await listed(client, db, owner, org, title="黄金价格时间序列", modality="tabular", tags=["行情"])
    clinic = await listed(
        client, db, owner, org, title="医患问诊对话", industry="healthcare", description="门诊录音转写", tags=[]
    )

    assert slugs(await find(client, q="金融", org=org)) == [news]
    assert set(slugs(await find(client, q="金", org=org))) == {news, gold}  # one character
    assert slugs(await find(client, q="新闻语料", org=org)) == [news]
    assert slugs(await find(client, q="金融新闻语料", org=org)) == [news]
    assert slugs(await find(client, q="问诊", org=org)) == [clinic]
    assert slugs(await find(client, q="录音", org=org)) == [clinic]  # in the description
    assert slugs(await find(client, q="行情", org=org)) == [gold]  # a tag
    assert slugs(await find(client, q="金融 问诊", org=org)) == []  # every term must match
    assert slugs(await find(client, q="银行", org=org)) == []


async def test_english_queries_are_case_insensitive(client: Client, db: asyncpg.Connection) -> None:
    owner, org = await provider(client)
    news = await listed(
        client, db, owner, org, title="Financial News Corpus", summary="Wire stories", tags=["Earnings"]
    )
    mixed = await listed(
        client,
        db,
        owner,
        org,
        title="金融新闻 Financial Filings",
        description="Quarterly FILINGS of listed companies",
        languages=["zh-Hans", "en"],
    )

    assert set(slugs(await find(client, q="financial", org=org))) == {news, mixed}
    assert slugs(await find(client, q="FINANCIAL news", org=org)) == [news]
    assert slugs(await find(client, q="filings 金融", org=org)) == [mixed]
    assert slugs(await find(client, q="earnings", org=org)) == [news]  # a tag, stored lower-case
    assert (
        slugs(await find(client, q="\uff26\uff49\uff4e\uff41\uff4e\uff43\uff49\uff41\uff4c", org=org)) != []
    )  # full-width letters
    assert slugs(await find(client, q="financials", org=org)) == []  # whole words, no stemming


async def test_facet_counts_and_each_filter(client: Client, db: asyncpg.Connection) -> None:
    owner, org = await provider(client)
    other_owner, other_org = await provider(client)
    specs = [
        {"industry": "finance", "modality": "text", "languages": ["zh-Hans"], "access": "open"},
        {"industry": "finance", "modality": "text", "languages": ["en", "zh-Hans"], "access": "gated"},
        {"industry": "finance", "modality": "audio", "languages": ["en"], "access": "paid"},
        {"industry": "legal", "modality": "text", "languages": ["en"], "access": "open", "licence": "CC-BY-NC-4.0"},
        {"industry": "healthcare", "modality": "image", "languages": ["ja"], "access": "open"},
    ]
    token = f"tok{uuid.uuid4().hex[:10]}"
    made = [await listed(client, db, owner, org, description=f"语料 corpus {token}", **spec) for spec in specs]
    elsewhere = await listed(client, db, other_owner, other_org, industry="finance", description=f"corpus {token}")

    expected = {
        "industry": {"finance": 3, "legal": 1, "healthcare": 1},
        "modality": {"text": 3, "audio": 1, "image": 1},
        "language": {"zh-Hans": 2, "en": 3, "ja": 1},
        "access": {"open": 3, "gated": 1, "paid": 1},
        "org": {org: 5},
    }
    # Without text the counts come from the count table; with text, from the matched products: the same.
    searches: list[dict[str, Any]] = [{"org": org}, {"org": org, "q": "corpus"}, {"org": org, "q": "语料"}]
    for params in searches:
        body = await find(client, **params)
        assert sorted(slugs(body)) == sorted(made)
        for name, counts in expected.items():
            assert facet(body, name) == counts, (params, name, body["facets"])
        ordered = [(entry["count"], entry["value"]) for entry in body["facets"]["industry"]]
        assert ordered == sorted(ordered, key=lambda item: (-item[0], item[1]))

    # Facets count the matched set: a filter narrows every facet.
    body = await find(client, org=org, industry="finance")
    assert sorted(slugs(body)) == sorted(made[:3])
    assert facet(body, "industry") == {"finance": 3}
    assert facet(body, "modality") == {"text": 2, "audio": 1}
    assert facet(body, "language") == {"zh-Hans": 2, "en": 2}
    assert facet(body, "access") == {"open": 1, "gated": 1, "paid": 1}
    assert facet(body, "industry") == facet(await find(client, org=org, industry="finance", q="corpus"), "industry")

    assert slugs(await find(client, org=org, modality="audio")) == [made[2]]
    assert slugs(await find(client, org=org, access="gated")) == [made[1]]
    assert sorted(slugs(await find(client, org=org, language="ZH-hans"))) == sorted(made[:2])  # normalised
    assert slugs(await find(client, org=org, language="ja", q="corpus")) == [made[4]]
    assert slugs(await find(client, org=org, industry="finance", modality="text", access="open")) == [made[0]]
    assert slugs(await find(client, org=org, industry="energy")) == []
    assert slugs(await find(client, org=f"no-such-org-{uuid.uuid4().hex[:8]}")) == []
    across = await find(client, q=token, industry="finance")  # no org filter: both providers
    assert sorted(slugs(across)) == sorted([*made[:3], elsewhere])
    assert facet(across, "org") == {org: 3, other_org: 1}
    assert slugs(await find(client, q=token, org=other_org)) == [elsewhere]

    # use: a released version under a licence permitting it (CC-BY-NC-4.0 rules out commercial release).
    assert sorted(slugs(await find(client, org=org, use="research"))) == sorted(made)
    commercial = await find(client, org=org, use="commercial_model_release")
    assert sorted(slugs(commercial)) == sorted(made[:3] + made[4:])
    assert facet(commercial, "industry") == {"finance": 3, "healthcare": 1}
    draft_only = await make_product(client, owner, org, industry="legal")
    await make_version(client, owner, draft_only)  # a draft version licenses nothing yet
    await db.execute("UPDATE products SET status = 'published' WHERE slug = $1", draft_only)
    assert draft_only not in slugs(await find(client, org=org, use="research"))
    assert draft_only in slugs(await find(client, org=org, industry="legal"))


async def test_use_filter_follows_releases_withdrawals_and_licence_terms(
    client: Client, db: asyncpg.Connection
) -> None:
    """`use` reads ``products.uses``, which triggers on versions and licences keep equal to the union of the
    uses of the licences of the product's published and deprecated versions."""
    owner, org = await provider(client)
    slug = await listed(client, db, owner, org, licence="CC-BY-NC-ND-4.0")  # research and evaluation only

    async def found(use: str, **params: Any) -> bool:
        return slug in slugs(await find(client, org=org, use=use, **params))

    assert await found("research")
    assert await found("evaluation", q="corpus")
    assert not await found("commercial_model_release")
    await make_version(client, owner, slug, version="2.0.0", licence="CC-BY-4.0")
    assert not await found("commercial_model_release")  # a draft licenses nothing
    await db.execute(
        "UPDATE product_versions SET state = 'published', manifest_digest = $2, submitted_at = now(), "
        "published_at = now() WHERE version = '2.0.0' AND product_id = (SELECT id FROM products WHERE slug = $1)",
        slug,
        "sha256:" + "0" * 64,
    )
    assert await found("commercial_model_release")
    assert await found("commercial_model_release", q="corpus", industry="finance")
    base = f"/api/v1/products/{slug}/versions/2.0.0"
    deprecated = await client.post(f"{base}/deprecate", json={"reason": "superseded"}, headers=owner.headers)
    assert deprecated.status_code == 200, deprecated.text
    assert await found("commercial_model_release")  # deprecated versions stay licensed
    withdrawn = await client.post(f"{base}/withdraw", json={"reason": "rights dispute"}, headers=owner.headers)
    assert withdrawn.status_code == 200, withdrawn.text
    assert not await found("commercial_model_release")
    assert await found("research")  # 1.0.0 still permits it

    custom = await client.post(
        "/api/v1/licences",
        json={
            "name": f"Evaluation only {uuid.uuid4().hex[:6]}",
            "url": "https://example.com/eval",
            "uses": ["evaluation"],
        },
        headers=owner.headers,
    )
    assert custom.status_code == 201, custom.text
    other = await listed(client, db, owner, org, licence=custom.json()["id"])
    assert other not in slugs(await find(client, org=org, use="pretraining"))
    # Licences' terms do not change through the API; should they change in the database, the products follow.
    await db.execute("UPDATE licences SET uses = '{evaluation,pretraining}' WHERE id = $1", custom.json()["id"])
    assert other in slugs(await find(client, org=org, use="pretraining"))

    # Whatever every test so far has done to versions and licences, the stored uses equal a recount.
    stale = await db.fetchval(
        "SELECT count(*) FROM products AS p WHERE p.uses IS DISTINCT FROM ARRAY("
        ' SELECT DISTINCT u COLLATE "C" FROM product_versions AS v JOIN licences AS l ON l.id = v.licence_id,'
        " unnest(l.uses) AS u WHERE v.product_id = p.id AND v.state IN ('published', 'deprecated') ORDER BY 1)"
    )
    assert stale == 0


async def test_drafts_are_visible_only_to_their_provider_and_staff(client: Client, db: asyncpg.Connection) -> None:
    owner, org = await provider(client)
    public = await listed(client, db, owner, org, title="公开语料 public corpus")
    draft = await make_product(client, owner, org, title="草稿语料 draft corpus")
    stranger = await sign_up(client)
    reviewer = await grant_platform_role(client, db, await sign_up(client), "reviewer")

    for headers in (None, stranger.headers):
        for params in ({"org": org}, {"org": org, "q": "语料"}, {"org": org, "q": "draft"}):
            body = await find(client, headers, **params)
            assert draft not in slugs(body)
            assert sum(facet(body, "org").values()) == (0 if params.get("q") == "draft" else 1)
    for headers in (owner.headers, reviewer.headers):
        for params in ({"org": org}, {"org": org, "q": "语料"}):
            body = await find(client, headers, **params)
            assert sorted(slugs(body)) == sorted([public, draft])
            assert facet(body, "org") == {org: 2}
        drafts = await find(client, headers, org=org, q="草稿")
        assert slugs(drafts) == [draft]
        assert drafts["items"][0]["status"] == "draft"


async def test_pages_neither_repeat_nor_skip_while_products_are_listed(client: Client, db: asyncpg.Connection) -> None:
    owner, org = await provider(client)
    initial = [await listed(client, db, owner, org, title=f"分页语料 {i}") for i in range(11)]
    seen: list[str] = []
    added: list[str] = []
    body = await find(client, org=org, q="分页", limit=4)
    while True:
        seen += slugs(body)
        # New products arrive between and during page fetches; they sort first, so never shift later pages.
        newer, page = await asyncio.gather(
            listed(client, db, owner, org, title="分页语料 new"),
            client.get("/api/v1/products", params={"org": org, "q": "分页", "limit": 4, "cursor": body["next_cursor"]})
            if body["next_cursor"]
            else asyncio.sleep(0, result=None),
        )
        added.append(newer)
        if page is None:
            break
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 4
    assert len(seen) == len(set(seen)), "a product was listed twice"
    assert set(initial) <= set(seen), "a product was skipped"
    assert not set(seen) - set(initial) - set(added)
    sequence = [slug for slug in seen if slug in initial]
    assert sequence == list(reversed(initial)), "newest listing first"
    everything = await find(client, org=org, limit=100)
    assert len(slugs(everything)) == len(initial) + len(added)
    assert everything["next_cursor"] is None


async def test_facet_count_table_follows_every_change(client: Client, db: asyncpg.Connection) -> None:
    owner, org = await provider(client)
    first = await listed(client, db, owner, org, industry="finance", languages=["en", "zh-Hans"], access="open")
    await listed(client, db, owner, org, industry="legal", languages=["en"], access="paid")
    draft = await make_product(client, owner, org, industry="media", languages=["ja"])
    body = await find(client, owner.headers, org=org)
    assert facet(body, "industry") == {"finance": 1, "legal": 1, "media": 1}
    assert facet(await find(client, org=org), "industry") == {"finance": 1, "legal": 1}  # the draft is not listed

    changed = await client.patch(
        f"/api/v1/products/{first}",
        json={"industry": "energy", "languages": ["de"], "access": "gated", "title": "Renamed"},
        headers=owner.headers,
    )
    assert changed.status_code == 200, changed.text
    body = await find(client, org=org)
    assert facet(body, "industry") == {"energy": 1, "legal": 1}
    assert facet(body, "language") == {"de": 1, "en": 1}
    assert facet(body, "access") == {"gated": 1, "paid": 1}
    assert slugs(await find(client, org=org, industry="energy")) == [first]
    assert slugs(await find(client, org=org, industry="finance")) == []
    await db.execute("UPDATE products SET status = 'published' WHERE slug = $1", draft)
    assert facet(await find(client, org=org), "org") == {org: 3}

    # Whatever every test so far has done to products, the counts equal a recount.
    recount = await db.fetch(
        "SELECT status, org_id, facet, value, sum(n) AS n FROM ("
        " SELECT status, org_id, 'industry' AS facet, industry AS value, 1 AS n FROM products"
        " UNION ALL SELECT status, org_id, 'modality', modality, 1 FROM products"
        " UNION ALL SELECT status, org_id, 'access', access, 1 FROM products"
        " UNION ALL SELECT status, org_id, 'language', l, 1 FROM products, unnest(languages) AS l"
        ") AS v GROUP BY 1, 2, 3, 4"
    )
    stored = await db.fetch(
        "SELECT status, org_id, facet, value, products AS n FROM product_facet_values WHERE products > 0"
    )
    assert sorted(map(tuple, recount)) == sorted(map(tuple, stored))


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not-a-cursor"},
        {"cursor": "MTIz!"},
        {"cursor": "LTE"},  # base64 of -1
        {"cursor": "MDEy"},  # base64 of 012: not one we issue
        {"cursor": "5Lit5paH"},  # base64 of 中文
        {"cursor": "\uff2d\uff34\uff29\uff5a"},  # full-width MTIz
        {"industry": "fintech"},
        {"modality": "smell"},
        {"access": "free"},
        {"use": "world_domination"},
        {"language": "not a language"},
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"q": "x" * 201},
    ],
)
async def test_bad_parameters_get_a_problem(client: Client, params: dict[str, Any]) -> None:
    response = await client.get("/api/v1/products", params=params)
    assert 400 <= response.status_code < 500
    assert_problem(response, response.status_code)


async def test_made_up_cursors_are_refused_like_every_list_refuses_them(client: Client, db: asyncpg.Connection) -> None:
    owner, org = await provider(client)
    made = [await listed(client, db, owner, org) for _ in range(3)]
    first = await find(client, org=org, limit=2)
    issued = first["next_cursor"]
    assert issued is not None
    rest = await client.get("/api/v1/products", params={"org": org, "limit": 2, "cursor": issued})
    assert rest.status_code == 200, rest.text
    assert slugs(rest.json()) == [made[0]]

    newest = await db.fetchval("SELECT max(listed_seq) FROM products")
    made_up = [
        "MQ",  # the first product ever listed: nothing follows it, so no page ends on it
        "",
        "not-a-cursor",
        base64.urlsafe_b64encode(str(newest + 1000).encode()).decode(),  # a listed_seq, without the checksum
        issued[:-1] + ("A" if issued[-1] != "A" else "B"),  # edited
        issued + "=" * 40,  # too long
    ]
    for cursor in made_up:
        response = await client.get("/api/v1/products", params={"org": org, "cursor": cursor})
        problem = assert_problem(response, 400)
        assert problem["type"] == "invalid-cursor", cursor
        assert problem["detail"] == "pass next_cursor exactly as returned"


@pytest.mark.parametrize(
    ("name", "value", "first_allowed"),
    [
        ("industry", "fintech", "finance"),
        ("modality", "smell", "text"),
        ("access", "free", "open"),
        ("use", "x", "research"),
    ],
)
async def test_unknown_filter_values_name_the_filter_and_its_values(
    client: Client, name: str, value: str, first_allowed: str
) -> None:
    problem = assert_problem(await client.get("/api/v1/products", params={name: value}), 422)
    assert problem["type"] == "validation-error"
    [error] = problem["errors"]
    assert error["field"] == name
    assert error["message"].startswith(f"unknown value '{value}'; expected one of {first_allowed}, ")


async def test_seeded_catalogue_facets_match_the_database(
    client: Client, db: asyncpg.Connection, servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, org = await provider(client)
    engine = create_engine(servers.database_url, pool_size=1)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            result = await seed_catalogue(session, AuditContext(actor="test"), products=300, org_slug=org, seed=7)
    finally:
        await engine.dispose()
    assert result.products == 300
    assert result.last_listed_seq is not None
    assert result.first_listed_seq is not None
    assert result.last_listed_seq - result.first_listed_seq == 299
    await sequence_audit(db)
    event = await db.fetchrow(
        "SELECT details FROM audit_events WHERE action = 'catalog.seeded' AND target_id = $1", result.run
    )
    assert event is not None
    assert json.loads(event["details"])["products"] == 300
    versions = await db.fetchval(
        "SELECT count(*) FROM product_versions v JOIN products p ON p.id = v.product_id JOIN organizations o "
        "ON o.id = p.org_id WHERE o.slug = $1 AND v.state = 'published' AND p.status = 'published'",
        org,
    )
    assert versions == 300

    async def truth(term: str | None) -> dict[str, dict[str, int]]:
        where = "o.slug = $1 AND p.status = 'published'" + (" AND p.search_terms @> ARRAY[$2]" if term else "")
        args: list[Any] = [org, term] if term else [org]
        out: dict[str, dict[str, int]] = {}
        for name, column in (("industry", "p.industry"), ("modality", "p.modality"), ("access", "p.access")):
            rows = await db.fetch(
                f"SELECT {column} AS v, count(*) AS n FROM products p JOIN organizations o ON o.id = p.org_id "  # noqa: S608
                f"WHERE {where} GROUP BY 1",
                *args,
            )
            out[name] = {row["v"]: row["n"] for row in rows}
        rows = await db.fetch(
            "SELECT l AS v, count(*) AS n FROM products p JOIN organizations o ON o.id = p.org_id, "  # noqa: S608
            f"unnest(p.languages) AS l WHERE {where} GROUP BY 1",
            *args,
        )
        out["language"] = {row["v"]: row["n"] for row in rows}
        out["org"] = {org: sum(out["access"].values())}
        return out

    for term in (None, "数据", "data", "金融"):
        params: dict[str, Any] = {"org": org, "limit": 100} | ({"q": term} if term else {})
        body = await find(client, **params)
        expected = await truth(term)
        assert {name: facet(body, name) for name in expected} == expected, term

    # A query matching more products than the facet pass counts gets estimates, and says so.
    monkeypatch.setattr(search, "FACET_SCAN_LIMIT", 20)
    response = await client.get("/api/v1/products", params={"org": org, "q": "数据"})
    assert response.status_code == 200
    assert response.headers["corpora-facets"] == "estimated"
    assert sum(facet(response.json(), "access").values()) >= 20
    exact = await client.get("/api/v1/products", params={"org": org, "q": "数据", "industry": "finance"})
    assert exact.status_code == 200  # fewer matches than the pass counts: still exact when small enough


def test_seed_command(servers: Servers, tmp_path: Any) -> None:
    env = os.environ | {"CORPORA_DATABASE_URL": servers.database_url, "CORPORA_DATA_DIR": str(tmp_path)}
    helped = subprocess.run(
        [sys.executable, "-m", "app.cli", "seed", "--help"], capture_output=True, text=True, env=env, check=False
    )
    assert helped.returncode == 0
    assert "--products" in helped.stdout
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "seed", "--products", "120", "--seed", "3"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["products"] == 120
    assert report["orgs"]
    assert all(slug.startswith("demo-") for slug in report["orgs"])
    refused = subprocess.run(
        [sys.executable, "-m", "app.cli", "seed", "--products", "5", "--org", "no-such-org"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert refused.returncode == 1
    assert "no-such-org" in refused.stderr


def test_term_extraction() -> None:
    assert query_terms("金融") == ["金融"]
    assert query_terms("金") == ["金"]
    assert query_terms("金融新闻") == ["金融", "融新", "新闻"]
    assert query_terms("Financial NEWS, 2024!") == ["financial", "news", "2024"]
    indexed = product_terms("金融新闻语料", "", "", [])
    assert {"金", "融", "金融", "新闻", "语料"} <= set(indexed)
    assert search.decode_cursor(search.encode_cursor(12345)) == 12345
