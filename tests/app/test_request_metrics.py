"""The per-route request metrics count what clients were answered."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

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
