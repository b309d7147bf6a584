"""Download grant throughput and latency (POST /api/v1/downloads) against the physical floor of a metered grant.

Setup: an embedded PostgreSQL and SeaweedFS under a temporary data dir (``app.cli.resolve``, which also
migrates), ``corpora serve`` (granian, ``--workers`` workers, presigned mode, review not required) on one
free port; on two more, served the same way (granian, same workers, same settings), the floor app of
bench/_floor.py on the same database and the bare app of bench/_common.py. Over HTTP a provider publishes a
product with one small file and a buyer obtains an entitlement with a large download quota
(bench/proxy_bench.py ``set_up_market``).

The floor: one transaction of one conditional ``UPDATE … RETURNING`` (a unit of quota, only while some remains)
and one ``INSERT``, through the API's own engine settings and session dependency. Any metered grant costs at least
that; a grant also authenticates, checks the entitlement, version and purpose, records its audit event (a row
committed with the grant; the sequencer chains it shortly after, outside the grant's transaction), signs a
receipt and presigns a URL.

Load: ``wrk`` (``--clients`` keep-alive connections, in its own process) with Lua scripts that POST the grant
body with the buyer's token, and the floor's body, going round ``--entitlements`` entitlements (the floor round
as many quota rows); the bare endpoint gets the same connections (GET, as in me_bench.py). Rounds alternate
floor, grants and bare.

Prints grants/s, floor/s and their ratio (target at least 0.5), p50/p99, the Little's-law mean latency (clients ÷
throughput) and p99 over it (target at most 1.5), and the service's and PostgreSQL's CPU per request; checks
afterwards that the counters, the grant rows and the audit events agree (once the sequencer drained the pending
events). While the grants run, PostgreSQL's ``pg_stat_activity`` is sampled to show where the backends wait;
``--profile`` adds a py-spy breakdown of the corpora workers under grant load.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import _floor
import _grant_profile
import proxy_bench

TARGET_FLOOR_RATIO = 0.5
TARGET_P99_OVER_MEAN = 1.5
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


def floor_script(quotas: int) -> str:
    bodies = ", ".join(lua_string(json.dumps({"quota": n})) for n in range(1, quotas + 1))
    return LUA.format(bodies=bodies, auths=", ".join(lua_string("none") for _ in range(quotas)))


def set_up_floor(database_url: str, quotas: int) -> None:
    """The floor's tables, with ``quotas`` rows of a quota as large as the grants' entitlements."""
    import asyncpg

    async def create() -> None:
        connection = await asyncpg.connect(_grant_profile.asyncpg_dsn(database_url))
        try:
            for statement in _floor.SCHEMA:
                await connection.execute(statement)
            await connection.execute(
                "INSERT INTO bench_floor_quota SELECT n, 100000000 FROM generate_series(1, $1) AS n", quotas
            )
        finally:
            await connection.close()

    asyncio.run(create())


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


@dataclasses.dataclass
class Ledger:
    downloads_used: int
    grants: int
    events: int


def ledger(database_url: str, entitlement_ids: list[str], *, wait: float = 10) -> Ledger:
    """Counters, grant rows and 'download.granted' events of the entitlements, summed, in one snapshot taken once
    the audit sequencer has no committed event left pending (waiting at most ``wait`` seconds)."""
    import asyncpg

    async def read() -> Ledger:
        connection = await asyncpg.connect(_grant_profile.asyncpg_dsn(database_url))
        try:
            deadline = time.monotonic() + wait
            while await connection.fetchval("SELECT EXISTS (SELECT FROM audit_pending)"):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
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


# --- main -------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Throughput and latency of download grants (POST /api/v1/downloads on corpora serve, embedded "
            "PostgreSQL and SeaweedFS) under concurrent clients, against the physical floor of a metered grant (one "
            "transaction: a conditional UPDATE ... RETURNING and an INSERT) and a bare Litestar JSON endpoint, all "
            f"served the same way, in one run. Targets: grants/s at least {TARGET_FLOOR_RATIO:g} x the floor; p99 "
            f"at most {TARGET_P99_OVER_MEAN:g} x the Little's-law mean (clients / throughput). Needs wrk "
            "(apt-get install -y wrk)."
        )
    )
    parser.add_argument("--clients", type=int, default=64, help="concurrent keep-alive connections (default 64)")
    parser.add_argument("--seconds", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load first (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="granian workers, every server (default 2)")
    parser.add_argument(
        "--entitlements",
        type=int,
        default=1,
        help="buyers, each with its own entitlement, that the load goes round, and as many quota rows for the "
        "floor (default 1: every grant, and every floor request, queues on one row's lock)",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1; the cores are shared)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate floor, grants and bare this many times, report medians"
    )
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="afterwards, sample the corpora workers with py-spy under grant load; write collapsed stacks to PATH",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data dir and server logs")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when a target is missed (default: exit 1)")
    return parser


@dataclasses.dataclass
class Series:
    """One endpoint's results over the rounds."""

    name: str
    results: list[_common.LoadResult] = dataclasses.field(default_factory=list)

    def median(self, value: str) -> float:
        values = [getattr(r, value) for r in self.results if getattr(r, value) is not None]
        return statistics.median(values) if values else float("nan")

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.results)

    def per_request_us(self, cpu: str) -> float:
        values = [1e6 * getattr(r, cpu) / r.requests for r in self.results if getattr(r, cpu) is not None]
        return statistics.median(values) if values else float("nan")


