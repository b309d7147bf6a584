"""Request and response bodies for users, organisations, memberships and API keys."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

import msgspec

# Checked as an address after NFKC (app.accounts.service.email_address), so the same address in fullwidth forms
# (its at sign and dots included) is one account with the ASCII one, at sign-up as at sign-in.
Email = Annotated[
    str,
    msgspec.Meta(min_length=3, max_length=320, description="an email address, compared after NFKC and case folding"),
]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
OrgSlug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
OrgKind = Literal["provider", "buyer", "both"]
OrgRole = Literal["owner", "admin", "member", "auditor"]


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    """Request bodies refuse fields they do not know, so a typo never passes silently."""


class SignUp(Strict):
    email: Email
    password: Password
    display_name: DisplayName


class UserOut(msgspec.Struct):
    id: uuid.UUID
    email: str
    display_name: str


class OrgRoleOut(msgspec.Struct):
    slug: str
    name: str
    kind: str
    role: str


class MeOut(msgspec.Struct):
    id: uuid.UUID
    email: str
    display_name: str
    orgs: list[OrgRoleOut]
    platform_roles: list[str]


class OrgIn(Strict):
    slug: OrgSlug
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    kind: OrgKind


class MemberOut(msgspec.Struct):
    user_id: uuid.UUID
    email: str
    display_name: str
    role: str


class OrgOut(msgspec.Struct):
    slug: str
    name: str
    kind: str
    created_at: dt.datetime
    your_role: str | None = None
    members: list[MemberOut] | None = None


class MemberIn(Strict):
    email: Email
    role: OrgRole


class ApiKeyIn(Strict):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    org: OrgSlug
    scopes: Annotated[list[str], msgspec.Meta(min_length=1, max_length=16)]
    expires_at: dt.datetime


class ApiKeyOut(msgspec.Struct):
    id: uuid.UUID
    name: str
    org: str
    scopes: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime
    key: str | None = None  # the secret: returned once, at creation, never again


class ApiKeyItem(msgspec.Struct):
    """A key as listed: never its secret."""

    id: uuid.UUID
    name: str
    org: str
    scopes: list[str]
    expires_at: dt.datetime
    created_at: dt.datetime
    last_used_at: dt.datetime | None  # kept to the minute


class ApiKeyPage(msgspec.Struct):
    items: list[ApiKeyItem]
    next_cursor: str | None = None


class OrgPage(msgspec.Struct):
    items: list[OrgRoleOut]
    next_cursor: str | None = None


class MemberPage(msgspec.Struct):
    items: list[MemberOut]
    next_cursor: str | None = None


class MemberRoleIn(Strict):
    role: OrgRole


Reason = Annotated[str, msgspec.Meta(max_length=500)]
