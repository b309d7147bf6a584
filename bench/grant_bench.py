"""Download grant throughput and latency (POST /api/v1/downloads) against a bare Litestar JSON endpoint.

Setup: an embedded PostgreSQL and SeaweedFS under a temporary data dir (``app.cli.resolve``, which also
migrates), ``corpora serve`` (granian, ``--workers`` workers, presigned mode, review not required) on one
free port and the bare app of bench/_common.py, served the same way, on another. Over HTTP a provider
publishes a product with one small file and a buyer obtains an entitlement with a large download quota
(bench/proxy_bench.py ``set_up_market``).

Load: ``wrk`` (``--clients`` keep-alive connections, in its own process) with a Lua script that POSTs the
grant body with the buyer's token; the bare endpoint gets the same connections (GET, as in me_bench.py).
Every grant charges its entitlement, appends an audit event to the hash chain and inserts a grant row in one
statement, then signs a receipt; the entitlement's row and the audit chain head stay locked until commit, so
grants commit one at a time (each worker admits a few at once and queues their charges on its charge turn).
With ``--entitlements N`` the load goes round N buyers with an entitlement each, which leaves the audit head as
the shared lock.

Prints grants/s, p50/p99, and the ratios to the targets (at least 20% of bare, at least 500 grants/s, p99
below 100 ms on 2 cores); checks afterwards that the counters, the grant rows and the audit events agree.
While the grants run, PostgreSQL's ``pg_stat_activity`` is sampled to show where the backends wait (the
entitlement row, the audit head, or the service holding a transaction open); ``--profile`` adds a py-spy
breakdown of the corpora workers under grant load.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import dataclasses
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common
import proxy_bench

TARGET_BARE_RATIO = 0.20
TARGET_GRANTS = 500.0
TARGET_P99_MS = 100.0
FILE_SIZE = 4096
GRANTS_PATH = "/api/v1/downloads"

# Each wrk thread sends its requests round the entitlements (one buyer and token each), from a random one.
LUA = """\
local bodies = {{{bodies}}}
local auths = {{{auths}}}
local n = 0
request = function()
  if n == 0 then n = math.random(#bodies) end
  n = n % #bodies + 1
  return wrk.format("POST", nil, {{["Content-Type"] = "application/json", ["Authorization"] = auths[n]}}, bodies[n])
end
"""


def lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII is a valid Lua string literal


def lua_script(markets: list[proxy_bench.Market]) -> str:
    return LUA.format(
        bodies=", ".join(lua_string(json.dumps(m.grant_body())) for m in markets),
        auths=", ".join(lua_string(f"Bearer {m.token()}") for m in markets),  # fresh: cannot expire mid-run
    )


def run_grants(
    url: str, script: Path, *, duration: float, connections: int, threads: int, server_pgid: int, db_pid: int | None
) -> _common.LoadResult:
    """wrk with the POST script; the server's and PostgreSQL's CPU time meanwhile, as ``run_load`` measures."""
    server_before = _common.cpu_seconds(pgid=server_pgid)
    db_before = _common.cpu_seconds(root_pid=db_pid) if db_pid is not None else None
    # a generous timeout: a slow grant is a latency to report, not a socket error that voids the run
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "30s", "--latency"]
    cmd += ["-s", str(script), url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = _common.parse_wrk(done.stdout)
    after = _common.cpu_seconds(pgid=server_pgid)
    if server_before is not None and after is not None:
        result.server_cpu_s = after - server_before
    if db_before is not None and db_pid is not None:
        db_after = _common.cpu_seconds(root_pid=db_pid)
        result.db_cpu_s = db_after - db_before if db_after is not None else None
    return result


# --- where PostgreSQL's backends are while grants run ---------------------------------------------------------

_ACTIVITY = """
SELECT state, coalesce(wait_event_type, ''), coalesce(wait_event, ''), left(query, 200)
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


def _classify(state: str, wait_type: str, wait_event: str, query: str) -> str:
    sql = " ".join(query.split()).lower()
    if sql.startswith("with charged as"):
        what = "the grant statement (charge, audit append, insert)"
    elif "audit_append(" in sql:
        what = "another audit append (audit_append: the chain head lock)"
    elif sql.startswith(("commit", "begin", "rollback")):
        what = sql.split()[0].upper()
    else:
        what = "other statements"
    if state == "idle in transaction":
        return f"idle in transaction (the service's turn) after {what}"
    if state == "active" and wait_type == "Lock":
        return f"waiting for a lock in {what}"
    if state == "active" and wait_type:
        return f"running {what}, waiting on {wait_type}:{wait_event}"
    if state == "active":
        return f"running {what}"
    return "idle (no transaction)"


class ActivitySampler:
    """Samples ``pg_stat_activity`` every ``interval`` seconds in a thread with its own event loop."""

    def __init__(self, database_url: str, interval: float = 0.02) -> None:
        self.dsn = _asyncpg_dsn(database_url)
        self.interval = interval
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="pg-activity", daemon=True)

    async def _run(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.dsn)
        try:
            while not self._stop.is_set():
                for state, wait_type, wait_event, query in await connection.fetch(_ACTIVITY):
                    self.counts[_classify(state or "", wait_type, wait_event, query or "")] += 1
                self.samples += 1
                await asyncio.sleep(self.interval)
        finally:
            await connection.close()

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def describe(self) -> str:
        if not self.samples:
            return "  (no samples)"
        lines = []
        for label, count in self.counts.most_common():
            if label.startswith("idle (no"):
                continue
            lines.append(f"  {count / self.samples:6.1f}  {label}")
        return "\n".join(lines) or "  (no backend was busy)"


