"""Provenance of a version: the rules beyond its schema.

The schema (``catalog.schemas.ProvenanceIn``) fixes the vocabularies (source kinds, activity stages) and
the types. ``validate_provenance`` adds what a schema cannot say: a synthetic source names its generator,
a crawl records the opt-out signals seen when it ran, a derived source names the version it comes from,
a source's ``url`` is an http(s) URL (the exports link to it), periods run forwards and not into the
future, rates are fractions, and ``synthetic_fraction`` agrees with the sources.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from app.errors import FieldProblem, ProblemError, invalid
from catalog.models import SEMVER

# --- validation ------------------------------------------------------------------------------------------

SOURCE_KINDS = (
    "licensed",
    "public_web_crawl",
    "public_domain",
    "open_government_data",
    "user_contributed_consent",
    "synthetic",
    "derived",
)
STAGES = ("collect", "clean", "label", "test")

# What a crawl records about the opt-out signals it saw (``opt_out_evidence`` of a source).
ROBOTS_TXT_VALUES = ("allowed", "partially_disallowed", "disallowed", "absent", "unreachable")
TDM_RESERVATION_VALUES = ("none", "reserved")
OPT_OUT_REQUIRED = ("robots_txt", "tdm_reservation", "checked_at")
OPT_OUT_OPTIONAL_TEXT = {
    "robots_txt_url": 2000,  # the robots.txt that was read
    "tdm_policy_url": 2000,  # a TDMRep policy (W3C TDM Reservation Protocol) or the page that carries it
    "evidence_url": 2000,  # an archived copy of what was seen
    "user_agent": 300,  # the crawler's user agent, as matched against robots.txt
    "notes": 2000,
}
OPT_OUT_KEYS = (*OPT_OUT_REQUIRED, *OPT_OUT_OPTIONAL_TEXT)

# Metrics whose names end like this, or that are named here, are fractions in [0, 1].
RATE_SUFFIXES = ("_rate", "_fraction")
KNOWN_RATES = frozenset(
    {"dedup_rate", "pii_removed_rate", "harmful_content_rate", "label_agreement", "accuracy", "precision", "recall"}
)
METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")
MAX_METRICS = 100
PRODUCT_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,79}$")
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")
# Providers in time zones ahead of UTC may date things "today" while it is still yesterday in UTC.
DATE_SLACK = dt.timedelta(days=1)
CLOCK_SKEW = dt.timedelta(minutes=5)
MAX_PROBLEMS = 50


def is_rate(metric: str) -> bool:
    return metric in KNOWN_RATES or metric.endswith(RATE_SUFFIXES)


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def as_datetime(value: Any) -> dt.datetime:
    """An aware datetime; one without an offset is read as UTC."""
    parsed = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _as_instant(value: Any) -> dt.datetime:
    """A date (its start, UTC) or a date-time."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime.combine(value, dt.time(), dt.UTC)
    text = str(value)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), dt.UTC)
    return as_datetime(text)


