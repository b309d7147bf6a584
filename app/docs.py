"""The API docs page at ``/schema``: Swagger UI served from assets shipped in the package, at a pinned
version, so the page loads offline and nothing is fetched from a CDN."""

from __future__ import annotations

from pathlib import Path

from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router

SWAGGER_UI_VERSION = "5.35.0"  # app/static/swagger-ui/README.md
ASSETS_DIR = Path(__file__).resolve().parent / "static" / "swagger-ui"
ASSETS_PATH = f"/schema-assets/swagger-ui-{SWAGGER_UI_VERSION}"


def render_plugin() -> SwaggerRenderPlugin:
    return SwaggerRenderPlugin(
        path="/",
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
    )


def assets_router() -> Router:
    # The version is in the path, so the files can be cached for good.
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[ASSETS_DIR],
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=365 * 24 * 3600, public=True),
        name="swagger-ui-assets",
    )
