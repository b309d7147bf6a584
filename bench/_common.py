"""Helpers shared by the benchmarks: a bare Litestar app, server processes, readiness, load generation.

Run as a script it is also the benchmarks' own helper processes:

- ``python bench/_common.py serve-bare --port P --workers N`` serves the bare app with granian exactly as
  ``corpora serve`` serves the real one (``granian.server.Server``, ASGI, a factory, no access log);
- ``python bench/_common.py serve-uvicorn --port P --workers N`` serves it with uvicorn's multiprocess
  supervisor, with the TCP_NODELAY fix described in ``_serve_uvicorn``;
- ``python bench/_common.py loadgen --url U ...`` is the fallback load generator (asyncio, raw HTTP/1.1
  keep-alive connections) used when ``wrk`` is not installed. It prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BARE_PATH = "/bare"

# The bare endpoint answers a body of the same shape and about the same size as GET /api/v1/me.
BARE_BODY: dict[str, Any] = {
    "id": "0f6c1b9e-4a57-4f0b-9a3e-3d9f0c2b7a11",
    "email": "bench@example.com",
    "display_name": "bench",
    "orgs": [{"slug": "bench-org", "name": "Bench Org", "kind": "buyer", "role": "owner"}],
    "platform_roles": [],
}


def bare_app() -> Any:
    """A Litestar app with one JSON endpoint and nothing else: the ceiling for one request through Litestar."""
    from litestar import Litestar, get

    @get(BARE_PATH)
    async def bare() -> dict[str, Any]:
        return BARE_BODY

    return Litestar(route_handlers=[bare], openapi_config=None)


# --- processes ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the process group this process leads (a server and its workers), SIGKILL if it lingers."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)
        # workers that outlived their supervisor are still in its group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Servers started for one benchmark run; all stopped (newest first) when the ``with`` block ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, name: str, cmd: Sequence[str], *, env: Mapping[str, str] | None = None) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(cmd),
                env=dict(env) if env is not None else None,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so stop() reaches the workers too
                cwd=REPO_ROOT,
            )
        proc = Proc(name=name, popen=popen, log_path=log_path)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so ``finally`` blocks and atexit handlers clean up."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from the third on; the name may hold spaces


def cpu_seconds(*, pgid: int | None = None, root_pid: int | None = None) -> float | None:
    """CPU time (user + system) of a process group, or of a process and its children; None off Linux.

    Children that have exited count through their parent's cutime/cstime, once reaped.
    """
    if not Path("/proc/self/stat").exists():
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        ppid, group = int(fields[1]), int(fields[2])
        if (pgid is not None and group == pgid) or (root_pid is not None and root_pid in (int(entry.name), ppid)):
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def machine_busy_seconds() -> float | None:
    """CPU time (all but idle and iowait) every core of the machine has spent since boot; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(value) for value in fields]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # user..steal less idle, iowait


def wait_for_quiet(*, busy_below: float = 0.15, interval: float = 0.5, timeout: float = 60) -> float:
    """Wait until the machine's cores together are busy less than ``busy_below`` of one core over ``interval``
    (work a phase left behind, such as sequencing its audit events, has finished); the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = machine_busy_seconds()
        if before is None:
            break
        time.sleep(interval)
        if ((machine_busy_seconds() or before) - before) / interval < busy_below:
            break
    return time.monotonic() - started


def wait_http(url: str, proc: Proc, *, timeout: float = 60) -> None:
    """Wait until ``url`` answers 200, failing early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback server we started
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f}s:\n{proc.log_tail()}")
        time.sleep(0.2)


def granian_bare_cmd(port: int, workers: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "serve-bare", "--port", str(port), "--workers", str(workers)]


# --- load generation ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadResult:
    tool: str
    requests: int
    seconds: float
    non_2xx: int
    errors: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu_s: float | None = None  # CPU the server's processes used during the run
    db_cpu_s: float | None = None  # CPU PostgreSQL used during the run, where measured

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        latency = ""
        if self.p50_ms is not None and self.p99_ms is not None:
            latency = f", p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms"
        cpu = ""
        if self.server_cpu_s is not None and self.requests:
            cpu = f"; server CPU {1e6 * self.server_cpu_s / self.requests:.0f} us/req"
            if self.db_cpu_s is not None:
                cpu += f" + PostgreSQL {1e6 * self.db_cpu_s / self.requests:.0f} us/req"
        return (
            f"{self.rps:10.0f} req/s ({self.requests} requests in {self.seconds:.1f}s{latency}{cpu}; "
            f"non-2xx {self.non_2xx}, errors {self.errors}; {self.tool})"
        )


