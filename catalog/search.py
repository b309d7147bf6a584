"""Catalogue search: full-text terms, filters, facet counts and keyset pagination.

Search terms are words, and CJK characters and character pairs, indexed in a GIN array. Chinese and
Japanese have no spaces between words, so "金融" inside "金融新闻语料" is found by indexing every character
and every pair of adjacent characters; a query matches a product when all of its terms are among the
product's terms (``search_terms @> ARRAY[...]``). No database extension is needed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import re
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Executable,
    Select,
    and_,
    cast,
    func,
    literal,
    null,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import defer
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, ColumnClause
from sqlalchemy.sql.visitors import iterate, replacement_traverse

from app.accounts.models import Organization
from app.auth.principal import Principal
from app.errors import ProblemError, invalid
from catalog.models import ACCESS_MODES, INDUSTRIES, MODALITIES, Product, ProductFacetCount, ProductVersion

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_RUNS = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+", re.UNICODE)
_IS_CJK = re.compile(rf"[{_CJK}]")
MAX_TERM_LENGTH = 64


def _run_terms(run: str, *, for_query: bool) -> list[str]:
    if not _IS_CJK.match(run):
        return [run[:MAX_TERM_LENGTH]]
    if len(run) == 1:
        return [run]
    pairs = [run[i : i + 2] for i in range(len(run) - 1)]
    return pairs if for_query else [*run, *pairs]


def terms(texts: Iterable[str], *, for_query: bool = False) -> list[str]:
    """The distinct terms of ``texts``, NFKC-normalised (full-width letters are letters) and lower-cased."""
    seen: dict[str, None] = {}
    for text in texts:
        for run in _RUNS.findall(unicodedata.normalize("NFKC", text).lower()):
            for term in _run_terms(run, for_query=for_query):
                seen.setdefault(term, None)
    return list(seen)


def product_terms(title: str, summary: str, description: str, tags: Iterable[str]) -> list[str]:
    return terms([title, summary, description, *tags])


def query_terms(q: str) -> list[str]:
    return terms([q], for_query=True)


# --- permitted uses ----------------------------------------------------------------------------------------

# The AI-use vocabulary of licences (see the design's Licence entity).
Use = Literal[
    "research",
    "evaluation",
    "pretraining",
    "fine_tuning",
    "rag_indexing",
    "synthetic_data_generation",
    "commercial_model_release",
    "open_weights_release",
    "redistribution",
    "derivative_datasets",
]
USES: tuple[str, ...] = get_args(Use)
_ALL_USES = frozenset(USES)
_NON_COMMERCIAL = _ALL_USES - {"commercial_model_release"}
_NO_DERIVATIVES = frozenset({"research", "evaluation", "rag_indexing", "redistribution"})
_NON_COMMERCIAL_NO_DERIVATIVES = frozenset({"research", "evaluation", "redistribution"})

# Until the licensing module exists, a version's ``licence_id`` is an SPDX id and the uses each id permits
# come from this table: the `use` filter of the search lists products with a released version under one
# of the ids permitting that use. Ids not in the table (compound expressions, LicenseRef-…) permit nothing
# here. The licensing module replaces this table (and ``licences_permitting``) with its licences' terms.
LICENCE_USES: dict[str, frozenset[str]] = {
    "CC0-1.0": _ALL_USES,
    "PDDL-1.0": _ALL_USES,
    "CC-BY-4.0": _ALL_USES,
    "ODC-By-1.0": _ALL_USES,
    "CDLA-Permissive-2.0": _ALL_USES,
    "MIT": _ALL_USES,
    "Apache-2.0": _ALL_USES,
    "CC-BY-SA-4.0": _ALL_USES,  # share-alike is a duty, not a restriction of use
    "ODbL-1.0": _ALL_USES,
    "CDLA-Sharing-1.0": _ALL_USES,
    "CC-BY-NC-4.0": _NON_COMMERCIAL,
    "CC-BY-NC-SA-4.0": _NON_COMMERCIAL,
    "CC-BY-ND-4.0": _NO_DERIVATIVES,
    "CC-BY-NC-ND-4.0": _NON_COMMERCIAL_NO_DERIVATIVES,
}


def licences_permitting(use: str) -> list[str]:
    """The licence ids under which ``use`` is permitted, sorted."""
    return sorted(licence for licence, uses in LICENCE_USES.items() if use in uses)


def use_condition(use: str) -> ColumnElement[bool]:
    """Products with a released (published or deprecated) version under a licence that permits ``use``.

    The hook for the licensing module: it replaces this (or ``LICENCE_USES``) with its licences' terms.
    A correlated scalar subquery, looked up per candidate product through the versions' product_id index:
    PostgreSQL would turn an EXISTS into a hash of every released version of the catalogue.
    """
    return (
        select(literal(1))
        .where(
            ProductVersion.product_id == Product.id,
            ProductVersion.state.in_(RELEASED),
            ProductVersion.licence_id.in_(licences_permitting(use)),
        )
        .limit(1)
        .scalar_subquery()
        .is_not(None)
    )


# --- the search ----------------------------------------------------------------------------------------------

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_QUERY_LENGTH = 200
RELEASED = ("published", "deprecated")
FACETS = ("industry", "modality", "language", "access", "org")
FACET_VALUES_MAX = 50  # the most frequent values of each facet

# How a search stays fast on a large catalogue (measured with bench/search_bench.py, which also checks
# with EXPLAIN that no statement reads the products table sequentially):
#
# Facet counts.
# - Without words or `use`, facets come from ``product_facet_counts``: one row per combination of
#   status, provider, industry, modality, access and language set, kept exact by triggers on products.
#   Its size is bounded by those combinations, not by the products (about 23,000 rows for 100,000
#   seeded products), so browsing and filtering cost about the same at any catalogue size, counts are
#   exact, and a filter combination nobody has answers without touching products at all.
# - With words (or `use`), one pass over the matched products counts every facet at once (GROUPING
#   SETS). The GIN index says which products match but not their facet values, so each match costs a
#   visit to its row: the pass stops after FACET_SCAN_LIMIT matches. Up to there the counts are exact.
#   Beyond (a word found in most products) they are estimates — each value's share among the counted
#   matches times PostgreSQL's estimate of all matches, which for such common words comes from the
#   column's most-common-element statistics — and ``facets_exact`` is False. Counting every match of a
#   word in 60 % of 122,000 products took 0.5 s (GIN bitmap) to 3.7 s (sequential scan).
#
# Plans. PostgreSQL does not charge for decompressing ``search_terms`` (a few hundred terms a product),
# so its cost model would evaluate ``@>`` row by row along the listed_seq index even for a word no
# product has: 6.5 s for 122,000 products. So the shape of each plan is decided here, per statement:
# - words: one statement, driven by the GIN index alone (plain index scans off; the other conditions
#   wrapped so no other index can drive it), collects up to FACET_SCAN_LIMIT + 1 matches, counts their
#   facets, and when that is all of them also picks the page from them;
# - when there are more, matches are dense (at least FACET_SCAN_LIMIT in the catalogue), and the page
#   walks the listed_seq index backwards (bitmap scans off), evaluating ``@>`` on about
#   limit x catalogue / matches rows;
# - without words, no condition reads search_terms and the planner's choice stands (sequential scans
#   off: with a LIMIT it may otherwise read a table of a million wide rows for a rare filter).
FACET_SCAN_LIMIT = 5_000


@dataclasses.dataclass(frozen=True)
class SearchQuery:
    q: str | None = None
    industry: str | None = None
    modality: str | None = None
    language: str | None = None
    access: str | None = None
    org: str | None = None
    use: str | None = None
    cursor: str | None = None
    limit: int = DEFAULT_LIMIT


@dataclasses.dataclass
class SearchPage:
    products: list[tuple[Product, str]]  # with the provider's org slug, newest listing first
    next_cursor: str | None
    facets: dict[str, list[tuple[str, int]]]
    facets_exact: bool


def encode_cursor(listed_seq: int) -> str:
    return base64.urlsafe_b64encode(str(listed_seq).encode()).decode().rstrip("=")


_CURSOR_TEXT = re.compile(r"[1-9][0-9]{0,18}")


def decode_cursor(cursor: str) -> int:
    """The ``listed_seq`` after which the next page starts; 422 for anything but a cursor we issued."""
    text = None
    with contextlib.suppress(binascii.Error, ValueError):
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    if text is None or not _CURSOR_TEXT.fullmatch(text) or encode_cursor(int(text)) != cursor:
        raise invalid("cursor", "not a cursor of this listing; pass the next_cursor of the previous page")
    return int(text)


def _one_of(field: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise invalid(field, f"unknown value '{value}'; expected one of {', '.join(allowed)}")


def _filters(
    columns: Any, query: SearchQuery, language: str | None, org_id: uuid.UUID | None
) -> list[ColumnElement[bool]]:
    """The filters on ``columns`` (products or the facet count table: both have these columns)."""
    conditions: list[ColumnElement[bool]] = []
    for name in ("industry", "modality", "access"):
        value = getattr(query, name)
        if value is not None:
            conditions.append(getattr(columns, name) == value)
    if language is not None:
        conditions.append(columns.languages.contains([language]))
    if org_id is not None:
        conditions.append(columns.org_id == org_id)
    return conditions


def _on_counts(condition: ColumnElement[bool]) -> ColumnElement[bool] | None:
    """The visibility ``condition`` on products, rewritten for the facet count table (status and org_id);
    None when it needs other columns of products, so facets are then counted on products."""
    counts = ProductFacetCount.__table__.c

    def of_products(element: Any) -> bool:
        table = getattr(element, "table", None)
        return isinstance(element, ColumnClause) and getattr(table, "name", None) == Product.__tablename__

    def replace(element: Any) -> Any:
        if of_products(element) and element.name in ("status", "org_id"):
            return counts[element.name]
        return None

    rewritten: ColumnElement[bool] = replacement_traverse(condition, {}, replace)  # type: ignore[call-overload]
    if any(of_products(element) for element in iterate(rewritten)):
        return None
    return rewritten


class _Explain(Executable, ClauseElement):
    """``EXPLAIN (FORMAT JSON)`` of a select, for the planner's estimate of its rows."""

    inherit_cache = False

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement


@compiles(_Explain, "postgresql")
def _compile_explain(element: _Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)


async def _estimated_rows(session: AsyncSession, statement: Select[Any]) -> int:
    plan = (await session.execute(_Explain(statement))).scalar_one()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


async def _plan_with(session: AsyncSession, **settings: str) -> None:
    """Planner settings for the rest of this transaction (``SET LOCAL``), in one round trip."""
    await session.execute(select(*(func.set_config(name, value, True) for name, value in settings.items())))


def _grouping_sets(columns: Sequence[Any], *, total: bool) -> Any:
    sets = [tuple_(column) for column in columns]
    return func.grouping_sets(*sets, tuple_()) if total else func.grouping_sets(*sets)


_FacetRows = Sequence[Sequence[Any]]  # (industry, modality, access, org_id, languages, count) per grouping set


async def _facets_from(session: AsyncSession, rows: _FacetRows, scale: float = 1.0) -> dict[str, list[tuple[str, int]]]:
    counts: dict[str, dict[Any, int]] = {facet: {} for facet in FACETS}
    for row in rows:
        industry, modality, access, org_id, languages, n = row[0], row[1], row[2], row[3], row[4], int(row[5] or 0)
        for facet, value in (("industry", industry), ("modality", modality), ("access", access), ("org", org_id)):
            if value is not None:
                counts[facet][value] = counts[facet].get(value, 0) + n
        for language in languages or ():
            counts["language"][language] = counts["language"].get(language, 0) + n
    if counts["org"]:
        found = await session.execute(
            select(Organization.id, Organization.slug).where(Organization.id.in_(counts["org"]))
        )
        slugs = {org_id: slug for org_id, slug in found}
        counts["org"] = {slugs[org_id]: n for org_id, n in counts["org"].items() if org_id in slugs}
    return {
        facet: sorted(
            ((str(value), round(n * scale)) for value, n in values.items()), key=lambda item: (-item[1], item[0])
        )[:FACET_VALUES_MAX]
        for facet, values in counts.items()
    }


