"""Inspection against real PostgreSQL and SeaweedFS: profiles of generated files whose true counts are known,
the masked preview, reproducible signed sample reviews, and opt-out evidence from a local HTTP server."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from litestar.testing import AsyncTestClient

from app.jobs.registry import DEFAULT_QUEUE
from app.main import create_app
from app.settings import Settings
from catalog.inspection import triggers
from tests.catalog.helpers import make_product, make_version, upload
from tests.conftest import RunJobs, grant_platform_role, make_org, sequence_audit, sign_up

SENTENCES = {
    "en": "The central bank raised interest rates again this quarter, which surprised many market analysts.",
    "zh": "中央银行本季度再次提高利率，这让许多市场分析师感到非常意外。",  # noqa: RUF001
    "de": "Die Zentralbank hat die Zinsen in diesem Quartal erneut erhöht, was viele Analysten überraschte.",
}
LANGUAGE_CYCLE = ["en", "en", "zh", "de"]  # shares 0.5, 0.25, 0.25


def resident_id(body17: str) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body17 + "10X98765432"[sum(int(d) * w for d, w in zip(body17, weights, strict=True)) % 11]


def luhn_card(prefix15: str) -> str:
    for check in "0123456789":
        digits = prefix15 + check
        total = sum(
            (int(c) * 2 - 9 if int(c) * 2 > 9 else int(c) * 2) if i % 2 else int(c)
            for i, c in enumerate(reversed(digits))
        )
        if total % 10 == 0:
            return digits
    raise AssertionError


def corpus() -> tuple[bytes, dict[str, Any]]:
    """600 unique JSON Lines records and 150 exact repeats, with personal data of every kind in known records."""
    rng = random.Random(16)
    records = []
    for i in range(600):
        text = f"{SENTENCES[LANGUAGE_CYCLE[i % 4]]} #{i}"
        if i % 10 == 0:
            text += f" mail writer{i}@example.org"
        if i % 12 == 1:
            text += f" call 138{i:08d}"
        if i % 20 == 2:
            text += f" id {resident_id(f'1101051990{i % 9 + 1:02d}12{i % 900 + 100:03d}'[:17])}"
        if i % 20 == 3:
            bad = resident_id("11010519900101123")
            text += f" wrong id {bad[:-1]}{'0' if bad[-1] != '0' else '1'}"  # fails the GB 11643 check
        if i % 25 == 4:
            text += f" card {luhn_card(f'4{rng.randrange(10**14):014d}')}"
        if i % 25 == 5:
            text += " not a card 4111111111111112"  # fails the Luhn check
        if i % 30 == 6:
            text += f" from 10.{i % 250}.0.{i % 200 + 1}"
        records.append({"id": i, "text": text, "score": None if i % 4 == 0 else i / 10})
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines += lines[:150]
    expected: dict[str, Any] = {
        "records": 750,
        "exact_rate": round(150 / 750, 6),
        "pii": {"email": 0, "phone": 0, "cn_resident_id": 0, "bank_card": 0, "ip_address": 0},
        "score_null_rate": round(sum(1 for i in list(range(600)) + list(range(150)) if i % 4 == 0) / 750, 6),
    }
    for i in list(range(600)) + list(range(150)):
        expected["pii"]["email"] += i % 10 == 0
        expected["pii"]["phone"] += i % 12 == 1
        expected["pii"]["cn_resident_id"] += i % 20 == 2
        expected["pii"]["bank_card"] += i % 25 == 4
        expected["pii"]["ip_address"] += i % 30 == 6
    return ("\n".join(lines) + "\n").encode(), expected


async def provider_with_files(
    client: AsyncTestClient[Any], run_jobs: RunJobs, files: dict[str, bytes], *, preview: bool = True
) -> tuple[Any, str, str]:
    owner = await sign_up(client)
    org = await make_org(client, owner, "provider")
    slug = await make_product(client, owner, org, preview=preview)
    await make_version(client, owner, slug)
    for path, content in files.items():
        done = await upload(client, owner, slug, "1.0.0", path, content)
        assert done.status_code == 200, done.text
    await run_jobs()
    return owner, org, slug


def parquet_bytes() -> bytes:
    table = pa.table({"a": [1, 2, None, 4, 2], "b": ["x", "y", "z", None, "y"]})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


async def test_profile_counts_every_record_of_every_format(client: AsyncTestClient[Any], run_jobs: RunJobs) -> None:
    jsonl, expected = corpus()
    files = {
        "data/news.jsonl.gz": gzip.compress(jsonl),
        "data/lines.txt.zst": zstandard.ZstdCompressor().compress(b"one\ntwo 192.168.1.20\none\n"),
        "data/table.csv": b"a,b\n1,x\n2,\n1,x\n",
        "data/table.tsv": b"a\tb\n1\tx\n",
        "data/rows.parquet": parquet_bytes(),
        "data/array.json": json.dumps([{"k": 1}, {"k": None}, {"k": 1}]).encode(),
        "blob.bin": bytes(range(256)) * 40,
    }
    owner, _, slug = await provider_with_files(client, run_jobs, files)
    response = await client.get(f"/api/v1/products/{slug}/versions/1.0.0/profile", headers=owner.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done"
    by_path = {f["path"]: f for f in body["files"]}

    news = by_path["data/news.jsonl.gz"]
    assert (news["format"], news["compression"], news["records"]) == ("jsonl", "gzip", expected["records"])
    assert news["duplicates"]["exact_rate"] == expected["exact_rate"]
    assert news["pii"] == expected["pii"]
    fields = {f["name"]: f for f in news["fields"]}
    assert fields["score"] == {"name": "score", "type": "number", "null_rate": expected["score_null_rate"]}
    assert fields["id"]["type"] == "integer"
    assert fields["id"]["null_rate"] == 0
    for language, share in (("en", 0.5), ("zh", 0.25), ("de", 0.25)):
        assert abs(news["languages"].get(language, 0) - share) < 0.05, news["languages"]
    assert news["language_sample"] == 750
    assert news["tokens"] > 750
    assert "cl100k_base" in news["tokenizer"]
    assert news["tokens_exact"]
    assert news["duplicates"]["near_rate"] >= news["duplicates"]["exact_rate"]

    lines = by_path["data/lines.txt.zst"]
    assert (lines["format"], lines["compression"], lines["records"]) == ("text", "zstd", 3)
    assert lines["pii"]["ip_address"] == 1
    assert lines["duplicates"]["exact_rate"] == round(1 / 3, 6)
    csv = by_path["data/table.csv"]
    assert (csv["format"], csv["records"]) == ("csv", 3)
    assert {f["name"]: (f["type"], f["null_rate"]) for f in csv["fields"]} == {
        "a": ("integer", 0.0),
        "b": ("string", round(1 / 3, 6)),
    }
    assert (by_path["data/table.tsv"]["format"], by_path["data/table.tsv"]["records"]) == ("tsv", 1)
    rows = by_path["data/rows.parquet"]
    assert (rows["format"], rows["records"], rows["duplicates"]["exact_rate"]) == ("parquet", 5, 0.2)
    assert {f["name"]: f["null_rate"] for f in rows["fields"]} == {"a": 0.2, "b": 0.2}
    array = by_path["data/array.json"]
    assert (array["format"], array["records"], array["fields"][0]["null_rate"]) == ("json", 3, round(1 / 3, 6))
    binary = by_path["blob.bin"]
    assert (binary["format"], binary["records"], binary["bytes"]) == ("binary", 0, 256 * 40)

    assert body["totals"]["records"] == sum(f["records"] for f in body["files"])
    assert body["totals"]["bytes"] == sum(len(c) for c in files.values())


async def test_profile_follows_version_visibility(client: AsyncTestClient[Any], run_jobs: RunJobs) -> None:
    _, _, slug = await provider_with_files(client, run_jobs, {"a.txt": b"hello\n"})
    stranger = await sign_up(client)
    hidden = await client.get(f"/api/v1/products/{slug}/versions/1.0.0/profile", headers=stranger.headers)
    assert hidden.status_code == 404  # a draft of another organisation
    anonymous = await client.get(f"/api/v1/products/{slug}/versions/1.0.0/profile")
    assert anonymous.status_code == 404


async def test_preview_masks_what_the_profile_found(
    client: AsyncTestClient[Any], run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    jsonl, _ = corpus()
    owner, _, slug = await provider_with_files(client, run_jobs, {"news.jsonl": jsonl})
    await publish_and_approve(client, db, owner, slug)
    url = f"/api/v1/products/{slug}/versions/1.0.0/preview"
    assert (await client.get(url, params={"path": "news.jsonl"})).status_code == 401
    buyer = await sign_up(client)
    response = await client.get(url, params={"path": "news.jsonl", "limit": 20}, headers=buyer.headers)
    assert response.status_code == 200, response.text
    records = response.json()["records"]
    assert len(records) == 20
    texts = [r["text"] for r in records]
    raw = [json.loads(line)["text"] for line in jsonl.decode().splitlines()[:20]]
    assert texts[0].endswith("[email]")
    assert "writer0@example.org" in raw[0]
    assert "[phone]" in texts[1]
    assert "13800000001" not in texts[1]
    assert "[cn_resident_id]" in texts[2]
    assert "[bank_card]" in texts[4]
    assert "[ip_address]" in texts[6]
    assert "[cn_resident_id]" not in texts[3]  # the ID with a wrong check digit is not personal data found
    assert not any("@example.org" in t for t in texts)
    assert (await client.get(url, params={"path": "news.jsonl", "limit": 21}, headers=buyer.headers)).status_code == 422
    assert (await client.get(url, params={"path": "nope.jsonl"}, headers=buyer.headers)).status_code == 404
    await sequence_audit(db)
    events = await db.fetchval(
        "SELECT count(*) FROM audit_events WHERE action = 'version.previewed' AND target_id = $1", f"{slug}@1.0.0"
    )
    assert events == 1

    closed_owner, _, closed = await provider_with_files(client, run_jobs, {"a.txt": b"x\n"}, preview=False)
    await publish_and_approve(client, db, closed_owner, closed)
    closed_url = f"/api/v1/products/{closed}/versions/1.0.0/preview"
    assert (await client.get(closed_url, params={"path": "a.txt"}, headers=buyer.headers)).status_code == 404
    assert (await client.get(closed_url, params={"path": "a.txt"}, headers=closed_owner.headers)).status_code == 200
    opened = await client.patch(f"/api/v1/products/{closed}", json={"preview": True}, headers=closed_owner.headers)
    assert opened.status_code == 200
    assert opened.json()["preview"] is True
    assert (await client.get(closed_url, params={"path": "a.txt"}, headers=buyer.headers)).json()["records"] == ["x"]


async def publish_and_approve(client: AsyncTestClient[Any], db: asyncpg.Connection, owner: Any, slug: str) -> Any:
    published = await client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers)
    assert published.status_code == 200, published.text
    reviewer = await grant_platform_role(client, db, await sign_up(client), "reviewer")
    if published.json()["state"] == "in_review":
        approved = await client.post(
            f"/api/v1/products/{slug}/versions/1.0.0/review",
            json={"decision": "approve", "reason": ""},
            headers=reviewer.headers,
        )
        assert approved.status_code == 200, approved.text
    return reviewer


def _b64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def verify_jws(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """An EdDSA compact JWS checked from RFC 7515/8037 with ``cryptography`` alone."""
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(_b64(header_b64))
    assert header["alg"] == "EdDSA"
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    public = Ed25519PublicKey.from_public_bytes(_b64(key["x"]))
    public.verify(_b64(signature_b64), f"{header_b64}.{payload_b64}".encode())
    payload: dict[str, Any] = json.loads(_b64(payload_b64))
    return payload


async def test_sample_is_reproducible_judged_and_signed(
    client: AsyncTestClient[Any], run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    jsonl, _ = corpus()
    files = {"a/news.jsonl.gz": gzip.compress(jsonl), "b/lines.txt": b"".join(b"line %d\n" % i for i in range(300))}
    owner, _, slug = await provider_with_files(client, run_jobs, files)
    reviewer = await grant_platform_role(client, db, await sign_up(client), "reviewer")
    url = f"/api/v1/products/{slug}/versions/1.0.0/samples"
    first = await client.post(url, json={"size": 50, "kind": "manual", "seed": 7}, headers=reviewer.headers)
    second = await client.post(url, json={"size": 50, "kind": "manual", "seed": 7}, headers=reviewer.headers)
    assert first.status_code == second.status_code == 201, first.text
    assert first.json()["items"] == second.json()["items"]
    assert first.json()["threshold"] == 0.96
    assert len(first.json()["items"]) == 50
    assert {i["path"] for i in first.json()["items"]} == set(files)
    other = await client.post(url, json={"size": 50, "kind": "manual", "seed": 8}, headers=reviewer.headers)
    assert other.json()["items"] != first.json()["items"]
    too_many = await client.post(url, json={"size": 1051, "kind": "manual"}, headers=reviewer.headers)
    assert too_many.status_code == 422
    assert (await client.post(url, json={"size": 5, "kind": "manual"}, headers=owner.headers)).status_code == 403

    sample_id = first.json()["id"]
    verdicts = [{"index": i, "ok": True} for i in range(49)]
    missing_category = await client.post(
        f"/api/v1/samples/{sample_id}/verdicts",
        json={"verdicts": [{"index": 49, "ok": False}]},
        headers=reviewer.headers,
    )
    assert missing_category.status_code == 422
    partial = await client.post(
        f"/api/v1/samples/{sample_id}/verdicts", json={"verdicts": verdicts}, headers=reviewer.headers
    )
    assert partial.status_code == 200, partial.text
    assert (partial.json()["judged"], partial.json()["record"]) == (49, None)
    done = await client.post(
        f"/api/v1/samples/{sample_id}/verdicts",
        json={"verdicts": [{"index": 49, "ok": False, "category": "personal_data"}]},
        headers=reviewer.headers,
    )
    body = done.json()
    assert (body["judged"], body["pass_rate"], body["passed"]) == (50, 0.98, True)
    again = await client.post(
        f"/api/v1/samples/{sample_id}/verdicts", json={"verdicts": [{"index": 0, "ok": True}]}, headers=reviewer.headers
    )
    assert again.status_code == 409

    jwks = (await client.get("/.well-known/jwks.json")).json()
    payload = verify_jws(body["record"], jwks)
    assert (payload["sample"], payload["pass_rate"], payload["passed"], payload["seed"]) == (sample_id, 0.98, True, 7)
    assert payload["items"][49]["category"] == "personal_data"
    header_b64, _, signature_b64 = body["record"].split(".")
    forged = base64.urlsafe_b64encode(json.dumps({**payload, "passed": False}).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidSignature):
        verify_jws(f"{header_b64}.{forged}.{signature_b64}", jwks)

    seen = await client.get(f"/api/v1/samples/{sample_id}", headers=owner.headers)
    assert seen.status_code == 200
    assert seen.json()["record"] == body["record"]
    stranger = await sign_up(client)
    assert (await client.get(f"/api/v1/samples/{sample_id}", headers=stranger.headers)).status_code == 404
    assert (await client.get(f"/api/v1/samples/{uuid.uuid4()}", headers=reviewer.headers)).status_code == 404


class Site:
    """A local web site with a robots.txt, a TDMRep file and a tdm-reservation header."""

    ROBOTS = b"User-agent: GPTBot\nDisallow: /articles/\n\nUser-agent: *\nAllow: /\n"
    TDMREP = json.dumps([{"location": "/articles/*", "tdm-reservation": 1}]).encode()

    def __init__(self) -> None:
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                content = {"/robots.txt": site.ROBOTS, "/.well-known/tdmrep.json": site.TDMREP}.get(self.path)
                self.send_response(200 if content is not None or self.path.startswith("/articles/") else 404)
                self.send_header("tdm-reservation", "1")
                self.send_header("content-length", str(len(content or b"")))
                self.end_headers()
                if body and content:
                    self.wfile.write(content)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def test_opt_out_evidence_is_fetched_from_the_source(hooks_client: Any, worker: Any, site: Site) -> None:
    owner = await sign_up(hooks_client)
    org = await make_org(hooks_client, owner, "provider")
    slug = await make_product(hooks_client, owner, org)
    source = {
        "kind": "public_web_crawl",
        "name": "News site",
        "url": f"{site.origin}/articles/2025",
        "opt_out_evidence": {"robots_txt": "allowed", "tdm_reservation": False, "checked_at": "2025-06-30T12:00:00Z"},
    }
    provenance = {"sources": [source], "activities": [{"stage": "collect", "description": "crawl"}]}
    created = await hooks_client.post(
        f"/api/v1/products/{slug}/versions",
        json={"version": "1.0.0", "changelog": "", "licence_id": "CC-BY-4.0", "provenance": provenance},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    await worker.run()
    response = await hooks_client.get(f"/api/v1/products/{slug}/versions/1.0.0/opt-out-evidence", headers=owner.headers)
    assert response.status_code == 200, response.text
    (item,) = response.json()["items"]
    assert item["robots_txt"] == {
        "status": 200,
        "sha256": hashlib.sha256(Site.ROBOTS).hexdigest(),
        "disallows": ["GPTBot"],
    }
    assert item["tdmrep"]["sha256"] == hashlib.sha256(Site.TDMREP).hexdigest()
    assert item["tdmrep"]["reserved"] is True
    assert item["reserved_for_ai"] is True
    assert item["warning"]
    assert item["fetched_at"]
    assert item["declared"]["tdm_reservation"] is False
    store = worker.deps.store
    kept = await store.get_bytes(f"evidence/sha256/{item['robots_txt']['sha256'][:2]}/{item['robots_txt']['sha256']}")
    assert kept == Site.ROBOTS


async def test_croissant_record_sets_come_from_the_profile(client: AsyncTestClient[Any], run_jobs: RunJobs) -> None:
    files = {"rows.csv": b"a,b\n1,x\n2,y\n", "news.jsonl": b'{"title": "t", "year": 2025}\n'}
    owner, _, slug = await provider_with_files(client, run_jobs, files)
    response = await client.get(f"/api/v1/products/{slug}/versions/1.0.0/croissant", headers=owner.headers)
    assert response.status_code == 200, response.text
    croissant = response.json()
    record_sets = {r["@id"]: r for r in croissant["recordSet"]}
    assert [(f["name"], f["dataType"]) for f in record_sets["rows.csv/records"]["field"]] == [
        ("a", "sc:Integer"),
        ("b", "sc:Text"),
    ]
    assert [f["source"]["extract"] for f in record_sets["news.jsonl/records"]["field"]] == [
        {"jsonPath": "$.title"},
        {"jsonPath": "$.year"},
    ]
    mlc = pytest.importorskip("mlcroissant")
    assert not mlc.Dataset(jsonld=croissant).metadata.ctx.issues.errors


async def test_approval_can_require_a_passed_sample(
    client: AsyncTestClient[Any], app: Any, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    strict = create_app(dataclasses.replace(settings, review_requires_sample=True), keyring=app.state.keyring)
    async with AsyncTestClient(app=strict, base_url="http://testserver.local") as strict_client:
        owner, _, slug = await provider_with_files(strict_client, run_jobs, {"a.txt": b"one\ntwo\n"})
        published = await strict_client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers)
        assert published.json()["state"] == "in_review"
        reviewer = await grant_platform_role(strict_client, db, await sign_up(strict_client), "reviewer")
        review = f"/api/v1/products/{slug}/versions/1.0.0/review"
        approve = {"decision": "approve", "reason": ""}
        refused = await strict_client.post(review, json=approve, headers=reviewer.headers)
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"].endswith("sample-required")
        drawn = await strict_client.post(
            f"/api/v1/products/{slug}/versions/1.0.0/samples",
            json={"size": 2, "kind": "technical", "seed": 1},
            headers=reviewer.headers,
        )
        sample_id = drawn.json()["id"]
        judged = await strict_client.post(
            f"/api/v1/samples/{sample_id}/verdicts",
            json={"verdicts": [{"index": 0, "ok": True}, {"index": 1, "ok": True}]},
            headers=reviewer.headers,
        )
        assert judged.json()["passed"] is True
        approved = await strict_client.post(review, json=approve, headers=reviewer.headers)
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"] == "published"


async def test_opt_out_fetch_keeps_to_the_egress_rules(
    client: AsyncTestClient[Any], run_jobs: RunJobs, site: Site
) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner, "provider")
    slug = await make_product(client, owner, org)
    source = {
        "kind": "public_web_crawl",
        "name": "Loopback site",
        "url": f"{site.origin}/articles/1",
        "opt_out_evidence": {"robots_txt": "allowed", "tdm_reservation": False, "checked_at": "2025-06-30T12:00:00Z"},
    }
    provenance = {"sources": [source], "activities": [{"stage": "collect", "description": "crawl"}]}
    created = await client.post(
        f"/api/v1/products/{slug}/versions",
        json={"version": "1.0.0", "changelog": "", "licence_id": "CC-BY-4.0", "provenance": provenance},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    await run_jobs()
    response = await client.get(f"/api/v1/products/{slug}/versions/1.0.0/opt-out-evidence", headers=owner.headers)
    (item,) = response.json()["items"]
    assert item["robots_txt"] == {"status": None, "sha256": None, "disallows": []}
    assert item["reserved_for_ai"] is None
    assert "EgressRefused" in item["error"]


async def test_files_completed_together_are_profiled_in_batches(
    client: AsyncTestClient[Any], run_jobs: RunJobs, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files share a profile job, a file past the batch's bytes goes alone, and a file that cannot be read
    as its format fails alone (recorded, not retried) while the rest of its batch is profiled."""
    monkeypatch.setattr(triggers, "BATCH_BYTES", 4096)
    owner = await sign_up(client)
    slug = await make_product(client, owner, await make_org(client, owner, "provider"))
    await make_version(client, owner, slug)
    contents = {f"data/part-{n}.jsonl": b'{"n": %d}\n' % n for n in range(5)}
    # gzip's magic, then an unknown compression method: an OSError from the parser, not from the store
    contents["data/broken.jsonl.gz"] = b"\x1f\x8b\x07\x00 this is not a gzip stream"
    contents["big.txt"] = b"one line of text\n" * 300  # 5,100 bytes: more than a batch holds
    specs = [
        {"path": p, "size": len(c), "sha256": hashlib.sha256(c).hexdigest(), "media_type": "text/plain"}
        for p, c in contents.items()
    ]
    uploads = f"/api/v1/products/{slug}/versions/1.0.0/uploads"
    planned = await client.post(uploads, json={"files": specs}, headers=owner.headers)
    assert planned.status_code == 200, planned.text
    done = []
    async with httpx.AsyncClient(timeout=60) as s3:
        for item in planned.json()["items"]:
            put = await s3.put(item["upload"]["url"], content=contents[item["path"]], headers=item["upload"]["headers"])
            assert put.status_code == 200, put.text
            done.append({"file_id": item["file_id"], "version_id": put.headers["x-amz-version-id"]})
    completed = await client.post(f"{uploads}/complete", json={"files": done}, headers=owner.headers)
    assert completed.status_code == 200, completed.text

    ids = {item["path"]: item["file_id"] for item in planned.json()["items"]}
    queued = [
        json.loads(args)["file_ids"]
        for args in await db.fetchval(
            "SELECT array_agg(args::text) FROM procrastinate_jobs WHERE task_name = 'inspection.profile_files'"
        )
    ]
    batches = [set(batch) for batch in queued if set(batch) <= set(ids.values())]
    assert batches == [{ids[p] for p in contents if p != "big.txt"}, {ids["big.txt"]}]

    await run_jobs()
    profile = (await client.get(f"/api/v1/products/{slug}/versions/1.0.0/profile", headers=owner.headers)).json()
    by_path = {f["path"]: f for f in profile["files"]}
    assert by_path["data/broken.jsonl.gz"]["status"] == "failed"
    assert by_path["data/broken.jsonl.gz"]["error"].startswith("BadGzipFile")
    assert {p: f["status"] for p, f in by_path.items() if p != "data/broken.jsonl.gz"} == dict.fromkeys(
        [p for p in contents if p != "data/broken.jsonl.gz"], "done"
    )
    assert by_path["big.txt"]["records"] == 300
    assert by_path["data/part-3.jsonl"]["records"] == 1


async def test_a_profile_job_queued_per_file_still_runs(
    client: AsyncTestClient[Any], run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """Jobs queued one per file (as an earlier release did) are still run."""
    owner, _, slug = await provider_with_files(client, run_jobs, {"a.txt": b"one\ntwo\n"})
    file_id = await db.fetchval(
        "SELECT f.id FROM version_files f JOIN product_versions v ON v.id = f.version_id "
        "JOIN products p ON p.id = v.product_id WHERE p.slug = $1",
        slug,
    )
    await db.execute("UPDATE file_profiles SET finished_at = NULL, profile = NULL WHERE file_id = $1", file_id)
    await db.execute(
        "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW($1, $2, 0, NULL, NULL, $3::jsonb, NULL)"
        "::procrastinate_job_to_defer_v1])",
        DEFAULT_QUEUE,
        triggers.SINGLE_PROFILE_TASK,
        json.dumps({"file_id": str(file_id)}),
    )
    await run_jobs()
    profile = (await client.get(f"/api/v1/products/{slug}/versions/1.0.0/profile", headers=owner.headers)).json()
    assert [(f["status"], f["records"]) for f in profile["files"]] == [("done", 2)]
