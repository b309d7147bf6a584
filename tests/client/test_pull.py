"""``corpora pull`` against the real API (uvicorn in a thread), with presigned and with proxy delivery:
downloads, receipts, skips, resumes without a new charge, checksum verification and refusals."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import pytest_asyncio
import urllib3
from litestar.testing import AsyncTestClient

from app.cli import build_parser
from app.settings import Settings
from client import pull as pull_module
from client.pull import CHUNK, PullReport, Refusal, explain, pull
from client.receipts import ReceiptVerifier
from tests.conftest import Servers, asyncpg_dsn
from tests.licensing.helpers import Market, market
from tests.licensing.test_proxy_delivery import LiveServer, content_of, live_server

MiB = 1024 * 1024
DATA = ("data/a.txt", "data/b.txt", "data/big.bin")


@pytest.fixture(scope="module")
def presigned(settings: Settings) -> Iterator[LiveServer]:
    with live_server(dataclasses.replace(settings, download_mode="presigned")) as live:
        yield live


@pytest.fixture(scope="module")
def proxied(settings: Settings) -> Iterator[LiveServer]:
    with live_server(dataclasses.replace(settings, download_mode="proxy")) as live:
        yield live


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shop(client: AsyncTestClient[Any], servers: Servers) -> AsyncIterator[Market]:
    """Three data files (one of a few chunks), a file outside ``data/``, and one whose stored bytes get corrupted."""
    files = {
        "data/a.txt": b"alpha\n" * 1000,
        "data/b.txt": b"beta\n" * 3000,
        "data/big.bin": content_of(2 * MiB + 12345, seed=21),
        "docs/readme.md": b"# readme\n",
        "extra/corrupt.bin": content_of(200_000, seed=uuid.uuid4().int),
    }
    db = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    try:
        yield await market(client, db, files=files, downloads=None)
    finally:
        await db.close()


@dataclasses.dataclass
class Sent:
    method: str
    url: httpx.URL
    headers: httpx.Headers


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[Sent]:
    """Every request the (synchronous) pull client sends: to the API through httpx, transfers through urllib3."""
    seen: list[Sent] = []
    original = httpx.Client.send
    original_transfer = urllib3.PoolManager.urlopen

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        seen.append(Sent(request.method, request.url, request.headers))
        return original(self, request, **kwargs)

    def transfer(self: urllib3.PoolManager, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        headers = httpx.Headers(kwargs.get("headers") or {})
        if headers.get("user-agent") == "corpora-pull":  # not the in-process server's object-store client
            seen.append(Sent(method, httpx.URL(url), headers))
        return original_transfer(self, method, url, *args, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", send)
    monkeypatch.setattr(urllib3.PoolManager, "urlopen", transfer)
    return seen


async def run(live: LiveServer, m: Market, out: Path, **options: Any) -> PullReport:
    options = {"purpose": "research", "include": ["data/*"], "quiet": True, "progress_bars": False, **options}
    return await asyncio.to_thread(pull, f"{m.product}@1.0.0", out, api=live.url, token=m.buyer.token, **options)


async def quota(db: asyncpg.Connection, entitlement_id: str) -> tuple[int, int]:
    row = await db.fetchrow("SELECT downloads_used, bytes_used FROM entitlements WHERE id = $1::uuid", entitlement_id)
    return row["downloads_used"], row["bytes_used"]


@pytest.mark.parametrize("mode", ["presigned", "proxy"])
async def test_pull_resumes_skips_and_keeps_receipts(
    mode: str,
    presigned: LiveServer,
    proxied: LiveServer,
    shop: Market,
    client: AsyncTestClient[Any],
    db: asyncpg.Connection,
    requests: list[Sent],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live = presigned if mode == "presigned" else proxied
    m = shop
    out = tmp_path / "corpus"
    big = m.files["data/big.bin"]
    before = await quota(db, m.entitlement_id)

    # The first run crashes one MiB into the big file, as a killed process would.
    original = urllib3.HTTPResponse.stream
    crashed: list[bool] = []

    def crashing(
        self: urllib3.HTTPResponse, amt: int | None = None, decode_content: bool | None = None
    ) -> Iterator[bytes]:
        for data in original(self, amt, decode_content):
            yield data
            if self.headers.get("content-length") == str(len(big)) and not crashed:
                crashed.append(True)
                raise RuntimeError("the process died")

    monkeypatch.setattr(urllib3.HTTPResponse, "stream", crashing)
    first = await run(live, m, out)
    monkeypatch.setattr(urllib3.HTTPResponse, "stream", original)
    assert not first.ok
    assert first.grants_new == 3
    assert first.files_downloaded == 2
    assert (out / "data/big.bin.part").stat().st_size == CHUNK
    assert not (out / "data/big.bin").exists()
    charged = await quota(db, m.entitlement_id)
    assert charged == (before[0] + 3, before[1] + sum(len(m.files[p]) for p in DATA))

    # The second run continues the part file under the same grant: renewed, not charged again.
    requests.clear()
    second = await run(live, m, out)
    assert second.ok, second.failures
    assert (second.grants_new, second.grants_reused, second.files_skipped) == (0, 1, 2)
    assert second.bytes_resumed == CHUNK
    assert second.bytes_downloaded == len(big) - CHUNK
    assert await quota(db, m.entitlement_id) == charged
    for path in DATA:
        assert (out / path).read_bytes() == m.files[path]
    assert not (out / "data/big.bin.part").exists()
    assert not (out / "docs").exists()
    [resumed] = [r for r in requests if r.method == "GET" and "range" in r.headers]
    assert resumed.headers["range"] == f"bytes={CHUNK}-"
    assert not any(r.url.path.endswith("/downloads/manifest") for r in requests)

    # Presigned URLs never carry the token; proxy URLs always do (and resume only the same content).
    transfers = [r for r in requests if r.method == "GET" and not r.url.path.startswith(("/api/v1/", "/.well-known/"))]
    # The receipts' keys are public: fetched without the token.
    assert all("authorization" not in r.headers for r in requests if r.url.path == "/.well-known/jwks.json")
    transfers += [r for r in requests if r.url.path.endswith("/content")]
    assert transfers
    for r in transfers:
        if mode == "presigned":
            assert "authorization" not in r.headers, r.url
            assert "X-Amz-Signature" in str(r.url)
        else:
            assert r.headers["authorization"] == f"Bearer {m.buyer.token}"
    if mode == "proxy":
        assert resumed.headers["if-range"] == f'"{hashlib.sha256(big).hexdigest()}"'

    # Receipts beside the data, one per grant, each verifiable with the published keys, all in one index file.
    assert sorted(p.name for p in (out / ".corpora").iterdir()) == ["receipts.json"]
    index = json.loads((out / ".corpora/receipts.json").read_text())
    downloads = index["downloads"]
    assert sorted(d["path"] for d in downloads) == sorted(DATA)
    assert all(d["completed_at"] and d["entitlement_id"] == m.entitlement_id for d in downloads)
    jwks = (await client.get("/.well-known/jwks.json")).json()["keys"]
    for d in downloads:
        token = d["receipt"]
        key = next(k for k in jwks if k["kid"] == jwt.get_unverified_header(token)["kid"])
        claims = jwt.decode(token, jwt.PyJWK(key), algorithms=["EdDSA"])
        assert (claims["download_id"], claims["path"], claims["sha256"]) == (d["download_id"], d["path"], d["sha256"])

    # A third run finds everything complete and asks for nothing.
    requests.clear()
    third = await run(live, m, out)
    assert third.ok
    assert (third.files_skipped, third.grants_new, third.files_downloaded) == (3, 0, 0)
    assert not any(r.method == "POST" for r in requests)
    assert await quota(db, m.entitlement_id) == charged


async def test_a_checksum_mismatch_is_deleted_and_reported(
    presigned: LiveServer, shop: Market, app: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = shop
    content = m.files["extra/corrupt.bin"]
    sha = hashlib.sha256(content).hexdigest()
    # The stored object goes bad behind the catalogue's back (same size, other bytes).
    await app.state.object_store.put_bytes(f"blobs/sha256/{sha[:2]}/{sha}", bytes(reversed(content)))
    out = tmp_path / "corpus"
    args = argparse.Namespace(
        target=f"{m.product}@1.0.0",
        out=str(out),
        api=presigned.url,
        token=m.buyer.token,
        purpose="research",
        include=["extra/*"],
        entitlement=None,
        parallel=2,
        quiet=True,
        no_progress=True,
    )
    assert await asyncio.to_thread(pull_module.main, args) == 1
    error = capsys.readouterr().err
    assert "extra/corrupt.bin: SHA-256 mismatch" in error
    assert f"expected {sha}" in error
    assert "deleted" in error
    assert not (out / "extra/corrupt.bin").exists()
    assert not (out / "extra/corrupt.bin.part").exists()


async def test_refusals_say_why_and_charge_nothing(
    presigned: LiveServer,
    shop: Market,
    client: AsyncTestClient[Any],
    db: asyncpg.Connection,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    m = shop

    async def entitlement(downloads: int | None) -> str:
        offer = await client.post(
            f"/api/v1/products/{m.product}/offers",
            json={
                "name": f"small {uuid.uuid4().hex[:6]}",
                "licence_id": "CC-BY-4.0",
                "price": {"amount": 0, "currency": "EUR"},
                "term_days": 30,
                "quota": {"downloads": downloads, "bytes": None},
                "versions": "all",
                "approval": "automatic",
                "purposes": ["evaluation"],
            },
            headers=m.provider.headers,
        )
        assert offer.status_code == 201, offer.text
        order = await client.post(
            "/api/v1/orders",
            json={"offer_id": offer.json()["id"], "buyer_org": m.buyer_org, "purpose": "evaluation"},
            headers={**m.buyer.headers, "Idempotency-Key": uuid.uuid4().hex},
        )
        assert order.status_code == 201, order.text
        return str(order.json()["entitlement_id"])

    async def refused(**options: Any) -> str:
        args = argparse.Namespace(
            target=f"{m.product}@1.0.0",
            out=str(tmp_path / "corpus"),
            api=presigned.url,
            token=m.buyer.token,
            purpose="evaluation",
            include=["data/*"],
            entitlement=None,
            parallel=2,
            quiet=True,
            no_progress=True,
        )
        for name, value in options.items():
            setattr(args, name, value)
        assert await asyncio.to_thread(pull_module.main, args) == 1
        error = capsys.readouterr().err
        assert error.startswith("refused: "), error
        return error

    small = await entitlement(downloads=2)
    used = await quota(db, small)
    message = await refused(entitlement=small)
    assert "quota exceeded: this pull needs 3 download(s)" in message
    assert "2 download(s) and unlimited bytes remain" in message
    assert await quota(db, small) == used

    message = await refused(purpose="pretraining")
    assert "can be used for 'pretraining'" in message
    # Each entitlement carries the purpose it was ordered for.
    assert (
        f"entitlement {m.entitlement_id} does not permit the purpose 'pretraining'; permitted purposes: research"
        in (message)
    )
    assert f"entitlement {small} does not permit the purpose 'pretraining'; permitted purposes: evaluation" in message

    await db.execute(
        "UPDATE entitlements SET valid_from = now() - interval '40 days', valid_until = now() - interval '1 day' "
        "WHERE id = $1::uuid",
        small,
    )
    assert "expired on" in await refused(entitlement=small)

    revoked = await entitlement(downloads=None)
    response = await client.post(
        f"/api/v1/entitlements/{revoked}/revoke", json={"reason": "licence breach"}, headers=m.provider.headers
    )
    assert response.status_code == 200, response.text
    assert f"entitlement {revoked} was revoked: licence breach" in await refused(entitlement=revoked)
    assert not (tmp_path / "corpus" / "data").exists()


def test_server_refusals_are_explained() -> None:
    request = httpx.Request("POST", "http://api/api/v1/downloads/manifest")
    quota = httpx.Response(
        429,
        json={"type": "quota-exceeded", "detail": "not enough", "downloads_remaining": 1, "bytes_remaining": 2048},
        request=request,
    )
    error = explain(quota, "asking")
    assert isinstance(error, Refusal)
    assert "1 download(s) and 2.0 KiB (2048 bytes) remain" in str(error)
    purpose = httpx.Response(
        403,
        json={"type": "purpose-not-permitted", "detail": "no", "permitted_purposes": ["research"]},
        request=request,
    )
    assert "Permitted purposes: research." in str(explain(purpose, "asking"))
    token = httpx.Response(401, json={"type": "unauthorized", "detail": "expired"}, request=request)
    assert "--token or CORPORA_TOKEN" in str(explain(token, "asking"))


def test_help_explains_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["pull", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "corpora pull filings-en@1.0.0 --purpose research" in text
    assert "--include GLOB" in text
    args = build_parser().parse_args(["pull", "p@1.0.0", "--purpose", "research", "--out", "d", "--include", "a/*"])
    assert (args.target, args.include, args.parallel, args.api) == ("p@1.0.0", ["a/*"], 4, None)


async def test_a_killed_pull_loses_no_grant(
    shop: Market, client: AsyncTestClient[Any], db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Each grant (with its receipt) and completion reaches the disk when it happens: a process killed before the
    run ends (no index written) leaves state from which the next run renews the open grant instead of buying it
    again, and keeps every receipt."""
    m = shop
    body = {
        "entitlement_id": m.entitlement_id,
        "product": m.product,
        "version": "1.0.0",
        "purpose": "research",
        "include": ["data/a.txt", "data/b.txt"],
    }
    response = await client.post("/api/v1/downloads/manifest", json=body, headers=m.buyer.headers)
    assert response.status_code == 201, response.text
    items = {i["path"]: i for i in response.json()["items"]}
    jwks = (await client.get("/.well-known/jwks.json")).json()
    verifier = ReceiptVerifier(lambda: jwks)
    out = tmp_path / "corpus"
    state = pull_module.State(out, verifier)
    for item in items.values():
        state.record_grant(item, m.entitlement_id, "research")
    done = out / "data/a.txt"
    done.parent.mkdir(parents=True)
    done.write_bytes(m.files["data/a.txt"])
    state.complete(str(items["data/a.txt"]["download_id"]), "data/a.txt", done, items["data/a.txt"]["sha256"])
    del state  # killed: nothing more is written
    assert not (out / ".corpora/receipts.json").exists()  # the receipts are in the journal only
    after = pull_module.State(out, verifier)
    b = items["data/b.txt"]
    assert after.reusable(m.product, "1.0.0", "data/b.txt", b["sha256"], m.entitlement_id, "research") == str(
        b["download_id"]
    )
    assert after.is_complete("data/a.txt", done, len(m.files["data/a.txt"]), items["data/a.txt"]["sha256"])
    assert after.downloads[str(items["data/a.txt"]["download_id"])]["completed_at"]
    with after.lock:
        after.save()
    assert not (out / ".corpora/receipts.journal").exists()
    index = json.loads((out / ".corpora/receipts.json").read_text())
    assert sorted(d["path"] for d in index["downloads"]) == ["data/a.txt", "data/b.txt"]
    for entry in index["downloads"]:
        kept = entry["receipt"]
        assert kept == items[entry["path"]]["receipt"]
        key = next(k for k in jwks["keys"] if k["kid"] == jwt.get_unverified_header(kept)["kid"])
        assert jwt.decode(kept, jwt.PyJWK(key), algorithms=["EdDSA"])["download_id"] == entry["download_id"]


def test_a_journal_of_an_older_pull_keeps_its_receipts_in_the_index(tmp_path: Path) -> None:
    """An interrupted run of a pull that journaled each receipt beside its grant (to write a file per receipt at
    the end) is folded into the index with the receipts themselves, not the names of files never written."""
    state_dir = tmp_path / ".corpora"
    state_dir.mkdir()
    grant = {
        "download_id": "d-1",
        "path": "data/a.txt",
        "granted_at": "2026-12-01T00:00:00+00:00",
        "receipt": "receipts/d-1.jws",
    }
    (state_dir / "receipts.journal").write_text(json.dumps({"grant": grant, "jws": "header.payload.signature"}) + "\n")
    state = pull_module.State(tmp_path, ReceiptVerifier(lambda: {"keys": []}))
    with state.lock:
        state.save()
    index = json.loads((state_dir / "receipts.json").read_text())
    assert [d["receipt"] for d in index["downloads"]] == ["header.payload.signature"]
