"""Proxied download throughput against a direct download from the object store, measured in one run.

Setup: an embedded PostgreSQL and SeaweedFS under a temporary data dir (``app.cli.resolve``, which also
migrates), then ``corpora serve`` (granian, ``--workers`` workers, ``CORPORA_DOWNLOAD_MODE=proxy``,
review not required) on a free port. Over HTTP, a provider publishes a product whose version holds one
file of ``--size-mib`` MiB of random bytes (uploaded through the upload plan: presigned PUTs, multipart
above 8 MiB, verified by the server), and a buyer orders an automatic, free offer and is granted the file.

Then, with the same ``httpx.Client`` (streaming, counting and discarding the bytes):

- direct: GET of the blob on a presigned URL of the object store (minio SDK, explicit expiry);
- proxied: GET /api/v1/downloads/{id}/content through the API.

Prints MiB/s for both, the ratio proxied / direct (target: at least 0.70), and the growth of the API
processes' resident memory during the proxied transfer (psutil, sampled every 50 ms; target: below
64 MiB). Every process is stopped and the data dir removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import _common
import httpx

MIB = 1024 * 1024
TARGET_RATIO = 0.70
TARGET_RSS_MIB = 64.0
SAMPLE_SECONDS = 0.05
PASSWORD = "Proxy-Throughput-Probe-1618"  # noqa: S105 - throwaway accounts in a throwaway database
FILE_PATH = "data/corpus.bin"
PROVENANCE: dict[str, Any] = {
    "sources": [{"kind": "synthetic", "name": "benchmark bytes", "generator": "os.urandom"}],
    "activities": [{"stage": "collect", "tool": "bench", "description": "random bytes for a throughput benchmark"}],
    "synthetic_fraction": 1,
}


# --- a product, an offer and a buyer, over HTTP --------------------------------------------------------------


@dataclasses.dataclass
class Market:
    base_url: str
    product: str
    version: str
    buyer_email: str
    entitlement_id: str
    path: str
    size: int
    sha256: str
    offer_id: str

    def token(self) -> str:
        """A fresh access token for the buyer (tokens expire; benchmarks can outlast one)."""
        return access_token(self.base_url, self.buyer_email)

    def grant_body(self) -> dict[str, str]:
        return {
            "entitlement_id": self.entitlement_id,
            "product": self.product,
            "version": self.version,
            "path": self.path,
            "purpose": "research",
        }


def _ok(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response


def access_token(base_url: str, email: str) -> str:
    response = _ok(
        httpx.post(
            f"{base_url}/api/v1/auth/token",
            json={"grant_type": "password", "username": email, "password": PASSWORD},
            timeout=60,
        )
    )
    token: str = response.json()["access_token"]
    return token


def _account(api: httpx.Client, kind: str) -> tuple[str, dict[str, str], str]:
    """Sign up, log in, create an organisation of ``kind``; return (email, auth headers, org slug)."""
    suffix = uuid.uuid4().hex[:8]
    email = f"{kind}-{suffix}@example.com"
    _ok(api.post("/api/v1/users", json={"email": email, "password": PASSWORD, "display_name": kind}))
    headers = {"Authorization": f"Bearer {access_token(str(api.base_url).rstrip('/'), email)}"}
    org = f"{kind}-{suffix}"
    _ok(api.post("/api/v1/orgs", json={"slug": org, "name": f"Bench {kind}", "kind": kind}, headers=headers))
    return email, headers, org


def write_random_file(path: Path, size: int, chunk: int = 8 * MIB) -> str:
    """``size`` random bytes at ``path``; returns their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(chunk, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def _upload(api: httpx.Client, headers: dict[str, str], base: str, source: Path, size: int, sha: str) -> None:
    """Plan, send the bytes to the object store on the plan's presigned URLs (parts in parallel), complete."""
    plan = _ok(
        api.post(
            base,
            json={"path": FILE_PATH, "size": size, "sha256": sha, "media_type": "application/octet-stream"},
            headers=headers,
        )
    ).json()
    upload = plan["upload"]
    with httpx.Client(timeout=600) as s3:
        if upload["kind"] == "single":
            _ok(s3.put(upload["url"], content=source.read_bytes(), headers=upload["headers"]))
            body: dict[str, Any] = {}
        else:
            part_size = upload["part_size"]
            fd = os.open(source, os.O_RDONLY)
            try:

                def send(part: dict[str, Any]) -> dict[str, Any]:
                    data = os.pread(fd, part_size, (part["part_number"] - 1) * part_size)
                    put = _ok(s3.put(part["url"], content=data))
                    return {"part_number": part["part_number"], "etag": put.headers["etag"]}

                with concurrent.futures.ThreadPoolExecutor(4) as pool:
                    parts = list(pool.map(send, upload["parts"]))
            finally:
                os.close(fd)
            body = {"parts": parts}
    done = _ok(api.post(f"{base}/{plan['file_id']}/complete", json=body, headers=headers, timeout=900)).json()
    if done["status"] != "verified":
        raise RuntimeError(f"the upload was not verified: {done}")


def set_up_market(
    base_url: str, source: Path, size: int, sha: str, *, downloads: int | None = None, bytes_limit: int | None = None
) -> Market:
    """A published product holding ``source`` as its one file, and a buyer entitled to it (needs a server with
    ``CORPORA_REVIEW_REQUIRED=false``, since nobody here holds the platform reviewer role)."""
    with httpx.Client(base_url=base_url, timeout=120) as api:
        _, provider, provider_org = _account(api, "provider")
        slug = f"bench-corpus-{uuid.uuid4().hex[:8]}"
        _ok(
            api.post(
                "/api/v1/products",
                json={
                    "org": provider_org,
                    "slug": slug,
                    "title": "Benchmark corpus",
                    "summary": "Random bytes",
                    "description": "Random bytes for a benchmark",
                    "industry": "media",
                    "modality": "text",
                    "languages": ["en"],
                    "tags": ["bench"],
                    "access": "open",
                },
                headers=provider,
            )
        )
        version = "1.0.0"
        _ok(
            api.post(
                f"/api/v1/products/{slug}/versions",
                json={"version": version, "changelog": "first", "licence_id": "CC-BY-4.0", "provenance": PROVENANCE},
                headers=provider,
            )
        )
        _upload(api, provider, f"/api/v1/products/{slug}/versions/{version}/files", source, size, sha)
        published = _ok(api.post(f"/api/v1/products/{slug}/versions/{version}/publish", headers=provider)).json()
        if published["state"] != "published":
            raise RuntimeError(f"the version is {published['state']}: start the server with review not required")
        offer = _ok(
            api.post(
                f"/api/v1/products/{slug}/offers",
                json={
                    "name": "bench access",
                    "licence_id": "CC-BY-4.0",
                    "price": {"amount": 0, "currency": "EUR"},
                    "term_days": 30,
                    "quota": {"downloads": downloads, "bytes": bytes_limit},
                    "versions": "all",
                    "approval": "automatic",
                    "purposes": ["research"],
                },
                headers=provider,
            )
        ).json()
        buyer_email, buyer, buyer_org = _account(api, "buyer")
        order = _ok(
            api.post(
                "/api/v1/orders",
                json={"offer_id": offer["id"], "buyer_org": buyer_org, "purpose": "research"},
                headers={**buyer, "Idempotency-Key": f"bench-{uuid.uuid4().hex}"},
            )
        ).json()
        if order["status"] != "fulfilled":
            raise RuntimeError(f"the order is {order['status']}")
    return Market(base_url, slug, version, buyer_email, order["entitlement_id"], FILE_PATH, size, sha, offer["id"])


def another_buyer(market: Market) -> Market:
    """The same product and offer, ordered by a new buyer org: a second, independent entitlement."""
    with httpx.Client(base_url=market.base_url, timeout=120) as api:
        email, headers, org = _account(api, "buyer")
        order = _ok(
            api.post(
                "/api/v1/orders",
                json={"offer_id": market.offer_id, "buyer_org": org, "purpose": "research"},
                headers={**headers, "Idempotency-Key": f"bench-{uuid.uuid4().hex}"},
            )
        ).json()
    if order["status"] != "fulfilled":
        raise RuntimeError(f"the order is {order['status']}")
    return dataclasses.replace(market, buyer_email=email, entitlement_id=order["entitlement_id"])


def start_corpora(
    procs: _common.Processes, settings_env: dict[str, str], workers: int, **extra: str
) -> tuple[str, _common.Proc]:
    """``corpora serve`` on a free port with the embedded servers' settings; waits for /readyz."""
    port = _common.free_port()
    env = {
        **os.environ,
        **settings_env,
        "CORPORA_HOST": "127.0.0.1",
        "CORPORA_PORT": str(port),
        "CORPORA_WORKERS": str(workers),
        "CORPORA_REVIEW_REQUIRED": "false",
        "CORPORA_JANITOR_EVERY_SECONDS": "0",
        **extra,
    }
    proc = procs.start("corpora", [sys.executable, "-m", "app.cli", "serve"], env=env)
    url = f"http://127.0.0.1:{port}"
    _common.wait_http(f"{url}/readyz", proc, timeout=120)
    time.sleep(0.5)  # let every worker finish starting
    return url, proc


# --- measuring ----------------------------------------------------------------------------------------------


class RssSampler:
    """Resident memory of a process and its descendants, every ``interval`` seconds, in a thread."""

    def __init__(self, root_pid: int, interval: float = SAMPLE_SECONDS) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.baseline = self._sample()
        self.peak_total = sum(self.baseline.values())
        self.peak_each: dict[int, int] = dict(self.baseline)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> dict[int, int]:
        rss: dict[int, int] = {}
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                rss[proc.pid] = proc.memory_info().rss
            except self._psutil.Error:
                continue
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            current = self._sample()
            self.samples += 1
            self.peak_total = max(self.peak_total, sum(current.values()))
            for pid, rss in current.items():
                self.peak_each[pid] = max(self.peak_each.get(pid, 0), rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_total(self) -> int:
        return self.peak_total - sum(self.baseline.values())

    @property
    def growth_one(self) -> int:
        """The largest growth of any single process (a worker) over its own baseline."""
        return max((peak - self.baseline.get(pid, 0) for pid, peak in self.peak_each.items()), default=0)


@dataclasses.dataclass
class Transfer:
    seconds: float
    size: int
    digest: str | None

    @property
    def mib_s(self) -> float:
        return self.size / MIB / self.seconds if self.seconds > 0 else 0.0


def fetch(
    client: httpx.Client, url: str, size: int, *, headers: dict[str, str] | None = None, verify: bool
) -> Transfer:
    """GET ``url``, streaming and discarding the body (hashing it with ``verify``); checks status and length."""
    digest = hashlib.sha256() if verify else None
    received = 0
    started = time.perf_counter()
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:500]}")
        for chunk in response.iter_raw():
            received += len(chunk)
            if digest is not None:
                digest.update(chunk)
    elapsed = time.perf_counter() - started
    if received != size:
        raise RuntimeError(f"GET {url}: received {received} bytes, expected {size}")
    return Transfer(elapsed, received, digest.hexdigest() if digest is not None else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Throughput of a proxied download (GET /api/v1/downloads/{id}/content through corpora serve in proxy "
            "mode) against a direct presigned GET of the same object from the object store, with the same client "
            f"in one run; prints MiB/s, the ratio (target: at least {TARGET_RATIO:.0%}) and the API processes' "
            f"peak resident memory growth during the proxied transfer (target: below {TARGET_RSS_MIB:.0f} MiB)."
        )
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the random file in MiB (default 1024)")
    parser.add_argument("--workers", type=int, default=1, help="granian workers of corpora serve (default 1)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate direct and proxied this many times, report medians (default 1)"
    )
    parser.add_argument(
        "--verify", action="store_true", help="also hash what each GET received and compare it with the file's SHA-256"
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data dir and server logs")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when a target is missed (default: exit 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    size = args.size_mib * MIB
    print(_common.environment_line())
    data_dir = Path(tempfile.mkdtemp(prefix="corpora-proxy-bench-"))
    if args.keep_data:
        print(f"data dir and logs kept in {data_dir}")
    else:
        # registered before the embedded PostgreSQL registers its own stop, so it runs after that (LIFO)
        atexit.register(shutil.rmtree, data_dir, ignore_errors=True)

    # imported here so --help stays instant
    from app.cli import resolve
    from app.objectstore import ObjectStore
    from app.settings import Settings
    from catalog.uploads import blob_key

    direct: list[Transfer] = []
    proxied: list[Transfer] = []
    growth_one: list[int] = []
    growth_total: list[int] = []
    with _common.exit_on_sigterm():
        print("starting embedded PostgreSQL and SeaweedFS, migrating ...", flush=True)
        runtime = resolve(Settings(data_dir=data_dir, workers=args.workers))
        try:
            log_dir = data_dir / "logs"
            log_dir.mkdir()
            with _common.Processes(log_dir) as procs:
                url, api = start_corpora(procs, runtime.settings.as_env(), args.workers, CORPORA_DOWNLOAD_MODE="proxy")
                print(f"corpora serve (proxy mode, {args.workers} worker(s)) at {url}", flush=True)
                started = time.monotonic()
                source = data_dir / "corpus.bin"
                sha = write_random_file(source, size)
                print(f"wrote {args.size_mib} MiB of random bytes in {time.monotonic() - started:.1f}s", flush=True)
                started = time.monotonic()
                market = set_up_market(url, source, size, sha)
                source.unlink()
                print(f"uploaded, verified and published in {time.monotonic() - started:.1f}s", flush=True)

                headers = {"Authorization": f"Bearer {market.token()}"}
                grant = _ok(httpx.post(f"{url}/api/v1/downloads", json=market.grant_body(), headers=headers)).json()
                if grant["mode"] != "proxy":
                    raise RuntimeError(f"expected a proxy grant, got {grant['mode']}")
                content_url = grant["url"]
                store = ObjectStore(runtime.settings)
                direct_url = store.client.presigned_get_object(
                    store.bucket, blob_key(sha), expires=dt.timedelta(hours=1)
                )

                with httpx.Client(timeout=httpx.Timeout(60, read=120)) as client:
                    # warm-up: both paths, a first MiB each
                    for warm_url, warm_headers in ((direct_url, None), (content_url, headers)):
                        warm = client.get(warm_url, headers={**(warm_headers or {}), "Range": f"bytes=0-{MIB - 1}"})
                        if warm.status_code != 206 or len(warm.content) != MIB:
                            raise RuntimeError(f"warm-up GET {warm_url}: {warm.status_code}")
                    for round_no in range(1, args.rounds + 1):
                        if args.rounds > 1:
                            print(f"round {round_no}/{args.rounds}")
                        one = fetch(client, direct_url, size, verify=args.verify)
                        direct.append(one)
                        print(f"  direct   {one.mib_s:8.0f} MiB/s ({one.seconds:.2f}s)", flush=True)
                        headers = {"Authorization": f"Bearer {market.token()}"}  # fresh: cannot expire mid-run
                        cpu_before = _common.cpu_seconds(pgid=api.pid)
                        with RssSampler(api.pid) as rss:
                            one = fetch(client, content_url, size, headers=headers, verify=args.verify)
                        cpu_after = _common.cpu_seconds(pgid=api.pid)
                        proxied.append(one)
                        growth_one.append(rss.growth_one)
                        growth_total.append(rss.growth_total)
                        cpu = ""
                        if cpu_before is not None and cpu_after is not None:
                            cpu = f"; API CPU {cpu_after - cpu_before:.1f}s"
                        print(
                            f"  proxied  {one.mib_s:8.0f} MiB/s ({one.seconds:.2f}s; RSS growth "
                            f"{rss.growth_one / MIB:.1f} MiB in one process, {rss.growth_total / MIB:.1f} MiB in all, "
                            f"{rss.samples} samples{cpu})",
                            flush=True,
                        )
                        if args.verify:
                            for transfer in (direct[-1], proxied[-1]):
                                if transfer.digest != sha:
                                    raise RuntimeError("a download's bytes do not match the file's SHA-256")
        finally:
            runtime.stop()

    direct_mib_s = statistics.median(t.mib_s for t in direct)
    proxied_mib_s = statistics.median(t.mib_s for t in proxied)
    share = _common.ratio(proxied_mib_s, direct_mib_s)
    peak = max(growth_one) / MIB
    print()
    print(f"direct GET from the object store (presigned):  {direct_mib_s:8.0f} MiB/s")
    print(f"proxied GET /api/v1/downloads/{{id}}/content:   {proxied_mib_s:8.0f} MiB/s")
    ok_ratio = share >= TARGET_RATIO
    ok_rss = peak < TARGET_RSS_MIB
    print(
        f"ratio proxied / direct: {share:.2f} ({'meets' if ok_ratio else 'is BELOW'} the target of {TARGET_RATIO:.2f})"
    )
    print(
        f"API peak RSS growth during the proxied transfer: {peak:.1f} MiB in one process, "
        f"{max(growth_total) / MIB:.1f} MiB in all ({'meets' if ok_rss else 'MISSES'} the target of "
        f"< {TARGET_RSS_MIB:.0f} MiB)",
        flush=True,
    )
    return 0 if (ok_ratio and ok_rss) or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
