"""Reading a stored file as records, streaming: compression and format detection, one record at a time.

A file arrives as a seekable binary stream (``RangeReader`` over the object store, or any file object). gzip and
zstd are recognised by their magic bytes and decompressed on the fly; the format comes from the name (without
the compression suffix) and, when the name says nothing, from the first bytes. Nothing holds more than a block of
the file in memory: lines for JSON Lines and text, ``ijson`` events for JSON, ``pyarrow`` record batches for
CSV/TSV and Parquet (whose footer is read with a ranged request, never by loading the file).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import ijson
import msgspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import zstandard

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "text", "binary")
COMPRESSIONS = ("gzip", "zstd")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonlines": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}
_COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
HEAD = 64 * 1024
BLOCK = 1024 * 1024
BATCH_ROWS = 4096

Record = Any  # a decoded record: a dict (JSON object, CSV row, Parquet row), another JSON value, or a text line


class RangeReader(io.RawIOBase):
    """A seekable, read-only file over an object read with ranged GETs, ``chunk`` bytes per request.

    Once a reader streams on past its first chunk, the next chunk is fetched in a thread while the caller works on
    the current one, so the network and the parsing overlap (two chunks in memory at most)."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, chunk: int = 8 * BLOCK) -> None:
        self._fetch = fetch
        self._size = size
        self._chunk = chunk
        self._position = 0
        self._buffer = b""
        self._buffer_at = 0
        self._ahead: _Fetching | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def fetch_range(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer at the end), fetched without the reader's buffer or position:
        safe to call from several threads when the fetch is."""
        length = max(0, min(length, self._size - offset))
        return self._fetch(offset, length) if length else b""

    def readinto(self, target: Any) -> int:
        view = memoryview(target).cast("B")
        if self._position >= self._size or not len(view):
            return 0
        offset = self._position - self._buffer_at
        if not 0 <= offset < len(self._buffer):
            # read ahead a chunk when reading on from the last request; after a seek elsewhere fetch what is asked
            sequential = self._position == self._buffer_at + len(self._buffer)
            streaming = sequential and len(self._buffer) > 0
            wanted = max(self._chunk, len(view)) if sequential else len(view)
            length = min(wanted, self._size - self._position)
            ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead.offset == self._position and ahead.length >= length:
                self._buffer = ahead.result()
            else:
                self._buffer = self._fetch(self._position, length)
            self._buffer_at, offset = self._position, 0
            following = self._position + len(self._buffer)
            if streaming and following < self._size:
                self._ahead = _Fetching(self._fetch, following, min(self._chunk, self._size - following))
        count = min(len(view), len(self._buffer) - offset)
        view[:count] = memoryview(self._buffer)[offset : offset + count]  # one copy, not two
        self._position += count
        return count


class _Fetching:
    """One ranged read running in a thread."""

    def __init__(self, fetch: Callable[[int, int], bytes], offset: int, length: int) -> None:
        self.offset = offset
        self.length = length
        self._data = b""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fetch,), daemon=True)
        self._thread.start()

    def _run(self, fetch: Callable[[int, int], bytes]) -> None:
        try:
            self._data = fetch(self.offset, self.length)
        except BaseException as exc:  # raised again in the reader's thread
            self._error = exc

    def result(self) -> bytes:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._data


class _Counting(io.RawIOBase):
    """Counts the bytes read through it (the uncompressed size)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        n: int = self._inner.readinto(target)  # type: ignore[attr-defined]  # every stream opened here has it
        self.count += n
        return n


@dataclasses.dataclass
class Opened:
    format: str
    compression: str | None
    stream: IO[bytes]  # the (decompressed) content, buffered
    counter: _Counting | None  # uncompressed bytes read so far; None for Parquet (read by ranges)
    source: IO[bytes]


def _name_hints(path: str) -> tuple[str | None, str | None]:
    name = path.lower().rsplit("/", 1)[-1]
    compression = None
    for suffix, kind in _COMPRESSION_SUFFIXES.items():
        if name.endswith(suffix):
            name, compression = name[: -len(suffix)], kind
            break
    dot = name.rfind(".")
    return (_EXTENSIONS.get(name[dot:]) if dot > 0 else None), compression