def _total(rows: _FacetRows) -> int:
    """The count of the empty grouping set ``()``: the row whose facet columns are all NULL."""
    return next((int(row[5] or 0) for row in rows if all(value is None for value in row[:5])), 0)


async def _page(
    session: AsyncSession, conditions: Sequence[ColumnElement[bool]], after: int | None, limit: int
) -> tuple[list[tuple[Product, str]], str | None]:
    statement = (
        select(Product, Organization.slug)
        .join(Organization, Organization.id == Product.org_id)
        .where(*conditions)
        .order_by(Product.listed_seq.desc())
        .limit(limit + 1)
        .options(defer(Product.search_terms, raiseload=True))
    )
    if after is not None:
        statement = statement.where(Product.listed_seq < after)
    rows = [(product, slug) for product, slug in await session.execute(statement)]
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_cursor(rows[limit - 1][0].listed_seq)


async def _counted_facets(
    session: AsyncSession, conditions: Sequence[ColumnElement[bool]]
) -> tuple[dict[str, list[tuple[str, int]]], bool]:
    """Facets over up to FACET_SCAN_LIMIT matches (queries with `use` and no words)."""
    matched = (
        select(Product.industry, Product.modality, Product.access, Product.org_id, Product.languages)
        .where(*conditions)
        .limit(FACET_SCAN_LIMIT + 1)
        .subquery()
    )
    keys = (matched.c.industry, matched.c.modality, matched.c.access, matched.c.org_id, matched.c.languages)
    rows = (await session.execute(select(*keys, func.count()).group_by(_grouping_sets(keys, total=True)))).all()
    counted = _total(rows)
    if counted <= FACET_SCAN_LIMIT:
        return await _facets_from(session, rows), True
    estimate = await _estimated_rows(session, select(Product.id).where(*conditions))
    return await _facets_from(session, rows, max(estimate, counted) / counted), False