def _asyncpg_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclasses.dataclass
class Ledger:
    downloads_used: int
    grants: int
    events: int


def ledger(database_url: str, entitlement_ids: list[str]) -> Ledger:
    """Counters, grant rows and 'download.granted' events of the entitlements, summed, in one snapshot."""
    import asyncpg

    async def read() -> Ledger:
        connection = await asyncpg.connect(_asyncpg_dsn(database_url))
        try:
            row = await connection.fetchrow(
                """
                SELECT (SELECT sum(downloads_used) FROM entitlements WHERE id::text = ANY($1::text[])),
                       (SELECT count(*) FROM download_grants WHERE entitlement_id::text = ANY($1::text[])),
                       (SELECT count(*) FROM audit_events
                         WHERE action = 'download.granted' AND details->>'entitlement_id' = ANY($1::text[]))
                """,
                entitlement_ids,
            )
        finally:
            await connection.close()
        assert row is not None
        return Ledger(int(row[0]), row[1], row[2])

    return asyncio.run(read())


# --- profiling --------------------------------------------------------------------------------------------------


def _in(package: str) -> str:
    return rf"\((?:[^()]*/)?{package}/"


INCLUSIVE = [
    ("token verification (app/auth/middleware.py authenticate)", r"^authenticate "),
    ("grant(): checks, charge, rows, audit, receipts (licensing/downloads/grants.py grant)", r"^grant \("),
    ("  resolve_target: entitlement, product, version, files (one query)", r"^resolve_target "),
    ("  _charge_and_record: charge, audit append, insert", r"^_charge_and_record "),
    ("  sign_receipt: Ed25519 JWS", r"^sign_receipt "),
    ("presigned URL (ObjectStore.presigned_get and the minio SDK)", r"^presigned_get |" + _in("minio")),
    ("session dependency: commit, close (app/db.py provide_session)", r"^provide_session "),
    ("SQLAlchemy, any frame", _in("sqlalchemy")),
    ("asyncpg, any frame", _in("asyncpg")),
    ("cryptography / jwt, any frame", _in("cryptography") + "|" + _in("jwt")),
    ("msgspec encode/decode", r"msgspec"),
    ("prometheus_client, any frame", _in("prometheus_client")),
]

LEAF_GROUPS = [
    ("app, catalog, licensing (Corpora's own code)", _in("app") + "|" + _in("catalog") + "|" + _in("licensing")),
    ("sqlalchemy", _in("sqlalchemy")),
    ("asyncpg", _in("asyncpg")),
    ("litestar", _in("litestar")),
    ("minio / urllib3", _in("minio") + "|" + _in("urllib3")),
    ("jwt / cryptography", _in("jwt") + "|" + _in("cryptography")),
    ("prometheus_client", _in("prometheus_client")),
    ("msgspec", r"msgspec"),
    ("asyncio / event loop", _in("asyncio") + r"|selectors\.py"),
    ("threads (anyio worker threads, concurrent.futures)", _in("anyio") + r"|threading\.py|concurrent/futures"),
]

IDLE_LEAF = re.compile(
    r"^(?:\S+\.)?(?:select|poll|wait|_worker|_wait_for_tstate_lock|get) \((?:[^()]*/)?(?:selectors|threading|queue|"
    r"concurrent/futures/thread|multiprocessing/\S+|asyncio/\S+|anyio/\S+)\.py"
)


