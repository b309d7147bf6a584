"""The EU AI Office's public summary of training content (template of July 2025), filled from a manifest.

Sections follow the template: 1. general information (provider, model, modalities, training data size per
modality in the template's bins), 2. data sources (2.1 publicly available datasets, 2.2 private datasets licensed
from third parties, 2.3 crawled and scraped data with the top domains by size, 2.4 user data, 2.5 synthetic data,
2.6 other sources) and 3. data processing (3.1 respect of text-and-data-mining reservations, 3.2 removal of
illegal content).

Every source is a source of a trained version's provenance. The provenance records no size per source, so an
item's bytes are apportioned among its version's sources: the synthetic fraction to the synthetic ones, the
rest to the others, evenly within each group (``size_basis``). Text sizes in tokens are the inspection profile's
counts for the files it profiled, and estimated at four bytes per token for the others; image counts are file
counts; audio and video durations are not recorded, so they have no bin.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec

from licensing.models.schemas import ModelOut

TEMPLATE = "EU AI Office, Template for the Public Summary of Training Content for general-purpose AI models (July 2025)"
SIZE_BASIS = "apportioned: an item's bytes are shared evenly among its version's sources (synthetic by its fraction)"
BYTES_PER_TOKEN = 4
# (unit, [(upper bound, bin)...], last bin) per modality, as the template offers them.
BINS: dict[str, tuple[str, list[tuple[float, str]], str]] = {
    "text": (
        "tokens",
        [(1e9, "less than 1 billion tokens"), (1e13, "1 billion to 10 trillion tokens")],
        "more than 10 trillion tokens",
    ),
    "image": (
        "images",
        [(1e6, "less than 1 million images"), (1e9, "1 million to 1 billion images")],
        "more than 1 billion images",
    ),
    "audio": (
        "hours",
        [(1e4, "less than 10,000 hours"), (1e6, "10,000 to 1 million hours")],
        "more than 1 million hours",
    ),
    "video": (
        "hours",
        [(1e4, "less than 10,000 hours"), (1e6, "10,000 to 1 million hours")],
        "more than 1 million hours",
    ),
}
PUBLIC_KINDS = ("public_domain", "open_government_data")
SECTION_OF_KIND = {
    "public_domain": "public_datasets",
    "open_government_data": "public_datasets",
    "licensed": "licensed_data",
    "public_web_crawl": "crawled_data",
    "user_contributed_consent": "user_data",
    "synthetic": "synthetic_data",
    "derived": "other_sources",
}
FILTERING_STAGES = ("clean", "test")
HARMFUL_METRICS = ("harmful_content_rate",)
SAMPLE_METRICS = ("sampled_records", "sample_size")


@dataclasses.dataclass(frozen=True, slots=True)
class VersionContext:
    """What the summary reads of a trained version beyond the manifest."""

    product: str
    version: str
    title: str
    modality: str
    languages: list[str]
    provider: str  # the provider organisation's name
    provenance: Mapping[str, Any]
    synthetic_fraction: float | None
    # The inspection profile's (records, tokens) of each profiled file, by path (empty: not profiled).
    profiles: Mapping[str, tuple[int | None, int | None]] = dataclasses.field(default_factory=dict)


class Provider(msgspec.Struct):
    org: str


class ModelRef(msgspec.Struct):
    name: str
    version: str
    description: str


class ModalitySize(msgspec.Struct):
    modality: str
    files: int
    bytes: int
    unit: str | None
    estimate: int | None
    bin: str | None
    basis: str
    records: int | None = None  # counted by the inspection profile, for the files it profiled
    tokens: int | None = None


class General(msgspec.Struct):
    provider: Provider
    model: ModelRef
    modalities: list[str]
    training_data_size: list[ModalitySize]
    languages: list[str]
    latest_collection_date: dt.date | None
    total_bytes: int
    total_files: int


class Dataset(msgspec.Struct):
    product: str
    version: str
    source: str
    kind: str
    modality: str
    url: str | None
    rights_holder: str | None
    licence: str  # under which the model's org obtained the corpus
    bytes: int
    share: float


class Sources(msgspec.Struct, kw_only=True):
    used: bool
    modalities: list[str]
    datasets: list[Dataset]


class LicensedData(Sources, kw_only=True):
    rights_holders: list[str]
    licences: list[str]


class Period(msgspec.Struct):
    source: str
    collected_from: dt.date | None
    collected_to: dt.date | None


class Domain(msgspec.Struct):
    domain: str
    bytes: int
    share: float


class CrawledData(Sources, kw_only=True):
    crawlers: list[str]
    collection_periods: list[Period]
    domains_total: int
    top_domains: list[Domain]
    top_domains_rule: str


class SyntheticData(Sources, kw_only=True):
    generators: list[str]


class OptOutMeasure(msgspec.Struct):
    product: str
    version: str
    source: str
    url: str | None
    robots_txt: str | None
    tdm_reservation: Any
    checked_at: str | None
    user_agent: str | None
    evidence_url: str | None


class TdmOptOut(msgspec.Struct):
    measures: list[OptOutMeasure]
    description: str


class FilteringMeasure(msgspec.Struct):
    product: str
    version: str
    stage: str
    tool: str | None
    description: str
    metrics: dict[str, float]


class IllegalContent(msgspec.Struct):
    measures: list[FilteringMeasure]
    description: str


class TrainingContentSummary(msgspec.Struct):
    template: str
    model_id: str
    manifest_digest: str
    size_basis: str
    general: General
    public_datasets: Sources
    licensed_data: LicensedData
    crawled_data: CrawledData
    user_data: Sources
    synthetic_data: SyntheticData
    other_sources: Sources
    tdm_opt_out: TdmOptOut
    illegal_content: IllegalContent


@dataclasses.dataclass(frozen=True, slots=True)
class SourceShare:
    """One source of a trained version with the bytes apportioned to it."""

    product: str
    version: str
    modality: str
    licence: str
    source: Mapping[str, Any]
    bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class Trained:
    """A version that trained the model, once whatever the items naming it: the files downloaded under any of
    them, each counted once."""

    product: str
    version: str
    licence: str
    files: int
    bytes: int
    sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)  # bytes downloaded by path


def trained_versions(model: ModelOut) -> list[Trained]:
    files: dict[tuple[str, str], dict[tuple[str, str], int]] = defaultdict(dict)
    licences: dict[tuple[str, str], list[str]] = defaultdict(list)
    for item in model.items:
        key = (item.product, item.version)
        files[key].update({(f.path, f.sha256): f.size for f in item.files})
        if item.licence not in licences[key]:
            licences[key].append(item.licence)
    return [
        Trained(
            key[0],
            key[1],
            " / ".join(licences[key]),
            len(found),
            sum(found.values()),
            {p: n for (p, _), n in found.items()},
        )
        for key, found in files.items()
    ]


def apportion(model: ModelOut, contexts: Mapping[tuple[str, str], VersionContext]) -> list[SourceShare]:
    """Every source of every trained version, with its share of the bytes downloaded of that version."""
    shares: list[SourceShare] = []
    for trained in trained_versions(model):
        context = contexts[(trained.product, trained.version)]
        sources = list(context.provenance.get("sources") or [])
        if not sources:
            sources = [{"kind": "derived", "name": f"{context.title} (no provenance recorded)"}]
        synthetic = [s for s in sources if s.get("kind") == "synthetic"]
        others = [s for s in sources if s.get("kind") != "synthetic"]
        fraction = context.synthetic_fraction if synthetic and others else (1.0 if synthetic else 0.0)
        synthetic_bytes = round(trained.bytes * (fraction or 0.0))
        for group, total in ((synthetic, synthetic_bytes), (others, trained.bytes - synthetic_bytes)):
            for index, source in enumerate(group):
                part = total // len(group) + (1 if index < total % len(group) else 0)
                shares.append(
                    SourceShare(trained.product, trained.version, context.modality, trained.licence, source, part)
                )
    return shares


def _share(part: int, total: int) -> float:
    return round(part / total, 6) if total else 0.0


def _unique(values: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


@dataclasses.dataclass(slots=True)
class _Measured:
    """What trained the model in one modality: all files, and those the inspection profile counted."""

    files: int = 0
    bytes: int = 0
    profiled_files: int = 0
    profiled_bytes: int = 0
    records: int = 0
    tokens: int = 0


def _measure(versions: Sequence[Trained], contexts: Mapping[tuple[str, str], VersionContext]) -> dict[str, _Measured]:
    sizes: dict[str, _Measured] = defaultdict(_Measured)
    for version in versions:
        context = contexts[(version.product, version.version)]
        measured = sizes[context.modality]
        measured.files += version.files
        measured.bytes += version.bytes
        for path, size in version.sizes.items():
            records, tokens = context.profiles.get(path, (None, None))
            if records is not None and tokens is not None:
                measured.profiled_files += 1
                measured.profiled_bytes += size
                measured.records += records
                measured.tokens += tokens
    return sizes


def _size(modality: str, measured: _Measured) -> ModalitySize:
    """The template's unit and bin: from the inspection profile's counts where the files were profiled, else
    estimated from the bytes downloaded."""
    unit, bins, last = BINS.get(modality, (None, [], ""))
    files, size = measured.files, measured.bytes
    profiled = measured.profiled_files
    if modality == "text":
        rest = size - measured.profiled_bytes
        estimate: int | None = measured.tokens + rest // BYTES_PER_TOKEN
        if profiled == files:
            basis = "tokens counted by the inspection profile"
        elif profiled:
            basis = (
                f"tokens counted by the inspection profile for {profiled} of {files} files, the rest estimated at "
                f"{BYTES_PER_TOKEN} bytes per token"
            )
        else:
            basis = f"tokens estimated at {BYTES_PER_TOKEN} bytes per token"
    elif modality == "image":
        estimate, basis = files, "one image per file"
    else:
        estimate, basis = None, "the template's unit is not recorded for this modality; bytes and files given"
    chosen = None
    if estimate is not None:
        chosen = next((name for bound, name in bins if estimate < bound), last)
    counted = profiled > 0
    return ModalitySize(
        modality,
        files,
        size,
        unit,
        estimate,
        chosen,
        basis,
        records=measured.records if counted else None,
        tokens=measured.tokens if counted else None,
    )


def _domain(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.removeprefix("www.") if host else None


def top_domains(shares: Sequence[SourceShare], total: int, sme: bool) -> tuple[int, list[Domain], str]:
    """The domains crawled, by bytes: the top 10 %, or for an SME the top 5 % or 1,000, whichever is fewer."""
    sizes: dict[str, int] = defaultdict(int)
    for share in shares:
        if (domain := _domain(share.source.get("url"))) is not None:
            sizes[domain] += share.bytes
    ranked = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))
    if sme:
        count, rule = min(math.ceil(len(ranked) * 0.05), 1000), "SME: the top 5 % of domains by size, at most 1,000"
    else:
        count, rule = math.ceil(len(ranked) * 0.10), "the top 10 % of domains by size"
    return len(ranked), [Domain(d, b, _share(b, total)) for d, b in ranked[:count]], rule


def _dataset(share: SourceShare, total: int) -> Dataset:
    source = share.source
    return Dataset(
        product=share.product,
        version=share.version,
        source=str(source.get("name", "")),
        kind=str(source.get("kind", "")),
        modality=share.modality,
        url=source.get("url"),
        rights_holder=source.get("rights_holder"),
        licence=share.licence,
        bytes=share.bytes,
        share=_share(share.bytes, total),
    )


def _iso_date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None


def build(model: ModelOut, contexts: Mapping[tuple[str, str], VersionContext]) -> TrainingContentSummary:
    shares = apportion(model, contexts)
    versions = trained_versions(model)
    total = sum(t.bytes for t in versions)
    by_section: dict[str, list[SourceShare]] = defaultdict(list)
    for share in shares:
        by_section[SECTION_OF_KIND.get(str(share.source.get("kind")), "other_sources")].append(share)

    def datasets(section: str) -> list[Dataset]:
        return [_dataset(s, total) for s in by_section[section]]

    def modalities(section: str) -> list[str]:
        return sorted({s.modality for s in by_section[section]})

    def sources(section: str) -> Sources:
        return Sources(used=bool(by_section[section]), modalities=modalities(section), datasets=datasets(section))

    sizes = _measure(versions, contexts)
    trained = [contexts[(t.product, t.version)] for t in versions]
    collected = [
        d for s in shares for d in (_iso_date(s.source.get("collected_to")), _iso_date(s.source.get("collected_from")))
    ]
    crawled = by_section["crawled_data"]
    domains_total, domains, rule = top_domains(crawled, total, model.sme)
    crawled_versions = {(s.product, s.version) for s in crawled}
    crawlers = _unique(
        [s.source.get("opt_out_evidence", {}).get("user_agent") for s in crawled]
        + [
            a.get("tool")
            for key in sorted(crawled_versions)
            for a in contexts[key].provenance.get("activities") or []
            if a.get("stage") == "collect"
        ]
    )
    return TrainingContentSummary(
        template=TEMPLATE,
        model_id=str(model.id),
        manifest_digest=model.manifest_digest,
        size_basis=SIZE_BASIS,
        general=General(
            provider=Provider(org=model.org),
            model=ModelRef(name=model.name, version=model.version, description=model.description),
            modalities=sorted(sizes),
            training_data_size=[_size(m, measured) for m, measured in sorted(sizes.items())],
            languages=sorted({lang for c in trained for lang in c.languages}),
            latest_collection_date=max((d for d in collected if d is not None), default=None),
            total_bytes=total,
            total_files=sum(t.files for t in versions),
        ),
        public_datasets=sources("public_datasets"),
        licensed_data=LicensedData(
            used=bool(by_section["licensed_data"]),
            modalities=modalities("licensed_data"),
            datasets=datasets("licensed_data"),
            rights_holders=_unique(s.source.get("rights_holder") for s in by_section["licensed_data"]),
            licences=_unique(s.licence for s in by_section["licensed_data"]),
        ),
        crawled_data=CrawledData(
            used=bool(crawled),
            modalities=modalities("crawled_data"),
            datasets=datasets("crawled_data"),
            crawlers=crawlers,
            collection_periods=[
                Period(
                    str(s.source.get("name", "")),
                    _iso_date(s.source.get("collected_from")),
                    _iso_date(s.source.get("collected_to")),
                )
                for s in crawled
            ],
            domains_total=domains_total,
            top_domains=domains,
            top_domains_rule=rule,
        ),
        user_data=sources("user_data"),
        synthetic_data=SyntheticData(
            used=bool(by_section["synthetic_data"]),
            modalities=modalities("synthetic_data"),
            datasets=datasets("synthetic_data"),
            generators=_unique(s.source.get("generator") for s in by_section["synthetic_data"]),
        ),
        other_sources=sources("other_sources"),
        tdm_opt_out=_tdm_opt_out(crawled),
        illegal_content=_illegal_content(model, contexts),
    )


def _tdm_opt_out(crawled: Sequence[SourceShare]) -> TdmOptOut:
    measures = []
    for share in crawled:
        evidence = share.source.get("opt_out_evidence") or {}
        measures.append(
            OptOutMeasure(
                product=share.product,
                version=share.version,
                source=str(share.source.get("name", "")),
                url=share.source.get("url"),
                robots_txt=evidence.get("robots_txt"),
                tdm_reservation=evidence.get("tdm_reservation"),
                checked_at=str(evidence["checked_at"]) if evidence.get("checked_at") else None,
                user_agent=evidence.get("user_agent"),
                evidence_url=evidence.get("evidence_url"),
            )
        )
    reserved = [m for m in measures if m.tdm_reservation in (True, "reserved") or m.robots_txt == "disallowed"]
    if not measures:
        description = "No training content was crawled."
    else:
        description = (
            f"Each of the {len(measures)} crawled sources records the robots.txt and TDM reservation (W3C TDMRep) "
            "signals its provider saw at collection time, as listed; "
            + (
                f"{len(reserved)} record a reservation or a disallowing robots.txt."
                if reserved
                else "none records a reservation of rights or a disallowing robots.txt."
            )
        )
    return TdmOptOut(measures=measures, description=description)


def _illegal_content(model: ModelOut, contexts: Mapping[tuple[str, str], VersionContext]) -> IllegalContent:
    measures = []
    for key in dict.fromkeys((i.product, i.version) for i in model.items):
        for activity in contexts[key].provenance.get("activities") or []:
            if activity.get("stage") in FILTERING_STAGES:
                measures.append(
                    FilteringMeasure(
                        product=key[0],
                        version=key[1],
                        stage=str(activity["stage"]),
                        tool=activity.get("tool"),
                        description=str(activity.get("description", "")),
                        metrics=dict(activity.get("metrics") or {}),
                    )
                )
    description = (
        f"{len(measures)} cleaning and testing activities recorded in the provenance of the trained versions."
        if measures
        else "The provenance of the trained versions records no cleaning or testing activity."
    )
    return IllegalContent(measures=measures, description=description)


def harmful_content(provenance: Mapping[str, Any]) -> tuple[float | None, int | None]:
    """The harmful-content rate and sample size recorded by the last test (or cleaning) activity that has one."""
    rate, sampled = None, None
    for activity in provenance.get("activities") or []:
        metrics = activity.get("metrics") or {}
        for name in HARMFUL_METRICS:
            if name in metrics:
                rate = float(metrics[name])
                sampled = next((int(metrics[m]) for m in SAMPLE_METRICS if m in metrics), None)
    return rate, sampled
