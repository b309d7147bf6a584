"""Hostile and careless clients against a real ``corpora serve`` (granian, two workers): connections that
never finish their headers or stall their bodies are cut off after a deadline and starve nobody; a client
that goes away is not a server error; every request leaves one access-log line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from minio.error import S3Error
from prometheus_client.parser import text_string_to_metric_families

from app.objectstore import ObjectStore
from app.settings import Settings
from tests.conftest import PASSWORD, Servers, unique_email
from tests.serve_helpers import Serve, external_env

HEADER_TIMEOUT = 3
BODY_TIMEOUT = 4
PENDING_BODIES_PER_WORKER = 40
STALLED_BODIES = 120  # more than the two workers read at once: the rest are refused at once
STALLED_HEADERS = 120
ANSWER_WITHIN = 3.0


@pytest.fixture(scope="module")
def served(servers: Servers, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    root = tmp_path_factory.mktemp("hostile")
    client = ObjectStore(settings).client
    if not client.bucket_exists(settings.s3_bucket):
        with contextlib.suppress(S3Error):
            client.make_bucket(settings.s3_bucket, object_lock=True)
    env = {
        **external_env(servers, root / "data"),
        "CORPORA_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "CORPORA_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "CORPORA_MAX_PENDING_BODIES": str(PENDING_BODIES_PER_WORKER),
        "CORPORA_METRICS_PUBLIC": "true",
    }
    serve = Serve.start(env, root / "serve.log", workers=2)
    yield serve
    serve.stop()


def _token(serve: Serve) -> str:
    email = unique_email("hostile")
    created = httpx.post(
        f"{serve.url}/api/v1/users", json={"email": email, "password": PASSWORD, "display_name": "H"}, timeout=10
    )
    assert created.status_code == 201, created.text
    token = httpx.post(
        f"{serve.url}/api/v1/auth/token",
        json={"grant_type": "password", "username": email, "password": PASSWORD},
        timeout=10,
    )
    assert token.status_code == 200, token.text
    access: str = token.json()["access_token"]
    return access


def _metric(serve: Serve, name: str, **labels: str) -> float:
    text = httpx.get(f"{serve.url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def _open(serve: Serve, payload: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = serve.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(payload)
    await writer.drain()
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> tuple[float, bytes]:
    """Read until the server closes the connection: (seconds it took, what it sent)."""
    started = time.monotonic()
    received = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                received += chunk
    return time.monotonic() - started, received


def _errors_logged(serve: Serve) -> list[str]:
    return [line for line in serve.text().splitlines() if " ERROR " in line or "Traceback" in line]


async def _timed_get(url: str, headers: dict[str, str] | None = None) -> tuple[float, int]:
    async with httpx.AsyncClient(timeout=30) as client:
        started = time.monotonic()
        response = await client.get(url, headers=headers)
        return time.monotonic() - started, response.status_code


async def test_stalled_connections_starve_nobody_and_are_cut_off(served: Serve) -> None:
    token = _token(served)
    stalled_body = (
        b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ) + b'{"email": "'
    stalled_headers = b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nX-Slow: "
    bodies = [await _open(served, stalled_body) for _ in range(STALLED_BODIES)]
    headers = [await _open(served, stalled_headers) for _ in range(STALLED_HEADERS)]
    attack_started = time.monotonic()
    await asyncio.sleep(0.5)

    # Everyone else is still answered promptly.
    for _ in range(3):
        health = await _timed_get(f"{served.url}/healthz")
        me = await _timed_get(f"{served.url}/api/v1/me", {"Authorization": f"Bearer {token}"})
        for seconds, status in (health, me):
            assert status == 200
            assert seconds < ANSWER_WITHIN

    # The server cuts every stalled connection off, well within a minute.
    results = await asyncio.gather(*[_closed_by_server(r, 60) for r, _ in bodies + headers])
    elapsed = time.monotonic() - attack_started
    assert elapsed < 60
    body_answers = [received for _, received in results[:STALLED_BODIES]]
    statuses = [answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.1 ") else b"closed" for answer in body_answers]
    assert set(statuses) <= {b"408", b"503"}, statuses
    assert statuses.count(b"408") <= 2 * PENDING_BODIES_PER_WORKER
    assert statuses.count(b"503") >= STALLED_BODIES - 2 * PENDING_BODIES_PER_WORKER
    for answer in body_answers:
        assert b"connection: close" in answer.lower()
    header_waits = [seconds for seconds, _ in results[STALLED_BODIES:]]
    assert max(header_waits) < HEADER_TIMEOUT + 5, header_waits
    for _, writer in bodies + headers:
        writer.close()
    assert _errors_logged(served) == []


async def test_a_client_that_disconnects_is_not_a_server_error(served: Serve) -> None:
    route = {"method": "POST", "path": "/api/v1/users"}
    gone_before = _metric(served, "corpora_http_requests_total", status_code="499", **route)
    errors_before = _metric(served, "corpora_http_server_errors_total", **route)
    for _ in range(5):
        _, writer = await _open(
            served,
            b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\n\r\n{"email": ',
        )
        await asyncio.sleep(0.2)
        writer.transport.abort()  # a reset, as a client that crashed or lost its network
    deadline = time.monotonic() + 10
    while _metric(served, "corpora_http_requests_total", status_code="499", **route) < gone_before + 5:
        assert time.monotonic() < deadline, served.tail()
        await asyncio.sleep(0.2)
    assert _metric(served, "corpora_http_server_errors_total", **route) == errors_before
    assert _errors_logged(served) == []


def test_every_request_leaves_one_access_log_line(served: Serve) -> None:
    token = _token(served)
    request_id = f"access-{time.monotonic_ns()}"
    response = httpx.get(
        f"{served.url}/api/v1/me", headers={"Authorization": f"Bearer {token}", "X-Request-Id": request_id}
    )
    assert response.status_code == 200
    user_id = response.json()["id"]
    missing = httpx.get(f"{served.url}/api/v1/products/no-such-{request_id}", headers={"X-Request-Id": request_id})
    assert missing.status_code == 404
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line[line.index("{") :]) for line in served.text().splitlines() if request_id in line]
        if len(lines) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(lines) == 2, lines
    # Each worker writes its lines in batches: lines of different workers need not appear in request order.
    me, product = sorted(lines, key=lambda line: line["route"] != "/api/v1/me")
    assert (me["method"], me["route"], me["status"]) == ("GET", "/api/v1/me", 200)
    assert me["actor"] == f"user:{user_id}"
    assert me["duration_ms"] >= 0
    assert product["route"] == "/api/v1/products/{slug}"  # the template, not the id in the URL
    assert product["status"] == 404
    assert product["actor"] is None
    assert token not in served.text()


async def test_a_raw_utf8_query_string_is_read_as_utf8(served: Serve) -> None:
    """Browsers and curl send ``?q=金融`` percent-encoded, but some clients send the UTF-8 bytes as they are;
    either way the server reads UTF-8 (not Latin-1)."""
    request = "GET /api/v1/products?industry=金融&q=金融 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reader, writer = await _open(served, request.encode())
    _, raw = await _closed_by_server(reader, within=10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 422"), raw
    problem = json.loads(body)
    assert problem["errors"][0]["field"] == "industry"
    assert "unknown value '金融'" in problem["detail"]  # the value as sent, not its Latin-1 reading


def test_an_oversized_body_closes_its_connection_and_the_next_request_is_answered(served: Serve) -> None:
    """A body refused with 413 is not read to its end, so the connection cannot carry another request: the 413
    says ``Connection: close``, and a client that keeps its connections alive is answered on its next request."""
    huge = b'{"slug": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    headers = {"Authorization": f"Bearer {_token(served)}", "Content-Type": "application/json"}
    with httpx.Client(base_url=served.url, timeout=10) as client:
        for _ in range(20):
            refused = client.post("/api/v1/orgs", content=huge, headers=headers)
            assert refused.status_code == 413, refused.text
            assert refused.headers.get("connection") == "close"
            assert client.get("/healthz").status_code == 200