class _Problems:
    def __init__(self) -> None:
        self.items: list[FieldProblem] = []

    def add(self, field: str, message: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(FieldProblem(field=field, message=message))

    def raise_any(self) -> None:
        if len(self.items) == 1:
            raise invalid(self.items[0].field, self.items[0].message)
        if self.items:
            raise ProblemError(
                422,
                "validation-error",
                "Invalid request",
                "; ".join(f"{p.field}: {p.message}" for p in self.items),
                errors=self.items,
            )


def _check_finite(value: Any, field: str, problems: _Problems) -> None:
    """JSON has no NaN or infinity and PostgreSQL's jsonb refuses them: none may be stored."""
    if isinstance(value, float) and not math.isfinite(value):
        problems.add(field, "must be a finite number")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{field}.{key}", problems)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_finite(item, f"{field}[{index}]", problems)


def _check_uri(value: Any, field: str, problems: _Problems) -> None:
    if value is not None and (not isinstance(value, str) or URI.match(value) is None):
        problems.add(field, "must be an absolute URI, e.g. https://example.com/robots.txt")


def _check_web_url(value: Any, field: str, problems: _Problems) -> None:
    """Where a source can be found: exported as a link in Croissant and PROV, so only an http(s) URL."""
    if value is None:
        return
    try:
        parts = urlsplit(value) if isinstance(value, str) and URI.match(value) else None
        host = parts.hostname if parts is not None else None
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not host:
        problems.add(field, "must be an absolute http or https URL, e.g. https://example.com/dataset")


def _check_opt_out(evidence: Any, field: str, problems: _Problems, today: dt.date) -> None:
    if not isinstance(evidence, Mapping):
        problems.add(field, "must be an object")
        return
    for key in evidence:
        if key not in OPT_OUT_KEYS:
            problems.add(f"{field}.{key}", f"is not an opt-out evidence field; known fields: {', '.join(OPT_OUT_KEYS)}")
    robots = evidence.get("robots_txt")
    if robots is None:
        problems.add(f"{field}.robots_txt", f"is required: what robots.txt said, one of {', '.join(ROBOTS_TXT_VALUES)}")
    elif robots not in ROBOTS_TXT_VALUES:
        problems.add(f"{field}.robots_txt", f"must be one of {', '.join(ROBOTS_TXT_VALUES)}")
    tdm = evidence.get("tdm_reservation")
    if tdm is None:
        problems.add(
            f"{field}.tdm_reservation",
            "is required: whether a text-and-data-mining reservation was seen (true/false, or 'reserved'/'none')",
        )
    elif not isinstance(tdm, bool) and tdm not in TDM_RESERVATION_VALUES:
        problems.add(f"{field}.tdm_reservation", "must be true, false, 'reserved' or 'none'")
    checked = evidence.get("checked_at")
    if checked is None:
        problems.add(f"{field}.checked_at", "is required: when the signals were checked (ISO 8601 date or date-time)")
    else:
        try:
            when = _as_instant(checked)
        except (TypeError, ValueError):
            problems.add(f"{field}.checked_at", "must be an ISO 8601 date or date-time, e.g. 2025-06-30T12:00:00Z")
        else:
            if when.date() > today + DATE_SLACK:
                problems.add(f"{field}.checked_at", "is in the future")
    for key, limit in OPT_OUT_OPTIONAL_TEXT.items():
        value = evidence.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > limit:
            problems.add(f"{field}.{key}", f"must be text of at most {limit} characters")
        elif key.endswith("_url"):
            _check_uri(value, f"{field}.{key}", problems)


def _check_source(source: Mapping[str, Any], field: str, problems: _Problems, today: dt.date) -> None:
    kind = source.get("kind")
    _check_web_url(source.get("url"), f"{field}.url", problems)
    if kind == "synthetic" and not str(source.get("generator") or "").strip():
        problems.add(
            f"{field}.generator", "synthetic sources must name their generator (the model or program, and its version)"
        )
    evidence = source.get("opt_out_evidence")
    if kind == "public_web_crawl" and evidence is None:
        problems.add(
            f"{field}.opt_out_evidence",
            "crawled sources must record the opt-out signals seen at collection time: "
            '{"robots_txt": "allowed", "tdm_reservation": false, "checked_at": "2025-06-30T12:00:00Z"}',
        )
    elif evidence is not None:
        _check_opt_out(evidence, f"{field}.opt_out_evidence", problems, today)
    derived = source.get("derived_from")
    if kind == "derived":
        if not derived:
            problems.add(
                f"{field}.derived_from",
                'derived sources name the version they come from: {"product": "slug", "version": "1.0.0"}',
            )
        else:
            _check_derived_from(derived, f"{field}.derived_from", problems)
    elif derived is not None:
        problems.add(f"{field}.derived_from", "only sources of kind 'derived' name a version they come from")
    start, end = None, None
    for key in ("collected_from", "collected_to"):
        if source.get(key) is None:
            continue
        try:
            day = _as_date(source[key])
        except (TypeError, ValueError):
            problems.add(f"{field}.{key}", "must be an ISO 8601 date, e.g. 2025-01-31")
            continue
        if day > today + DATE_SLACK:
            problems.add(f"{field}.{key}", "is in the future")
        start, end = (day, end) if key == "collected_from" else (start, day)
    if start is not None and end is not None and start > end:
        problems.add(f"{field}.collected_to", f"is before collected_from ({start.isoformat()})")


def _check_derived_from(derived: Any, field: str, problems: _Problems) -> None:
    if not isinstance(derived, Mapping):
        problems.add(field, 'must be {"product": "slug", "version": "1.0.0"}')
        return
    for key in derived:
        if key not in ("product", "version"):
            problems.add(f"{field}.{key}", "derived_from names only product and version")
    product, version = derived.get("product"), derived.get("version")
    if not isinstance(product, str) or PRODUCT_SLUG.match(product) is None:
        problems.add(f"{field}.product", "must be the slug of the product the source comes from")
    if not isinstance(version, str) or SEMVER.match(version) is None:
        problems.add(f"{field}.version", "must be the semantic version the source comes from, e.g. 1.0.0")


def _check_activity(activity: Mapping[str, Any], field: str, problems: _Problems, now: dt.datetime) -> None:
    times: dict[str, dt.datetime] = {}
    for key in ("started_at", "ended_at"):
        if activity.get(key) is None:
            continue
        try:
            times[key] = as_datetime(activity[key])
        except (TypeError, ValueError):
            problems.add(f"{field}.{key}", "must be an ISO 8601 date-time, e.g. 2025-06-30T12:00:00Z")
            continue
        if times[key] > now + CLOCK_SKEW:
            problems.add(f"{field}.{key}", "is in the future (a time without an offset is read as UTC)")
    if "started_at" in times and "ended_at" in times and times["ended_at"] < times["started_at"]:
        problems.add(f"{field}.ended_at", f"is before started_at ({times['started_at'].isoformat()})")
    metrics = activity.get("metrics")
    if metrics is None:
        return
    if not isinstance(metrics, Mapping):
        problems.add(f"{field}.metrics", "must be an object of metric names and numbers")
        return
    if len(metrics) > MAX_METRICS:
        problems.add(f"{field}.metrics", f"at most {MAX_METRICS} metrics")
    for name, value in metrics.items():
        where = f"{field}.metrics.{name}"
        if METRIC_NAME.match(str(name)) is None:
            problems.add(where, "metric names are letters, digits, '_' and '-', starting with a letter (at most 100)")
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.add(where, "must be a number")
        elif not math.isfinite(value):
            problems.add(where, "must be a finite number")
        elif is_rate(str(name)) and not 0 <= value <= 1:
            problems.add(where, f"is a rate: give it as a fraction between 0 and 1 (got {value})")


def validate_provenance(data: dict[str, Any]) -> dict[str, Any]:
    """Check the semantic rules of a version's provenance; 422 naming every offending field.

    ``data`` is the provenance as decoded (``ProvenanceIn`` as builtins). Returns it unchanged when it
    holds; raises ``ProblemError`` (422, ``validation-error``) with a field path per problem otherwise,
    e.g. ``provenance.sources[0].generator``.
    """
    problems = _Problems()
    now = dt.datetime.now(dt.UTC)
    _check_finite(data, "provenance", problems)
    sources = data.get("sources") or []
    activities = data.get("activities") or []
    for index, source in enumerate(sources):
        field = f"provenance.sources[{index}]"
        if not isinstance(source, Mapping):
            problems.add(field, "must be an object")
            continue
        if source.get("kind") not in SOURCE_KINDS:
            problems.add(f"{field}.kind", f"must be one of {', '.join(SOURCE_KINDS)}")
        _check_source(source, field, problems, now.date())
    for index, activity in enumerate(activities):
        field = f"provenance.activities[{index}]"
        if not isinstance(activity, Mapping):
            problems.add(field, "must be an object")
            continue
        if activity.get("stage") not in STAGES:
            problems.add(f"{field}.stage", f"must be one of {', '.join(STAGES)}")
        _check_activity(activity, field, problems, now)

    fraction = data.get("synthetic_fraction")
    synthetic = [i for i, s in enumerate(sources) if isinstance(s, Mapping) and s.get("kind") == "synthetic"]
    where = "provenance.synthetic_fraction"
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1
    ):
        problems.add(where, "must be a number between 0 and 1")
    elif synthetic and not fraction:
        listed = ", ".join(f"sources[{i}]" for i in synthetic)
        problems.add(where, f"the sources include synthetic data ({listed}); give the share that is synthetic (> 0)")
    elif fraction and not synthetic:
        problems.add(where, f"is {fraction} but no source has kind 'synthetic'; add it with its generator")
    elif synthetic and len(synthetic) == len(sources) and fraction != 1:
        problems.add(where, f"every source is synthetic, so the synthetic fraction is 1 (got {fraction})")
    problems.raise_any()
    return data
