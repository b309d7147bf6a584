"""Token request and response bodies."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from app.accounts.schemas import Strict


class PasswordGrant(Strict, tag_field="grant_type", tag="password"):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=320)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class RefreshGrant(Strict, tag_field="grant_type", tag="refresh_token"):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class TokenOut(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the scheme name
