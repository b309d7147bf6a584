"""A sample drawn through the profile's index of record offsets is the one streaming the file draws."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from catalog.inspection import formats, profiler, sampling


class CountingFile(io.BytesIO):
    def __init__(self, content: bytes) -> None:
        super().__init__(content)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        count = super().readinto(buffer)
        self.bytes_read += count
        return count


def jsonl() -> bytes:
    lines = [json.dumps({"id": i, "text": f"record {i} " + "x" * (i % 37)}) for i in range(3000)]
    lines[10] = "   "  # blank lines are no records
    lines[500] = ""
    return ("\r\n".join(lines[:1500]) + "\n" + "\n".join(lines[1500:])).encode()  # no newline at the end


@pytest.mark.parametrize(
    ("path", "content"), [("a.jsonl", jsonl()), ("b.txt", b"".join(b"line %d\n\n" % i for i in range(4000)))]
)
def test_indexed_draw_is_the_streamed_draw(monkeypatch: pytest.MonkeyPatch, path: str, content: bytes) -> None:
    monkeypatch.setattr(profiler, "OFFSET_SPACING", 1024)
    monkeypatch.setattr(sampling, "_SPAN", 4096)  # picks far apart are read in separate requests
    result = profiler.profile(io.BytesIO(content), path, len(content))
    assert len(result.record_offsets) > 20
    indexed = sampling.SourceFile(path, "-", result.records, tuple(result.record_offsets))
    streamed = sampling.SourceFile(path, "-", result.records)
    opened: list[CountingFile] = []

    def open_file(_: Any) -> CountingFile:
        opened.append(CountingFile(content))
        return opened[-1]

    opened_content = formats.open_content(io.BytesIO(content), path)
    every = [formats.decode(opened_content.format, r) for r in formats.raw_records(opened_content)]
    for seed in (1, 2, 3):
        by_index = sampling.draw([indexed], 40, seed, open_file)
        by_stream = sampling.draw([streamed], 40, seed, open_file)
        assert by_index == by_stream
        assert [item.record for item in by_stream] == [every[item.record_index] for item in by_stream]
        assert opened[-2].bytes_read < opened[-1].bytes_read
    assert sampling.draw([indexed], 40, 1, open_file) == sampling.draw([indexed], 40, 1, open_file)

    def ranged(_: Any) -> Any:  # short reads: a region partly in what the reader fetched before
        return formats.RangeReader(lambda offset, length: content[offset : offset + length], len(content), chunk=1500)

    assert sampling.draw([indexed], 200, 5, ranged) == sampling.draw([streamed], 200, 5, open_file)
