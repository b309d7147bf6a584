"""Catalogue search: full-text terms, filters, facet counts and keyset pagination.

Search terms are words, and CJK characters and character pairs, indexed in a GIN array. Chinese and
Japanese have no spaces between words, so "金融" inside "金融新闻语料" is found by indexing every character
and every pair of adjacent characters; a query matches a product when all of its terms are among the
product's terms (``search_terms @> ARRAY[...]``). No database extension is needed.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
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

from app import pagination
from app.accounts.models import Organization
from app.auth.principal import Principal
from app.errors import ProblemError, invalid
from catalog.models import ACCESS_MODES, INDUSTRIES, MODALITIES, Product, ProductFacetValue
from catalog.service import normalise_language, visible_products
from catalog.terms import query_terms

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
# Which products a use is permitted for is decided by the licences' terms, which live in licensing: triggers
# on product_versions and licences (migration 0007) keep the union of the uses of each product's released
# versions in ``products.uses``, GIN-indexed, so the catalogue filters on it without importing licensing.


# --- the search ----------------------------------------------------------------------------------------------

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_QUERY_LENGTH = 200
FACETS = ("industry", "modality", "language", "access", "org")
FACET_VALUES_MAX = 50  # the most frequent values of each facet

# How a search stays fast on a large catalogue (measured with bench/search_bench.py, which also checks
# with EXPLAIN that no statement reads the products table sequentially):
#
# Facet counts.
# - The whole catalogue, or one provider's, without words or other filters (the landing page): from
#   ``product_facet_values``, a count per status, provider and facet value kept exact by triggers on
#   products — a few dozen rows per provider, whatever the number of products.
# - Otherwise one pass over the matched products counts every facet at once (GROUPING SETS). The indexes
#   say which products match but not their facet values, so each match costs a visit to its row, and the
#   pass stops after FACET_SCAN_LIMIT matches. Up to there the counts are exact. Beyond (a word found in
#   most products, a filter as broad as a whole industry) they are estimates — each value's share among
#   the counted matches times PostgreSQL's estimate of all matches (for such frequent terms it comes from
#   the most-common-element statistics of the arrays) — and ``facets_exact`` is False. Counting every match
#   of a word in 60 % of 122,000 products took 0.5 s through the GIN index, 3.7 s sequentially; a count
#   table of every combination of facet values was tried and dropped: 21,000 rows for 100,000 products,
#   and one row per product once there are many providers.
#
# Plans. PostgreSQL does not charge for decompressing ``search_terms`` (a few hundred terms a product),
# so its cost model would evaluate ``@>`` row by row along the listed_seq index even for a word no
# product has: 6.5 s for 122,000 products. So the shape of each plan is decided here:
# - words, facet filters or `use`: one statement driven by the GIN indexes alone (words, facet filters and
#   uses as GIN conditions, intersected inside the indexes; visibility wrapped so it cannot drive the scan;
#   the matches in a MATERIALIZED CTE, see ``_matched``) collects up to FACET_SCAN_LIMIT + 1 matches,
#   counts their facets and, when that is all of them, picks the page from them too;
# - when there are more, the matches are dense (at least FACET_SCAN_LIMIT in the catalogue) and the page
#   walks the listed_seq index backwards, testing about limit x catalogue / matches rows;
# - sequential scans are off for the transaction: with a LIMIT the planner may otherwise read a table of
#   a million wide rows, decompressing each, to find a rare match.
FACET_SCAN_LIMIT = 5_000
# For the search's transaction (SET LOCAL):
PLANNER = {
    # with a LIMIT the planner may otherwise read a table of a million wide rows, decompressing each
    "enable_seqscan": "off",
    # bitmaps of a million matches must stay exact: a lossy one rechecks, so decompresses, every row
    "work_mem": "32MB",
    # every plan made for the actual words and filters: the prepared statements' generic plans, made for
    # unknown parameters after five executions, walked half a million rows for a query taking 13 ms
    "plan_cache_mode": "force_custom_plan",
}


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
    return pagination.encode((listed_seq,))


def decode_cursor(cursor: str) -> int:
    """The ``listed_seq`` after which the next page starts; 400 for a cursor the listing did not issue."""
    (after,) = pagination.decode(cursor, (int,)) or (0,)
    if after <= 0:
        raise pagination.invalid_cursor()
    return int(after)


def _one_of(field: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise invalid(field, f"unknown value '{value}'; expected one of {', '.join(allowed)}")


def _filters(
    query: SearchQuery, language: str | None, org_id: uuid.UUID | None
) -> tuple[list[str], list[ColumnElement[bool]]]:
    """The facet filters as facet terms (for the GIN index) and as plain column conditions."""
    wanted: list[str] = []
    plain: list[ColumnElement[bool]] = []
    for name, column in (("industry", Product.industry), ("modality", Product.modality), ("access", Product.access)):
        value = getattr(query, name)
        if value is not None:
            wanted.append(f"{name}:{value}")
            plain.append(column == value)
    if language is not None:
        wanted.append(f"language:{language}")
        plain.append(Product.languages.contains([language]))
    if org_id is not None:
        wanted.append(f"org:{org_id}")
        plain.append(Product.org_id == org_id)
    return wanted, plain


def _on_facet_values(condition: ColumnElement[bool]) -> ColumnElement[bool] | None:
    """The visibility ``condition`` on products, rewritten for ``product_facet_values`` (status and org_id);
    None when it needs other columns of products."""
    counts = ProductFacetValue.__table__.c

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


FacetValues = list[tuple[str, str, int]]  # (facet, value, count)


def _facets(values: FacetValues, scale: float = 1.0) -> dict[str, list[tuple[str, int]]]:
    counts: dict[str, dict[str, int]] = {facet: {} for facet in FACETS}
    for facet, value, n in values:
        counts[facet][value] = counts[facet].get(value, 0) + n
    return {
        facet: sorted(
            ((value, round(n * scale)) for value, n in values_.items()), key=lambda item: (-item[1], item[0])
        )[:FACET_VALUES_MAX]
        for facet, values_ in counts.items()
    }


def _counted(matched: Any) -> Select[Any]:
    """Every facet of the ``matched`` rows and their total in one GROUPING SETS pass, with org slugs:
    rows of (industry, modality, access, org_id, org slug, languages, count)."""
    keys = (matched.c.industry, matched.c.modality, matched.c.access, matched.c.org_id, matched.c.languages)
    grouped = (
        select(*keys, func.count().label("n"))
        .group_by(func.grouping_sets(*(tuple_(key) for key in keys), tuple_()))
        .cte("grouped")
    )
    return select(
        grouped.c.industry,
        grouped.c.modality,
        grouped.c.access,
        grouped.c.org_id,
        Organization.slug,
        grouped.c.languages,
        grouped.c.n,
    ).select_from(grouped.outerjoin(Organization, Organization.id == grouped.c.org_id))


def _values_of(rows: Sequence[Sequence[Any]]) -> tuple[FacetValues, int]:
    """(facet, value, count) of the rows of ``_counted``, and the total (the row of the empty set)."""
    values: FacetValues = []
    total = 0
    for row in rows:
        industry, modality, access, org_id, slug, languages, n = row[:7]
        n = int(n or 0)
        if industry is not None:
            values.append(("industry", industry, n))
        elif modality is not None:
            values.append(("modality", modality, n))
        elif access is not None:
            values.append(("access", access, n))
        elif org_id is not None:
            values.append(("org", slug or str(org_id), n))
        elif languages is not None:
            values += [("language", language, n) for language in languages]
        else:
            total = n
    return values, total


def _matched(conditions: Sequence[ColumnElement[bool]], limit: int, *, by_index: bool) -> Any:
    """Up to ``limit`` matching rows. ``by_index``: the matches are a MATERIALIZED CTE, which PostgreSQL
    plans for reading every row (so by total cost: the GIN bitmap, not a walk along some btree testing each
    row) but runs lazily, so the LIMIT applied to it still stops the scan early."""
    hits = (
        select(
            Product.listed_seq,
            Product.industry,
            Product.modality,
            Product.access,
            Product.org_id,
            Product.languages,
        )
        .where(*conditions)
        .cte("hits")
    )
    if by_index:
        hits = hits.prefix_with("MATERIALIZED")
    return select(hits).limit(limit).cte("matched")


async def _page(
    session: AsyncSession, conditions: Sequence[ColumnElement[bool]], after: int | None, limit: int
) -> tuple[list[tuple[Product, str]], str | None]:
    statement = (
        select(Product, Organization.slug)
        .join(Organization, Organization.id == Product.org_id)
        .where(*conditions)
        .order_by(Product.listed_seq.desc())
        .limit(limit + 1)
        .options(defer(Product.search_terms, raiseload=True), defer(Product.facet_terms, raiseload=True))
    )
    if after is not None:
        statement = statement.where(Product.listed_seq < after)
    rows = [(product, slug) for product, slug in await session.execute(statement)]
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_cursor(rows[limit - 1][0].listed_seq)


async def _estimated(
    session: AsyncSession, values: FacetValues, counted: int, conditions: Sequence[ColumnElement[bool]]
) -> dict[str, list[tuple[str, int]]]:
    estimate = await _estimated_rows(session, select(Product.id).where(*conditions))
    return _facets(values, max(estimate, counted) / counted)


async def _indexed_search(
    session: AsyncSession,
    indexed: Sequence[ColumnElement[bool]],
    visible: ColumnElement[bool],
    plain: Sequence[ColumnElement[bool]],
    after: int | None,
    limit: int,
) -> SearchPage:
    """Words, facet filters and use (``indexed``: GIN conditions; ``plain``: the same with plain column
    conditions where there are some, for an ordered walk); see "Plans" above."""
    await _plan_with(session, **PLANNER)
    # coalesce(…): the same rows, but no index can drive the scan by visibility
    matched = _matched([*indexed, func.coalesce(and_(true(), visible), False)], FACET_SCAN_LIMIT + 1, by_index=True)
    counted = _counted(matched).add_columns(cast(null(), BigInteger))
    page_ids = select(*(null() for _ in range(7)), matched.c.listed_seq).order_by(matched.c.listed_seq.desc())
    if after is not None:
        page_ids = page_ids.where(matched.c.listed_seq < after)
    result: Sequence[Any] = (await session.execute(union_all(counted, page_ids.limit(limit + 1)))).all()
    values, total = _values_of([row for row in result if row[7] is None])
    if total <= FACET_SCAN_LIMIT:
        # Every match was collected: the page is among them.
        ids = [row[7] for row in result if row[7] is not None]
        products: list[tuple[Product, str]] = []
        next_cursor = None
        if ids:
            products, _ = await _page(session, [Product.listed_seq.in_(ids)], None, limit + 1)
            if len(products) > limit:
                products = products[:limit]
                next_cursor = encode_cursor(products[-1][0].listed_seq)
        return SearchPage(products, next_cursor, _facets(values), facets_exact=True)
    # Dense: at least FACET_SCAN_LIMIT matches, so walking the listing newest first finds a page soon
    # (and the planner, which estimates such frequent terms well, walks it).
    products, next_cursor = await _page(session, [*plain, visible], after, limit)
    facets = await _estimated(session, values, total, [*indexed, visible])
    return SearchPage(products, next_cursor, facets, facets_exact=False)


async def _listing(
    session: AsyncSession,
    visible: ColumnElement[bool],
    conditions: Sequence[ColumnElement[bool]],
    org_id: uuid.UUID | None,
    after: int | None,
    limit: int,
) -> SearchPage | None:
    """The catalogue, or one provider's, with facets from the count table; None if visibility needs more
    than status and provider."""
    visible_values = _on_facet_values(visible)
    if visible_values is None:
        return None
    v = ProductFacetValue
    scope = [visible_values, v.products > 0, *([v.org_id == org_id] if org_id is not None else [])]
    per_value = select(v.facet, v.value, func.sum(v.products)).where(*scope).group_by(v.facet, v.value)
    per_org = (
        select(literal("org"), Organization.slug, func.sum(v.products))
        .join(Organization, Organization.id == v.org_id)
        .where(*scope, v.facet == "access")  # every product has exactly one access value
        .group_by(Organization.slug)
    )
    values = [(facet, value, int(n)) for facet, value, n in await session.execute(union_all(per_value, per_org))]
    if not any(facet == "org" for facet, _, _ in values):
        return SearchPage([], None, _facets([]), facets_exact=True)
    products, next_cursor = await _page(session, conditions, after, limit)
    return SearchPage(products, next_cursor, _facets(values), facets_exact=True)


async def search_products(session: AsyncSession, principal: Principal | None, query: SearchQuery) -> SearchPage:
    """One page of the products the caller may see that match ``query``, newest listing first, with facets.

    Pages are keyed on ``listed_seq`` (the cursor is its base64), so products listed while a client pages
    through never shift the later pages: no product is repeated or skipped.
    """
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
    org_id = None
    if query.org is not None:
        org_id = await session.scalar(select(Organization.id).where(Organization.slug == query.org))
        if org_id is None:
            return SearchPage([], None, _facets([]), facets_exact=True)

    visible = visible_products(principal)
    wanted, plain = _filters(query, language, org_id)
    # GIN conditions without a plain-column equivalent: the words, the use
    terms_and_use = [
        *([Product.search_terms.contains(words)] if words else []),
        *([Product.uses.contains([query.use])] if query.use is not None else []),
    ]
    if terms_and_use or len(wanted) > (org_id is not None):  # more than the catalogue or one provider's
        indexed = [*terms_and_use, *([Product.facet_terms.contains(wanted)] if wanted else [])]
        return await _indexed_search(session, indexed, visible, [*plain, *terms_and_use], after, query.limit)
    listing = await _listing(session, visible, [visible, *plain], org_id, after, query.limit)
    if listing is not None:
        return listing
    # A visibility that needs more than status and provider: the planner's plans, facets counted up to the limit.
    await _plan_with(session, **PLANNER)
    conditions = [visible, *plain]
    products, next_cursor = await _page(session, conditions, after, query.limit)
    # No index can select these: walking the listing (lazily, with the LIMIT) beats a bitmap of everything.
    rows = (await session.execute(_counted(_matched(conditions, FACET_SCAN_LIMIT + 1, by_index=False)))).all()
    values, total = _values_of(rows)
    if total <= FACET_SCAN_LIMIT:
        return SearchPage(products, next_cursor, _facets(values), facets_exact=True)
    return SearchPage(products, next_cursor, await _estimated(session, values, total, conditions), facets_exact=False)
