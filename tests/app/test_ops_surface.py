"""What operators and integrators touch besides the API: the docs page loads offline, /metrics is not
public unless configured."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from litestar.testing import AsyncTestClient

from app.docs import SWAGGER_UI_VERSION
from app.main import create_app
from app.settings import Settings
from tests.conftest import METRICS_HEADERS


async def test_the_docs_page_loads_pinned_assets_from_the_package(client: AsyncTestClient[Any]) -> None:
    page = await client.get("/schema")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    referenced = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert referenced, html
    for url in referenced:
        assert url.startswith("/"), f"{url} is not served by the API itself"
        assert SWAGGER_UI_VERSION in url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 500
        assert "max-age" in asset.headers.get("cache-control", "")
    kinds = {url.rsplit(".", 1)[1] for url in referenced}
    assert {"js", "css"} <= kinds
    assert "cdn." not in html
    assert "https://" not in html.split("<body>")[0]  # nothing in the head comes from elsewhere
    assert (await client.get("/schema/openapi.json")).status_code == 200


async def test_metrics_need_the_configured_token(client: AsyncTestClient[Any]) -> None:
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
    scraped = await client.get("/metrics", headers=METRICS_HEADERS)
    assert scraped.status_code == 200
    assert "corpora_http_requests_total" in scraped.text


async def test_metrics_are_off_without_a_token_and_public_only_when_asked(settings: Settings) -> None:
    closed = create_app(dataclasses.replace(settings, metrics_token=None))
    async with AsyncTestClient(app=closed) as api:
        assert (await api.get("/metrics")).status_code == 404
        assert (await api.get("/metrics", headers=METRICS_HEADERS)).status_code == 404
    public = create_app(dataclasses.replace(settings, metrics_token=None, metrics_public=True))
    async with AsyncTestClient(app=public) as api:
        assert (await api.get("/metrics")).status_code == 200