async def _text_search(
    session: AsyncSession,
    words: list[str],
    others: Sequence[ColumnElement[bool]],
    after: int | None,
    limit: int,
) -> SearchPage:
    """Words: see "Plans" above."""
    await _plan_with(session, enable_indexscan="off")
    matched = (
        select(
            Product.listed_seq,
            Product.industry,
            Product.modality,
            Product.access,
            Product.org_id,
            Product.languages,
        )
        # coalesce(…): the same rows, but no condition other than the words can drive the scan
        .where(Product.search_terms.contains(words), func.coalesce(and_(true(), *others), False))
        .limit(FACET_SCAN_LIMIT + 1)
        .cte("matched")
    )
    keys = (matched.c.industry, matched.c.modality, matched.c.access, matched.c.org_id, matched.c.languages)
    facet_rows = select(*keys, func.count(), cast(null(), BigInteger)).group_by(_grouping_sets(keys, total=True))
    page_ids = select(null(), null(), null(), null(), null(), null(), matched.c.listed_seq).order_by(
        matched.c.listed_seq.desc()
    )
    if after is not None:
        page_ids = page_ids.where(matched.c.listed_seq < after)
    result = (await session.execute(union_all(facet_rows, page_ids.limit(limit + 1)))).all()
    rows = [row for row in result if row[6] is None]
    counted = _total(rows)
    conditions = [*others, Product.search_terms.contains(words)]
    if counted <= FACET_SCAN_LIMIT:
        # Every match was collected: the page is among them.
        ids = [row[6] for row in result if row[6] is not None]
        products: list[tuple[Product, str]] = []
        next_cursor = None
        if ids:
            products, _ = await _page(session, [Product.listed_seq.in_(ids)], None, limit + 1)
            if len(products) > limit:
                products = products[:limit]
                next_cursor = encode_cursor(products[-1][0].listed_seq)
        return SearchPage(products, next_cursor, await _facets_from(session, rows), facets_exact=True)
    # Dense: at least FACET_SCAN_LIMIT matches, so walking the listing newest first finds a page soon.
    await _plan_with(session, enable_indexscan="on", enable_bitmapscan="off")
    products, next_cursor = await _page(session, conditions, after, limit)
    await _plan_with(session, enable_bitmapscan="on")
    estimate = await _estimated_rows(session, select(Product.id).where(*conditions))
    facets = await _facets_from(session, rows, max(estimate, counted) / counted)
    return SearchPage(products, next_cursor, facets, facets_exact=False)


