"""The profile of one file, computed in one streaming pass with bounded memory.

Every record is counted, hashed for exact duplicates and scanned for personal data. Tokens are counted exactly
for the first ``EXACT_TOKEN_RECORDS`` records and for one record in ``TOKEN_STRIDE`` after that, the rest
extrapolated by characters (the profile says whether the count is exact). Language shares and near-duplicates
are estimated on a reservoir sample of ``SAMPLE_RECORDS`` records (the profile says how many it used).
Exact-duplicate hashes are 64-bit and spilled to temporary files in 16 partitions, so even a file of hundreds of
millions of records needs a few hundred MiB at most to count its distinct records.
"""

from __future__ import annotations

import math
import random
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from functools import cache
from importlib.metadata import version as package_version
from itertools import chain
from operator import attrgetter
from typing import IO, Any, NamedTuple

import msgspec
import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH

from catalog.inspection import formats, pii

SAMPLE_RECORDS = 1000  # records the language and near-duplicate estimates use (each costs about 0.2 ms)
SAMPLE_TEXT_CHARS = 1000
LANGUAGE_SAMPLE = 1000  # records of the sample whose language is detected
LANGUAGE_TEXT_CHARS = 300  # of each: detection costs about 0.4 ms for 300 characters, 1.2 ms for 1,000
EXACT_TOKEN_RECORDS = 2_000
TOKEN_STRIDE = 256
MAX_FIELDS = 256
NEAR_DUPLICATE_JACCARD = 0.8
MINHASH_PERMUTATIONS = 64
SHINGLE_CHARS = 5
BPE_VOCABULARY = "cl100k_base"
OFFSET_SPACING = 256 * 1024
BATCH_RECORDS = 4096  # records of JSON, CSV and Parquet handled together
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
    token_sample: int = 0  # records whose tokens were counted (all of them when ``tokens_exact``)
    # (record number, byte offset) about every OFFSET_SPACING bytes of an uncompressed JSON Lines or text file, so a
    # sample reads the regions of its records with ranged requests instead of streaming the file
    record_offsets: list[tuple[int, int]] = msgspec.field(default_factory=list)


@cache
def tokenizer() -> Any:
    import bpe_openai

    return bpe_openai.get_encoding(BPE_VOCABULARY)


def tokenizer_name() -> str:
    return f"{BPE_VOCABULARY} (bpe-openai {package_version('bpe-openai')})"


def warm_up() -> None:
    """Load what a worker keeps between files: tokenizer, language models, the table of digits, the LSH's
    parameters."""
    tokenizer()
    _lsh_bands()
    _minhash_template()
    language_detector().detect_language_of("warm up")
    pii.count_into(["warm up \uff11"], dict.fromkeys(pii.KINDS, 0))


@cache
def language_detector() -> Any:
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


class _DistinctCounter:
    """Counts distinct 64-bit record hashes with a bounded amount of memory (partitioned spill files)."""

    def __init__(self) -> None:
        self._memory: list[np.ndarray] = []
        self._held = 0
        self._files: list[IO[bytes]] = []

    def add(self, values: np.ndarray) -> None:
        self._memory.append(values)
        self._held += len(values)
        if self._held >= _SPILL_AT:
            self._spill()

    def _spill(self) -> None:
        if not self._files:
            self._files = [tempfile.TemporaryFile() for _ in range(_PARTITIONS)]  # noqa: SIM115 - closed in distinct
        values = np.concatenate(self._memory)
        parts = values & (_PARTITIONS - 1)
        for index, part in enumerate(self._files):
            values[parts == index].tofile(part)
        self._memory, self._held = [], 0

    def distinct(self) -> int:
        if not self._files:
            return _distinct(np.concatenate(self._memory)) if self._memory else 0
        self._spill()
        count = 0
        for part in self._files:
            part.seek(0)
            count += _distinct(np.frombuffer(part.read(), dtype=np.int64).copy())
            part.close()
        return count


def _distinct(values: np.ndarray) -> int:
    # sorted in place and compared with the neighbour: several times faster than np.unique (hash-based in numpy 2)
    values.sort()
    return int(np.count_nonzero(values[1:] != values[:-1])) + 1 if len(values) else 0


