"""The profile of one file, computed in one streaming pass with bounded memory.

Every record is counted, hashed for exact duplicates and scanned for personal data. Tokens are counted exactly
for the first ``EXACT_TOKEN_RECORDS`` records and for one record in ``TOKEN_STRIDE`` after that, the rest
extrapolated by characters (the profile says whether the count is exact). Language shares and near-duplicates
are estimated on a reservoir sample of ``SAMPLE_RECORDS`` records (the profile says how many it used).
Exact-duplicate hashes are 64-bit and spilled to temporary files in 16 partitions, so even a file of hundreds of
millions of records needs a few hundred MiB at most to count its distinct records.
"""

from __future__ import annotations

import array
import math
import random
import tempfile
from collections import Counter
from functools import cache
from importlib.metadata import version as package_version
from typing import IO, Any

import msgspec
import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH

from catalog.inspection import formats, pii

SAMPLE_RECORDS = 2000
SAMPLE_TEXT_CHARS = 1000
EXACT_TOKEN_RECORDS = 20_000
TOKEN_STRIDE = 16
MAX_FIELDS = 256
NEAR_DUPLICATE_JACCARD = 0.8
MINHASH_PERMUTATIONS = 64
SHINGLE_CHARS = 5
BPE_VOCABULARY = "cl100k_base"
PII_BATCH = 512  # records scanned for personal data together
_PARTITIONS = 16
_SPILL_AT = 4_000_000  # hashes held in memory before they are appended to the partition files


class FieldProfile(msgspec.Struct):
    name: str
    type: str
    null_rate: float


class Duplicates(msgspec.Struct):
    exact_rate: float
    near_rate: float
    near_sample: int  # records the near-duplicate estimate used


class FileProfile(msgspec.Struct):
    path: str
    format: str
    compression: str | None
    records: int
    fields: list[FieldProfile]
    tokens: int
    tokenizer: str
    tokens_exact: bool
    languages: dict[str, float]
    language_sample: int
    duplicates: Duplicates
    pii: dict[str, int]
    bytes: int  # as stored
    content_bytes: int  # after decompression
    invalid_records: int = 0  # JSON Lines lines that do not parse (counted as text records)


@cache
def tokenizer() -> Any:
    import bpe_openai

    return bpe_openai.get_encoding(BPE_VOCABULARY)


def tokenizer_name() -> str:
    return f"{BPE_VOCABULARY} (bpe-openai {package_version('bpe-openai')})"


@cache
def language_detector() -> Any:
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


class _DistinctCounter:
    """Counts distinct 64-bit record hashes with a bounded amount of memory (partitioned spill files)."""

    def __init__(self) -> None:
        self._memory = [array.array("q") for _ in range(_PARTITIONS)]
        self._held = 0
        self._files: list[IO[bytes]] = []
        self.total = 0

    def add(self, value: int) -> None:
        self._memory[value & (_PARTITIONS - 1)].append(value)
        self._held += 1
        self.total += 1
        if self._held >= _SPILL_AT:
            self._spill()

    def _spill(self) -> None:
        if not self._files:
            self._files = [tempfile.TemporaryFile() for _ in range(_PARTITIONS)]  # noqa: SIM115 - closed in distinct
        for part, held in zip(self._files, self._memory, strict=True):
            held.tofile(part)
        self._memory = [array.array("q") for _ in range(_PARTITIONS)]
        self._held = 0

    def distinct(self) -> int:
        count = 0
        for index, held in enumerate(self._memory):
            values = np.frombuffer(held, dtype=np.int64) if held else np.empty(0, np.int64)
            if self._files:
                part = self._files[index]
                part.seek(0)
                values = np.concatenate([np.frombuffer(part.read(), dtype=np.int64), values])
                part.close()
            count += len(np.unique(values))
        return count


class _Fields:
    """Types and null counts of the top-level fields of object records."""

    def __init__(self) -> None:
        self.types: dict[str, Counter[str]] = {}
        self.present: Counter[str] = Counter()
        self.objects = 0

    def add(self, record: Any) -> None:
        if not isinstance(record, dict):
            return
        self.objects += 1
        for name, value in record.items():
            if name not in self.types:
                if len(self.types) >= MAX_FIELDS:
                    continue
                self.types[name] = Counter()
            if value is not None:
                self.present[name] += 1
                self.types[name][_json_type(value)] += 1

    def profiles(self, records: int) -> list[FieldProfile]:
        return [
            FieldProfile(name, _one_type(types), _rate(records - self.present[name], records))
            for name, types in self.types.items()
        ]


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "array"


def _one_type(types: Counter[str]) -> str:
    kinds = set(types)
    if not kinds:
        return "null"
    if kinds == {"integer", "number"}:
        return "number"
    return kinds.pop() if len(kinds) == 1 else "mixed"


def arrow_type(kind: pa.DataType) -> str:
    checks = (
        (pa.types.is_boolean, "boolean"),
        (pa.types.is_integer, "integer"),
        (pa.types.is_floating, "number"),
        (pa.types.is_decimal, "number"),
        (pa.types.is_string, "string"),
        (pa.types.is_large_string, "string"),
        (pa.types.is_timestamp, "datetime"),
        (pa.types.is_date, "date"),
        (pa.types.is_binary, "binary"),
        (pa.types.is_struct, "object"),
        (pa.types.is_list, "array"),
        (pa.types.is_large_list, "array"),
        (pa.types.is_null, "null"),
    )
    return next((name for check, name in checks if check(kind)), str(kind))


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