async def search_products(session: AsyncSession, principal: Principal | None, query: SearchQuery) -> SearchPage:
    """One page of the products the caller may see that match ``query``, newest listing first, with facets.

    Pages are keyed on ``listed_seq`` (the cursor is its base64), so products listed while a client pages
    through never shift the later pages: no product is repeated or skipped.
    """
    from catalog.service import normalise_language, visible_products

    _one_of("industry", query.industry, INDUSTRIES)
    _one_of("modality", query.modality, MODALITIES)
    _one_of("access", query.access, ACCESS_MODES)
    _one_of("use", query.use, USES)
    if not 1 <= query.limit <= MAX_LIMIT:
        raise invalid("limit", f"between 1 and {MAX_LIMIT}")
    if query.q is not None and len(query.q) > MAX_QUERY_LENGTH:
        raise invalid("q", f"at most {MAX_QUERY_LENGTH} characters")
    language = None
    if query.language is not None:
        try:
            language = normalise_language(query.language)
        except ProblemError:
            raise invalid("language", f"'{query.language}' is not a BCP 47 language tag (e.g. en, zh-Hans)") from None
    after = decode_cursor(query.cursor) if query.cursor is not None else None
    words = query_terms(query.q) if query.q else []
    empty = SearchPage(products=[], next_cursor=None, facets={f: [] for f in FACETS}, facets_exact=True)
    org_id = None
    if query.org is not None:
        # Resolved first: the planner then estimates with the org's own statistics, not a guess.
        org_id = await session.scalar(select(Organization.id).where(Organization.slug == query.org))
        if org_id is None:
            return empty

    # Large bitmaps of matches must stay exact (a lossy one rechecks, so decompresses, every row).
    await _plan_with(session, enable_seqscan="off", work_mem="64MB")
    visible = visible_products(principal)
    conditions = [visible, *_filters(Product, query, language, org_id)]
    if query.use is not None:
        conditions.append(use_condition(query.use))
    if words:
        return await _text_search(session, words, conditions, after, query.limit)
    visible_counts = _on_counts(visible) if query.use is None else None
    if visible_counts is None:
        products, next_cursor = await _page(session, conditions, after, query.limit)
        facets, exact = await _counted_facets(session, conditions)
        return SearchPage(products, next_cursor, facets, exact)
    c = ProductFacetCount
    keys = (c.industry, c.modality, c.access, c.org_id, c.languages)
    counted = (
        select(*keys, func.sum(c.products))
        .where(visible_counts, c.products > 0, *_filters(ProductFacetCount, query, language, org_id))
        .group_by(_grouping_sets(keys, total=True))
    )
    rows = (await session.execute(counted)).all()
    if _total(rows) == 0:
        return empty
    products, next_cursor = await _page(session, conditions, after, query.limit)
    return SearchPage(products, next_cursor, await _facets_from(session, rows), facets_exact=True)
