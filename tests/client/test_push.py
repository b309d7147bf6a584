"""``corpora push`` against a real HTTP server: upload, skip what is there, resume, explain failures."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from litestar.testing import AsyncTestClient

from app import cli
from app.main import create_app
from app.settings import Settings
from client import push as push_module
from client import push_batch
from client.push import PushReport, push
from tests.catalog.helpers import make_product, make_version
from tests.conftest import Account, make_org, sign_up

MIB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def api_url(settings: Settings) -> Iterator[str]:
    """The application served over real HTTP by uvicorn, in a thread with its own event loop."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="push-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def _write(root: Path, files: dict[str, bytes]) -> None:
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def _manifest(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [
        {"path": path, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
        for path, content in sorted(files.items())
    ]


async def _version_files(client: AsyncTestClient[Any], owner: Account, slug: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/products/{slug}/versions/1.0.0", headers=owner.headers)
    assert response.status_code == 200, response.text
    return [{k: f[k] for k in ("path", "size", "sha256")} for f in response.json()["files"]]


async def _draft(client: AsyncTestClient[Any]) -> tuple[Account, str]:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    slug = await make_product(client, owner, org)
    await make_version(client, owner, slug)
    return owner, slug


async def _push(api_url: str, owner: Account, slug: str, directory: Path, cache: Path) -> PushReport:
    return await asyncio.to_thread(
        push, f"{slug}@1.0.0", directory, api=api_url, token=owner.token, parallel=4, quiet=True, cache_dir=cache
    )


async def test_push_uploads_a_directory_then_nothing(
    client: AsyncTestClient[Any], api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner, slug = await _draft(client)
    files = {
        "data/small.csv": b"2026-01-02,ACME,filing\n" * 200,
        "data/nested/large.bin": os.urandom(17 * MIB),  # three parts of 8 MiB
        "README.md": b"# filings\n",
        "empty.txt": b"",
    }
    _write(tmp_path / "corpus", files)

    argv = ["push", f"{slug}@1.0.0", str(tmp_path / "corpus"), "--api", api_url, "--token", owner.token]
    argv += ["--parallel", "4", "--media-type-guess", "--cache-dir", str(tmp_path / "cache")]
    assert await asyncio.to_thread(cli.main, argv) == 0
    out = capsys.readouterr().out
    assert "4 file(s) uploaded" in out
    assert await _version_files(client, owner, slug) == _manifest(files)
    version = (await client.get(f"/api/v1/products/{slug}/versions/1.0.0", headers=owner.headers)).json()
    media_types = {f["path"]: f["media_type"] for f in version["files"]}
    assert media_types["data/small.csv"] == "text/csv"
    assert media_types["data/nested/large.bin"] == "application/octet-stream"

    again = await _push(api_url, owner, slug, tmp_path / "corpus", tmp_path / "cache")
    assert again.ok, again.failures
    assert (again.files_uploaded, again.files_skipped, again.bytes_uploaded, again.parts_uploaded) == (0, 4, 0, 0)
    assert again.manifest_digest == version["manifest_digest"]

    # Without the digest cache the files are hashed again, and still nothing is uploaded.
    fresh = await _push(api_url, owner, slug, tmp_path / "corpus", tmp_path / "other-cache")
    assert (fresh.files_uploaded, fresh.files_skipped) == (0, 4)


async def test_an_interrupted_push_resumes_without_sending_parts_again(
    client: AsyncTestClient[Any], api_url: str, tmp_path: Path
) -> None:
    owner, slug = await _draft(client)
    large = os.urandom(17 * MIB)
    files = {"big.bin": large, "notes.txt": b"collected 2025", "changed.bin": b"the new content"}
    _write(tmp_path / "corpus", files)

    # An earlier push was interrupted after part 1 of big.bin, and after planning an older changed.bin.
    base = f"/api/v1/products/{slug}/versions/1.0.0/files"
    planned = await client.post(
        base,
        json={"path": "big.bin", "size": len(large), "sha256": hashlib.sha256(large).hexdigest()},
        headers=owner.headers,
    )
    assert planned.status_code == 201, planned.text
    plan = planned.json()["upload"]
    part_size = plan["part_size"]
    async with httpx.AsyncClient(timeout=60) as s3:
        put = await s3.put(plan["parts"][0]["url"], content=large[:part_size])
        assert put.status_code == 200, put.text
    old = b"the old content, longer"
    stale = await client.post(
        base,
        json={"path": "changed.bin", "size": len(old), "sha256": hashlib.sha256(old).hexdigest()},
        headers=owner.headers,
    )
    assert stale.status_code == 201, stale.text
    again = await client.post(
        base,
        json={"path": "big.bin", "size": len(large), "sha256": hashlib.sha256(large).hexdigest()},
        headers=owner.headers,
    )
    assert [p["part_number"] for p in again.json()["upload"]["uploaded_parts"]] == [1]

    report = await _push(api_url, owner, slug, tmp_path / "corpus", tmp_path / "cache")
    assert report.ok, report.failures
    assert report.files_uploaded == 3
    assert report.parts_reused == 1  # part 1 of big.bin was not sent again
    assert report.parts_uploaded == 2 + 1 + 1  # parts 2 and 3, notes.txt, changed.bin
    assert report.bytes_uploaded == len(large) - part_size + len(files["notes.txt"]) + len(files["changed.bin"])
    assert await _version_files(client, owner, slug) == _manifest(files)
    version = (await client.get(f"/api/v1/products/{slug}/versions/1.0.0", headers=owner.headers)).json()
    assert version["pending_files"] == []


async def test_upload_urls_about_to_expire_are_renewed(
    client: AsyncTestClient[Any], api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every URL counts as about to expire: each transfer asks for the plan again and uses fresh URLs.
    monkeypatch.setattr(push_module, "URL_MARGIN", dt.timedelta(hours=2))
    plans: list[str] = []
    plan = push_module.Api.plan

    def counted(self: push_module.Api, slug: str, version: str, file: push_module.LocalFile) -> dict[str, Any]:
        plans.append(file.path)
        return plan(self, slug, version, file)

    monkeypatch.setattr(push_module.Api, "plan", counted)
    plan_batch = push_batch.Batches.plan

    def counted_batch(self: push_batch.Batches, files: Sequence[push_batch.File]) -> list[dict[str, Any]]:
        plans.extend(file.path for file in files)
        return plan_batch(self, files)

    monkeypatch.setattr(push_batch.Batches, "plan", counted_batch)
    owner, slug = await _draft(client)
    files = {"big.bin": os.urandom(9 * MIB), "small.txt": b"small"}
    _write(tmp_path / "corpus", files)
    report = await _push(api_url, owner, slug, tmp_path / "corpus", tmp_path / "cache")
    assert report.ok, report.failures
    assert (report.files_uploaded, report.parts_uploaded, report.parts_reused) == (2, 3, 0)
    # the first plan (small.txt's in a batch), then a fresh one for each transfer
    assert sorted(plans) == ["big.bin"] * 3 + ["small.txt"] * 2
    assert await _version_files(client, owner, slug) == _manifest(files)


async def test_push_failures_say_what_to_do(
    client: AsyncTestClient[Any], api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner, slug = await _draft(client)
    _write(tmp_path / "corpus", {"a.txt": b"first"})
    corpus = str(tmp_path / "corpus")
    common = ["--api", api_url, "--cache-dir", str(tmp_path / "cache"), "--quiet"]

    assert await asyncio.to_thread(cli.main, ["push", f"{slug}@1.0.0", corpus, "--token", "not-a-token", *common]) == 1
    assert "token was refused" in capsys.readouterr().err

    assert await asyncio.to_thread(cli.main, ["push", f"{slug}@9.9.9", corpus, "--token", owner.token, *common]) == 1
    assert "create the version first" in capsys.readouterr().err

    assert await asyncio.to_thread(cli.main, ["push", f"{slug}@1.0.0", corpus, "--token", owner.token, *common]) == 0
    (tmp_path / "corpus" / "a.txt").write_bytes(b"second")
    assert await asyncio.to_thread(cli.main, ["push", f"{slug}@1.0.0", corpus, "--token", owner.token, *common]) == 1
    assert "already in" in capsys.readouterr().err

    (tmp_path / "corpus" / "a.txt").write_bytes(b"first")
    (tmp_path / "corpus" / "b.txt").write_bytes(b"late")
    published = await client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers)
    assert published.status_code == 200, published.text
    assert await asyncio.to_thread(cli.main, ["push", f"{slug}@1.0.0", corpus, "--token", owner.token, *common]) == 1
    assert "frozen" in capsys.readouterr().err

    closed = await asyncio.to_thread(
        cli.main, ["push", f"{slug}@1.0.0", corpus, "--token", owner.token, "--api", "http://127.0.0.1:9", "-q"]
    )
    assert closed == 1
    assert "cannot reach the API" in capsys.readouterr().err


async def test_pull_receipts_are_not_pushed_and_reserved_paths_are_named(
    client: AsyncTestClient[Any], api_url: str, tmp_path: Path
) -> None:
    owner, slug = await _draft(client)
    files = {"data/a.txt": b"alpha", "data/.corpora/kept.txt": b"nested, so a file like any other"}
    _write(tmp_path / "corpus", {**files, ".corpora/receipts.json": b"{}", ".corpora/receipts/x.jws": b"jws"})
    report = await _push(api_url, owner, slug, tmp_path / "corpus", tmp_path / "cache")
    assert report.ok, report.failures
    assert await _version_files(client, owner, slug) == _manifest(files)

    assert push_module.path_problem("C:/x") == "starts with a drive letter"
    assert push_module.path_problem(".Corpora/x") == "is under .corpora/, where corpora pull keeps its receipts"
    _write(tmp_path / "windows", {"C:/x.txt": b"drive"})
    with pytest.raises(push_module.PushError, match=r"'C:/x\.txt' starts with a drive letter"):
        await _push(api_url, owner, slug, tmp_path / "windows", tmp_path / "cache")


async def test_push_sends_no_bytes_the_org_already_stores(
    client: AsyncTestClient[Any], api_url: str, tmp_path: Path
) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    first, second = await make_product(client, owner, org), await make_product(client, owner, org)
    await make_version(client, owner, first)
    await make_version(client, owner, second)
    files = {"a.txt": b"shared\n" * 1000, "big.bin": os.urandom(9 * MIB)}
    _write(tmp_path / "corpus", files)
    assert (await _push(api_url, owner, first, tmp_path / "corpus", tmp_path / "cache")).ok

    again = await _push(api_url, owner, second, tmp_path / "corpus", tmp_path / "cache")
    assert again.ok, again.failures
    assert (again.files_reused, again.files_uploaded, again.bytes_uploaded) == (2, 0, 0)
    assert await _version_files(client, owner, second) == _manifest(files)


async def test_many_small_files_go_in_batches_with_one_put_each(
    client: AsyncTestClient[Any], api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans: list[int] = []
    plan_batch = push_batch.Batches.plan

    def counted(self: push_batch.Batches, files: Sequence[push_batch.File]) -> list[dict[str, Any]]:
        plans.append(len(files))
        return plan_batch(self, files)

    monkeypatch.setattr(push_batch.Batches, "plan", counted)
    monkeypatch.setattr(push_batch, "BATCH_FILES", 40)
    owner, slug = await _draft(client)
    files = {f"shard-{n:03d}.bin": os.urandom(300 + n) for n in range(100)}
    _write(tmp_path / "corpus", files)
    report = await _push(api_url, owner, slug, tmp_path / "corpus", tmp_path / "cache")
    assert report.ok, report.failures
    assert (report.files_uploaded, report.parts_uploaded) == (100, 100)  # one PUT per file, nothing else
    assert sorted(plans) == [20, 40, 40]
    assert await _version_files(client, owner, slug) == _manifest(files)
    version = (await client.get(f"/api/v1/products/{slug}/versions/1.0.0", headers=owner.headers)).json()
    assert version["pending_files"] == []
