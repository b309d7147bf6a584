"""``corpora push`` of one large file against a direct multipart upload of the same bytes, in one run.

Setup: an embedded PostgreSQL and SeaweedFS under a temporary data dir (``app.cli.resolve``, which also
migrates), then ``corpora serve`` (granian) on a free port. A user signs up over HTTP, creates a provider
organisation, a product and one draft version per round. A file of ``--size-mib`` random bytes is written.

Each round measures, one after the other:

(a) push: ``client.push.push`` — what ``corpora push`` runs — of the file into a fresh draft version, with
    an empty digest cache: hashing the file, the upload plan, the parts PUT to the presigned URLs with
    ``--parallel`` transfers, and the completion, in which the server verifies size and SHA-256 and keeps
    the content under its digest. Each round also prints these phases; "plan + parts" is what compares
    with (b) like for like, while hashing and verification are work (b) does not do.
(b) direct: the same bytes uploaded with the ``minio`` SDK as an S3 multipart upload to the same object
    store, with the part size the server planned for (a) and the same number of parallel part uploads
    (create, parts from a thread pool, complete).

Prints MiB/s for both and the ratio push / direct (target: at least 0.80), medians over ``--rounds``.
Every process is stopped and the data dir removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import httpx

sys.path.insert(0, str(_common.REPO_ROOT))  # this checkout's app, also when another one is installed

TARGET_RATIO = 0.80
MIB = 1024 * 1024
PASSWORD = "Push-Throughput-1618"  # noqa: S105 - a throwaway account in a throwaway database
PROVENANCE = {
    "sources": [
        {
            "kind": "licensed",
            "name": "Benchmark archive",
            "url": "https://example.com/archive",
            "rights_holder": "Example Archive",
            "legal_basis": "licence agreement",
            "collected_from": "2025-01-01",
            "collected_to": "2025-12-31",
        }
    ],
    "activities": [{"stage": "collect", "tool": "bench", "description": "random bytes"}],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, prog="push_bench.py"
    )
    parser.add_argument("--size-mib", type=int, default=512, help="size of the file in MiB (default 512)")
    parser.add_argument("--parallel", type=int, default=8, help="parallel part uploads, both ways (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="granian workers of corpora serve (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (a) and (b); medians are reported")
    parser.add_argument("--keep-data", action="store_true", help="keep the data dir and server log")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when the ratio is below the target")
    return parser


def _ok(response: httpx.Response) -> Any:
    if response.is_error:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json() if response.content else None


def create_account(api: str) -> tuple[str, str]:
    """Sign up, log in, create a provider organisation and a product; return (token, product slug)."""
    email = "push-bench@example.com"
    with httpx.Client(base_url=f"{api}/api/v1", timeout=30) as client:
        _ok(client.post("/users", json={"email": email, "password": PASSWORD, "display_name": "Bench"}))
        token = _ok(
            client.post("/auth/token", json={"grant_type": "password", "username": email, "password": PASSWORD})
        )["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        _ok(client.post("/orgs", json={"slug": "bench-provider", "name": "Bench Provider", "kind": "provider"}))
        product = {
            "org": "bench-provider",
            "slug": "bench-corpus",
            "title": "Benchmark corpus",
            "industry": "general",
            "modality": "text",
            "access": "open",
        }
        _ok(client.post("/products", json=product))
    return str(token), "bench-corpus"


def create_version(api: str, token: str, slug: str, version: str) -> None:
    with httpx.Client(base_url=f"{api}/api/v1", timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        body = {"version": version, "changelog": "benchmark", "licence_id": "CC-BY-4.0", "provenance": PROVENANCE}
        _ok(client.post(f"/products/{slug}/versions", json=body))


def write_random_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(8 * MIB, left))
            out.write(chunk)
            left -= len(chunk)


def direct_upload(settings: Any, path: Path, key: str, part_size: int, parallel: int) -> float:
    """Multipart upload of ``path`` with the minio SDK (parts in a thread pool); return the seconds it took."""
    from minio import Minio
    from minio.datatypes import Part

    from app.objectstore import split_endpoint

    endpoint, secure = split_endpoint(settings.s3_endpoint, settings.s3_secure)
    client = Minio(
        endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=secure,
        region=settings.s3_region,
    )
    size = path.stat().st_size
    count = max(1, -(-size // part_size))

    def part(number: int) -> Part:
        with path.open("rb") as stream:
            stream.seek((number - 1) * part_size)
            data = stream.read(part_size)
        etag = client._upload_part(settings.s3_bucket, key, data, None, upload_id, number)
        return Part(number, etag)

    started = time.monotonic()
    upload_id = client._create_multipart_upload(settings.s3_bucket, key, {"Content-Type": "application/octet-stream"})
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        parts = list(pool.map(part, range(1, count + 1)))
    client._complete_multipart_upload(settings.s3_bucket, key, upload_id, parts)
    seconds = time.monotonic() - started
    if client.stat_object(settings.s3_bucket, key).size != size:
        raise RuntimeError("the direct upload stored a different size")
    client.remove_object(settings.s3_bucket, key)
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(
        f"machine: {os.cpu_count()} CPU(s), 1-min load average {os.getloadavg()[0]:.2f}; "
        f"file {args.size_mib} MiB, {args.parallel} parallel transfers, {args.workers} granian workers",
        flush=True,
    )
    data_dir = Path(tempfile.mkdtemp(prefix="corpora-push-bench-"))
    if args.keep_data:
        print(f"data dir and logs kept in {data_dir}")
    else:
        # registered before the embedded PostgreSQL registers its own stop, so it runs after that (LIFO)
        atexit.register(shutil.rmtree, data_dir, ignore_errors=True)

    # imported here so --help stays instant
    from app.cli import resolve
    from app.settings import Settings
    from catalog.uploads import part_size_for
    from client.push import push

    size = args.size_mib * MIB
    part_size = part_size_for(size)
    push_rates: list[float] = []
    direct_rates: list[float] = []
    parts_rates: list[float] = []
    with _common.exit_on_sigterm():
        print("starting embedded PostgreSQL and SeaweedFS, migrating ...", flush=True)
        runtime = resolve(Settings(data_dir=data_dir, workers=args.workers))
        try:
            log_dir = data_dir / "logs"
            log_dir.mkdir()
            port = _common.free_port()
            env = {
                **os.environ,
                **runtime.settings.as_env(),
                "CORPORA_HOST": "127.0.0.1",
                "CORPORA_PORT": str(port),
                "CORPORA_WORKERS": str(args.workers),
            }
            with _common.Processes(log_dir) as procs:
                server = procs.start("corpora", [sys.executable, "-m", "app.cli", "serve"], env=env)
                api = f"http://127.0.0.1:{port}"
                _common.wait_http(f"{api}/readyz", server, timeout=120)
                token, slug = create_account(api)
                corpus = data_dir / "corpus"
                print(f"writing {args.size_mib} MiB of random bytes ...", flush=True)
                write_random_file(corpus / "big.bin", size)
                print(f"part size {part_size // MIB} MiB, {-(-size // part_size)} parts", flush=True)
                for round_no in range(1, args.rounds + 1):
                    version = f"1.0.{round_no - 1}"
                    create_version(api, token, slug, version)
                    report = push(
                        f"{slug}@{version}",
                        corpus,
                        api=api,
                        token=token,
                        parallel=args.parallel,
                        quiet=True,
                        progress_bars=False,
                        cache_dir=data_dir / f"push-cache-{round_no}",
                    )
                    if not report.ok or report.files_uploaded != 1 or report.bytes_uploaded != size:
                        raise RuntimeError(f"the push did not upload the file: {report}")
                    push_rates.append(size / MIB / report.seconds)
                    # One file: its upload worker hashes it, plans, sends the parts and completes, in turn.
                    put = report.transfer_seconds - report.hash_seconds - report.complete_seconds
                    other = report.seconds - report.transfer_seconds
                    parts_rates.append(size / MIB / put)
                    print(
                        f"round {round_no}: push {report.seconds:6.2f}s = {push_rates[-1]:7.1f} MiB/s: "
                        f"hash {report.hash_seconds:.2f}s, plan + parts {put:.2f}s ({size / MIB / put:.0f} MiB/s), "
                        f"complete (server verifies) {report.complete_seconds:.2f}s, other {other:.2f}s",
                        flush=True,
                    )
                    seconds = direct_upload(
                        runtime.settings, corpus / "big.bin", f"bench/direct-{round_no}", part_size, args.parallel
                    )
                    direct_rates.append(size / MIB / seconds)
                    print(
                        f"round {round_no}: direct minio multipart {seconds:6.2f}s = {direct_rates[-1]:7.1f} MiB/s",
                        flush=True,
                    )
        finally:
            runtime.stop()
    pushed, direct = statistics.median(push_rates), statistics.median(direct_rates)
    ratio = pushed / direct if direct else float("nan")
    print()
    print(f"corpora push (hash, upload, server verification): {pushed:8.1f} MiB/s")
    print(f"direct multipart upload with the minio SDK:        {direct:8.1f} MiB/s")
    parts = statistics.median(parts_rates)
    print(f"push's plan + parts alone (like for like):          {parts:8.1f} MiB/s ({parts / direct:.2f} of direct)")
    verdict = "meets" if ratio >= TARGET_RATIO else "is BELOW"
    print(f"ratio push / direct: {ratio:.2f} ({verdict} the target of {TARGET_RATIO:.2f})", flush=True)
    return 0 if ratio >= TARGET_RATIO or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
