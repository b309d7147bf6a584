"""POST /licensing/check: whether a combination of corpus versions may be used for a purpose, item by item,
with the duties that accumulate and the conflicts between the items' terms."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.catalog.helpers import make_product, make_version
from tests.conftest import Servers, make_org
from tests.licensing.test_licensing import People, assert_problem, published_product, staff_connection

Client = AsyncTestClient[Litestar]

# Short names of the corpora the table below combines, and their licences.
LICENCES = {
    "nc": "CC-BY-NC-4.0",
    "by": "CC-BY-4.0",
    "sa": "CC-BY-SA-4.0",
    "nd": "CC-BY-ND-4.0",
    "cdla": "CDLA-Permissive-2.0",
    "cc0": "CC0-1.0",
    "local": "custom",  # research and pretraining, in Germany and France only
}


@dataclasses.dataclass(frozen=True)
class Shelf:
    slugs: dict[str, str]
    provider_org: str
    custom_licence: str
    draft: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def staff_db(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    async for connection in staff_connection(servers):
        yield connection


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shelf(client: Client, staff_db: asyncpg.Connection, app: Litestar) -> Shelf:
    people = People(staff_db, app)
    reviewer = await people.new("reviewer")
    provider = await people.new()
    org = await make_org(client, provider, kind="provider")
    custom = await client.post(
        "/api/v1/licences",
        json={
            "name": "Regional research",
            "url": "https://example.com/regional",
            "uses": ["research", "pretraining"],
            "duties": ["attribution", "delete_on_termination"],
            "territories": ["DE", "FR"],
        },
        headers=provider.headers,
    )
    assert custom.status_code == 201, custom.text
    custom_id = custom.json()["id"]
    slugs = {}
    for name, licence in LICENCES.items():
        slugs[name] = await published_product(
            client, provider, org, reviewer, licence=custom_id if licence == "custom" else licence
        )
    draft = await make_product(client, provider, org)
    await make_version(client, provider, draft, licence="CC0-1.0")
    return Shelf(slugs, org, custom_id, draft)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    items: list[str]
    use: str
    allowed: bool
    territory: str | None = None
    refused: dict[str, str] = dataclasses.field(default_factory=dict)  # item -> words in its reason
    attribution: list[str] = dataclasses.field(default_factory=list)
    share_alike: list[str] = dataclasses.field(default_factory=list)
    conflict_mentions: list[str] = dataclasses.field(default_factory=list)  # empty: no conflicts


CASES = [
    Case(
        "non-commercial licence refuses a commercial model release",
        ["nc"],
        "commercial_model_release",
        False,
        refused={"nc": "CC-BY-NC-4.0 does not permit commercial_model_release"},
        attribution=["nc"],
    ),
    Case("non-commercial licence allows research", ["nc"], "research", True, attribution=["nc"]),
    Case(
        "one refused item refuses the combination",
        ["by", "nc"],
        "commercial_model_release",
        False,
        refused={"nc": "does not permit commercial_model_release"},
        attribution=["by", "nc"],
    ),
    Case(
        "attribution and share-alike pretraining",
        ["by", "sa"],
        "pretraining",
        True,
        attribution=["by", "sa"],
        share_alike=["sa"],
    ),
    Case(
        "permissive data licence allows commercial release",
        ["cdla"],
        "commercial_model_release",
        True,
        attribution=["cdla"],
    ),
    Case("public domain needs nothing", ["cc0"], "open_weights_release", True),
    Case(
        "share-alike with no-derivatives conflicts in a derived dataset",
        ["sa", "nd"],
        "derivative_datasets",
        False,
        refused={"nd": "does not permit derivative_datasets"},
        attribution=["sa", "nd"],
        share_alike=["sa"],
        conflict_mentions=["CC-BY-ND-4.0", "CC-BY-SA-4.0"],
    ),
    Case(
        "attribution-only data fits inside a share-alike derivative",
        ["sa", "by"],
        "derivative_datasets",
        True,
        attribution=["sa", "by"],
        share_alike=["sa"],
    ),
    Case(
        "share-alike does not bite on training alone",
        ["sa", "nd"],
        "research",
        True,
        attribution=["sa", "nd"],
        share_alike=["sa"],
    ),
    Case(
        "territorial licence outside its territory",
        ["local"],
        "pretraining",
        False,
        territory="US",
        refused={"local": "applies only in DE, FR"},
        attribution=["local"],
    ),
    Case(
        "territorial licence inside its territory",
        ["local"],
        "pretraining",
        True,
        territory="DE",
        attribution=["local"],
    ),
    Case(
        "territorial licence, permitted place but use not granted",
        ["local"],
        "fine_tuning",
        False,
        territory="FR",
        refused={"local": "does not permit fine_tuning"},
        attribution=["local"],
    ),
    Case(
        "worldwide licences ignore the territory",
        ["by", "cc0"],
        "fine_tuning",
        True,
        territory="US",
        attribution=["by"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_licence_check_table(client: Client, shelf: Shelf, case: Case) -> None:
    body: dict[str, Any] = {"items": [{"product": shelf.slugs[name]} for name in case.items], "use": case.use}
    if case.territory is not None:
        body["territory"] = case.territory
    response = await client.post("/api/v1/licensing/check", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["allowed"] is case.allowed, result
    assert result["use"] == case.use
    assert result["territory"] == case.territory

    # One verdict per item, in the order asked, each with its licence and a reason.
    assert [v["product"] for v in result["items"]] == [shelf.slugs[name] for name in case.items]
    for name, verdict in zip(case.items, result["items"], strict=True):
        licence = shelf.custom_licence if LICENCES[name] == "custom" else LICENCES[name]
        assert verdict["licence_id"] == licence
        assert verdict["version"] == "1.0.0"
        assert verdict["reason"]
        if name in case.refused:
            assert verdict["allowed"] is False, verdict
            assert case.refused[name] in verdict["reason"], verdict
        elif not case.conflict_mentions:
            assert verdict["allowed"] is True, verdict

    attribution = result["duties"]["attribution"]
    assert [a["product"] for a in attribution] == [shelf.slugs[name] for name in case.attribution]
    for entry in attribution:
        assert entry["version"] == "1.0.0"
        assert entry["provider"] == shelf.provider_org
        assert entry["title"] == f"Corpus {entry['product']}"
        assert entry["licence"]
    share_alike = result["duties"]["share_alike"]
    assert len(share_alike) == len(case.share_alike)
    for name, entry in zip(case.share_alike, share_alike, strict=True):
        assert shelf.slugs[name] in entry

    if case.conflict_mentions:
        assert result["conflicts"], result
        text = " ".join(result["conflicts"])
        for word in case.conflict_mentions:
            assert word in text
    else:
        assert result["conflicts"] == []


async def test_duties_beyond_attribution_are_listed(client: Client, shelf: Shelf) -> None:
    response = await client.post(
        "/api/v1/licensing/check",
        json={"items": [{"product": shelf.slugs["local"], "version": "1.0.0"}], "use": "research", "territory": "FR"},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["allowed"] is True
    assert result["items"][0]["duties"] == ["attribution", "delete_on_termination"]
    assert result["duties"]["delete_on_termination"] == [f"{shelf.slugs['local']}@1.0.0"]
    assert result["duties"]["usage_reporting"] == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"items": [], "use": "research"}, 422),
        ({"items": [{"product": "x"}], "use": "mind_reading"}, 422),
        ({"items": [{"product": "x"}], "use": "research", "territory": "Germany"}, 422),
        ({"items": [{"product": "x"}], "use": "research", "territory": "de"}, 422),
        ({"items": [{"product": "x", "extra": 1}], "use": "research"}, 422),
        ({"items": [{"product": "no-such-corpus-zzz"}], "use": "research"}, 404),
        ({"items": "x", "use": "research"}, 422),
    ],
    ids=[
        "no items",
        "unknown use",
        "territory name",
        "territory lower case",
        "unknown field",
        "unknown product",
        "items not a list",
    ],
)
async def test_bad_check_input(client: Client, shelf: Shelf, body: dict[str, Any], status: int) -> None:
    assert_problem(await client.post("/api/v1/licensing/check", json=body), status)


async def test_unreleased_versions_are_not_checked(client: Client, shelf: Shelf) -> None:
    unknown_version = await client.post(
        "/api/v1/licensing/check",
        json={"items": [{"product": shelf.slugs["by"], "version": "9.9.9"}], "use": "research"},
    )
    assert_problem(unknown_version, 404, "not-found")
    # A draft product is invisible to an anonymous caller.
    draft = await client.post("/api/v1/licensing/check", json={"items": [{"product": shelf.draft}], "use": "research"})
    assert_problem(draft, 404, "not-found")
    mixed = await client.post(
        "/api/v1/licensing/check",
        json={
            "items": [{"product": shelf.slugs["cc0"]}, {"product": f"missing-{uuid.uuid4().hex[:6]}"}],
            "use": "research",
        },
    )
    assert_problem(mixed, 404, "not-found")
