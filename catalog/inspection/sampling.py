"""Drawing a reproducible random sample of a version's records, and reading records from stored files.

The sample is drawn by position: with the record count of each file (from its profile), ``seed`` picks ``size``
distinct positions among all the version's records (files in path order), so the same seed over the same files
draws the same records. Each file that holds picked records is then streamed once up to its last pick; JSON Lines
and text are split into lines without parsing, and only the picked records are decoded.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import io
import itertools
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import msgspec

from catalog.inspection import formats, pii


@dataclasses.dataclass(frozen=True, slots=True)
class SourceFile:
    path: str
    sha256: str
    records: int
    offsets: tuple[tuple[int, int], ...] = ()  # the profile's sparse index of record offsets, if it has one


@dataclasses.dataclass(frozen=True, slots=True)
class Drawn:
    index: int  # position in the sample
    path: str
    sha256: str
    record_index: int  # position in its file
    record: Any
    record_sha256: str


def positions(files: Sequence[SourceFile], size: int, seed: int) -> list[tuple[int, int]]:
    """(file number, record number in that file) of each sample item, in sample order."""
    total = sum(f.records for f in files)
    picks = random.Random(seed).sample(range(total), size)  # noqa: S311 - reproducible by design, not a secret
    starts = list(itertools.accumulate((f.records for f in files), initial=0))
    out = []
    for pick in picks:
        number = bisect.bisect_right(starts, pick) - 1
        out.append((number, pick - starts[number]))
    return out


def record_digest(record: Any) -> str:
    return hashlib.sha256(msgspec.json.encode(record, order="sorted", enc_hook=str)).hexdigest()


def read_records(
    source: IO[bytes], path: str, wanted: set[int], offsets: Sequence[tuple[int, int]] = ()
) -> dict[int, Any]:
    """The decoded records at the positions ``wanted``: with an index of record offsets (uncompressed JSON Lines and
    text) only the regions holding them are read, by range; otherwise the file is streamed up to the last of them."""
    opened = formats.open_content(source, path)
    found: dict[int, Any] = {}
    if not wanted:
        return found
    if offsets and opened.compression is None and opened.format in ("jsonl", "text"):
        return _read_indexed(source, opened.format, wanted, offsets)
    if opened.format in ("jsonl", "text"):
        return _read_streamed(opened, wanted)
    last = max(wanted)
    for number, raw in enumerate(formats.raw_records(opened)):
        if number in wanted:
            found[number] = formats.decode(opened.format, raw)
        if number >= last:
            break
    return found


def _read_streamed(opened: formats.Opened, wanted: set[int]) -> dict[int, Any]:
    """The lines at ``wanted`` of JSON Lines or text, split a block at a time (no Python step per line) and read
    up to the last of them."""
    picks = sorted(wanted)
    found: dict[int, Any] = {}
    first = 0
    for _, lines, _ in formats.line_blocks(opened.stream):
        if opened.format == "jsonl":
            lines = list(filter(bytes.strip, lines))  # blank lines are no records
        end = first + len(lines)
        for number in picks[len(found) : bisect.bisect_left(picks, end)]:
            found[number] = formats.decode(opened.format, lines[number - first].rstrip(b"\r\n"))
        if len(found) == len(picks):
            break
        first = end
    return found


_PARALLEL_RANGES = 8  # ranged reads of one file in flight at once: each costs a round trip more than its bytes
# Picked regions within this many bytes of the first of their group are read in one request: an object store may
# read (and decompress) a whole stored chunk for any range of it, so thousands of small ranges can cost more than
# a few hundred larger ones.
_SPAN = 8 * formats.BLOCK


def _read_indexed(source: IO[bytes], fmt: str, wanted: set[int], offsets: Sequence[tuple[int, int]]) -> dict[int, Any]:
    firsts = [record for record, _ in offsets]
    groups: list[tuple[int, int, list[int]]] = []  # (first region, last region, picks)
    for number in sorted(wanted):
        region = bisect.bisect_right(firsts, number) - 1
        if groups and offsets[region][1] < offsets[groups[-1][0]][1] + _SPAN:
            groups[-1] = (groups[-1][0], region, [*groups[-1][2], number])
        else:
            groups.append((region, region, [number]))
    size = source.seek(0, io.SEEK_END)
    read = _range_reading(source)

    def group_records(group: tuple[int, int, list[int]]) -> dict[int, Any]:
        first_region, last_region, numbers = group
        first, start = offsets[first_region]
        following, end = offsets[last_region + 1] if last_region + 1 < len(offsets) else (first, size)
        # read as far as the last pick should lie by the mean record length (with a margin), the rest only when
        # that falls short
        mean = (end - start) / (following - first) if following > first else end - start
        guess = min(end, start + int((numbers[-1] - first + 1) * mean * 1.25) + 4096)
        lines = _region_lines(read(start, guess - start), fmt, complete=guess == end)
        if len(lines) <= numbers[-1] - first:
            lines = _region_lines(read(start, end - start), fmt, complete=True)
        return {number: formats.decode(fmt, lines[number - first]) for number in numbers}

    found: dict[int, Any] = {}
    with ThreadPoolExecutor(_PARALLEL_RANGES) as pool:
        for records in pool.map(group_records, groups):
            found.update(records)
    return found


def _region_lines(data: bytes, fmt: str, *, complete: bool) -> list[bytes]:
    """The records in ``data`` read from a record's start: all lines when it runs to the region's end, else only
    the lines its newlines end."""
    lines = [line.rstrip(b"\r\n") for line in data.split(b"\n")]
    if data.endswith(b"\n") or not complete:
        lines.pop()  # what follows the last newline is no line, or no whole one
    return [line for line in lines if line.strip()] if fmt == "jsonl" else lines


def _range_reading(source: IO[bytes]) -> Callable[[int, int], bytes]:
    """Reads of byte ranges that may run in threads at once: a ``RangeReader`` fetches each by itself, any other
    file is read under a lock."""
    if isinstance(source, formats.RangeReader):
        return source.fetch_range
    lock = threading.Lock()

    def read(offset: int, length: int) -> bytes:
        with lock:
            source.seek(offset)
            data = bytearray()
            while len(data) < length and (part := source.read(length - len(data))):
                data += part
            return bytes(data)

    return read


def draw(
    files: Sequence[SourceFile], size: int, seed: int, open_file: Callable[[SourceFile], IO[bytes]]
) -> list[Drawn]:
    places = positions(files, size, seed)
    by_file: dict[int, set[int]] = {}
    for number, record_index in places:
        by_file.setdefault(number, set()).add(record_index)
    records = {
        number: read_records(open_file(files[number]), files[number].path, wanted, files[number].offsets)
        for number, wanted in by_file.items()
    }
    drawn = []
    for index, (number, record_index) in enumerate(places):
        record = records[number][record_index]
        source = files[number]
        drawn.append(Drawn(index, source.path, source.sha256, record_index, record, record_digest(record)))
    return drawn


def masked(record: Any) -> Any:
    """The record with personal data masked in every string, keeping its shape."""
    if isinstance(record, str):
        return pii.mask(record)
    if isinstance(record, dict):
        return {key: masked(value) for key, value in record.items()}
    if isinstance(record, list):
        return [masked(value) for value in record]
    if isinstance(record, int) and not isinstance(record, bool):
        text = pii.mask(str(record))
        return record if text == str(record) else text
    return record


def first_records(source: IO[bytes], path: str, limit: int) -> tuple[str, list[Any]]:
    """The file's format and its first ``limit`` records."""
    opened = formats.open_content(source, path)
    return opened.format, [
        formats.decode(opened.format, r) for r in itertools.islice(formats.raw_records(opened), limit)
    ]