def report(floor: Series, grants: Series, bare: Series, clients: int) -> list[tuple[bool, str]]:
    share = _common.ratio(grants.rps, floor.rps)
    print()
    for series, path in ((floor, f"POST {_floor.FLOOR_PATH}"), (grants, f"POST {GRANTS_PATH}"), (bare, "GET bare")):
        mean_ms = 1000 * clients / series.rps if series.rps else float("nan")
        p99 = series.median("p99_ms")
        print(
            f"{series.name:7} ({path}): {series.rps:8.0f}/s  p50 {series.median('p50_ms'):7.1f} ms  p99 {p99:7.1f} ms"
            f"  Little's-law mean {mean_ms:7.1f} ms  p99/mean {p99 / mean_ms:5.2f}  CPU per request: service "
            f"{series.per_request_us('server_cpu_s'):6.0f} us, PostgreSQL {series.per_request_us('db_cpu_s'):6.0f} us"
        )
    mean_ms = 1000 * clients / grants.rps if grants.rps else float("nan")
    tail = grants.median("p99_ms") / mean_ms
    print(f"grants / bare: {_common.ratio(grants.rps, bare.rps):.3f}")
    return [
        (share >= TARGET_FLOOR_RATIO, f"grants / floor: {share:.3f} (target >= {TARGET_FLOOR_RATIO:g})"),
        (
            tail <= TARGET_P99_OVER_MEAN,
            f"grant p99 / Little's-law mean ({clients} / {grants.rps:.0f} per s = {mean_ms:.1f} ms): {tail:.2f} "
            f"(target <= {TARGET_P99_OVER_MEAN:g})",
        ),
    ]


def measure(
    name: str, url: str, script: Path, args: argparse.Namespace, server: _common.Proc, db_pid: int | None
) -> _common.LoadResult:
    if args.warmup > 0:
        run_grants(
            url,
            script,
            duration=args.warmup,
            connections=args.clients,
            threads=args.threads,
            server_pgid=server.pid,
            db_pid=None,
        )
    result = run_grants(
        url,
        script,
        duration=args.seconds,
        connections=args.clients,
        threads=args.threads,
        server_pgid=server.pid,
        db_pid=db_pid,
    )
    print(f"  {name:6} {result.describe()}", flush=True)
    return result


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

    floor, grants, bare = Series("floor"), Series("grants"), Series("bare")
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
                set_up_floor(database_url, args.entitlements)
                floor_port = _common.free_port()
                floor_env = {**os.environ, **runtime.settings.as_env()}
                floor_server = procs.start("floor", _floor.command(floor_port, args.workers), env=floor_env)
                floor_url = f"http://127.0.0.1:{floor_port}{_floor.FLOOR_PATH}"
                bare_port = _common.free_port()
                bare_server = procs.start("bare", _common.granian_bare_cmd(bare_port, args.workers))
                bare_url = f"http://127.0.0.1:{bare_port}{_common.BARE_PATH}"
                _common.wait_http(bare_url, bare_server)
                _common.wait_http(floor_url, floor_server)
                source = data_dir / "small.bin"
                sha = proxy_bench.write_random_file(source, FILE_SIZE)
                market = proxy_bench.set_up_market(url, source, FILE_SIZE, sha, downloads=100_000_000)
                markets = [market] + [proxy_bench.another_buyer(market) for _ in range(args.entitlements - 1)]
                postmaster = _postmaster_pid(data_dir)
                print(f"ready in {time.monotonic() - started:.1f}s", flush=True)
                grants_url = f"{url}{GRANTS_PATH}"
                script = data_dir / "grant.lua"
                floor_lua = data_dir / "floor.lua"
                floor_lua.write_text(floor_script(args.entitlements))
                for round_no in range(1, args.rounds + 1):
                    if args.rounds > 1:
                        print(f"round {round_no}/{args.rounds}")
                    result = measure("floor", floor_url, floor_lua, args, floor_server, postmaster)
                    _common.require_clean(result, "floor")
                    floor.results.append(result)

                    script.write_text(lua_script(markets))
                    with _grant_profile.ActivitySampler(database_url) as activity:
                        result = measure("grants", grants_url, script, args, api, postmaster)
                    print("  PostgreSQL client backends, on average per sample, while the grants ran:")
                    print(activity.describe(), flush=True)
                    _common.require_clean(result, "grants")
                    grants.results.append(result)

                    if args.warmup > 0:
                        _common.run_load(bare_url, tool="wrk", duration=args.warmup, connections=args.clients)
                    result = _common.run_load(
                        bare_url,
                        tool="wrk",
                        duration=args.seconds,
                        connections=args.clients,
                        threads=args.threads,
                        server_pgid=bare_server.pid,
                    )
                    _common.require_clean(result, "bare")
                    print(f"  bare   {result.describe()}", flush=True)
                    bare.results.append(result)

                time.sleep(1)  # requests wrk abandoned at the end finish server-side
                book = ledger(database_url, [m.entitlement_id for m in markets])
                consistent = book.downloads_used == book.grants == book.events
                print(
                    f"\nafter the runs: downloads_used {book.downloads_used}, grant rows {book.grants}, "
                    f"'download.granted' events {book.events} ({'consistent' if consistent else 'INCONSISTENT'})"
                )
                if not consistent:
                    raise RuntimeError("the counters, grant rows and audit events disagree")
                checks = report(floor, grants, bare, args.clients)
                for ok, line in checks:
                    print(f"  {'meets ' if ok else 'MISSES'}  {line}")
                sys.stdout.flush()
                if args.profile:
                    _grant_profile.profile(grants_url, script, api, args, run_grants)
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