def summarise_profile(path: Path) -> str:
    samples: list[tuple[list[str], int]] = []
    skipped: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not (stack and number.isdigit()):
            continue
        parts = stack.split(";")
        processes = sum(1 for part in parts if part.startswith("process "))
        frames = [part for part in parts if part and not part.startswith(("process ", "thread "))]
        if processes < 2:
            skipped["in the supervisor process"] += int(number)
        elif not frames:
            skipped["without a Python frame"] += int(number)
        elif IDLE_LEAF.search(frames[-1]):
            skipped["waiting (event loop select, idle threads)"] += int(number)
        else:
            samples.append((frames, int(number)))
    total = sum(count for _, count in samples)
    if total == 0:
        return "py-spy recorded no busy samples in the worker processes"
    left_out = ", ".join(f"{count} {why}" for why, count in skipped.most_common()) or "none"
    lines = [f"{total} busy samples in the worker processes (left out: {left_out})", "", "inclusive:"]
    for label, pattern in INCLUSIVE:
        regex = re.compile(pattern)
        hit = sum(count for frames, count in samples if any(regex.search(frame) for frame in frames))
        lines.append(f"  {100 * hit / total:5.1f}%  {label}")
    groups: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    for frames, count in samples:
        leaf = frames[-1]
        functions[re.sub(r":\d+\)$", ")", leaf)] += count
        groups[next((label for label, pattern in LEAF_GROUPS if re.search(pattern, leaf)), "other")] += count
    lines += ["", "self time by library of the innermost frame:"]
    lines += [f"  {100 * count / total:5.1f}%  {group}" for group, count in groups.most_common()]
    lines += ["", "top self-time functions:"]
    lines += [f"  {100 * count / total:5.1f}%  {function}" for function, count in functions.most_common(15)]
    return "\n".join(lines)


