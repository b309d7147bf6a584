"""Authenticated GET /api/v1/me throughput against a bare Litestar JSON endpoint, measured in one run.

Setup: an embedded PostgreSQL and SeaweedFS under a temporary data dir (``app.cli.resolve``, which also
migrates), then ``corpora serve`` (granian, N workers) on one free port and the bare app of
bench/_common.py on another, started the same way (``granian.server.Server``, ASGI, a factory, N workers,
no access log). A user signs up and logs in over HTTP and creates an organisation, so /me answers with one
membership. The load generator (``wrk`` when installed, else a Python client) runs in its own process.

Prints requests/s for both endpoints and the ratio /me / bare (target: at least 0.50). With ``--profile``
it then samples the corpora workers with py-spy under /me load and prints where the time goes.
Every process is stopped and the data dir removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import dataclasses
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common
import _pyspy
import httpx

TARGET_RATIO = 0.50
ME_PATH = "/api/v1/me"
PASSWORD = "Throughput-Probe-2718"  # noqa: S105 - a throwaway account in a throwaway database


@dataclasses.dataclass
class Servers:
    corpora_url: str
    bare_url: str
    corpora: _common.Proc
    bare: _common.Proc


def _ok(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response


def access_token(base_url: str, email: str) -> str:
    response = httpx.post(
        f"{base_url}/api/v1/auth/token",
        json={"grant_type": "password", "username": email, "password": PASSWORD},
        timeout=30,
    )
    _ok(response)
    token: str = response.json()["access_token"]
    return token


def create_account(base_url: str) -> str:
    """Sign up, log in and create an organisation; return the email."""
    email = "bench@example.com"
    response = httpx.post(
        f"{base_url}/api/v1/users",
        json={"email": email, "password": PASSWORD, "display_name": "Bench"},
        timeout=30,
    )
    _ok(response)
    token = access_token(base_url, email)
    response = httpx.post(
        f"{base_url}/api/v1/orgs",
        json={"slug": "bench-org", "name": "Bench Org", "kind": "buyer"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    _ok(response)
    me = httpx.get(f"{base_url}{ME_PATH}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    _ok(me)
    if [org["slug"] for org in me.json()["orgs"]] != ["bench-org"]:
        raise RuntimeError(f"unexpected /me answer: {me.text}")
    return email


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def start_servers(procs: _common.Processes, env: dict[str, str], workers: int) -> Servers:
    corpora_port, bare_port = _common.free_port(), _common.free_port()
    while bare_port == corpora_port:
        bare_port = _common.free_port()
    env = {**env, "CORPORA_PORT": str(corpora_port), "CORPORA_WORKERS": str(workers), "CORPORA_HOST": "127.0.0.1"}
    corpora = procs.start("corpora", [sys.executable, "-m", "app.cli", "serve"], env=env)
    bare = procs.start("bare", _common.granian_bare_cmd(bare_port, workers))
    servers = Servers(
        corpora_url=f"http://127.0.0.1:{corpora_port}",
        bare_url=f"http://127.0.0.1:{bare_port}",
        corpora=corpora,
        bare=bare,
    )
    _common.wait_http(f"{servers.corpora_url}/readyz", corpora, timeout=120)
    _common.wait_http(f"{servers.bare_url}{_common.BARE_PATH}", bare)
    time.sleep(0.5)  # let every worker finish starting
    return servers


def measure(
    url: str,
    name: str,
    args: argparse.Namespace,
    server: _common.Proc,
    *,
    headers: dict[str, str] | None = None,
    db_pid: int | None = None,
) -> _common.LoadResult:
    if args.warmup > 0:
        _common.run_load(url, tool=args.tool, duration=args.warmup, connections=args.connections, headers=headers)
    result = _common.run_load(
        url,
        tool=args.tool,
        duration=args.duration,
        connections=args.connections,
        threads=args.threads,
        headers=headers,
        server_pgid=server.pid,
        db_pid=db_pid,
    )
    _common.require_clean(result, name)
    print(f"  {name:<5} {result.describe()}", flush=True)
    return result


def _cpu_per_request_us(runs: list[_common.LoadResult], field: str) -> float | None:
    values = [getattr(run, field) / run.requests for run in runs if getattr(run, field) is not None and run.requests]
    return 1e6 * statistics.median(values) if values else None


def cpu_summary(bare_runs: list[_common.LoadResult], me_runs: list[_common.LoadResult]) -> str:
    """The cost side of the ratio: server CPU per request, which other load on the machine moves less."""
    bare = _cpu_per_request_us(bare_runs, "server_cpu_s")
    me = _cpu_per_request_us(me_runs, "server_cpu_s")
    if bare is None or me is None:
        return "server CPU per request: not measured (needs Linux /proc)"
    db = _cpu_per_request_us(me_runs, "db_cpu_s")
    db_text = f" + {db:.0f} us in PostgreSQL" if db is not None else ""
    return (
        f"server CPU per request: bare {bare:.0f} us, /me {me:.0f} us{db_text}; "
        f"bare / /me = {_common.ratio(bare, me):.2f}"
    )


# --- profiling ----------------------------------------------------------------------------------------------


def _in(package: str) -> str:
    """A frame in ``package`` as py-spy prints it: ``function (path/to/package/module.py:line)``."""
    return rf"\((?:[^()]*/)?{package}/"


# Inclusive: a sample counts for a row when any frame of its stack matches.
INCLUSIVE = [
    ("auth middleware and everything under it (app/auth/middleware.py)", _in("app/auth")),
    ("  JWT verification (verify_access_token)", r"^verify_access_token "),
    ("/me handler incl. its queries (app/accounts/routes.py me)", r"^me \((?:[^()]*/)?app/accounts/routes\.py"),
    ("  me_entry: the user and memberships query (cache misses only)", r"^me_entry "),
    ("session dependency: commit, close (app/db.py provide_session)", r"^provide_session "),
    ("request metrics middleware (app/metrics.py)", _in("app/metrics")),
    ("pool pre-ping (pool_pre_ping=True: BEGIN; SELECT; ROLLBACK per checkout)", r"_async_ping|\bping\b|_do_ping"),
    ("SQLAlchemy, any frame", _in("sqlalchemy")),
    ("asyncpg, any frame", _in("asyncpg")),
    ("socket writes to PostgreSQL (asyncio transport write)", r"^_SelectorSocketTransport\.write "),
    ("prometheus_client, any frame", _in("prometheus_client")),
    ("msgspec encode/decode", r"msgspec"),
]

# Self time: each sample goes to the library of its innermost frame.
LEAF_GROUPS = [
    ("app (Corpora's own code)", _in("app")),
    ("sqlalchemy", _in("sqlalchemy")),
    ("asyncpg", _in("asyncpg")),
    ("litestar", _in("litestar")),
    ("prometheus_client", _in("prometheus_client")),
    ("jwt", _in("jwt")),
    ("cryptography", _in("cryptography")),
    ("msgspec", r"msgspec"),
    ("asyncio / event loop", _in("asyncio") + r"|selectors\.py"),
    ("granian (Python side)", _in("granian")),
]


def summarise_profile(path: Path) -> str:
    """Where the corpora worker processes spent their time, from py-spy's raw (collapsed) output."""
    samples, skipped = _pyspy.busy_samples(path)
    total = sum(count for _, count in samples)
    if total == 0:
        return "py-spy recorded no busy samples in the worker processes"
    left_out = ", ".join(f"{count} {why}" for why, count in skipped.most_common()) or "none"
    lines = [
        f"{total} busy samples in the worker processes' Python threads (left out: {left_out})",
        "",
        "inclusive (share of Python samples with such a frame anywhere on the stack):",
    ]
    for label, pattern in INCLUSIVE:
        regex = re.compile(pattern)
        hit = sum(count for frames, count in samples if any(regex.search(frame) for frame in frames))
        lines.append(f"  {100 * hit / total:5.1f}%  {label}")
    lines += ["", "self time by library of the innermost frame:"]
    leaf_groups: collections.Counter[str] = collections.Counter()
    leaf_functions: collections.Counter[str] = collections.Counter()
    for frames, count in samples:
        leaf = frames[-1]
        leaf_functions[re.sub(r":\d+\)$", ")", leaf)] += count
        group = next((label for label, pattern in LEAF_GROUPS if re.search(pattern, leaf)), "other")
        leaf_groups[group] += count
    for group, count in leaf_groups.most_common():
        lines.append(f"  {100 * count / total:5.1f}%  {group}")
    lines += ["", "top self-time functions:"]
    for function, count in leaf_functions.most_common(15):
        lines.append(f"  {100 * count / total:5.1f}%  {function}")
    return "\n".join(lines)