class _Fields:
    """Types and null counts of the top-level fields of object records."""

    def __init__(self) -> None:
        self.types: dict[str, set[str]] = {}
        self.present: Counter[str] = Counter()

    def add(self, records: list[Any], columns: _Columns | None = None) -> None:
        if columns is None:
            self._add_any([r for r in records if type(r) is dict])
            return
        for name, kinds, nulls in zip(columns.names, columns.kinds, columns.nulls, strict=True):
            if name not in self.types:
                if len(self.types) >= MAX_FIELDS:
                    continue
                self.types[name] = set()
            self.present[name] += len(records) - nulls
            self.types[name].update(_JSON_TYPES.get(kind, "array") for kind in kinds if kind is not type(None))

    def _add_any(self, objects: list[dict[str, Any]]) -> None:
        # (name, type) pairs of every value, counted in C: no Python step per value
        names = chain.from_iterable(map(dict.keys, objects))
        kinds = map(type, chain.from_iterable(map(dict.values, objects)))
        for (name, kind), count in Counter(zip(names, kinds, strict=True)).items():
            if name not in self.types:
                if len(self.types) >= MAX_FIELDS:
                    continue
                self.types[name] = set()
            if kind is not type(None):
                self.present[name] += count
                self.types[name].add(_JSON_TYPES.get(kind, "array"))

    def profiles(self, records: int) -> list[FieldProfile]:
        return [
            FieldProfile(name, _one_type(types), _rate(records - self.present[name], records))
            for name, types in self.types.items()
        ]


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}


def _one_type(types: set[str]) -> str:
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
    """A seeded reservoir of record texts (Li's algorithm L: a few random draws per item kept, none per record
    skipped), kept with their positions so the estimate reads them in file order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[tuple[int, str]] = []
        self._random = random.Random(0)  # noqa: S311 - a reproducible estimate, not a secret
        self._weight = self._draw()
        self.next = 0  # the position of the next record kept

    def _draw(self) -> float:
        return math.exp(math.log(1.0 - self._random.random()) / self.size)

    def offer(self, index: int, text: str) -> None:
        """Keep the record at ``next`` (the caller offers only that one) and choose the next."""
        if len(self.items) < self.size:
            self.items.append((index, text[:SAMPLE_TEXT_CHARS]))
            self.next = index + 1
            if len(self.items) < self.size:
                return
        else:
            self.items[self._random.randrange(self.size)] = (index, text[:SAMPLE_TEXT_CHARS])
            self._weight *= self._draw()
        skip = math.log(1.0 - self._random.random()) / math.log(1.0 - self._weight) if self._weight < 1 else 0
        self.next = index + 1 + math.floor(skip)

    def texts(self) -> list[str]:
        return [text for _, text in sorted(self.items)]


def _languages(texts: list[str]) -> dict[str, float]:
    if not texts:
        return {}
    found = language_detector().detect_languages_in_parallel_of(texts)
    counts = Counter(language.iso_code_639_1.name.lower() if language else "und" for language in found)
    return {code: round(count / len(texts), 4) for code, count in counts.most_common()}


@cache
def _lsh_bands() -> tuple[int, int]:
    """The bands and rows of an LSH for ``NEAR_DUPLICATE_JACCARD``: datasketch integrates for them (~7 ms), and
    they never change."""
    lsh = MinHashLSH(threshold=NEAR_DUPLICATE_JACCARD, num_perm=MINHASH_PERMUTATIONS)
    return lsh.b, lsh.r


@cache
def _minhash_template() -> MinHash:
    """The permutations every signature uses, drawn once."""
    return MinHash(num_perm=MINHASH_PERMUTATIONS, seed=1)


def _near_rate(texts: list[str]) -> float:
    """The share of sampled records whose estimated Jaccard similarity to an earlier one is at least 0.8."""
    if not texts:
        return 0.0
    lsh = MinHashLSH(num_perm=MINHASH_PERMUTATIONS, params=_lsh_bands())
    template = _minhash_template()
    near = 0
    for position, text in enumerate(texts):
        normal = " ".join(text.lower().split())
        shingles = {normal[i : i + SHINGLE_CHARS] for i in range(max(1, len(normal) - SHINGLE_CHARS + 1))}
        signature = MinHash(
            num_perm=MINHASH_PERMUTATIONS,
            seed=1,
            hashfunc=zlib.crc32,
            permutations=template.permutations,
            scheme=template.scheme,
        )
        signature.update_batch([s.encode() for s in shingles])
        if lsh.query(signature):
            near += 1
        lsh.insert(str(position), signature)
    return _rate(near, len(texts))


def _record_text(record: Any) -> str:
    """Every string and integer of the record, one a line, depth first (``formats.strings_of``)."""
    if type(record) is str:
        return record
    if type(record) is dict:
        values: Any = record.values()
    elif isinstance(record, msgspec.Struct):  # a record decoded as its file's ``_Shape``
        values = msgspec.structs.astuple(record)
    else:
        return "\n".join(formats.strings_of(record))
    parts = []
    for value in values:  # the common flat object without a generator per value
        kind = type(value)
        if kind is str:
            parts.append(value)
        elif kind is int:
            parts.append(str(value))
        elif kind is dict or kind is list or kind is tuple:
            parts.extend(formats.strings_of(value))
    return "\n".join(parts)


class _Profile:
    """The running counts of one file, fed a batch of records at a time."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(pii.KINDS, 0)
        self.fields = _Fields()
        self.distinct = _DistinctCounter()
        self.sample = _Sample(SAMPLE_RECORDS)
        self.encoder = tokenizer()
        self.tokens = self.token_chars = self.all_chars = self.tokenized = 0
        self.records = 0

    def add(
        self, records: list[Any], keys: list[bytes], *, fields: bool = False, columns: _Columns | None = None
    ) -> None:
        """Count a batch of records; ``fields``: also the types and nulls of their fields (JSON formats);
        ``columns``: the records seen column by column, when the caller has them."""
        self.distinct.add(np.fromiter(map(hash, keys), np.int64, len(keys)))
        record_types = list(map(type, records))
        if columns is None and record_types.count(dict) == len(records):
            columns = _Columns.of(records)
        if fields:
            self.fields.add(records, columns)
        leaves = columns.leaves() if columns is not None else None
        if leaves is None:
            texts = records if record_types.count(str) == len(records) else list(map(_record_text, records))
            leaves = _Leaves(texts, 0, 0)
        # a record's text is its strings one a line, and no finding spans a line: the strings are scanned together
        chars = pii.count_into(leaves.texts, self.counts) + leaves.small_chars
        lines = len(leaves.texts) + leaves.small
        self.all_chars += chars + max(0, lines - len(records))  # the lines' newlines
        first, end = self.records, self.records + len(records)
        exact_end = max(first, min(EXACT_TOKEN_RECORDS, end))
        strided = exact_end + (-exact_end) % TOKEN_STRIDE  # then every record whose position is a multiple
        picked = records[: exact_end - first] + records[strided - first :: TOKEN_STRIDE]
        for text in map(_record_text, picked):
            self.tokens += len(self.encoder.encode_ordinary(text))
            self.token_chars += len(text)
        self.tokenized += len(picked)
        while self.sample.next < end:
            self.sample.offer(self.sample.next, _record_text(records[self.sample.next - first]))
        self.records = end


