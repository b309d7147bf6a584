"""What the OpenAPI document says of the answers every client meets: the statuses that are not a handler's own
(a late body, a dependency down, a quota), the headers that come with them, and the answers of a ranged download
and of a replayed order."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar

METHODS = ("get", "put", "post", "patch", "delete", "head")


@pytest.fixture(scope="module")
def document(app: Litestar) -> dict[str, Any]:
    schema: dict[str, Any] = app.openapi_schema.to_schema()
    return schema


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, item[method])
        for path, item in document["paths"].items()
        for method in METHODS
        if method in item
    ]


def test_every_503_names_retry_after_and_every_429_may(document: dict[str, Any]) -> None:
    checked = 0
    for method, path, operation in operations(document):
        for status, required in (("503", True), ("429", False)):
            if status in operation["responses"]:
                header = operation["responses"][status].get("headers", {}).get("Retry-After")
                assert header is not None, f"{method} {path} {status}"
                assert header["required"] is required
                assert header["schema"]["type"] == "integer"
                checked += 1
    assert checked > 50


def test_every_operation_with_a_body_documents_a_late_body(document: dict[str, Any]) -> None:
    with_body = [(m, p, op) for m, p, op in operations(document) if "requestBody" in op]
    assert len(with_body) > 20
    for method, path, operation in with_body:
        late = operation["responses"].get("408")
        assert late is not None, f"{method} {path}"
        assert "application/problem+json" in late["content"]


def test_a_proxied_download_documents_its_ranges(document: dict[str, Any]) -> None:
    item = document["paths"]["/api/v1/downloads/{download_id}/content"]
    assert list(item["get"]["responses"]["200"]["content"]) == ["application/octet-stream"]
    for method in ("get", "head"):
        responses = item[method]["responses"]
        assert "application/octet-stream" in responses["206"]["content"], method
        assert "application/problem+json" in responses["416"]["content"], method
    assert any(p["name"] == "Range" and p["in"] == "header" for p in item["get"]["parameters"])


def test_a_replayed_order_and_an_existing_member_are_documented(document: dict[str, Any]) -> None:
    order = document["paths"]["/api/v1/orders"]["post"]["responses"]
    for status in ("200", "201"):
        assert order[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OrderOut"}
    member = document["paths"]["/api/v1/orgs/{org}/members"]["post"]["responses"]
    assert "already-member" in member["409"]["description"]


def test_file_routes_are_documented_at_the_paths_clients_call(document: dict[str, Any]) -> None:
    """``…/files/{file_id}/complete`` and ``DELETE …/files/{file_id}`` are served by the ``…/files/{path}`` route
    (a path parameter takes the rest of the URL) but documented as the contract names them."""
    files = "/api/v1/products/{slug}/versions/{version}/files"
    assert set(document["paths"][f"{files}/{{path}}"]) & set(METHODS) == {"get"}
    complete = document["paths"][f"{files}/{{file_id}}/complete"]["post"]
    removal = document["paths"][f"{files}/{{file_id}}"]["delete"]
    for operation in (complete, removal):
        parameters = {p["name"]: p for p in operation["parameters"]}
        assert set(parameters) == {"slug", "version", "file_id"}
        assert parameters["file_id"]["schema"] == {"type": "string", "format": "uuid"}
        assert parameters["file_id"]["in"] == "path"
    assert complete["requestBody"]["required"] is False
    assert "408" in complete["responses"]