def profile(servers: Servers, email: str, args: argparse.Namespace) -> None:
    out = Path(args.profile).resolve()
    token = access_token(servers.corpora_url, email)
    duration = max(2, round(args.duration))

    def load() -> _common.LoadResult:
        result = _common.run_load(
            f"{servers.corpora_url}{ME_PATH}",
            tool=args.tool,
            duration=duration,
            connections=args.connections,
            threads=args.threads,
            headers={"Authorization": f"Bearer {token}"},
        )
        _common.require_clean(result, "/me under the profiler")
        return result

    result = _pyspy.record(servers.corpora.pid, out, duration, load)
    print(
        f"\nprofile of GET {ME_PATH}, {duration}s under load ({result.rps:.0f} req/s while sampled; stacks in {out}):"
    )
    print(summarise_profile(out))


# --- main -----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Throughput of authenticated GET /api/v1/me (corpora serve, embedded PostgreSQL and SeaweedFS) "
            "against a bare Litestar JSON endpoint served the same way, in one run; prints both and the ratio "
            f"(target: /me at least {TARGET_RATIO:.0%} of bare). Defaults take about a minute."
        )
    )
    parser.add_argument("--workers", type=int, default=2, help="server worker processes, both servers (default 2)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load first (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent keep-alive connections (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1; the cores are shared)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate bare and /me this many times, report medians (default 1)"
    )
    parser.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator: wrk if installed (auto, the default), or the Python asyncio client",
    )
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="afterwards, sample the corpora workers with py-spy under /me load; write collapsed stacks to PATH",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data dir and server logs")
    parser.add_argument(
        "--no-fail", action="store_true", help="exit 0 even when /me is below the target ratio (default: exit 1)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.tool = _common.choose_loadgen(args.loadgen)
    print(_common.environment_line())
    print(
        f"{args.workers} granian workers per server; {args.duration:g}s per measurement after {args.warmup:g}s "
        f"warm-up; {_common.loadgen_description(args.tool, args.connections, args.threads)}",
        flush=True,
    )
    data_dir = Path(tempfile.mkdtemp(prefix="corpora-me-bench-"))
    if args.keep_data:
        print(f"data dir and logs kept in {data_dir}")
    else:
        # registered before the embedded PostgreSQL registers its own stop, so it runs after that (LIFO)
        atexit.register(shutil.rmtree, data_dir, ignore_errors=True)

    # imported here so --help stays instant
    from app.cli import resolve
    from app.settings import Settings

    bare_runs: list[_common.LoadResult] = []
    me_runs: list[_common.LoadResult] = []
    with _common.exit_on_sigterm():
        print("starting embedded PostgreSQL and SeaweedFS, migrating ...", flush=True)
        started = time.monotonic()
        runtime = resolve(Settings(data_dir=data_dir, workers=args.workers))
        try:
            log_dir = data_dir / "logs"
            log_dir.mkdir()
            env = {**os.environ, **runtime.settings.as_env()}
            with _common.Processes(log_dir) as procs:
                servers = start_servers(procs, env, args.workers)
                email = create_account(servers.corpora_url)
                postmaster = postmaster_pid(data_dir)
                print(f"ready in {time.monotonic() - started:.1f}s", flush=True)
                for round_no in range(1, args.rounds + 1):
                    if args.rounds > 1:
                        print(f"round {round_no}/{args.rounds}")
                    bare_url = f"{servers.bare_url}{_common.BARE_PATH}"
                    bare_runs.append(measure(bare_url, "bare", args, servers.bare))
                    token = access_token(servers.corpora_url, email)  # fresh, so it cannot expire mid-run
                    headers = {"Authorization": f"Bearer {token}"}
                    me_url = f"{servers.corpora_url}{ME_PATH}"
                    me_runs.append(measure(me_url, "/me", args, servers.corpora, headers=headers, db_pid=postmaster))
                bare = statistics.median(run.rps for run in bare_runs)
                me = statistics.median(run.rps for run in me_runs)
                share = _common.ratio(me, bare)
                print()
                print(f"bare Litestar JSON endpoint (GET {_common.BARE_PATH}): {bare:10.0f} req/s")
                print(f"authenticated GET {ME_PATH}:                {me:10.0f} req/s")
                verdict = "meets" if share >= TARGET_RATIO else "is BELOW"
                print(f"ratio /me / bare: {share:.2f} ({verdict} the target of {TARGET_RATIO:.2f})", flush=True)
                print(cpu_summary(bare_runs, me_runs), flush=True)
                if args.profile:
                    profile(servers, email, args)
        finally:
            runtime.stop()
    return 0 if share >= TARGET_RATIO or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