_NONE = type(None)
_SKIPPED = frozenset((float, bool, _NONE))  # values whose text ``_record_text`` leaves out


class _Columns:
    """Object records that all hold the same fields (the common case), seen column by column, so nothing takes a
    Python step per value."""

    def __init__(
        self,
        names: list[str],
        columns: list[list[Any]],
        kinds: list[set[type]] | None = None,
        nulls: list[int] | None = None,
    ) -> None:
        """``kinds`` and ``nulls``: each column's types and null count, when the caller knows them already."""
        self.names = names
        self.columns = columns
        self.kinds = kinds if kinds is not None else [set(map(type, column)) for column in columns]
        self.nulls = (
            nulls
            if nulls is not None
            else [column.count(None) if _NONE in k else 0 for column, k in zip(columns, self.kinds, strict=True)]
        )

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> _Columns | None:
        """The columns of dicts that all hold the same keys in the same order, else None."""
        if not records:
            return None
        names = list(records[0])
        keys = list(chain.from_iterable(map(dict.keys, records)))
        # keys of a record are distinct, so the names repeating in every slot means every record holds exactly them
        if len(keys) != len(names) * len(records):
            return None
        if any(keys[p :: len(names)].count(name) != len(records) for p, name in enumerate(names)):
            return None
        values = list(chain.from_iterable(map(dict.values, records)))
        return cls(names, [values[p :: len(names)] for p in range(len(names))])

    def leaves(self) -> _Leaves | None:
        """The strings and integers of the records (what ``_record_text`` takes), or None when a value nests."""
        strings: list[str] = []
        small_chars = small = 0
        for column, kinds in zip(self.columns, self.kinds, strict=True):
            if kinds <= {str, _NONE}:
                strings += filter(None, column)  # an empty string holds nothing either
            elif kinds <= {int, _NONE}:
                texts, chars, count = _integer_texts(list(filter(None, column)))  # nor does 0
                strings += texts
                small_chars += chars
                small += count
            elif not kinds <= _SKIPPED:
                if not kinds <= _FLAT:
                    return None
                strings += (v if type(v) is str else str(v) for v in column if type(v) is str or type(v) is int)
        return _Leaves(strings, small_chars, small)


