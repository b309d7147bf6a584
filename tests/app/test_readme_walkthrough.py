"""The README's walk-through runs as written: every shell block from "Calling the API" to "Configuration",
top to bottom, against a real ``corpora serve`` on a database and bucket of its own, each ``curl`` failing the
run on an error answer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from minio.error import S3Error

from app.objectstore import ObjectStore
from app.settings import Settings
from tests.conftest import Servers, create_database
from tests.serve_helpers import REPO_ROOT, Serve, external_env

SECTION = re.compile(r"^## Calling the API\n(.*?)^## Configuration\n", re.MULTILINE | re.DOTALL)
BLOCK = re.compile(r"^```sh\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


def walkthrough() -> str:
    section = SECTION.search((REPO_ROOT / "README.md").read_text())
    assert section is not None, "README.md has no 'Calling the API' section before 'Configuration'"
    return "\n".join(BLOCK.findall(section.group(1)))


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walk-through calls the API with curl")
async def test_the_readme_walkthrough_runs_as_written(servers: Servers, settings: Settings, tmp_path: Path) -> None:
    database_url = await create_database(servers.database_url, f"readme_{uuid.uuid4().hex[:12]}")
    bucket = f"readme-{uuid.uuid4().hex[:12]}"
    store = ObjectStore(settings).client
    with contextlib.suppress(S3Error):
        store.make_bucket(bucket, object_lock=True)
    env = {
        **external_env(servers, tmp_path / "var"),
        "CORPORA_DATABASE_URL": database_url,
        "CORPORA_S3_BUCKET": bucket,
    }
    serve = Serve.start(env, tmp_path / "serve.log", workers=1)
    try:
        port = serve.url.rsplit(":", 1)[1]
        corpora = Path(sys.executable).parent / "corpora"
        script = walkthrough().replace("localhost:8000", f"127.0.0.1:{port}").replace(".venv/bin/corpora", str(corpora))
        # Every curl of the walk-through fails the run on an error status, showing the problem it got.
        prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n'
        work = tmp_path / "reader"
        work.mkdir()
        ran = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", prelude + script],
            cwd=work,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, f"{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}\n{serve.tail()}"
    finally:
        serve.stop()
    data = (work / "data" / "news.jsonl").read_bytes()
    assert (work / "corpus" / "news.jsonl").read_bytes() == data  # corpora pull
    assert (work / "news.jsonl").read_bytes() == data  # curl -L
    upheld = [line for line in ran.stdout.splitlines() if '"status":"upheld"' in line.replace(" ", "")]
    assert upheld, ran.stdout[-2000:]
    assert hashlib.sha256(data).hexdigest() in json.dumps(ran.stdout)
