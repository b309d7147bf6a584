"""``corpora push`` and ``corpora pull`` of many small files against direct parallel transfers, in one run.

Setup: an embedded PostgreSQL and SeaweedFS under a temporary data dir, then ``corpora serve`` (granian,
review not required) on a free port. A provider signs up, creates an organisation, a product and a draft
version; ``--files`` files of ``--size-kib`` random bytes are written.

Measured one after the other, with the same number of parallel transfers, ``--rounds`` times each, alternated:

(a) push: ``client.push.push`` of the directory into a draft version of its own (fresh random files each
    round): upload plans and completions in batches (``POST …/uploads``, ``…/uploads/complete``, where the server
    verifies size and SHA-256), and a PUT per file straight to its content-addressed key.
(b) direct upload: the same files PUT with the ``minio`` SDK to the same object store from a thread pool.
(c) pull: the first version is published, a buyer orders a free offer, and ``client.pull.pull`` downloads every
    file into the download folder: grants in pipelined batches (``POST /downloads/manifest`` with ``paths``), GETs
    of the presigned URLs, SHA-256 checks, receipts verified against the JWKS.
(d) direct download: the same objects fetched with the ``minio`` SDK from a thread pool, each written to a file
    in the same download folder (emptied after each phase).

Profiling the pushed files (batched background jobs) is waited for before (b), and every phase starts once the
machine is quiet (what the last one left behind, such as sequencing its audit events, has finished), so no phase
shares the machine with another's work. CPU per file is printed for each phase: this process (the client), the
API's processes, and the rest of the machine (PostgreSQL and SeaweedFS).

Prints files/s for each round and the medians' ratios push / direct upload and pull / direct download (target:
0.50 each). The direct transfers' own rate moves by up to 2x from run to run on a shared 2-core machine (16
threads handing the interpreter lock around), which is why the rounds alternate.
Every process is stopped and the data dir removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common
import httpx
from push_bench import PASSWORD, _ok, create_account, create_version

sys.path.insert(0, str(_common.REPO_ROOT))  # this checkout's app, also when another one is installed

TARGET_RATIO = 0.50
KIB = 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, prog="small_files_bench.py"
    )
    parser.add_argument("--files", type=int, default=10_000, help="how many files (default 10,000)")
    parser.add_argument("--size-kib", type=int, default=10, help="size of each file in KiB (default 10)")
    parser.add_argument("--parallel", type=int, default=16, help="parallel transfers, every way (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="granian workers of corpora serve (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="each phase this often, alternated (medians)")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when a ratio is below the target")
    return parser


class CpuMeter:
    """CPU spent during one phase: by this process (the client), by the API server's processes, and by the rest
    of the machine (PostgreSQL, SeaweedFS), so each phase's cost per file can be read side by side."""

    def __init__(self, server_pgid: int) -> None:
        self.server_pgid = server_pgid
        self.phases: dict[str, list[tuple[float, float, float]]] = {}

    def _now(self) -> tuple[float, float, float]:
        times = os.times()
        return (
            times.user + times.system,
            _common.cpu_seconds(pgid=self.server_pgid) or 0.0,
            _common.machine_busy_seconds() or 0.0,
        )

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        waited = _common.wait_for_quiet()
        if waited > 1:
            print(f"  ({waited:.1f} s until the machine was quiet before {name})", flush=True)
        before = self._now()
        try:
            yield
        finally:
            client, server, machine = (after - start for after, start in zip(self._now(), before, strict=True))
            self.phases.setdefault(name, []).append((client, server, max(0.0, machine - client - server)))

    def report(self, files: int) -> None:
        print(f"\nCPU per file (us): {'client':>8s} {'API':>8s} {'store+db':>9s} {'total':>8s}")
        for name, rounds in self.phases.items():
            client, server, rest = (sum(parts) / len(rounds) for parts in zip(*rounds, strict=True))
            total = client + server + rest
            print(
                f"  {name:16s} {1e6 * client / files:8.0f} {1e6 * server / files:8.0f} "
                f"{1e6 * rest / files:9.0f} {1e6 * total / files:8.0f}"
            )


PHASES = (
    "corpora push",
    "direct upload (minio put_object)",
    "corpora pull",
    "direct download (minio get_object)",
)


