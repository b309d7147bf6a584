"""Where a grant's time goes: PostgreSQL's backends sampled while grants run, and a py-spy breakdown of the
corpora workers under grant load (bench/grant_bench.py ``--profile``)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import threading
from pathlib import Path
from typing import Any

import _common
import _pyspy

GRANTS_PATH = "/api/v1/downloads"


# --- where PostgreSQL's backends are while grants run ---------------------------------------------------------

_ACTIVITY = """
SELECT state, coalesce(wait_event_type, ''), coalesce(wait_event, ''), left(query, 200)
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


def _classify(state: str, wait_type: str, wait_event: str, query: str) -> str:
    sql = " ".join(query.split()).lower()
    if sql.startswith("with charged as"):
        what = "the grant statement (charge, audit record, insert)"
    elif "audit_sequence(" in sql:
        what = "the audit sequencer (a batch of committed events joining the log)"
    elif sql.startswith("update bench_floor_quota"):
        what = "the floor's UPDATE"
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
        self.dsn = asyncpg_dsn(database_url)
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


def asyncpg_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# --- profiling --------------------------------------------------------------------------------------------------


def _in(package: str) -> str:
    return rf"\((?:[^()]*/)?{package}/"


INCLUSIVE = [
    ("token verification (app/auth/middleware.py authenticate)", r"^authenticate "),
    ("grant(): checks, charge, rows, audit, receipts (licensing/downloads/grants.py grant)", r"^grant \("),
    ("  resolve_target: entitlement, product, version, files (one query)", r"^resolve_target "),
    ("  _charge_and_record: charge, audit record, insert", r"^_charge_and_record "),
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


def summarise_profile(path: Path) -> str:
    samples, skipped = _pyspy.busy_samples(path)
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


def profile(url: str, script: Path, api: _common.Proc, args: argparse.Namespace, run_grants: Any) -> None:
    """Sample the corpora workers with py-spy while ``run_grants`` (grant_bench.run_grants) loads them."""
    out = Path(args.profile).resolve()
    duration = max(2, round(args.seconds))
    _pyspy.record(
        api.pid,
        out,
        duration,
        lambda: run_grants(
            url,
            script,
            duration=duration,
            connections=args.clients,
            threads=args.threads,
            server_pgid=api.pid,
            db_pid=None,
        ),
    )
    print(f"\nprofile of POST {GRANTS_PATH} ({duration}s under load; collapsed stacks in {out}):")
    print(summarise_profile(out))
