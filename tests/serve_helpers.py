"""A real ``corpora serve`` process for tests that need the server as operators run it (granian, workers,
signals), on this run's database and bucket or on its own embedded servers."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from app.auth.keys import load_keyring
from app.settings import Settings
from tests.conftest import Servers

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def external_env(servers: Servers, data_dir: Path) -> dict[str, str]:
    """The environment of a serve on this run's PostgreSQL database and S3 bucket, signing with the test app's key
    (a key of its own would sign audit checkpoints that the test app's verification does not know)."""
    keys = Settings(data_dir=servers.data_dir)
    load_keyring(keys)  # creates the development key when the test app has not yet
    return {
        "CORPORA_SIGNING_KEY_FILES": str(servers.data_dir / "keys" / "signing-ed25519.pem"),
        "CORPORA_DATABASE_URL": servers.database_url,
        "CORPORA_S3_ENDPOINT": servers.s3_endpoint,
        "CORPORA_S3_ACCESS_KEY": servers.s3_access_key,
        "CORPORA_S3_SECRET_KEY": servers.s3_secret_key,
        "CORPORA_S3_BUCKET": servers.s3_bucket,
        "CORPORA_DATA_DIR": str(data_dir),
        "CORPORA_JANITOR_EVERY_SECONDS": "0",
    }


@dataclasses.dataclass
class Serve:
    url: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @classmethod
    def start(cls, env: Mapping[str, str], log: Path, *, workers: int = 1, wait: bool = True) -> Serve:
        port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith("CORPORA_")}
        with log.open("wb") as out:
            command = [sys.executable, "-m", "app.cli", "serve", "--host=127.0.0.1", f"--port={port}"]
            popen = subprocess.Popen(
                [*command, f"--workers={workers}"],
                env={**base, **env},
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() can reach whatever it left behind
            )
        serve = cls(f"http://127.0.0.1:{port}", popen, log)
        if wait:
            serve.wait_ready()
        return serve

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"corpora serve exited with {self.popen.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"corpora serve not ready within {READY_TIMEOUT:.0f}s:\n{self.tail()}")
            time.sleep(0.2)

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL if it lingers."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def descendants(pid: int) -> set[int]:
    """Every living descendant of ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
