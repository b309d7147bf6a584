"""Exports of a version's provenance: Croissant JSON-LD and W3C PROV-JSON.

The exports are built from the stored provenance (checked by ``catalog.provenance_rules``), the product and
the verified files:

- ``croissant_document``: Croissant 1.1 JSON-LD with the Responsible-AI (RAI 1.0) properties, one
  ``cr:FileObject`` per file, and the sources and activities as PROV-O terms (as the Croissant
  specification recommends for provenance).
- ``prov_document``: W3C PROV-JSON (https://www.w3.org/submissions/prov-json/). The version is a
  ``prov:Collection`` whose members are its files; each processing activity used the output of the
  previous stage (the first used the sources) and generated the next one, so the last one generated
  the version; test activities used the version. Identifiers of sources, activities and agents are
  fragments of the version's provenance URL.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import Organization
from app.auth.principal import Principal
from catalog import service
from catalog.inspection.models import FileProfileRow
from catalog.models import Product, ProductVersion, VersionFile
from catalog.provenance_rules import STAGES, as_datetime

# --- exports ---------------------------------------------------------------------------------------------

CROISSANT_SPEC = "http://mlcommons.org/croissant/1.1"
CROISSANT_RAI_SPEC = "http://mlcommons.org/croissant/RAI/1.0"
CROISSANT_MEDIA_TYPE = f'application/ld+json; profile="{CROISSANT_SPEC}"'
PROV_JSON_MEDIA_TYPE = "application/json"
# The JSON-LD context of Croissant 1.1 (as in the specification's examples), with the RAI and PROV namespaces.
CROISSANT_CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "annotation": "cr:annotation",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileObject": "cr:fileObject",
    "fileProperty": "cr:fileProperty",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "prov": "http://www.w3.org/ns/prov#",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
# Terms of our own in the PROV-JSON document (the corpus platform's provenance vocabulary).
VOCABULARY = "urn:corpora:provenance#"
METRICS_VOCABULARY = "urn:corpora:provenance:metric#"
# RAI recommended data collection types (rai:dataCollectionType) for each kind of source.
COLLECTION_TYPES = {
    "licensed": "Secondary Data analysis",
    "public_web_crawl": "Web Scraping",
    "public_domain": "Secondary Data analysis",
    "open_government_data": "Secondary Data analysis",
    "user_contributed_consent": "User-generated content data",
    "synthetic": "Others (synthetic data generation)",
    "derived": "Secondary Data analysis",
}
KIND_LABELS = {
    "licensed": "licensed",
    "public_web_crawl": "public web crawl",
    "public_domain": "public domain",
    "open_government_data": "open government data",
    "user_contributed_consent": "user-contributed with consent",
    "synthetic": "synthetic",
    "derived": "derived",
}
PRODUCTION_STAGES = ("collect", "clean", "label")
SPDX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*\+?$")


@dataclasses.dataclass(frozen=True)
class VersionExport:
    """What both exports are made of; ``base_url`` is the service's origin, e.g. ``https://corpora.example``."""

    product: Product
    org: Organization
    version: ProductVersion
    files: Sequence[VersionFile]
    base_url: str
    # The inspection profile of each profiled file, by path (its format and fields make the record sets).
    profiles: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def api(self) -> str:
        return self.base_url.rstrip("/") + "/api/v1"

    @property
    def version_url(self) -> str:
        return f"{self.api}/products/{self.product.slug}/versions/{quote(self.version.version, safe='')}"

    @property
    def provenance_url(self) -> str:
        return f"{self.version_url}/provenance"

    def file_url(self, path: str) -> str:
        return f"{self.version_url}/files/{quote(path, safe='/')}"

    @property
    def provenance(self) -> dict[str, Any]:
        return self.version.provenance or {}

    @property
    def sources(self) -> list[dict[str, Any]]:
        return [s for s in self.provenance.get("sources") or [] if isinstance(s, dict)]

    @property
    def activities(self) -> list[dict[str, Any]]:
        return [a for a in self.provenance.get("activities") or [] if isinstance(a, dict)]