class _Leaves(NamedTuple):
    """The texts of the records' strings and integers that may hold personal data, and the characters and count of
    the others (integers of fewer than ten digits: a number kind needs ten, or a "+")."""

    texts: list[str]
    small_chars: int
    small: int


_TEN_DIGIT_FLOOR = 10**9
_POWERS_OF_TEN = np.array([10**k for k in range(10)], np.int64)


def _integer_texts(values: list[int]) -> tuple[list[str], int, int]:
    """The texts of the integers of ten digits or more, and the characters and count of the others' texts, which
    are counted without being written: ``str`` of an integer costs more than scanning it."""
    try:
        numbers = np.fromiter(values, np.int64, len(values))
    except OverflowError:  # beyond 64 bits: all written
        return list(map(str, values)), 0, 0
    small = (numbers > -_TEN_DIGIT_FLOOR) & (numbers < _TEN_DIGIT_FLOOR)
    if not small.any():
        return list(map(str, values)), 0, 0
    kept = numbers[small]
    chars = int(np.searchsorted(_POWERS_OF_TEN, np.abs(kept), "right").sum()) + int(np.count_nonzero(kept < 0))
    return list(map(str, numbers[~small].tolist())), chars, len(kept)


class _Shape:
    """The flat shape of a file's object records (each field one of string, integer, number, boolean or null),
    learnt from its first batch. Later batches decode straight into a struct of that shape, which costs less than
    decoding dicts and needs no check that their keys line up; a batch that does not fit is decoded as dicts."""

    def __init__(self, names: list[str], types: list[Any]) -> None:
        self.names = names
        self.types = types
        fields = [(f"f{position}", kind | None, None) for position, kind in enumerate(types)]  # absent: null
        rename = {f"f{position}": name for position, name in enumerate(names)}
        self.struct = msgspec.defstruct("Record", fields, rename=rename, forbid_unknown_fields=True, gc=False)
        self.getters = [attrgetter(f"f{position}") for position in range(len(names))]
        self.decoder = msgspec.json.Decoder(self.struct)

    @classmethod
    def learn(cls, columns: _Columns | None) -> _Shape | None:
        """The shape of records seen as ``columns``; None when a field nests or mixes kinds."""
        if columns is None:
            return None
        types: list[Any] = []
        for seen in columns.kinds:
            kinds = seen - {_NONE}
            if not kinds:  # only nulls so far: whatever comes, the columns' kinds are read from the values
                types.append(Any)
            elif kinds == {int, float}:
                types.append(int | float)
            elif len(kinds) == 1 and kinds <= _FLAT:
                types.append(kinds.pop())
            else:  # nested, or of mixed kinds: such records stay dicts
                return None
        return cls(columns.names, types)

    def decode(self, lines: list[bytes]) -> list[Any] | None:
        """The lines as records of this shape, or None when one does not fit (or does not parse)."""
        return _decode_lines(self.decoder, lines)

    def columns(self, records: list[Any]) -> _Columns:
        columns = [list(map(get, records)) for get in self.getters]
        kinds: list[set[type]] = []
        nulls: list[int] = []
        for column, declared in zip(columns, self.types, strict=True):
            missing = column.count(None)
            nulls.append(missing)
            if isinstance(declared, type):  # the decoder gave exactly this type, or null: only nulls are counted
                kinds.append(({declared} if missing < len(column) else set()) | ({_NONE} if missing else set()))
            else:  # Any, or int | float: read from the values
                kinds.append(set(map(type, column)))
        return _Columns(self.names, columns, kinds, nulls)


_FLAT = frozenset((str, int, float, bool, _NONE))


def _decode_lines(decoder: msgspec.json.Decoder[Any], lines: list[bytes]) -> list[Any] | None:
    """The lines (none blank) decoded a value each, in one call; None when one does not parse, does not fit the
    decoder's type or holds more than one value (the decoder splits values at any whitespace, not only at lines)."""
    try:
        values = decoder.decode_lines(b"\n".join(lines))
    except msgspec.DecodeError:  # ValidationError included
        return None
    return values if len(values) == len(lines) else None