def _sniff(head: bytes) -> str:
    if head.startswith(b"PAR1"):
        return "parquet"
    if b"\x00" in head:
        return "binary"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the head
            return "binary"
        text = head[: exc.start].decode("utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        return "json"
    if stripped.startswith("{"):
        first = stripped.split("\n", 1)[0]
        try:
            msgspec.json.decode(first)
        except msgspec.DecodeError:
            return "json"
        return "jsonl"
    return "text"


def open_content(source: IO[bytes], path: str) -> Opened:
    """Recognise compression and format; ``source`` must be positioned at the start of the stored bytes."""
    hinted_format, _ = _name_hints(path)
    magic = source.read(4)
    source.seek(0)
    compression: str | None = None
    raw: IO[bytes] = source
    if magic[:2] == b"\x1f\x8b":
        compression, raw = "gzip", gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[assignment]
    elif magic == b"\x28\xb5\x2f\xfd":
        compression, raw = "zstd", zstandard.ZstdDecompressor().stream_reader(source, read_size=BLOCK)
    if compression is None and (hinted_format == "parquet" or magic == b"PAR1"):
        return Opened("parquet", None, source, None, source)
    counter = _Counting(raw)
    stream = io.BufferedReader(counter, buffer_size=BLOCK)
    fmt = hinted_format
    if fmt is None or fmt == "parquet":  # a compressed Parquet file cannot be read by row groups
        fmt = _sniff(stream.peek(HEAD)[:HEAD])
        if fmt == "parquet":
            fmt = "binary"
    return Opened(fmt, compression, stream, counter, source)


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    for line in stream:
        yield line.rstrip(b"\r\n")


def line_blocks(stream: IO[bytes]) -> Iterator[tuple[int, list[bytes], bool]]:
    """(offset of the first line, lines without their newline, whether any holds a carriage return) of the
    content, about a ``BLOCK`` at a time.

    The lines are those ``_lines`` gives, with a trailing carriage return kept (the reader strips it)."""
    offset = 0
    rest = b""
    while block := stream.read(BLOCK):
        lines = block.split(b"\n")  # the block is split as read, not first joined to what the last one left
        lines[0] = rest + lines[0]
        rest = lines.pop()
        if not lines:
            continue
        yield offset, lines, b"\r" in block or b"\r" in lines[0]
        offset += sum(map(len, lines)) + len(lines)
    if rest:
        yield offset, [rest], b"\r" in rest


def raw_records(opened: Opened) -> Iterator[Any]:
    """The file's records undecoded where that is cheaper (lines of JSON Lines and text), else decoded."""
    fmt = opened.format
    if fmt == "text":
        yield from _lines(opened.stream)
    elif fmt == "jsonl":
        for line in _lines(opened.stream):
            if line.strip():
                yield line
    elif fmt == "json":
        assert isinstance(opened.stream, io.BufferedReader)
        first = opened.stream.peek(HEAD).lstrip()[:1]
        yield from ijson.items(opened.stream, "item" if first == b"[" else "", use_float=True)
    elif fmt in ("csv", "tsv"):
        for batch in csv_batches(opened):
            yield from batch.to_pylist()
    elif fmt == "parquet":
        for batch in parquet_batches(opened):
            yield from batch.to_pylist()


def decode(fmt: str, raw: Any) -> Record:
    """A record from what ``raw_records`` gave: JSON Lines lines are parsed (an unparsable line stays text)."""
    if fmt == "jsonl":
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return raw.decode("utf-8", "replace")
    if fmt == "text":
        return raw.decode("utf-8", "replace")
    return raw


def csv_reader(opened: Opened) -> pa_csv.CSVStreamingReader:
    delimiter = "\t" if opened.format == "tsv" else ","
    return pa_csv.open_csv(
        opened.stream,
        read_options=pa_csv.ReadOptions(block_size=BLOCK),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(strings_can_be_null=True),  # an empty cell is a missing value
    )


def csv_batches(opened: Opened) -> Iterator[pa.RecordBatch]:
    yield from csv_reader(opened)


def parquet_batches(opened: Opened) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(opened.source).iter_batches(batch_size=BATCH_ROWS)


def strings_of(record: Record) -> Iterator[str]:
    """Every string (and integer, which may hold a phone or card number) in a record, depth first."""
    if isinstance(record, str):
        yield record
    elif isinstance(record, dict):
        for value in record.values():
            yield from strings_of(value)
    elif isinstance(record, list | tuple):
        for value in record:
            yield from strings_of(value)
    elif isinstance(record, int) and not isinstance(record, bool):
        yield str(record)