def choose_loadgen(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk), use --loadgen python")
    return choice


def loadgen_description(tool: str, connections: int, threads: int) -> str:
    if tool == "wrk":
        return f"wrk, {threads} thread(s), {connections} keep-alive connections, separate process"
    return (
        f"Python asyncio client, {connections} keep-alive connections, separate process "
        "(wrk not used: the client itself may be the bottleneck)"
    )


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _latency_ms(text: str, percentile: str) -> float | None:
    found = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    return float(found.group(1)) * _UNITS_MS[found.group(2)] if found else None


def parse_wrk(output: str) -> LoadResult:
    summary = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", output)
    if summary is None:
        raise RuntimeError(f"could not read wrk's output:\n{output}")
    seconds = float(summary.group(2)) * _UNITS_MS[summary.group(3)] / 1000
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return LoadResult(
        tool="wrk",
        requests=int(summary.group(1)),
        seconds=seconds,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
        p50_ms=_latency_ms(output, "50"),
        p99_ms=_latency_ms(output, "99"),
    )


def run_load(
    url: str,
    *,
    tool: str,
    duration: float,
    connections: int,
    threads: int = 1,
    headers: Mapping[str, str] | None = None,
    server_pgid: int | None = None,
    db_pid: int | None = None,
) -> LoadResult:
    """Drive ``url`` from a separate process for ``duration`` seconds and return what it measured.

    With ``server_pgid`` (the server's process group) and ``db_pid`` (PostgreSQL's postmaster), also the CPU
    time those used meanwhile: a cost per request that other load on the machine disturbs less than req/s.
    """
    server_before = cpu_seconds(pgid=server_pgid) if server_pgid is not None else None
    db_before = cpu_seconds(root_pid=db_pid) if db_pid is not None else None
    result = _run_load(url, tool=tool, duration=duration, connections=connections, threads=threads, headers=headers)
    if server_before is not None and server_pgid is not None:
        after = cpu_seconds(pgid=server_pgid)
        result.server_cpu_s = after - server_before if after is not None else None
    if db_before is not None and db_pid is not None:
        after = cpu_seconds(root_pid=db_pid)
        result.db_cpu_s = after - db_before if after is not None else None
    return result


