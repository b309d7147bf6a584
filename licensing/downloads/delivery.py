"""Proxy delivery: byte ranges, and a stream that stops reading upstream the moment the client goes away."""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from urllib.parse import quote

import anyio
import anyio.lowlevel

from app.objectstore import ObjectStore

# Read from the object store and handed to the server at a time: the memory a transfer holds, and at most
# what a dropped client is counted for beyond what the server handed to the network. Larger is cheaper per
# byte (bench/proxy_bench.py: 64 KiB pieces of 1 MiB reads gave 0.55 of a direct GET, 1 MiB pieces 0.74).
CHUNK_SIZE = 1024 * 1024
_SPEC = re.compile(r"^(\d*)-(\d*)$")
# A range unit is a token (RFC 9110 section 14.1).
_UNIT = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def content_disposition(path: str) -> str:
    """``attachment`` naming the file's base name (RFC 6266): an ASCII ``filename`` every client reads, and the
    exact name as UTF-8 in ``filename*`` when it differs. Header values are Latin-1 on the wire, so names in
    other scripts (most Chinese, Japanese or Arabic corpora) can only travel percent-encoded."""
    name = posixpath.basename(path)
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


class MalformedRange(ValueError):
    """The Range header is not a ``bytes=`` range this server understands."""


class RangeNotSatisfiable(ValueError):
    """The range lies wholly outside the file."""


@dataclasses.dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str, size: int) -> ByteRange | None:
    """One ``bytes=`` range of a file of ``size`` bytes. ``None`` means "send it all": a multi-range request is
    answered with the whole file, as RFC 9110 allows, and so is a range in a unit other than bytes, which
    RFC 9110 (section 14.2) says to ignore."""
    unit, equals, spec = header.partition("=")
    if equals and _UNIT.fullmatch(unit.strip()) and unit.strip().lower() != "bytes":
        return None
    if unit.strip().lower() != "bytes" or not spec.strip():
        raise MalformedRange(f"expected 'bytes=START-END', got {header!r}")
    parts = [part.strip() for part in spec.split(",")]
    matches = [_SPEC.match(part) for part in parts]
    if any(m is None or m.group(0) == "-" for m in matches):
        raise MalformedRange(f"expected 'bytes=START-END', got {header!r}")
    if len(parts) > 1:
        return None
    match = matches[0]
    assert match is not None
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("an empty suffix range selects nothing")
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        raise MalformedRange(f"the range ends before it starts: {header!r}")
    if start >= size:
        raise RangeNotSatisfiable(f"the file has {size} bytes; the range starts at {start}")
    return ByteRange(start, min(end, size - 1))


async def stream_object(
    store: ObjectStore,
    key: str,
    byte_range: ByteRange,
    on_done: Callable[[int], Awaitable[None]],
    chunk_size: int = CHUNK_SIZE,
) -> AsyncGenerator[bytes, None]:
    """Yield the range in chunks read from the object store; whatever ends the stream (completion, a client
    gone, an error), close the upstream connection at once and report how many bytes the server accepted to
    send.

    A chunk counts once the server's ``send`` has returned and the task has passed a checkpoint: an ASGI server
    that drops what it is given after the client went away (uvicorn does) returns from ``send`` at once, and the
    checkpoint lets the disconnect cancel the stream before that chunk is counted."""
    sent = 0
    reader = await store.open_range(key, byte_range.start, byte_range.length) if byte_range.length else None
    try:
        remaining = byte_range.length
        while remaining > 0 and reader is not None:
            chunk = await reader.read(min(chunk_size, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
            await anyio.lowlevel.checkpoint()
            sent += len(chunk)
    finally:
        if reader is not None:
            reader.close()
        with anyio.CancelScope(shield=True):
            await on_done(sent)


class StartedStream:
    """A stream already started, its object opened and first piece read: iterate it as the stream itself.
    ``aclose()`` closes the stream even if it was never iterated (the response may end before its body)."""

    def __init__(self, stream: AsyncGenerator[bytes, None], first: bytes | None) -> None:
        self._stream = stream
        self._first = first

    def __aiter__(self) -> StartedStream:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._stream)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def start(stream: AsyncGenerator[bytes, None]) -> StartedStream:
    """Run ``stream`` to its first piece now, so that an unreachable object store fails the request before
    any header is sent (a 503 the client can retry) rather than breaking off a response already under way."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        return StartedStream(stream, None)
    except BaseException:
        await stream.aclose()
        raise
    return StartedStream(stream, first)