async def load_version_export(
    session: AsyncSession, principal: Principal | None, slug: str, version: str, base_url: str
) -> VersionExport:
    """The version as the caller may read it (drafts only for its org's members and platform staff: else 404)."""
    product, _org_slug, row, _role = await service.version_for_reading(session, principal, slug, version)
    files = await service.version_files(session, row.id, status="verified")
    org = await session.scalar(select(Organization).where(Organization.id == product.org_id))
    assert org is not None  # a foreign key
    profiled = await session.execute(
        select(VersionFile.path, FileProfileRow.profile)
        .join(FileProfileRow, FileProfileRow.file_id == VersionFile.id)
        .where(VersionFile.version_id == row.id, FileProfileRow.finished_at.is_not(None))
    )
    profiles = {path: profile for path, profile in profiled if profile}
    return VersionExport(product=product, org=org, version=row, files=files, base_url=base_url, profiles=profiles)


def licence_url(licence_id: str) -> str | None:
    """The SPDX page of an SPDX licence id; None for custom (``LicenseRef-``) licences and expressions."""
    if SPDX_ID.match(licence_id) is None or licence_id.startswith("LicenseRef-"):
        return None
    return f"https://spdx.org/licenses/{licence_id}.html"


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _metrics_text(metrics: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{name} = {value:g}" for name, value in (metrics or {}).items() if isinstance(value, int | float))


def activity_summary(activity: Mapping[str, Any]) -> str:
    """One line: the description, then tool, operator, period and metrics when known."""
    details = []
    if activity.get("tool"):
        details.append(f"tool: {activity['tool']}")
    if activity.get("operator"):
        details.append(f"operator: {activity['operator']}")
    if activity.get("started_at") or activity.get("ended_at"):
        details.append(f"{activity.get('started_at') or '?'} to {activity.get('ended_at') or '?'}")
    if activity.get("parameters"):
        details.append("parameters: " + json.dumps(activity["parameters"], sort_keys=True, ensure_ascii=False))
    if activity.get("metrics"):
        details.append("metrics: " + _metrics_text(activity["metrics"]))
    text = str(activity.get("description") or activity.get("stage") or "")
    return f"{text} ({'; '.join(details)})" if details else text


def source_summary(source: Mapping[str, Any]) -> str:
    parts = [f"{source.get('name')} ({KIND_LABELS.get(str(source.get('kind')), source.get('kind'))})"]
    if source.get("url"):
        parts.append(str(source["url"]))
    if source.get("rights_holder"):
        parts.append(f"rights holder: {source['rights_holder']}")
    if source.get("legal_basis"):
        parts.append(f"legal basis: {source['legal_basis']}")
    if source.get("collected_from") or source.get("collected_to"):
        parts.append(f"collected {source.get('collected_from') or '?'} to {source.get('collected_to') or '?'}")
    if source.get("generator"):
        parts.append(f"generator: {source['generator']}")
    derived = source.get("derived_from")
    if isinstance(derived, Mapping):
        parts.append(f"derived from {derived.get('product')} {derived.get('version')}")
    evidence = source.get("opt_out_evidence")
    if isinstance(evidence, Mapping):
        parts.append(
            f"opt-out signals checked {evidence.get('checked_at')}: robots.txt {evidence.get('robots_txt')}, "
            f"TDM reservation {_tdm_text(evidence.get('tdm_reservation'))}"
        )
    return "; ".join(parts)


def _tdm_text(value: Any) -> str:
    if value is True:
        return "reserved"
    if value is False:
        return "none"
    return str(value)


def _metric_findings(export: VersionExport, match: Any) -> list[str]:
    """``stage: description: metric = value`` for every metric whose name ``match``es."""
    found = []
    for activity in export.activities:
        hits = {k: v for k, v in (activity.get("metrics") or {}).items() if match(k)}
        if hits:
            found.append(f"{activity.get('stage')}: {activity.get('description')}: {_metrics_text(hits)}")
    return found


def _property(name: str, value: Any) -> dict[str, Any]:
    return {"@type": "PropertyValue", "name": name, "value": value}


def _rai(export: VersionExport) -> dict[str, Any]:
    sources, activities = export.sources, export.activities
    by_stage = {stage: [a for a in activities if a.get("stage") == stage] for stage in STAGES}
    rai: dict[str, Any] = {}
    if sources or by_stage["collect"]:
        text = "Sources: " + " | ".join(f"{i + 1}. {source_summary(s)}" for i, s in enumerate(sources)) + "."
        if by_stage["collect"]:
            text += " Collection: " + " | ".join(activity_summary(a) for a in by_stage["collect"]) + "."
        rai["rai:dataCollection"] = text
    if sources:
        rai["rai:dataCollectionType"] = _unique(COLLECTION_TYPES.get(str(s.get("kind")), "Others") for s in sources)
        rai["rai:dataCollectionRawData"] = " | ".join(source_summary(s) for s in sources)
    starts = [str(s["collected_from"]) for s in sources if s.get("collected_from")]
    ends = [str(s["collected_to"]) for s in sources if s.get("collected_to")]
    if starts and ends:
        rai["rai:dataCollectionTimeframe"] = [min(starts), max(ends)]
    cleaning = [activity_summary(a) for a in by_stage["clean"]]
    if cleaning:
        rai["rai:dataPreprocessingProtocol"] = cleaning
        rai["rai:dataManipulationProtocol"] = " | ".join(cleaning)
    labelling = [activity_summary(a) for a in by_stage["label"]]
    if labelling:
        rai["rai:dataAnnotationProtocol"] = labelling
        tools = _unique(str(a.get("tool") or "") for a in by_stage["label"])
        if tools:
            rai["rai:machineAnnotationTools"] = tools
        analysis = [
            f"{a.get('description')}: {_metrics_text(a.get('metrics'))}" for a in by_stage["label"] if a.get("metrics")
        ]
        if analysis:
            rai["rai:dataAnnotationAnalysis"] = analysis
        per_item = [
            a["metrics"]["annotations_per_item"]
            for a in by_stage["label"]
            if isinstance((a.get("metrics") or {}).get("annotations_per_item"), int | float)
        ]
        if per_item:
            rai["rai:annotationsPerItem"] = f"{per_item[0]:g}"
    pii = _metric_findings(export, lambda name: "pii" in name.lower())
    if pii:
        rai["rai:personalSensitiveInformation"] = ["Personal information handling: " + p for p in pii]
    harm = _metric_findings(export, lambda name: "harm" in name.lower() or "toxic" in name.lower())
    if harm:
        rai["rai:dataSocialImpact"] = "Measured harmful content: " + " | ".join(harm)
    bias = _metric_findings(export, lambda name: "bias" in name.lower())
    if bias:
        rai["rai:dataBiases"] = ["Measured bias: " + b for b in bias]
    limitations = []
    fraction = export.provenance.get("synthetic_fraction")
    if fraction:
        generators = _unique(str(s.get("generator") or "") for s in sources if s.get("kind") == "synthetic")
        limitations.append(f"{fraction:.1%} of the corpus is synthetic (generated by {', '.join(generators)}).")
    reserved = [
        str(s.get("name"))
        for s in sources
        if isinstance(s.get("opt_out_evidence"), Mapping)
        and (
            s["opt_out_evidence"].get("robots_txt") in ("disallowed", "partially_disallowed")
            or _tdm_text(s["opt_out_evidence"].get("tdm_reservation")) == "reserved"
        )
    ]
    if reserved:
        limitations.append(
            "Opt-out signals (robots.txt or a TDM reservation) were seen for: "
            + ", ".join(reserved)
            + "; see the legal basis recorded for each source."
        )
    if limitations:
        rai["rai:dataLimitations"] = limitations
    product, licence = export.product, export.version.licence_id
    rai["rai:dataUseCases"] = [
        f"Training, fine-tuning and evaluation of AI models on {product.industry} {product.modality} data.",
        "Permitted uses are those of the licence"
        + (f" ({licence})" if licence else "")
        + " and of the offer under which the corpus is obtained.",
    ]
    return rai


def _croissant_source(export: VersionExport, index: int, source: Mapping[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = {
        "@id": f"{export.provenance_url}#source-{index + 1}",
        "@type": "prov:Entity",
        "name": source.get("name"),
    }
    if source.get("url"):
        node["url"] = source["url"]
    attributed = []
    if source.get("rights_holder"):
        attributed.append({"@type": "prov:Agent", "prov:label": source["rights_holder"]})
    if source.get("generator"):
        attributed.append({"@type": "prov:SoftwareAgent", "prov:label": source["generator"]})
    if attributed:
        node["prov:wasAttributedTo"] = attributed
    derived = source.get("derived_from")
    if isinstance(derived, Mapping):
        node["prov:wasDerivedFrom"] = {
            "@id": f"{export.api}/products/{derived.get('product')}/versions/{quote(str(derived.get('version')))}"
        }
    extra = [_property("kind", source.get("kind"))]
    for key in ("legal_basis", "collected_from", "collected_to"):
        if source.get(key):
            extra.append(_property(key, source[key]))
    evidence = source.get("opt_out_evidence")
    if isinstance(evidence, Mapping):
        extra.extend(
            _property(f"opt_out_evidence.{key}", _tdm_text(value) if key == "tdm_reservation" else value)
            for key, value in evidence.items()
        )
    node["additionalProperty"] = extra
    return node


def _croissant_activity(export: VersionExport, index: int, activity: Mapping[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = {
        "@id": f"{export.provenance_url}#activity-{index + 1}",
        "@type": "prov:Activity",
        "name": activity.get("stage"),
        "prov:label": activity.get("description"),
    }
    if activity.get("started_at"):
        node["prov:startedAtTime"] = activity["started_at"]
    if activity.get("ended_at"):
        node["prov:endedAtTime"] = activity["ended_at"]
    agents: list[dict[str, Any]] = [{"@id": _org_url(export)}]
    if activity.get("operator"):
        agents.append({"@type": "prov:Agent", "prov:label": activity["operator"]})
    node["prov:wasAssociatedWith"] = agents
    extra = []
    if activity.get("tool"):
        extra.append(_property("tool", activity["tool"]))
    if activity.get("parameters"):
        extra.append(_property("parameters", json.dumps(activity["parameters"], sort_keys=True, ensure_ascii=False)))
    extra.extend(_property(name, value) for name, value in (activity.get("metrics") or {}).items())
    if extra:
        node["additionalProperty"] = extra
    return node


def _org_url(export: VersionExport) -> str:
    return f"{export.api}/orgs/{export.org.slug}"


def _licence(export: VersionExport) -> Any:
    licence_id = export.version.licence_id
    if licence_id is None:
        return None
    url = licence_url(licence_id)
    if url is not None:
        return url
    # A custom licence (LicenseRef-…): its record in the licence catalogue holds its terms.
    return {"@type": "sc:CreativeWork", "name": licence_id, "url": f"{export.api}/licences/{quote(licence_id)}"}


_DATA_TYPES = {
    "string": "sc:Text",
    "integer": "sc:Integer",
    "number": "sc:Float",
    "boolean": "sc:Boolean",
    "date": "sc:Date",
    "datetime": "sc:DateTime",
}


def _record_set(path: str, profile: Mapping[str, Any]) -> dict[str, Any] | None:
    """A ``cr:RecordSet`` of a profiled tabular or JSON file: one ``cr:Field`` per top-level field."""
    fmt = profile.get("format")
    if fmt not in ("jsonl", "json", "csv", "tsv", "parquet") or not profile.get("fields"):
        return None
    file_id = quote(path, safe="/")
    fields = []
    for field in profile["fields"]:
        name = str(field["name"])
        extract = {"column": name} if fmt in ("csv", "tsv", "parquet") else {"jsonPath": f"$.{name}"}
        fields.append(
            {
                "@type": "cr:Field",
                "@id": f"{file_id}/records/{quote(name, safe='')}",
                "name": name,
                "dataType": _DATA_TYPES.get(str(field.get("type")), "sc:Text"),
                "source": {"fileObject": {"@id": file_id}, "extract": extract},
            }
        )
    return {"@type": "cr:RecordSet", "@id": f"{file_id}/records", "name": f"{path} records", "field": fields}


def croissant_document(export: VersionExport) -> dict[str, Any]:
    """The version as Croissant 1.1 JSON-LD with RAI properties; one ``cr:FileObject`` per verified file."""
    product, row, org = export.product, export.version, export.org
    organisation = {"@type": "sc:Organization", "@id": _org_url(export), "name": org.name, "url": _org_url(export)}
    year = (row.published_at or row.created_at).year
    doc: dict[str, Any] = {
        "@context": copy.deepcopy(CROISSANT_CONTEXT),
        "@type": "sc:Dataset",
        "conformsTo": [CROISSANT_SPEC, CROISSANT_RAI_SPEC],
        "name": product.title,
        "alternateName": product.slug,
        "description": product.description or product.summary or product.title,
        "version": row.version,
        "url": export.version_url,
        "creator": organisation,
        "publisher": organisation,
        "keywords": _unique([*product.tags, product.industry, product.modality]),
        "inLanguage": list(product.languages),
        "dateCreated": _iso(row.created_at),
        "isAccessibleForFree": product.access == "open",
        "citeAs": (
            f"@misc{{{product.slug}_{re.sub(r'[^A-Za-z0-9]', '_', row.version)}, "
            f"title = {{{product.title}}}, author = {{{org.name}}}, year = {{{year}}}, "
            f"version = {{{row.version}}}, url = {{{export.version_url}}}}}"
        ),
        "distribution": [
            {
                "@type": "cr:FileObject",
                "@id": quote(f.path, safe="/"),
                "name": f.path,
                "contentUrl": export.file_url(f.path),
                "contentSize": f"{f.size} B",
                "encodingFormat": f.media_type,
                "sha256": f.sha256,
            }
            for f in export.files
        ],
    }
    record_sets = [_record_set(f.path, export.profiles[f.path]) for f in export.files if f.path in export.profiles]
    if any(record_sets):
        doc["recordSet"] = [r for r in record_sets if r]
    licence = _licence(export)
    if licence is not None:
        doc["license"] = licence
    if row.published_at is not None:
        doc["datePublished"] = _iso(row.published_at)
    if product.summary and product.description:
        doc["abstract"] = product.summary
    if row.manifest_digest:
        doc["identifier"] = row.manifest_digest
    if row.state in ("deprecated", "withdrawn"):
        doc["creativeWorkStatus"] = row.state
    doc.update(_rai(export))
    if export.sources:
        doc["prov:wasDerivedFrom"] = [_croissant_source(export, i, s) for i, s in enumerate(export.sources)]
    if export.activities:
        doc["prov:wasGeneratedBy"] = [_croissant_activity(export, i, a) for i, a in enumerate(export.activities)]
    doc["prov:wasAttributedTo"] = {"@id": _org_url(export)}
    return doc


# --- PROV-JSON -------------------------------------------------------------------------------------------


def _qname(prefix: str, local: str) -> dict[str, str]:
    return {"$": f"{prefix}:{local}", "type": "prov:QUALIFIED_NAME"}


def _local(text: str, safe: str = "") -> str:
    """A PROV-N-safe local name: percent-encoded (``~`` too, which PROV-N cannot write bare)."""
    return quote(text, safe=safe).replace("~", "%7E")


def _typed(value: Any) -> Any:
    """An attribute value: text, numbers as they are, dates and times typed."""
    if isinstance(value, bool):
        return {"$": "true" if value else "false", "type": "xsd:boolean"}
    if isinstance(value, int | float):
        return value
    text = str(value)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return {"$": text, "type": "xsd:date"}
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:\d{2})?", text):
        return {"$": text, "type": "xsd:dateTime"}
    return text


class _ProvBuilder:
    def __init__(self, export: VersionExport) -> None:
        self.export = export
        self.doc: dict[str, Any] = {
            "prefix": {
                "corpora": export.api + "/",
                "doc": export.provenance_url + "#",
                "sc": "https://schema.org/",
                "cv": VOCABULARY,
                "metric": METRICS_VOCABULARY,
            },
            "entity": {},
            "activity": {},
            "agent": {},
        }
        self.counters: dict[str, int] = {}
        self.agents: dict[tuple[str, str], str] = {}

    def relation(self, kind: str, attributes: dict[str, Any]) -> None:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        self.doc.setdefault(kind, {})[f"_:{kind}{self.counters[kind]}"] = attributes

    def agent(self, role: str, name: str, prov_type: str | None) -> str:
        key = (role, name)
        if key not in self.agents:
            identifier = f"doc:{role}-{sum(1 for r, _ in self.agents if r == role) + 1}"
            attributes: dict[str, Any] = {"prov:label": name, "cv:role": role}
            if prov_type is not None:
                attributes["prov:type"] = _qname("prov", prov_type)
            self.doc["agent"][identifier] = attributes
            self.agents[key] = identifier
        return self.agents[key]

    def version_id(self, product: str, version: str) -> str:
        return f"corpora:products/{_local(product)}/versions/{_local(version)}"

    def build(self) -> dict[str, Any]:
        export = self.export
        product, row, org = export.product, export.version, export.org
        version_id = self.version_id(product.slug, row.version)
        version: dict[str, Any] = {
            "prov:type": [_qname("prov", "Collection"), _qname("cv", "CorpusVersion")],
            "prov:label": f"{product.title} {row.version}",
            "sc:version": row.version,
            "cv:state": row.state,
            "cv:fileCount": len(export.files),
            "cv:totalSize": sum(f.size for f in export.files),
            "prov:location": {"$": export.version_url, "type": "xsd:anyURI"},
        }
        if row.manifest_digest:
            version["cv:manifestDigest"] = row.manifest_digest
        if row.licence_id:
            version["sc:license"] = row.licence_id
        if row.published_at is not None:
            version["cv:publishedAt"] = _typed(row.published_at.isoformat())
        if export.provenance.get("synthetic_fraction") is not None:
            version["cv:syntheticFraction"] = float(export.provenance["synthetic_fraction"])
        self.doc["entity"][version_id] = version
        org_id = f"corpora:orgs/{_local(org.slug)}"
        self.doc["agent"][org_id] = {
            "prov:type": _qname("prov", "Organization"),
            "prov:label": org.name,
            "cv:role": "provider",
        }
        self.relation("wasAttributedTo", {"prov:entity": version_id, "prov:agent": org_id})

        for f in export.files:
            file_id = f"{version_id}/files/{_local(f.path, safe='/')}"
            self.doc["entity"][file_id] = {
                "prov:type": _qname("cv", "File"),
                "prov:label": f.path,
                "sc:sha256": f.sha256,
                "sc:contentSize": f.size,
                "sc:encodingFormat": f.media_type,
            }
            self.relation("hadMember", {"prov:collection": version_id, "prov:entity": file_id})

        source_ids = [self.source(i, s) for i, s in enumerate(export.sources)]
        inputs = source_ids
        production = [a for a in export.activities if a.get("stage") in PRODUCTION_STAGES]
        production_stages = [s for s in PRODUCTION_STAGES if any(a.get("stage") == s for a in production)]
        indexed = list(enumerate(export.activities))
        for stage_number, stage in enumerate(production_stages):
            in_stage = [(i, a) for i, a in indexed if a.get("stage") == stage]
            last_stage = stage_number == len(production_stages) - 1
            outputs = []
            for i, activity in in_stage:
                activity_id = self.activity(i, activity, org_id)
                if last_stage and len(in_stage) == 1:
                    output = version_id
                else:
                    output = f"doc:activity-{i + 1}-output"
                    self.doc["entity"][output] = {
                        "prov:type": _qname("cv", "IntermediateData"),
                        "prov:label": f"data after {stage}: {activity.get('description')}",
                    }
                for used in inputs:
                    self.relation("used", {"prov:activity": activity_id, "prov:entity": used})
                    self.relation(
                        "wasDerivedFrom",
                        {"prov:generatedEntity": output, "prov:usedEntity": used, "prov:activity": activity_id},
                    )
                self.relation("wasGeneratedBy", {"prov:entity": output, "prov:activity": activity_id})
                outputs.append(output)
            inputs = outputs
        # Without processing activities the version comes straight from its sources; when the last stage
        # ran several activities, from each of their outputs.
        for used in inputs:
            if used != version_id:
                self.relation("wasDerivedFrom", {"prov:generatedEntity": version_id, "prov:usedEntity": used})
        for i, activity in indexed:
            if activity.get("stage") not in PRODUCTION_STAGES:
                activity_id = self.activity(i, activity, org_id)
                self.relation("used", {"prov:activity": activity_id, "prov:entity": version_id})
        return self.doc

    def source(self, index: int, source: Mapping[str, Any]) -> str:
        source_id = f"doc:source-{index + 1}"
        attributes: dict[str, Any] = {
            "prov:type": [_qname("cv", "Source"), _qname("cv", str(source.get("kind")))],
            "prov:label": str(source.get("name")),
        }
        if source.get("url"):
            attributes["prov:location"] = {"$": str(source["url"]), "type": "xsd:anyURI"}
        for key, name in (("legal_basis", "legalBasis"), ("collected_from", "collectedFrom")):
            if source.get(key):
                attributes[f"cv:{name}"] = _typed(source[key])
        if source.get("collected_to"):
            attributes["cv:collectedTo"] = _typed(source["collected_to"])
        evidence = source.get("opt_out_evidence")
        if isinstance(evidence, Mapping):
            for key, value in evidence.items():
                name = "optOut" + "".join(part.title() for part in str(key).split("_"))
                attributes[f"cv:{name}"] = _tdm_text(value) if key == "tdm_reservation" else _typed(value)
        self.doc["entity"][source_id] = attributes
        if source.get("rights_holder"):
            holder = self.agent("rights-holder", str(source["rights_holder"]), None)
            self.relation("wasAttributedTo", {"prov:entity": source_id, "prov:agent": holder})
        if source.get("generator"):
            generator = self.agent("generator", str(source["generator"]), "SoftwareAgent")
            self.relation("wasAttributedTo", {"prov:entity": source_id, "prov:agent": generator})
        derived = source.get("derived_from")
        if isinstance(derived, Mapping) and derived.get("product") and derived.get("version"):
            upstream = self.version_id(str(derived["product"]), str(derived["version"]))
            self.doc["entity"].setdefault(
                upstream,
                {
                    "prov:type": _qname("cv", "CorpusVersion"),
                    "prov:label": f"{derived['product']} {derived['version']}",
                },
            )
            self.relation("wasDerivedFrom", {"prov:generatedEntity": source_id, "prov:usedEntity": upstream})
        return source_id

    def activity(self, index: int, activity: Mapping[str, Any], org_id: str) -> str:
        activity_id = f"doc:activity-{index + 1}"
        attributes: dict[str, Any] = {
            "prov:type": _qname("cv", str(activity.get("stage"))),
            "prov:label": str(activity.get("description") or activity.get("stage")),
            "cv:stage": str(activity.get("stage")),
        }
        if activity.get("started_at"):
            attributes["prov:startTime"] = as_datetime(activity["started_at"]).isoformat()
        if activity.get("ended_at"):
            attributes["prov:endTime"] = as_datetime(activity["ended_at"]).isoformat()
        if activity.get("tool"):
            attributes["cv:tool"] = str(activity["tool"])
        if activity.get("parameters"):
            attributes["cv:parameters"] = json.dumps(activity["parameters"], sort_keys=True, ensure_ascii=False)
        for name, value in (activity.get("metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[f"metric:{_local(str(name))}"] = value
        self.doc["activity"][activity_id] = attributes
        self.relation("wasAssociatedWith", {"prov:activity": activity_id, "prov:agent": org_id})
        if activity.get("operator"):
            operator = self.agent("operator", str(activity["operator"]), None)
            self.relation("wasAssociatedWith", {"prov:activity": activity_id, "prov:agent": operator})
        return activity_id


def prov_document(export: VersionExport) -> dict[str, Any]:
    """The version's provenance as a W3C PROV-JSON document."""
    return _ProvBuilder(export).build()