def _run_load(
    url: str, *, tool: str, duration: float, connections: int, threads: int, headers: Mapping[str, str] | None
) -> LoadResult:
    headers = dict(headers or {})
    if tool == "wrk":
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
        cmd.append("--latency")
        for name, value in headers.items():
            cmd += ["-H", f"{name}: {value}"]
        cmd.append(url)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        return parse_wrk(done.stdout)
    cmd = [sys.executable, str(Path(__file__).resolve()), "loadgen", "--url", url]
    cmd += ["--duration", str(duration), "--connections", str(connections)]
    for name, value in headers.items():
        cmd += ["--header", f"{name}: {value}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return LoadResult(tool="python", **data)


def require_clean(result: LoadResult, what: str) -> None:
    """A run with failed requests measured something else than the endpoint: refuse to report it."""
    if result.non_2xx or result.errors or result.requests == 0:
        raise RuntimeError(
            f"{what}: {result.requests} requests, {result.non_2xx} non-2xx answers, {result.errors} "
            "connection errors; the measurement is not valid"
        )


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def environment_line() -> str:
    wrk = shutil.which("wrk")
    line = (
        f"machine: {os.cpu_count()} CPU(s), 1-min load average {os.getloadavg()[0]:.2f} before the run; "
        f"Python {sys.version.split()[0]}; wrk: {wrk or 'not installed (Python fallback)'}"
    )
    if os.getloadavg()[0] > 0.5:
        line += "\nnote: other processes are using the CPUs; numbers will be noisy (use --rounds)"
    return line


# --- the fallback load generator (runs in its own process) -------------------------------------------------


@dataclasses.dataclass
class _Stats:
    requests: int = 0
    non_2xx: int = 0
    errors: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    lowered = head.lower()
    found = re.search(rb"\r\ncontent-length:\s*(\d+)", lowered)
    if found is not None:
        await reader.readexactly(int(found.group(1)))
        return
    if b"\r\ntransfer-encoding: chunked" not in lowered:
        raise RuntimeError("response without Content-Length or chunked encoding")
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def _connection(host: str, port: int, request: bytes, deadline: float, stats: _Stats) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats.errors += 1
        return
    try:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            await _read_body(reader, head)
            stats.latencies.append(time.perf_counter() - started)
            stats.requests += 1
            if not 200 <= int(head[9:12]) < 400:
                stats.non_2xx += 1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        stats.errors += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _loadgen(url: str, duration: float, connections: int, headers: list[str]) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target or '/'} HTTP/1.1", f"Host: {parts.netloc}", *headers, "", ""]
    request = "\r\n".join(lines).encode("latin-1")
    stats = _Stats()
    started = time.monotonic()
    deadline = started + duration
    await asyncio.gather(*(_connection(host, port, request, deadline, stats) for _ in range(connections)))
    elapsed = time.monotonic() - started
    ordered = sorted(stats.latencies)

    def percentile(p: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000 if ordered else None

    return {
        "requests": stats.requests,
        "seconds": elapsed,
        "non_2xx": stats.non_2xx,
        "errors": stats.errors,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
    }


def _serve_bare(port: int, workers: int) -> None:
    """The bare app under granian, set up as ``corpora serve`` sets up the real one (see app/cli.py)."""
    from granian.constants import Interfaces
    from granian.server import Server

    Server(
        "_common:bare_app",
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_access=False,
        working_dir=BENCH_DIR,
    ).serve()


def _serve_uvicorn(port: int, workers: int) -> None:
    """The bare app under stock uvicorn (as ``uvicorn --workers N``) but with TCP_NODELAY on every connection.

    ``uvicorn --workers N`` binds its listening socket with ``proto`` 0; accepted sockets inherit it and
    asyncio then leaves Nagle's algorithm on, so each keep-alive response waits for the client's delayed ACK
    (about 40 ms on Linux; Kludex/uvicorn#3149). Re-declaring the listener as IPPROTO_TCP is the upstream fix.
    """
    import uvicorn
    from uvicorn.config import Config

    stock_bind = Config.bind_socket

    def bind_socket(self: Config) -> socket.socket:
        sock = stock_bind(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
            sock.set_inheritable(True)
        return sock

    Config.bind_socket = bind_socket  # type: ignore[method-assign]
    uvicorn.run(
        "_common:bare_app",
        factory=True,
        app_dir=str(BENCH_DIR),
        host="127.0.0.1",
        port=port,
        workers=workers,
        access_log=False,
        log_level="warning",
    )


def uvicorn_cmd(port: int, workers: int, *, nodelay_fix: bool) -> list[str]:
    if nodelay_fix:
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "serve-uvicorn",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "--app-dir",
        str(BENCH_DIR),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
        "_common:bare_app",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="helper processes for the benchmarks in bench/")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve-bare", help="serve the bare Litestar app with granian")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--workers", type=int, default=2)
    serve_uvicorn = commands.add_parser("serve-uvicorn", help="serve the bare app with uvicorn, TCP_NODELAY fixed")
    serve_uvicorn.add_argument("--port", type=int, required=True)
    serve_uvicorn.add_argument("--workers", type=int, default=2)
    load = commands.add_parser("loadgen", help="Python fallback load generator; prints one JSON line")
    load.add_argument("--url", required=True)
    load.add_argument("--duration", type=float, default=10)
    load.add_argument("--connections", type=int, default=64)
    load.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    args = parser.parse_args(argv)
    if args.command == "serve-bare":
        _serve_bare(args.port, args.workers)
        return 0
    if args.command == "serve-uvicorn":
        _serve_uvicorn(args.port, args.workers)
        return 0
    result = asyncio.run(_loadgen(args.url, args.duration, args.connections, args.header))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
