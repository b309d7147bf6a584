"""granian vs uvicorn serving the same trivial Litestar JSON endpoint, measured in one run.

Both servers get the same worker count and the same app (``bare_app`` in bench/_common.py, a factory), and
are driven by the same load generator running in its own process: ``wrk`` when it is installed
(``apt-get install -y wrk``), else a Python asyncio client, which may saturate before the servers do.
The machine's cores are shared by the servers and the load generator; that is part of what is measured.

uvicorn is measured twice: with its listening socket declared IPPROTO_TCP so that accepted connections get
TCP_NODELAY (the upstream fix for Kludex/uvicorn#3149; the fair comparison, and the headline ratio), and
exactly as ``uvicorn --workers N`` ships, where every keep-alive response stalls on a delayed ACK.

Prints requests/s for each server and the ratio granian / uvicorn. Exits non-zero if any request failed.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _common


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def granian_label() -> str:
    loop = "rloop" if _has("rloop") else "uvloop" if _has("uvloop") else "asyncio"
    return f"granian (ASGI, {loop} loop)"


def uvicorn_label(*, nodelay_fix: bool) -> str:
    loop = "uvloop" if _has("uvloop") else "asyncio"
    http = "httptools" if _has("httptools") else "h11"
    return f"uvicorn ({http}, {loop} loop{', TCP_NODELAY fixed' if nodelay_fix else ', as shipped'})"


def measure(
    procs: _common.Processes, name: str, cmd: list[str], port: int, args: argparse.Namespace
) -> _common.LoadResult:
    """Start one server, warm it up, measure it, stop it."""
    proc = procs.start(name, cmd)
    url = f"http://127.0.0.1:{port}{_common.BARE_PATH}"
    try:
        _common.wait_http(url, proc)
        time.sleep(0.5)  # let every worker finish starting
        if args.warmup > 0:
            _common.run_load(url, tool=args.tool, duration=args.warmup, connections=args.connections, threads=1)
        result = _common.run_load(
            url,
            tool=args.tool,
            duration=args.duration,
            connections=args.connections,
            threads=args.threads,
            server_pgid=proc.pid,
        )
        _common.require_clean(result, name)
    finally:
        proc.stop()
        procs.procs.remove(proc)
    print(f"  {name:<16} {result.describe()}", flush=True)
    return result


def cpu_per_request_us(runs: list[_common.LoadResult]) -> float | None:
    values = [run.server_cpu_s / run.requests for run in runs if run.server_cpu_s is not None and run.requests]
    return 1e6 * statistics.median(values) if values else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Requests/s of granian vs uvicorn serving the same trivial Litestar JSON endpoint with the same "
            "number of workers, driven by a load generator in a separate process; prints both and the ratio. "
            "Defaults take about 45 s."
        )
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes per server (default 2)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load first (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent keep-alive connections (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1; the cores are shared)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate the servers this many times and report the median of each (default 1)",
    )
    parser.add_argument(
        "--skip-stock-uvicorn",
        action="store_true",
        help=(
            "do not also measure uvicorn exactly as shipped; its --workers mode leaves TCP_NODELAY off "
            "(Kludex/uvicorn#3149), so each keep-alive response waits ~40 ms for a delayed ACK"
        ),
    )
    parser.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator: wrk if installed (auto, the default), or the Python asyncio client",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.tool = _common.choose_loadgen(args.loadgen)
    print(_common.environment_line())
    print(
        f"endpoint: GET {_common.BARE_PATH} (Litestar, JSON); {args.workers} workers per server; "
        f"{args.duration:g}s per measurement after {args.warmup:g}s warm-up; "
        f"{_common.loadgen_description(args.tool, args.connections, args.threads)}",
        flush=True,
    )
    servers: dict[str, Callable[[int, int], list[str]]] = {
        "granian": _common.granian_bare_cmd,
        "uvicorn-fixed": functools.partial(_common.uvicorn_cmd, nodelay_fix=True),
        "uvicorn-stock": functools.partial(_common.uvicorn_cmd, nodelay_fix=False),
    }
    if args.skip_stock_uvicorn:
        del servers["uvicorn-stock"]
    runs: dict[str, list[_common.LoadResult]] = {name: [] for name in servers}
    with (
        tempfile.TemporaryDirectory(prefix="servers-bench-") as logs,
        _common.exit_on_sigterm(),
        _common.Processes(Path(logs)) as procs,
    ):
        for round_no in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {round_no}/{args.rounds}")
            for name, make_cmd in servers.items():
                port = _common.free_port()
                runs[name].append(measure(procs, name, make_cmd(port, args.workers), port, args))
    result = {name: statistics.median(run.rps for run in values) for name, values in runs.items()}
    labels = {
        "granian": granian_label(),
        "uvicorn-fixed": uvicorn_label(nodelay_fix=True),
        "uvicorn-stock": uvicorn_label(nodelay_fix=False),
    }
    print()
    for name, value in result.items():
        print(f"{labels[name]:<52} {value:10.0f} req/s")
    print(f"ratio granian / uvicorn:               {_common.ratio(result['granian'], result['uvicorn-fixed']):.2f}")
    if "uvicorn-stock" in result:
        stock = _common.ratio(result["granian"], result["uvicorn-stock"])
        print(f"ratio granian / uvicorn (as shipped):  {stock:.2f}  (Nagle + delayed ACK, see bench/README.md)")
    granian_cpu, uvicorn_cpu = cpu_per_request_us(runs["granian"]), cpu_per_request_us(runs["uvicorn-fixed"])
    if granian_cpu is not None and uvicorn_cpu is not None:
        print(
            f"server CPU per request: granian {granian_cpu:.0f} us, uvicorn {uvicorn_cpu:.0f} us "
            f"(uvicorn / granian = {_common.ratio(uvicorn_cpu, granian_cpu):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