def profile(url: str, script: Path, api: _common.Proc, args: argparse.Namespace) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    out = Path(args.profile).resolve()
    duration = max(2, round(args.seconds))
    recorder = subprocess.Popen(
        [
            *(py_spy, "record", "--pid", str(api.pid), "--subprocesses", "--rate", "100"),
            *("--duration", str(duration + 1), "--format", "raw", "--output", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1)  # py-spy attaches
        run_grants(
            url,
            script,
            duration=duration,
            connections=args.clients,
            threads=args.threads,
            server_pgid=api.pid,
            db_pid=None,
        )
        _, stderr = recorder.communicate(timeout=60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if recorder.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({recorder.returncode}): {stderr.decode(errors='replace')}")
    print(f"\nprofile of POST {GRANTS_PATH} ({duration}s under load; collapsed stacks in {out}):")
    print(summarise_profile(out))


# --- main -------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Throughput and latency of download grants (POST /api/v1/downloads on corpora serve, embedded "
            "PostgreSQL and SeaweedFS, one entitlement with a large quota) under concurrent clients, against a "
            "bare Litestar JSON endpoint served the same way, in one run. Targets: grants/s at least "
            f"{TARGET_BARE_RATIO:.0%} of bare, at least {TARGET_GRANTS:.0f} grants/s, p99 below "
            f"{TARGET_P99_MS:.0f} ms (on 2 cores). Needs wrk (apt-get install -y wrk)."
        )
    )
    parser.add_argument("--clients", type=int, default=64, help="concurrent keep-alive connections (default 64)")
    parser.add_argument("--seconds", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load first (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="granian workers, both servers (default 2)")
    parser.add_argument(
        "--entitlements",
        type=int,
        default=1,
        help="buyers, each with its own entitlement, that the load goes round (default 1: every grant queues on one "
        "entitlement's row lock; more leave the audit chain head as the shared lock)",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1; the cores are shared)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate bare and grants this many times, report medians (default 1)"
    )
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="afterwards, sample the corpora workers with py-spy under grant load; write collapsed stacks to PATH",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data dir and server logs")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when a target is missed (default: exit 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("grant_bench needs wrk for POST load: apt-get install -y wrk")
    print(_common.environment_line())
    print(
        f"{args.workers} granian workers per server; {args.seconds:g}s per measurement after {args.warmup:g}s "
        f"warm-up; {_common.loadgen_description('wrk', args.clients, args.threads)}",
        flush=True,
    )
    data_dir = Path(tempfile.mkdtemp(prefix="corpora-grant-bench-"))
    if args.keep_data:
        print(f"data dir and logs kept in {data_dir}")
    else:
        # registered before the embedded PostgreSQL registers its own stop, so it runs after that (LIFO)
        atexit.register(shutil.rmtree, data_dir, ignore_errors=True)

    # imported here so --help stays instant
    from app.cli import resolve
    from app.settings import Settings

    bare_rps: list[float] = []
    grant_rps: list[float] = []
    grant_p50: list[float] = []
    grant_p99: list[float] = []
    with _common.exit_on_sigterm():
        print("starting embedded PostgreSQL and SeaweedFS, migrating ...", flush=True)
        started = time.monotonic()
        runtime = resolve(Settings(data_dir=data_dir, workers=args.workers))
        try:
            assert runtime.settings.database_url is not None
            database_url = runtime.settings.database_url
            log_dir = data_dir / "logs"
            log_dir.mkdir()
            with _common.Processes(log_dir) as procs:
                url, api = proxy_bench.start_corpora(procs, runtime.settings.as_env(), args.workers)
                bare_port = _common.free_port()
                bare = procs.start("bare", _common.granian_bare_cmd(bare_port, args.workers))
                bare_url = f"http://127.0.0.1:{bare_port}{_common.BARE_PATH}"
                _common.wait_http(bare_url, bare)
                source = data_dir / "small.bin"
                sha = proxy_bench.write_random_file(source, FILE_SIZE)
                market = proxy_bench.set_up_market(url, source, FILE_SIZE, sha, downloads=100_000_000)
                markets = [market] + [proxy_bench.another_buyer(market) for _ in range(args.entitlements - 1)]
                postmaster = _postmaster_pid(data_dir)
                print(f"ready in {time.monotonic() - started:.1f}s", flush=True)
                grants_url = f"{url}{GRANTS_PATH}"
                script = data_dir / "grant.lua"
                for round_no in range(1, args.rounds + 1):
                    if args.rounds > 1:
                        print(f"round {round_no}/{args.rounds}")
                    if args.warmup > 0:
                        _common.run_load(bare_url, tool="wrk", duration=args.warmup, connections=args.clients)
                    result = _common.run_load(
                        bare_url,
                        tool="wrk",
                        duration=args.seconds,
                        connections=args.clients,
                        threads=args.threads,
                        server_pgid=bare.pid,
                    )
                    _common.require_clean(result, "bare")
                    print(f"  bare   {result.describe()}", flush=True)
                    bare_rps.append(result.rps)

                    script.write_text(lua_script(markets))
                    if args.warmup > 0:
                        run_grants(
                            grants_url,
                            script,
                            duration=args.warmup,
                            connections=args.clients,
                            threads=args.threads,
                            server_pgid=api.pid,
                            db_pid=None,
                        )
                    with ActivitySampler(database_url) as activity:
                        result = run_grants(
                            grants_url,
                            script,
                            duration=args.seconds,
                            connections=args.clients,
                            threads=args.threads,
                            server_pgid=api.pid,
                            db_pid=postmaster,
                        )
                    print(f"  grants {result.describe()}", flush=True)
                    print("  PostgreSQL client backends, on average per sample, while the grants ran:")
                    print(activity.describe(), flush=True)
                    _common.require_clean(result, "grants")
                    grant_rps.append(result.rps)
                    if result.p50_ms is not None and result.p99_ms is not None:
                        grant_p50.append(result.p50_ms)
                        grant_p99.append(result.p99_ms)

                time.sleep(1)  # requests wrk abandoned at the end finish server-side
                book = ledger(database_url, [m.entitlement_id for m in markets])
                consistent = book.downloads_used == book.grants == book.events
                print(
                    f"\nafter the runs: downloads_used {book.downloads_used}, grant rows {book.grants}, "
                    f"'download.granted' events {book.events} ({'consistent' if consistent else 'INCONSISTENT'})"
                )
                if not consistent:
                    raise RuntimeError("the counters, grant rows and audit events disagree")

                bare_med, grants_med = statistics.median(bare_rps), statistics.median(grant_rps)
                share = _common.ratio(grants_med, bare_med)
                p99 = statistics.median(grant_p99) if grant_p99 else float("nan")
                p50 = statistics.median(grant_p50) if grant_p50 else float("nan")
                checks = [
                    (share >= TARGET_BARE_RATIO, f"grants / bare: {share:.3f} (target >= {TARGET_BARE_RATIO:.2f})"),
                    (
                        grants_med >= TARGET_GRANTS,
                        f"grants/s: {grants_med:.0f} = {grants_med / TARGET_GRANTS:.2f} x the target of "
                        f"{TARGET_GRANTS:.0f}",
                    ),
                    (
                        p99 < TARGET_P99_MS,
                        f"p99: {p99:.1f} ms = {p99 / TARGET_P99_MS:.2f} x the limit of {TARGET_P99_MS:.0f} ms "
                        f"(p50 {p50:.1f} ms)",
                    ),
                ]
                print()
                print(f"bare Litestar JSON endpoint (GET {_common.BARE_PATH}): {bare_med:10.0f} req/s")
                print(f"download grants (POST {GRANTS_PATH}):        {grants_med:10.0f} grants/s")
                for ok, line in checks:
                    print(f"  {'meets ' if ok else 'MISSES'}  {line}")
                sys.stdout.flush()
                if args.profile:
                    profile(grants_url, script, api, args)
        finally:
            runtime.stop()
    return 0 if all(ok for ok, _ in checks) or args.no_fail else 1


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    sys.exit(main())
