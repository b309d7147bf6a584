"""The per-route request metrics count what clients were answered."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import IN_PROGRESS_EVERY_SECONDS, RequestMetrics
from tests.conftest import METRICS_HEADERS


async def _sample(client: AsyncTestClient[Any], name: str, **labels: str) -> float:
    text = (await client.get("/metrics", headers=METRICS_HEADERS)).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_a_refused_token_counts_as_401_not_as_a_server_error(client: AsyncTestClient[Any]) -> None:
    route = {"method": "GET", "path": "/api/v1/me"}
    refused_before = await _sample(client, "corpora_http_requests_total", status_code="401", **route)
    failed_before = await _sample(client, "corpora_http_requests_total", status_code="500", **route)
    errors_before = await _sample(client, "corpora_http_server_errors_total", **route)
    for token in ("garbage.token.here", "crp_unknown-key"):
        response = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
    assert await _sample(client, "corpora_http_requests_total", status_code="401", **route) == refused_before + 2
    assert await _sample(client, "corpora_http_requests_total", status_code="500", **route) == failed_before
    assert await _sample(client, "corpora_http_server_errors_total", **route) == errors_before


async def test_every_answer_names_its_request_id(client: AsyncTestClient[Any]) -> None:
    """A valid incoming X-Request-Id is echoed, an unusable one is replaced, on counted and uncounted paths."""
    for path in ("/api/v1/products", "/healthz", "/api/v1/me"):
        echoed = await client.get(path, headers={"X-Request-Id": "trace-42.a_b"})
        assert echoed.headers.get_list("x-request-id") == ["trace-42.a_b"], path
        replaced = await client.get(path, headers={"X-Request-Id": "not a valid id!"})
        (made,) = replaced.headers.get_list("x-request-id")
        assert made != "not a valid id!", path
        assert len(made) == 16, path


async def test_requests_in_flight_are_written_to_the_gauge_within_its_interval() -> None:
    route = {"method": "GET", "path": "/test/in-flight"}
    release = asyncio.Event()

    async def held(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    metrics = RequestMetrics(held)

    def scope() -> Any:
        return {"type": "http", "method": "GET", "path": route["path"], "path_template": route["path"], "headers": []}

    requests = [asyncio.create_task(metrics(scope(), receive, send)) for _ in range(3)]
    await asyncio.sleep(IN_PROGRESS_EVERY_SECONDS + 0.2)
    assert REGISTRY.get_sample_value("corpora_http_requests_in_progress", route) == 3
    release.set()
    await asyncio.gather(*requests)
    await asyncio.sleep(IN_PROGRESS_EVERY_SECONDS + 0.2)
    assert REGISTRY.get_sample_value("corpora_http_requests_in_progress", route) == 0