class _Sample:
    """A seeded reservoir of record texts, kept with their positions so the estimate reads them in file order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[tuple[int, str]] = []
        self._random = random.Random(0)  # noqa: S311 - a reproducible estimate, not a secret

    def offer(self, index: int, text: str) -> None:
        if len(self.items) < self.size:
            self.items.append((index, text[:SAMPLE_TEXT_CHARS]))
            return
        slot = self._random.randrange(index + 1)
        if slot < self.size:
            self.items[slot] = (index, text[:SAMPLE_TEXT_CHARS])

    def texts(self) -> list[str]:
        return [text for _, text in sorted(self.items)]


def _languages(texts: list[str]) -> dict[str, float]:
    if not texts:
        return {}
    found = language_detector().detect_languages_in_parallel_of(texts)
    counts = Counter(language.iso_code_639_1.name.lower() if language else "und" for language in found)
    return {code: round(count / len(texts), 4) for code, count in counts.most_common()}


def _near_rate(texts: list[str]) -> float:
    """The share of sampled records whose estimated Jaccard similarity to an earlier one is at least 0.8."""
    if not texts:
        return 0.0
    lsh = MinHashLSH(threshold=NEAR_DUPLICATE_JACCARD, num_perm=MINHASH_PERMUTATIONS)
    near = 0
    for position, text in enumerate(texts):
        normal = " ".join(text.lower().split())
        shingles = {normal[i : i + SHINGLE_CHARS] for i in range(max(1, len(normal) - SHINGLE_CHARS + 1))}
        signature = MinHash(num_perm=MINHASH_PERMUTATIONS, seed=1)
        signature.update_batch([s.encode() for s in shingles])
        if lsh.query(signature):
            near += 1
        lsh.insert(str(position), signature)
    return _rate(near, len(texts))


def _record_text(record: Any) -> str:
    return record if isinstance(record, str) else "\n".join(formats.strings_of(record))


def profile(source: IO[bytes], path: str, stored_bytes: int) -> FileProfile:
    """Profile the file in ``source`` (seekable, at its start) named ``path``."""
    opened = formats.open_content(source, path)
    counts = dict.fromkeys(pii.KINDS, 0)
    fields = _Fields()
    arrow_fields: dict[str, tuple[str, int]] = {}
    distinct = _DistinctCounter()
    sample = _Sample(SAMPLE_RECORDS)
    encoder = tokenizer()
    tokens = token_chars = all_chars = 0
    records = invalid = 0
    pending_pii: list[str] = []

    def add(record: Any, key: bytes) -> None:
        nonlocal tokens, token_chars, all_chars, records
        distinct.add(hash(key))
        text = _record_text(record)
        pending_pii.append(text)
        if len(pending_pii) >= PII_BATCH:
            pii.count_into(pending_pii, counts)
            pending_pii.clear()
        all_chars += len(text)
        if records < EXACT_TOKEN_RECORDS or records % TOKEN_STRIDE == 0:
            tokens += len(encoder.encode_ordinary(text))
            token_chars += len(text)
        sample.offer(records, text)
        records += 1

    fmt = opened.format
    if fmt in ("jsonl", "text"):
        for line in formats.raw_records(opened):
            record = formats.decode(fmt, line)
            if fmt == "jsonl":
                if isinstance(record, str):
                    invalid += 1
                fields.add(record)
            add(record, line)
    elif fmt == "json":
        for record in formats.raw_records(opened):
            fields.add(record)
            add(record, msgspec.json.encode(record, order="sorted"))
    elif fmt in ("csv", "tsv", "parquet"):
        batches = formats.csv_batches(opened) if fmt != "parquet" else formats.parquet_batches(opened)
        for batch in batches:
            for column_name, column in zip(batch.schema.names, batch.columns, strict=True):
                kind, nulls = arrow_fields.get(column_name, (arrow_type(column.type), 0))
                arrow_fields[column_name] = (kind, nulls + column.null_count)
            for row in batch.to_pylist():
                add(row, msgspec.json.encode(row, order="sorted", enc_hook=str))
    elif opened.counter is not None:  # binary: read through, so the content size is known
        while opened.stream.read(formats.BLOCK):
            pass

    pii.count_into(pending_pii, counts)
    texts = sample.texts()
    if fmt in ("csv", "tsv", "parquet"):
        field_profiles = [FieldProfile(n, k, _rate(nulls, records)) for n, (k, nulls) in arrow_fields.items()]
    elif fmt == "text":
        field_profiles = [FieldProfile("text", "string", 0.0)] if records else []
    else:
        field_profiles = fields.profiles(records)
    exact = token_chars == all_chars
    return FileProfile(
        path=path,
        format=fmt,
        compression=opened.compression,
        records=records,
        fields=field_profiles,
        tokens=tokens if exact else math.floor(tokens * all_chars / max(token_chars, 1)),
        tokenizer=tokenizer_name(),
        tokens_exact=exact,
        languages=_languages([t for t in texts if t.strip()]),
        language_sample=len(texts),
        duplicates=Duplicates(_rate(records - distinct.distinct(), records), _near_rate(texts), len(texts)),
        pii=counts,
        bytes=stored_bytes,
        content_bytes=opened.counter.count if opened.counter is not None else stored_bytes,
        invalid_records=invalid,
    )
