"""Opaque list cursors, one helper for every list: ``{items, next_cursor}`` pages keyed on the values of the
last row's sort key, and ``page`` to run a keyset page of any query.

A cursor is the key values as JSON behind a short checksum, base64url-encoded. It only says where the next page
starts: every page is still filtered by what the caller may see, so a cursor never reveals anything. The
checksum makes a cursor the API did not issue (typed, truncated, edited) a 400 without reading any table.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, literal, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.errors import ProblemError

MAX_CURSOR_LENGTH = 512
_TAG_BYTES = 6
_SALT = b"corpora-cursor\x00"


def invalid_cursor() -> ProblemError:
    return ProblemError(400, "invalid-cursor", "Invalid cursor", "pass next_cursor exactly as returned")


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _base64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _tag(payload: bytes) -> bytes:
    return hashlib.sha256(_SALT + payload).digest()[:_TAG_BYTES]


def encode(values: Sequence[Any]) -> str:
    """The cursor of a page that continues after a row with these key values."""
    payload = json.dumps([_plain(v) for v in values], separators=(",", ":")).encode()
    return _base64(_tag(payload) + payload)


def _typed(value: Any, kind: type) -> Any:
    if kind is dt.datetime:
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("naive datetime")
        return parsed
    if kind is uuid.UUID:
        return uuid.UUID(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError("not a boolean")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("not an integer")
        return value
    if not isinstance(value, kind):
        raise ValueError(f"not a {kind.__name__}")
    return value


def decode(cursor: str | None, kinds: Sequence[type]) -> tuple[Any, ...] | None:
    """The key values of a cursor ``encode`` made, typed as ``kinds``; None for no cursor; 400 for anything else."""
    if cursor is None:
        return None
    try:
        if len(cursor) > MAX_CURSOR_LENGTH or not cursor.isascii():
            raise ValueError("not a cursor")
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        tag, payload = raw[:_TAG_BYTES], raw[_TAG_BYTES:]
        if len(tag) != _TAG_BYTES or tag != _tag(payload) or _base64(raw) != cursor:
            raise ValueError("checksum")
        values = json.loads(payload)
        if not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError("shape")
        return tuple(_typed(v, k) for v, k in zip(values, kinds, strict=True))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise invalid_cursor() from None


def _python_type(column: ColumnElement[Any] | InstrumentedAttribute[Any]) -> type:
    kind: type = column.type.python_type
    return kind


async def page(
    session: AsyncSession,
    query: Select[*tuple[Any, ...]],
    keys: Sequence[ColumnElement[Any] | InstrumentedAttribute[Any]],
    cursor: str | None,
    limit: int,
    *,
    descending: bool = False,
) -> tuple[list[tuple[Any, ...]], str | None]:
    """One keyset page of ``query``, ordered by ``keys`` (unique together), in one statement: the rows (without
    the key columns) and the cursor of the next page, or None on the last page."""
    after = decode(cursor, [_python_type(k) for k in keys])
    if after is not None:
        position, start = tuple_(*keys), tuple_(*(literal(v, k.type) for v, k in zip(after, keys, strict=True)))
        query = query.where(position < start if descending else position > start)
    order = [k.desc() for k in keys] if descending else list(keys)
    rows = (await session.execute(query.add_columns(*keys).order_by(*order).limit(limit + 1))).all()
    width = len(keys)
    items = [tuple(row[:-width]) for row in rows[:limit]]
    next_cursor = encode(tuple(rows[limit - 1][-width:])) if len(rows) > limit else None
    return items, next_cursor
