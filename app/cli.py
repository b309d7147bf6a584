"""The ``corpora`` command: run the service and operate it.

Imports stay inside the commands so ``corpora --help`` is instant and server workers import the
application themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence

from app import redact
from app.settings import Settings, SettingsError

log = logging.getLogger("corpora")

SHUTDOWN_GRACE_SECONDS = 5
JOB_WORKER_GRACE_SECONDS = 3


@dataclasses.dataclass
class Runtime:
    """Settings with the database and object store resolved, and whatever embedded servers back them."""

    settings: Settings
    stop: Callable[[], None]


def resolve(settings: Settings, *, need_object_store: bool = True) -> Runtime:
    """Start embedded PostgreSQL / SeaweedFS for whatever is not configured, then migrate."""
    from app.embedded import create_database, run_postgres, start_seaweedfs
    from app.migrate import upgrade

    stops: list[Callable[[], None]] = []
    if settings.database_url is None:
        postgres = run_postgres(settings.data_dir)
        stops.append(postgres.stop)
        create_database(postgres.url("postgres"), "corpora")
        settings = dataclasses.replace(settings, database_url=postgres.url("corpora"))
        log.info("embedded PostgreSQL under %s", settings.data_dir / "postgres")
    if settings.s3_endpoint is None and need_object_store:
        seaweed = start_seaweedfs(settings.data_dir, settings.s3_access_key, settings.s3_secret_key)
        stops.append(seaweed.stop)
        settings = dataclasses.replace(settings, s3_endpoint=seaweed.endpoint)
    assert settings.database_url is not None
    upgrade(settings.database_url)

    def stop() -> None:
        for fn in reversed(stops):
            fn()

    return Runtime(settings=settings, stop=stop)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    from app.auth.keys import load_keyring
    from app.process import AlreadyServing, ServeGuard

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "workers": args.workers}.items() if v}
    settings = dataclasses.replace(settings, **overrides)
    guard = ServeGuard(settings.data_dir)
    try:
        guard.acquire()
    except AlreadyServing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    guard.start_watchdog()
    try:
        runtime = resolve(settings)
    except BaseException:
        guard.release()
        raise
    stops: list[Callable[[], None]] = []
    try:
        load_keyring(runtime.settings)  # a development key is generated once, before workers start
        os.environ.update(runtime.settings.as_env())
        metrics_dir = runtime.settings.data_dir.resolve() / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        if args.job_concurrency > 0:  # 0: jobs run in separate `corpora worker` processes
            job_worker = start_worker_process(args.job_concurrency)
            stops.append(lambda: stop_worker_process(job_worker))
        print(
            f"Corpora on http://{runtime.settings.host}:{runtime.settings.port} "
            f"({runtime.settings.workers} workers); API docs at /schema",
            flush=True,
        )
        Server(
            "app.main:app_from_env",
            address=runtime.settings.host,
            port=runtime.settings.port,
            interface=Interfaces.ASGI,
            workers=runtime.settings.workers,
            factory=True,
            log_access=False,  # the app writes its own access log (app/metrics.py)
            # Slow clients: headers must arrive in time, and each worker keeps a bounded number of connections
            # (granian's backpressure counts connections, kept ones included); bodies: app/client_guard.py.
            http1_settings=HTTP1Settings(header_read_timeout=runtime.settings.header_timeout_seconds * 1000),
            backlog=max(1024, runtime.settings.max_connections),
            backpressure=runtime.settings.max_connections,
            # SIGTERM: in-flight requests get this long to finish, so serve stops within ten seconds.
            workers_kill_timeout=SHUTDOWN_GRACE_SECONDS,
        ).serve()
    finally:
        for stop in stops:
            stop()
        runtime.stop()
        guard.release()
    return 0


def start_worker_process(concurrency: int) -> subprocess.Popen[bytes]:
    """The job worker that ``serve`` runs beside the API, a process of its own with the same environment; the
    kernel sends it SIGTERM when serve dies, however serve dies (Linux)."""
    import signal

    from app.process import child_setup

    command = [sys.executable, "-m", "app.cli", "worker", "--concurrency", str(concurrency), "--name", "serve"]
    return subprocess.Popen(command, preexec_fn=child_setup(user=None, die_with_parent=signal.SIGTERM))


def stop_worker_process(process: subprocess.Popen[bytes]) -> None:
    # The worker finishes the jobs it runs if it can within the grace serve's own stop leaves it (serve stops
    # within ten seconds); a job cut short is retried, as after any crash.
    process.terminate()
    try:
        process.wait(timeout=JOB_WORKER_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from app.jobs.worker import run_worker
    from app.wiring import load_tasks

    runtime = resolve(settings)
    if not args.verbose:
        logging.getLogger("procrastinate").setLevel(logging.WARNING)  # not a line per job
    try:
        load_tasks()
        asyncio.run(
            run_worker(runtime.settings, concurrency=args.concurrency, queues=args.queue or None, name=args.name)
        )
    except KeyboardInterrupt:
        pass
    finally:
        runtime.stop()
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    runtime = resolve(settings, need_object_store=False)
    runtime.stop()
    print("database schema is at the newest migration")
    return 0


def cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from app.accounts import service
    from app.audit.service import AuditContext
    from app.db import create_engine
    from app.errors import ProblemError

    password = args.password or getpass.getpass("Password: ")
    runtime = resolve(settings, need_object_store=False)

    async def create() -> tuple[str, str]:
        assert runtime.settings.database_url is not None
        engine = create_engine(runtime.settings.database_url, pool_size=1)
        try:
            async with async_sessionmaker(engine)() as session, session.begin():
                user = await service.create_user(
                    session,
                    AuditContext(actor=f"cli:{getpass.getuser()}"),
                    email=args.email,
                    password=password,
                    display_name=args.display_name or args.email.split("@")[0],
                    platform_roles=args.platform_role,
                )
                return str(user.id), user.email
        finally:
            await engine.dispose()

    try:
        user_id, email = asyncio.run(create())
    except ProblemError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        runtime.stop()
    print(json.dumps({"id": user_id, "email": email, "platform_roles": sorted(args.platform_role)}))
    return 0


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from app.audit.cli import verify

    runtime = resolve(settings)
    try:
        report = asyncio.run(verify(runtime.settings))
    finally:
        runtime.stop()
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 2


def cmd_audit_verify_bundle(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from app.audit.bundle_format import verify_bundle

    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = verify_bundle(data)
    print(json.dumps(dataclasses.asdict(report), indent=2))
    if not report.ok:
        where = f"event {report.first_bad_event}: " if report.first_bad_event is not None else ""
        print(f"bundle does not verify: {where}{report.problem}", file=sys.stderr)
    return 0 if report.ok else 2


def cmd_janitor(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt

    from app.db import create_engine
    from app.objectstore import ObjectStore
    from catalog.janitor import JanitorReport, sweep

    runtime = resolve(settings)
    max_age = runtime.settings.janitor_max_age_seconds if args.max_age is None else args.max_age

    async def run() -> JanitorReport:
        assert runtime.settings.database_url is not None
        engine = create_engine(runtime.settings.database_url, pool_size=2)
        try:
            store = ObjectStore(runtime.settings)
            return await sweep(engine, store, max_age=dt.timedelta(seconds=max_age), wait=args.wait)
        finally:
            await engine.dispose()

    try:
        report = asyncio.run(run())
    finally:
        runtime.stop()
    print(report.describe(), file=sys.stderr)
    print(json.dumps(report.as_dict(), indent=2))
    return 1 if report.errors else 0


def cmd_push(args: argparse.Namespace, settings: Settings) -> int:
    from client.push import main as push_main

    if args.api is None:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104 - not binding
        args.api = os.environ.get("CORPORA_API_URL") or f"http://{host}:{settings.port}"
    return push_main(args)


def cmd_seed(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import getpass
    import json
    import sys

    from app.audit.service import AuditContext
    from app.errors import ProblemError
    from demo.seed import seed_database

    runtime = resolve(settings, need_object_store=False)

    def progress(done: int) -> None:
        if done % 50_000 == 0 or done == args.products:
            print(f"  {done} / {args.products} products", file=sys.stderr, flush=True)

    try:
        assert runtime.settings.database_url is not None
        result = asyncio.run(
            seed_database(
                runtime.settings.database_url,
                AuditContext(actor=f"cli:{getpass.getuser()}"),
                products=args.products,
                org_slug=args.org,
                seed=args.seed,
                progress=progress,
            )
        )
    except ProblemError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        runtime.stop()
    print(json.dumps(dataclasses.asdict(result) | {"seconds": round(result.seconds, 1)}))
    return 0


def cmd_pull(args: argparse.Namespace, settings: Settings) -> int:
    from client.pull import main as pull_main

    if args.api is None:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104 - not binding
        args.api = os.environ.get("CORPORA_API_URL") or f"http://{host}:{settings.port}"
    return pull_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corpora",
        description=(
            "Corpora: licensed, metered and audited distribution of AI-training corpora. Settings come from "
            "CORPORA_* environment variables; without CORPORA_DATABASE_URL and CORPORA_S3_ENDPOINT an "
            "embedded PostgreSQL and SeaweedFS are started with their data under CORPORA_DATA_DIR (./var)."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the API (migrates first)")
    serve.add_argument("--host", help="address to listen on (CORPORA_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (CORPORA_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="server worker processes (CORPORA_WORKERS, default 2)")
    serve.add_argument(
        "--job-concurrency",
        type=int,
        default=4,
        metavar="N",
        help="jobs the worker beside the API runs at once (4); 0: no worker beside the API",
    )
    serve.set_defaults(handler=cmd_serve)

    worker = commands.add_parser(
        "worker",
        help="run queued jobs (webhook deliveries, sweeps, inspections); start as many as the load needs",
        description=(
            "Run jobs from the queue in PostgreSQL until SIGINT or SIGTERM, which let running jobs finish. "
            "Any number of workers, on any number of machines, share the queue: each job runs on one of them. "
            "Periodic jobs (expiry sweeps) are queued once per tick whatever the number of workers."
        ),
    )
    worker.add_argument("--concurrency", type=int, default=4, metavar="N", help="jobs run at once (default 4)")
    worker.add_argument(
        "--queue", action="append", default=[], metavar="NAME", help="only this queue; repeat for several (all)"
    )
    worker.add_argument("--name", default="worker", help="the worker's name in logs")
    worker.set_defaults(handler=cmd_worker)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to the newest migration")
    migrate.set_defaults(handler=cmd_migrate)

    users = commands.add_parser("users", help="manage user accounts").add_subparsers(
        dest="users_command", required=True, metavar="ACTION"
    )
    create = users.add_parser("create", help="create a user, optionally with platform roles")
    create.add_argument("--email", required=True)
    create.add_argument("--password", help="prompted for when omitted")
    create.add_argument("--display-name")
    create.add_argument(
        "--platform-role",
        action="append",
        default=[],
        choices=["admin", "reviewer", "auditor"],
        help="grant a platform role; repeat the flag for several",
    )
    create.set_defaults(handler=cmd_users_create)

    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION"
    )
    verify = audit.add_parser(
        "verify",
        help="recompute the hash chain and compare it with the signed checkpoints (exit 2 if broken)",
    )
    verify.set_defaults(handler=cmd_audit_verify)
    verify_bundle = audit.add_parser(
        "verify-bundle",
        help="check an evidence bundle offline, with no server (exit 2 naming the first bad event)",
    )
    verify_bundle.add_argument("file", help="the JSON bundle from GET /api/v1/audit/bundle")
    verify_bundle.set_defaults(handler=cmd_audit_verify_bundle)

    janitor = commands.add_parser(
        "janitor",
        help="sweep abandoned uploads, unreferenced staged objects and orphan blobs from the object store",
        description=(
            "Abort multipart uploads and delete staged objects of files still pending MAX_AGE seconds after "
            "their plan (those file rows are deleted too, each with a 'file.abandoned' audit event), delete "
            "staged objects and uploads no pending file references, and blob objects without a blobs row, once "
            "older than MAX_AGE. Verified files and blobs with a row are never touched. The service runs the "
            "same sweep every CORPORA_JANITOR_EVERY_SECONDS; concurrent sweeps are serialised by a PostgreSQL "
            "advisory lock (without --wait a second one skips). Prints a JSON summary."
        ),
    )
    janitor.add_argument(
        "--max-age",
        type=int,
        metavar="SECONDS",
        help="age after which an unfinished upload is abandoned (CORPORA_JANITOR_MAX_AGE_SECONDS, default 86400); "
        "0 sweeps every unfinished upload, including ones in progress",
    )
    janitor.add_argument("--wait", action="store_true", help="wait for a sweep running elsewhere instead of skipping")
    janitor.set_defaults(handler=cmd_janitor)

    push = commands.add_parser(
        "push",
        help="upload a directory as the files of a draft version (resumable, parallel)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Upload every file under DIR into the draft version PRODUCT@VERSION over the HTTP API. The bytes go\n"
            "straight to the object store on presigned URLs (one PUT up to 8 MiB, otherwise a multipart upload\n"
            "whose parts are sent in parallel, streamed from disk), and the server verifies each file's size and\n"
            "SHA-256 before it counts. Paths in the version are the paths relative to DIR, with '/'.\n\n"
            "- Files already in the version with the same SHA-256 are skipped: pushing again uploads nothing.\n"
            "- An interrupted push resumes when run again: parts already on the object store are not sent again.\n"
            "- A file already in the version with different content is an error: versions never overwrite files.\n"
            "- SHA-256 digests are cached by size and modification time under ~/.cache/corpora (see --cache-dir)."
        ),
        epilog=(
            "example:\n"
            "  export CORPORA_TOKEN=$(curl -s -X POST localhost:8000/api/v1/auth/token \\\n"
            "      -H 'Content-Type: application/json' \\\n"
            '      -d \'{"grant_type": "password", "username": "ada@example.com", "password": "..."}\' \\\n'
            "      | python3 -c 'import json, sys; print(json.load(sys.stdin)[\"access_token\"])')\n"
            "  corpora push filings-en@1.0.0 ./filings --api http://localhost:8000 --parallel 8\n\n"
            "environment: CORPORA_TOKEN (the token), CORPORA_API_URL (the API address; default\n"
            "http://CORPORA_HOST:CORPORA_PORT, i.e. http://127.0.0.1:8000).\n"
            "exit status: 0 when every file is in the version, 1 when something failed (the message says what\n"
            "to do next; run the same command again to resume), 130 when interrupted."
        ),
    )
    push.add_argument("target", metavar="PRODUCT@VERSION", help="the product slug and the draft version, e.g. a@1.0.0")
    push.add_argument("directory", metavar="DIR", help="the directory whose files make up the version")
    push.add_argument("--api", metavar="URL", help="the API's address (CORPORA_API_URL, default http://127.0.0.1:8000)")
    push.add_argument("--token", help="access token or API key (default: CORPORA_TOKEN)")
    push.add_argument(
        "--parallel", type=int, default=8, metavar="N", help="files and parts transferred at once (default 8)"
    )
    push.add_argument(
        "--media-type-guess",
        action="store_true",
        help="set each file's media type from its extension (default application/octet-stream)",
    )
    push.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    push.add_argument(
        "--no-progress", action="store_true", help="no progress bars (they are off anyway when stderr is not a TTY)"
    )
    push.add_argument("--cache-dir", metavar="DIR", help="where digests are cached (default ~/.cache/corpora)")
    push.set_defaults(handler=cmd_push)

    from client import pull
    from demo import seed  # argparse only at import; the command imports the rest when it runs

    seed.add_command(commands, cmd_seed)
    pull.add_command(commands, cmd_pull)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # a line per HTTP request is noise to whoever runs a command
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    redact.install()  # no token or presigned URL reaches the terminal or a log, whatever the level
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        parser.error(str(exc))
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    return handler(args, settings)


if __name__ == "__main__":
    sys.exit(main())