class _Offsets:
    """The sparse index of record offsets: the first record starting at or past every ``OFFSET_SPACING`` mark."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, int]] = []
        self._mark = 0

    def add(self, first_record: int, offset: int, lines: list[bytes], kept: list[int] | None) -> None:
        lengths = np.fromiter(map(len, lines), np.int64, len(lines)) + 1
        starts = offset + np.cumsum(lengths) - lengths
        if kept is not None:
            starts = starts[kept]
        while len(starts) and self._mark <= starts[-1]:
            at = int(np.searchsorted(starts, self._mark))
            self.entries.append((first_record + at, int(starts[at])))
            self._mark = int(starts[at]) + OFFSET_SPACING


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def profile(source: IO[bytes], path: str, stored_bytes: int) -> FileProfile:
    """Profile the file in ``source`` (seekable, at its start) named ``path``."""
    opened = formats.open_content(source, path)
    state = _Profile()
    arrow_fields: dict[str, tuple[str, int]] = {}
    invalid = 0
    decoder = msgspec.json.Decoder()
    shape: _Shape | None = None  # of the JSON Lines records, once a batch showed one
    offsets = _Offsets() if opened.compression is None else None

    fmt = opened.format
    if fmt in ("jsonl", "text"):
        for offset, raw, returns in formats.line_blocks(opened.stream):
            lines = [line.rstrip(b"\r\n") for line in raw] if returns else raw
            if fmt == "text":
                if offsets is not None:
                    offsets.add(state.records, offset, raw, None)
                state.add([line.decode("utf-8", "replace") for line in lines], lines)
                continue
            kept = list(filter(bytes.strip, lines))
            if offsets is not None:
                positions = None if len(kept) == len(lines) else [i for i, line in enumerate(lines) if line.strip()]
                offsets.add(state.records, offset, raw, positions)
            if shape is not None and (shaped := shape.decode(kept)) is not None:
                state.add(shaped, kept, fields=True, columns=shape.columns(shaped))
                continue
            decoded = _decode_lines(decoder, kept)
            if decoded is None:
                decoded = [formats.decode(fmt, line) for line in kept]
            kinds = list(map(type, decoded))
            invalid += kinds.count(str)
            columns = _Columns.of(decoded) if kinds.count(dict) == len(decoded) else None
            shape = _Shape.learn(columns)
            state.add(decoded, kept, fields=True, columns=columns)
    elif fmt == "json":
        for batch in _batches(formats.raw_records(opened), BATCH_RECORDS):
            state.add(batch, [msgspec.json.encode(r, order="sorted") for r in batch], fields=True)
    elif fmt in ("csv", "tsv", "parquet"):
        batches = formats.csv_batches(opened) if fmt != "parquet" else formats.parquet_batches(opened)
        for batch in batches:
            for column_name, column in zip(batch.schema.names, batch.columns, strict=True):
                kind, nulls = arrow_fields.get(column_name, (arrow_type(column.type), 0))
                arrow_fields[column_name] = (kind, nulls + column.null_count)
            rows = batch.to_pylist()
            state.add(rows, [msgspec.json.encode(row, order="sorted", enc_hook=str) for row in rows])
    elif opened.counter is not None:  # binary: read through, so the content size is known
        while opened.stream.read(formats.BLOCK):
            pass

    records = state.records
    texts = state.sample.texts()
    language_texts = texts[:: max(1, -(-len(texts) // LANGUAGE_SAMPLE))]  # an even subset of the sample
    if fmt in ("csv", "tsv", "parquet"):
        field_profiles = [FieldProfile(n, k, _rate(nulls, records)) for n, (k, nulls) in arrow_fields.items()]
    elif fmt == "text":
        field_profiles = [FieldProfile("text", "string", 0.0)] if records else []
    else:
        field_profiles = state.fields.profiles(records)
    exact = state.tokenized == records
    return FileProfile(
        path=path,
        format=fmt,
        compression=opened.compression,
        records=records,
        fields=field_profiles,
        tokens=state.tokens if exact else math.floor(state.tokens * state.all_chars / max(state.token_chars, 1)),
        tokenizer=tokenizer_name(),
        tokens_exact=exact,
        languages=_languages([t[:LANGUAGE_TEXT_CHARS] for t in language_texts if t.strip()]),
        language_sample=len(language_texts),
        duplicates=Duplicates(_rate(records - state.distinct.distinct(), records), _near_rate(texts), len(texts)),
        pii=state.counts,
        bytes=stored_bytes,
        content_bytes=opened.counter.count if opened.counter is not None else stored_bytes,
        invalid_records=invalid,
        token_sample=state.tokenized,
        record_offsets=offsets.entries if offsets is not None else [],
    )
