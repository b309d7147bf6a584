"""A PostgreSQL primary and a streaming replica of it, from the embedded PostgreSQL's own programs.

Both listen on loopback TCP ports (as the nodes of a cluster do); the replica is a ``pg_basebackup -R`` of the
primary, so it follows it by streaming replication and refuses writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from app import process
from app.embedded import _postgres_bin, _server_user, free_port_pairs

START_TIMEOUT = 60


@dataclasses.dataclass
class Node:
    port: int
    data: Path
    server: subprocess.Popen[bytes]

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def _as_server(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    setup = process.child_setup(user=_server_user(), die_with_parent=None)
    return subprocess.run(command, preexec_fn=setup, cwd="/", capture_output=True, check=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def _start(data: Path, port: int) -> Node:
    setup = process.child_setup(user=_server_user(), die_with_parent=signal.SIGINT)
    log = (data.parent / f"{data.name}.log").open("ab")
    server = subprocess.Popen(
        [_postgres_bin("postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(data)],
        preexec_fn=setup,
        cwd="/",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while subprocess.run([_postgres_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)], check=False).returncode:
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL in {data} did not start; see {data.parent / data.name}.log")
        time.sleep(0.1)
    return Node(port, data, server)


def _owned_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    if (user := _server_user()) is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


@contextlib.contextmanager
def primary_and_replica(root: Path) -> Iterator[tuple[Node, Node]]:
    """Start both under ``root`` (which the server user must be able to enter); stopped on exit."""
    primary_port, replica_port = free_port_pairs(2)
    primary_data = _owned_dir(root / "primary")
    _as_server([_postgres_bin("initdb"), "-D", str(primary_data), "--auth=trust", "-U", "postgres", "-E", "utf8"])
    nodes: list[Node] = []
    try:
        nodes.append(_start(primary_data, primary_port))
        replica_data = _owned_dir(root / "replica")
        basebackup = [_postgres_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary_port), "-U", "postgres"]
        _as_server([*basebackup, "-D", str(replica_data), "-R", "-X", "stream"])
        nodes.append(_start(replica_data, replica_port))
        yield nodes[0], nodes[1]
    finally:
        for node in reversed(nodes):
            node.server.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.server.wait(timeout=10)
            if node.server.poll() is None:
                node.server.kill()
                node.server.wait()
