"""Opaque list cursors: every list answers ``{items, next_cursor}`` and takes back the cursor it issued."""

from __future__ import annotations

import base64

from app.errors import ProblemError


def invalid_cursor() -> ProblemError:
    return ProblemError(400, "invalid-cursor", "Invalid cursor", "pass next_cursor exactly as returned")


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        # validate=True: characters outside the alphabet are an error, not silently dropped.
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise invalid_cursor() from None