def _report_round(rates: dict[str, list[float]], ours: str, direct: str) -> None:
    tool = next(name for name in PHASES if name.endswith(ours))
    baseline = next(name for name in PHASES if name.startswith(f"direct {direct}"))
    print(
        f"  {ours}: {rates[tool][-1]:7.1f} files/s, direct {direct}: {rates[baseline][-1]:7.1f} files/s "
        f"({rates[tool][-1] / rates[baseline][-1]:.2f})",
        flush=True,
    )


def store_client(settings: Any) -> Any:
    from minio import Minio

    from app.objectstore import split_endpoint

    endpoint, secure = split_endpoint(settings.s3_endpoint, settings.s3_secure)
    return Minio(
        endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=secure,
        region=settings.s3_region,
    )


def direct_upload(settings: Any, files: list[Path], parallel: int, prefix: str) -> float:
    client = store_client(settings)

    def put(path: Path) -> None:
        data = path.read_bytes()
        client.put_object(settings.s3_bucket, f"bench/{prefix}/{path.name}", io.BytesIO(data), len(data))

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(put, files))
    return time.monotonic() - started


def direct_download(settings: Any, keys: list[str], parallel: int, out: Path) -> float:
    """Each object fetched with ``get_object`` and written to a file of its own under ``out``: the least a
    download to disk does, as pull does it."""
    client = store_client(settings)

    def get(key: str) -> int:
        response = client.get_object(settings.s3_bucket, key)
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        (out / key.rsplit("/", 1)[-1]).write_bytes(data)
        return len(data)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(get, keys))
    return time.monotonic() - started


def _creation_cost(folder: Path, files: int, size: int) -> float:
    """CPU microseconds per file to write ``files`` files of ``size`` bytes into ``folder`` (then removed)."""
    data = os.urandom(size)
    before = time.process_time()
    for n in range(files):
        (folder / f"{n:08d}").write_bytes(data)
    spent = time.process_time() - before
    _empty(folder)
    return 1e6 * spent / files


