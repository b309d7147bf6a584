"""Request and response bodies of inspection: profiles, preview, sample reviews, opt-out evidence."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import msgspec

from catalog.inspection.profiler import Duplicates, FieldProfile


class FileProfileOut(msgspec.Struct):
    path: str
    status: Literal["pending", "running", "done", "failed"]
    format: str | None = None
    compression: str | None = None
    records: int | None = None
    fields: list[FieldProfile] = msgspec.field(default_factory=list)
    tokens: int | None = None
    tokenizer: str | None = None
    tokens_exact: bool | None = None
    token_sample: int | None = None  # records whose tokens were counted, the rest extrapolated by characters
    languages: dict[str, float] = msgspec.field(default_factory=dict)
    language_sample: int | None = None
    duplicates: Duplicates | None = None
    pii: dict[str, int] = msgspec.field(default_factory=dict)
    bytes: int = 0
    content_bytes: int | None = None
    error: str | None = None


class Totals(msgspec.Struct):
    records: int
    tokens: int
    bytes: int
    pii: dict[str, int]


class ProfileOut(msgspec.Struct):
    product: str
    version: str
    status: Literal["pending", "running", "done", "failed"]
    files: list[FileProfileOut]
    totals: Totals


class PreviewOut(msgspec.Struct):
    path: str
    format: str
    records: list[Any]


class SampleIn(msgspec.Struct, forbid_unknown_fields=True):
    size: Annotated[int, msgspec.Meta(ge=1, le=10_000)]
    kind: Literal["manual", "technical"]
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None


class SampleItemOut(msgspec.Struct):
    index: int
    path: str
    record_index: int
    record: Any


class SampleDrawnOut(msgspec.Struct):
    id: uuid.UUID
    product: str
    version: str
    kind: str
    size: int
    seed: int
    threshold: float
    items: list[SampleItemOut]


class Verdict(msgspec.Struct, forbid_unknown_fields=True):
    index: Annotated[int, msgspec.Meta(ge=0)]
    ok: bool
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None


class VerdictsIn(msgspec.Struct, forbid_unknown_fields=True):
    verdicts: Annotated[list[Verdict], msgspec.Meta(min_length=1, max_length=10_000)]


class SampleOut(msgspec.Struct):
    id: uuid.UUID
    product: str
    version: str
    kind: str
    size: int
    seed: int
    judged: int
    pass_rate: float | None
    threshold: float
    passed: bool | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    record: str | None  # the signed result (a compact JWS) once every item is judged


class RobotsOut(msgspec.Struct):
    status: int | None
    sha256: str | None
    disallows: list[str]


class TdmRepOut(msgspec.Struct):
    status: int | None
    sha256: str | None
    reserved: bool | None
    header: str | None


class EvidenceOut(msgspec.Struct):
    source: str
    url: str
    fetched_at: dt.datetime | None
    robots_txt: RobotsOut
    tdmrep: TdmRepOut
    reserved_for_ai: bool | None
    declared: Any  # what the provider declared about opt-outs at collection time
    warning: str | None
    error: str | None


class EvidencePage(msgspec.Struct):
    items: list[EvidenceOut]
