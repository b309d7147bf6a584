"""A schema-driven fuzz run: every operation of the OpenAPI document, called with generated valid and invalid
requests by a signed-in caller who owns an organisation and a product, against the app served over HTTP on this
run's PostgreSQL and S3 server.

Fails on any 5xx, any status the document does not list for the operation, any content type it does not list,
and any body that does not match its documented schema. A short profile: a few examples per operation.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.settings import Settings
from tests.conftest import PASSWORD
from tests.live_server import live_server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 40


@dataclasses.dataclass(frozen=True)
class Caller:
    url: str
    headers: dict[str, str]


@pytest.fixture(scope="module")
def fuzz_target(settings: Settings) -> Iterator[Caller]:
    """The app on a real socket, and a signed-in provider with an organisation and a product."""
    # The fuzzer signs in and up at random: throttles would answer 429 (documented) and hide everything else.
    fuzzed = dataclasses.replace(settings, login_max_failures=1000, signup_max_per_address=1_000_000)
    with live_server(create_app(fuzzed)) as url, httpx.Client(base_url=url, timeout=30) as http:
        email = f"fuzz-{uuid.uuid4().hex[:10]}@example.com"
        created = http.post("/api/v1/users", json={"email": email, "password": PASSWORD, "display_name": "Fuzz"})
        assert created.status_code == 201, created.text
        token = http.post(
            "/api/v1/auth/token", json={"grant_type": "password", "username": email, "password": PASSWORD}
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        slug = f"fuzz-{uuid.uuid4().hex[:8]}"
        org = http.post("/api/v1/orgs", json={"slug": slug, "name": "Fuzz", "kind": "both"}, headers=headers)
        assert org.status_code == 201, org.text
        product = http.post(
            "/api/v1/products",
            json={
                "org": slug,
                "slug": slug,
                "title": "Fuzzed corpus",
                "summary": "A corpus the fuzzer owns",
                "description": "Made by the schema fuzz run.",
                "industry": "finance",
                "modality": "text",
                "languages": ["en"],
                "tags": ["fuzz"],
                "access": "open",
            },
            headers=headers,
        )
        assert product.status_code == 201, product.text
        yield Caller(url=url, headers=headers)


def test_the_schema_tells_the_truth(fuzz_target: Caller) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_target.url}/schema/openapi.json")
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema has an invalid operation: {result.err()}"
        operation = result.ok()
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def call(case: Any) -> None:
            case.call_and_validate(base_url=fuzz_target.url, headers=fuzz_target.headers, checks=CHECKS)

        try:
            call()
        except (Exception, BaseExceptionGroup) as exc:  # every operation is tried; failures are reported together
            details = "\n".join(str(e) for e in getattr(exc, "exceptions", [exc]))
            failures.append(f"{operation.method.upper()} {operation.path}: {details}"[:3000])
        calls += 1
    assert calls > 40, f"only {calls} operations in the schema"
    assert not failures, "\n\n".join(failures)
