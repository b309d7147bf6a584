"""The corpus annex of a generative-AI filing in China (TC260-003, Basic security requirements for generative AI
services), as CSV: per source of the training data its licence, its share of the training data and the
harmful-content sampling results recorded in the provenance.

TC260-003 asks each corpus source to be checked by random sampling of at least 4,000 records with at most 5 %
harmful content; ``sampling_requirement_met`` says whether the recorded results show that.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping

from licensing.models.schemas import ModelOut
from licensing.models.summary import VersionContext, apportion, harmful_content, trained_versions

MIN_SAMPLED = 4000
MAX_HARMFUL_RATE = 0.05
COLUMNS = (
    "model",
    "model_version",
    "product",
    "version",
    "source",
    "source_kind",
    "url",
    "rights_holder",
    "legal_basis",
    "licence",
    "collected_from",
    "collected_to",
    "bytes",
    "share_of_training_data",
    "harmful_content_rate",
    "sampled_records",
    "sampling_requirement_met",
)


def _safe(value: object) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _met(rate: float | None, sampled: int | None) -> str:
    if rate is None:
        return "not recorded"
    if rate > MAX_HARMFUL_RATE or (sampled is not None and sampled < MIN_SAMPLED):
        return "no"
    return "yes" if sampled is not None else "sample size not recorded"


def render(model: ModelOut, contexts: Mapping[tuple[str, str], VersionContext]) -> str:
    total = sum(t.bytes for t in trained_versions(model))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for share in apportion(model, contexts):
        source = share.source
        rate, sampled = harmful_content(contexts[(share.product, share.version)].provenance)
        row = (
            model.name,
            model.version,
            share.product,
            share.version,
            source.get("name"),
            source.get("kind"),
            source.get("url"),
            source.get("rights_holder"),
            source.get("legal_basis"),
            share.licence,
            source.get("collected_from"),
            source.get("collected_to"),
            share.bytes,
            f"{share.bytes / total:.6f}" if total else "0",
            "" if rate is None else f"{rate:g}",
            "" if sampled is None else sampled,
            _met(rate, sampled),
        )
        writer.writerow([_safe(v) for v in row])
    return out.getvalue()
