"""No token, API key or presigned URL reaches the terminal or a log: a real ``corpora pull`` (a separate
process, verbose and quiet) against the real API, with everything it writes captured; and the redaction
itself on log records, tracebacks and streams."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from app.redact import REDACTED, RedactingFilter, RedactingStream, redact
from tests.client.test_pull import presigned, shop  # noqa: F401 - fixtures
from tests.licensing.helpers import Market
from tests.licensing.test_proxy_delivery import LiveServer
from tests.serve_helpers import REPO_ROOT

PRESIGNED = re.compile(r"X-Amz-(Signature|Credential)", re.IGNORECASE)


async def _pull(live: LiveServer, m: Market, out: Path, flag: str, token: str) -> subprocess.CompletedProcess[str]:
    """``corpora -v pull ...`` (everything logged) or ``corpora pull -q ...``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPORA_")}
    verbose, quiet = (["-v"], []) if flag == "-v" else ([], ["-q"])
    command = [sys.executable, "-m", "app.cli", *verbose, "pull", f"{m.product}@1.0.0", "--out", str(out)]
    command += ["--purpose", "research", "--api", live.url, "--include", "data/*", "--no-progress", *quiet]
    return await asyncio.to_thread(
        subprocess.run,
        command,
        env={**env, "CORPORA_TOKEN": token},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_clean(output: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in output
    assert not PRESIGNED.search(output), output
    assert "eyJ" not in output  # no JWT, whole or in part


async def test_a_real_pull_prints_and_logs_no_token_or_presigned_url(
    presigned: LiveServer,  # noqa: F811 - the fixture
    shop: Market,  # noqa: F811
    tmp_path: Path,
) -> None:
    token = shop.buyer.token
    verbose = await _pull(presigned, shop, tmp_path / "verbose", "-v", token)
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert (tmp_path / "verbose" / "data" / "a.txt").read_bytes() == shop.files["data/a.txt"]
    assert "HTTP Request" in verbose.stderr  # the HTTP client's request log is there, redacted
    assert REDACTED in verbose.stderr
    _assert_clean(verbose.stdout + verbose.stderr, token)

    quiet = await _pull(presigned, shop, tmp_path / "quiet", "-q", token)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stdout == ""
    _assert_clean(quiet.stdout + quiet.stderr, token)

    # A refused token is reported without being repeated.
    forged = token[:-6] + "AAAAAA"
    refused = await _pull(presigned, shop, tmp_path / "refused", "-v", forged)
    assert refused.returncode == 1
    assert refused.stderr.strip()
    _assert_clean(refused.stdout + refused.stderr, token, forged)


def test_log_records_and_tracebacks_are_redacted() -> None:
    url = "https://s3.example.com/b/blobs/ab?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F&X-Amz-Signature=f00d"
    key = "crp_" + "k" * 43
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("fetching %s with %s", url, f"Authorization: Bearer {key}")
        try:
            raise RuntimeError(f"GET {url} failed for {key}")
        except RuntimeError:
            logger.exception("download failed")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "f00d" not in text
    assert "AKIA" not in text
    assert key not in text
    assert "https://s3.example.com/b/blobs/ab?" + REDACTED in text
    assert "Traceback" in text  # the traceback is kept, only its secrets go

    stream = io.StringIO()
    RedactingStream(stream).write(f"error: {url}\n")
    assert stream.getvalue() == f"error: https://s3.example.com/b/blobs/ab?{REDACTED}\n"
    assert redact("plain https://example.com/a?page=2") == "plain https://example.com/a?page=2"
    # urllib3 logs the host apart from the path and its query
    logged = (
        'http://127.0.0.1:9000 "GET /b/blobs/ab?response-content-type=x&X-Amz-Credential=AKIA%2F&X-Amz-Signature=f00d'
    )
    assert redact(logged) == f'http://127.0.0.1:9000 "GET /b/blobs/ab?{REDACTED}'
    assert redact('"GET /a?page=2 HTTP/1.1" 200') == '"GET /a?page=2 HTTP/1.1" 200'