def _empty(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def wait_for_inspection(api: str, token: str, slug: str, version: str = "1.0.0") -> float:
    """Wait until the platform has profiled every pushed file (batched background jobs), so the phases
    measured after the push do not share the machine with that work; returns the seconds waited."""
    started = time.monotonic()
    with httpx.Client(base_url=f"{api}/api/v1", timeout=60, headers={"Authorization": f"Bearer {token}"}) as client:
        while _ok(client.get(f"/products/{slug}/versions/{version}/profile"))["status"] in ("pending", "running"):
            time.sleep(0.5)
    return time.monotonic() - started


def entitle_buyer(api: str, provider_token: str, slug: str) -> str:
    """Publish the version, offer it for free, and return the token of a buyer whose order was fulfilled."""
    email = "pull-bench@example.com"
    with httpx.Client(base_url=f"{api}/api/v1", timeout=60) as client:
        client.headers["Authorization"] = f"Bearer {provider_token}"
        _ok(client.post(f"/products/{slug}/versions/1.0.0/publish"))
        offer = _ok(
            client.post(
                f"/products/{slug}/offers",
                json={
                    "name": "benchmark",
                    "licence_id": "CC-BY-4.0",
                    "price": {"amount": 0, "currency": "EUR"},
                    "term_days": 30,
                    "quota": {"downloads": None, "bytes": None},
                    "versions": "all",
                    "approval": "automatic",
                    "purposes": ["research"],
                },
            )
        )
        del client.headers["Authorization"]
        _ok(client.post("/users", json={"email": email, "password": PASSWORD, "display_name": "Buyer"}))
        token = _ok(
            client.post("/auth/token", json={"grant_type": "password", "username": email, "password": PASSWORD})
        )["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        _ok(client.post("/orgs", json={"slug": "bench-buyer", "name": "Bench Buyer", "kind": "buyer"}))
        order = {"offer_id": offer["id"], "buyer_org": "bench-buyer", "purpose": "research"}
        _ok(client.post("/orders", json=order, headers={"Idempotency-Key": "bench-order-0001"}))
    return str(token)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(
        f"machine: {os.cpu_count()} CPU(s), 1-min load average {os.getloadavg()[0]:.2f}; {args.files} files of "
        f"{args.size_kib} KiB, {args.parallel} parallel transfers, {args.workers} granian workers",
        flush=True,
    )
    data_dir = Path(tempfile.mkdtemp(prefix="corpora-small-files-bench-"))
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)

    from app.cli import resolve
    from app.settings import Settings
    from catalog.uploads import blob_key
    from client.pull import pull
    from client.push import push

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
                "CORPORA_REVIEW_REQUIRED": "false",
            }
            with _common.Processes(log_dir) as procs:
                server = procs.start("corpora", [sys.executable, "-m", "app.cli", "serve"], env=env)
                api = f"http://127.0.0.1:{port}"
                _common.wait_http(f"{api}/readyz", server, timeout=120)
                token, slug = create_account(api)
                meter = CpuMeter(server.pid)
                rates: dict[str, list[float]] = {name: [] for name in PHASES}
                for round_no in range(args.rounds):
                    version = f"1.0.{round_no}"
                    create_version(api, token, slug, version)
                    corpus = data_dir / f"corpus-{round_no}"
                    corpus.mkdir()
                    files = [corpus / f"part-{n:06d}.bin" for n in range(args.files)]
                    for path in files:
                        path.write_bytes(os.urandom(args.size_kib * KIB))
                    with meter.phase("push"):
                        pushed = push(
                            f"{slug}@{version}",
                            corpus,
                            api=api,
                            token=token,
                            parallel=args.parallel,
                            quiet=True,
                            progress_bars=False,
                            cache_dir=data_dir / "push-cache",
                        )
                    if not pushed.ok or pushed.files_uploaded != args.files:
                        raise RuntimeError(f"the push did not upload every file: {pushed.describe()}")
                    waited = wait_for_inspection(api, token, slug, version)
                    print(f"the pushed files were profiled {waited:.1f} s after the push; measuring on", flush=True)
                    with meter.phase("direct upload"):
                        upload_seconds = direct_upload(runtime.settings, files, args.parallel, f"direct-{round_no}")
                    rates["corpora push"].append(args.files / pushed.seconds)
                    rates["direct upload (minio put_object)"].append(args.files / upload_seconds)
                    _report_round(rates, "push", "upload")
                    shutil.rmtree(corpus)

                buyer = entitle_buyer(api, token, slug)
                with httpx.Client(base_url=f"{api}/api/v1", timeout=60) as client:
                    first = _ok(client.get(f"/products/{slug}/versions/1.0.0"))
                keys = [blob_key(f["sha256"]) for f in first["files"]]
                # Both download into this one folder, emptied after each phase: creating a file cost 26-800 us of
                # CPU on one shared disk depending on the folder it went into (the file system's placement of
                # folders), which decided a run more than the tools did when each phase had a folder of its own.
                downloads = data_dir / "downloads"
                downloads.mkdir()
                creation = _creation_cost(downloads, args.files, args.size_kib * KIB)
                print(f"writing a new file in the download folder costs {creation:.0f} us of CPU (both downloads do)")
                for _ in range(args.rounds):
                    with meter.phase("pull"):
                        pulled = pull(
                            f"{slug}@1.0.0",
                            downloads,
                            api=api,
                            token=buyer,
                            purpose="research",
                            parallel=args.parallel,
                            quiet=True,
                            progress_bars=False,
                        )
                    if not pulled.ok or pulled.files_downloaded != args.files:
                        raise RuntimeError(f"the pull did not download every file: {pulled.describe()}")
                    _empty(downloads)
                    with meter.phase("direct download"):
                        download_seconds = direct_download(runtime.settings, keys, args.parallel, downloads)
                    rates["corpora pull"].append(args.files / pulled.seconds)
                    rates["direct download (minio get_object)"].append(args.files / download_seconds)
                    _report_round(rates, "pull", "download")
                    _empty(downloads)
        finally:
            runtime.stop()

    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\nmedians of {args.rounds} round(s):")
    for name, rate in medians.items():
        print(f"{name:36s} {rate:9.1f} files/s")
    push_ratio = medians["corpora push"] / medians["direct upload (minio put_object)"]
    pull_ratio = medians["corpora pull"] / medians["direct download (minio get_object)"]
    for name, ratio in (("push / direct upload", push_ratio), ("pull / direct download", pull_ratio)):
        verdict = "meets" if ratio >= TARGET_RATIO else "is BELOW"
        print(f"ratio {name}: {ratio:.2f} ({verdict} the target of {TARGET_RATIO:.2f})", flush=True)
    meter.report(args.files)
    ok = push_ratio >= TARGET_RATIO and pull_ratio >= TARGET_RATIO
    return 0 if ok or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
