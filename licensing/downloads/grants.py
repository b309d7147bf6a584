"""Download grants: checks, metering and receipts.

A grant charges one download and the file's size against the entitlement with a single conditional
UPDATE, records the grant and appends its audit event, all in the caller's transaction: concurrent grants
never overshoot a quota, and a grant never exists without its audit event (or the reverse)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import fnmatch
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import jwt
from sqlalchemy import ARRAY, Select, String, and_, any_, bindparam, select, text, update
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import access
from app.accounts.models import Membership, Organization
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.keys import ALGORITHM, KeyRing
from app.auth.principal import Principal
from app.db import DriverStatement, driver_connection, utcnow
from app.errors import ProblemError, not_found
from catalog.models import Product, ProductVersion, VersionFile
from licensing import notices
from licensing.downloads.models import DownloadGrant
from licensing.entitlements.models import CURRENT_STATUSES, Entitlement
from licensing.takedowns.models import withdrawn

# A grant's URL may be refreshed, and its transfer resumed, for this long without a new charge.
GRANT_WINDOW = dt.timedelta(hours=24)


RECEIPT_TYPE = "corpora-receipt+jwt"


RELEASED = ("published", "deprecated")


class Refused(ProblemError):
    """A grant refused for a reason the metrics count (revoked, expired, quota, …)."""

    def __init__(self, status: int, reason: str, detail: str, **extra: Any) -> None:
        titles = {
            "quota-exceeded": "Quota exceeded",
            "entitlement-inactive": "Entitlement not active",
            "purpose-not-permitted": "Purpose not permitted",
            "version-not-covered": "Version not covered",
            "version-withdrawn": "Version withdrawn",
            "taken-down": "Unavailable for legal reasons",
        }
        super().__init__(status, reason, titles.get(reason, "Download refused"), detail, extra=extra)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class FileRef:
    id: uuid.UUID
    path: str
    size: int
    sha256: str
    taken_down: bool  # withdrawn by an upheld takedown


@dataclasses.dataclass(frozen=True, slots=True)
class Standing:
    """What the checks read of an entitlement (the ``_STANDING`` columns)."""

    id: uuid.UUID
    buyer_org_id: uuid.UUID
    status: str
    status_reason: str | None
    valid_from: dt.datetime
    valid_until: dt.datetime
    versions: str
    purposes: list[str]


_STANDING = (
    Entitlement.id,
    Entitlement.buyer_org_id,
    Entitlement.status,
    Entitlement.status_reason,
    Entitlement.valid_from,
    Entitlement.valid_until,
    Entitlement.versions,
    Entitlement.purposes,
)


@dataclasses.dataclass(slots=True)
class Target:
    """What a grant needs once every check has passed."""

    entitlement: Standing
    buyer_org: str
    product: str
    version: str
    version_id: uuid.UUID
    manifest_digest: str
    files: list[FileRef]


@dataclasses.dataclass(slots=True)
class Grant:
    row: DownloadGrant
    product: str
    version: str
    receipt: str
    charged: bool
    url: str


# Where a grant's bytes are fetched: a presigned object-store URL or the proxy endpoint.
Locate = Callable[[DownloadGrant], Awaitable[str]]


def _downloadable(*columns: Any) -> Select[Any]:
    """The entitlement ``:entitlement_id``'s standing, its buyer org's slug and ``columns``, if user ``:user_id``
    may download under it. Built once per query shape, and run on the session's connection without the ORM:
    these statements cost less to run than to build, and rows need no objects."""
    return (
        select(*_STANDING, Organization.slug, *columns)
        .join(Organization, Organization.id == Entitlement.buyer_org_id)
        .join(
            Membership,
            and_(
                Membership.org_id == Entitlement.buyer_org_id,
                Membership.user_id == bindparam("user_id"),
                # ANY of an array, not IN: an IN list is rendered per execution, this compiles once (DriverStatement)
                Membership.role == any_(array(access.RULES["downloads.grant"].roles, type_=String)),
            ),
        )
        .where(Entitlement.id == bindparam("entitlement_id"))
    )


_DOWNLOADABLE = _downloadable()


async def _current(session: AsyncSession, principal: Principal, row: Any) -> Standing:
    """The standing in ``row`` (from ``_downloadable``); 404 for no row or an API key of another org. An
    entitlement past its term reads as expired whether or not the sweep has recorded it, so a refusal names the
    right status."""
    if row is None:
        raise not_found("entitlement")
    standing = Standing(*row[: len(_STANDING)])
    if not access.acts_for(principal, standing.buyer_org_id):
        raise not_found("entitlement")
    if standing.status in CURRENT_STATUSES and standing.valid_until <= utcnow():
        # Past its term: expired, whether or not the sweep has recorded it yet.
        return dataclasses.replace(standing, status="expired", status_reason="term ended")
    return standing


def _check_active(entitlement: Standing | Entitlement, now: dt.datetime) -> None:
    if entitlement.status != "active":
        reason = f" ({entitlement.status_reason})" if entitlement.status_reason else ""
        raise Refused(403, "entitlement-inactive", f"the entitlement is {entitlement.status}{reason}")
    if not entitlement.valid_from <= now < entitlement.valid_until:
        raise Refused(403, "entitlement-inactive", "the entitlement is outside its term")


# The newest released version of the product in the enclosing query, by catalog.service.semver_key's order.
_LATEST_RELEASED = (
    select(ProductVersion.version)
    .where(
        ProductVersion.product_id == Entitlement.product_id, ProductVersion.state == any_(array(RELEASED, type_=String))
    )
    .order_by(
        ProductVersion.major.desc(),
        ProductVersion.minor.desc(),
        ProductVersion.patch.desc(),
        ProductVersion.prerelease.is_(None).desc(),
        ProductVersion.prerelease.collate("C").desc(),
    )
    .limit(1)
    .correlate(Entitlement)
    .scalar_subquery()
)


def _target_query(*, some_paths: bool) -> Select[Any]:
    """The entitlement with its product, the version ``:version`` and its verified files (those in ``:paths``
    when ``some_paths``): a row per file, or one with no file."""
    file_match = and_(VersionFile.version_id == ProductVersion.id, VersionFile.status == "verified")
    if some_paths:
        file_match = and_(file_match, VersionFile.path == any_(bindparam("paths", type_=ARRAY(String))))
    return (
        _downloadable(
            Product.slug,
            ProductVersion.id,
            ProductVersion.state,
            ProductVersion.withdrawn_reason,
            ProductVersion.manifest_digest,
            _LATEST_RELEASED,
            VersionFile.id,
            VersionFile.path,
            VersionFile.size,
            VersionFile.sha256,
            withdrawn(VersionFile.sha256, Product.org_id),
        )
        .join(Product, Product.id == Entitlement.product_id)
        .outerjoin(
            ProductVersion,
            and_(ProductVersion.product_id == Product.id, ProductVersion.version == bindparam("version")),
        )
        .outerjoin(VersionFile, file_match)
        .order_by(VersionFile.path)
    )


_TARGET_FILES = DriverStatement(_target_query(some_paths=True))


_TARGET_ALL_FILES = DriverStatement(_target_query(some_paths=False))


async def resolve_target(
    session: AsyncSession,
    principal: Principal,
    entitlement_id: uuid.UUID,
    slug: str,
    version: str,
    purpose: str,
    paths: Sequence[str] | None,
) -> Target:
    """Every check a grant needs (membership, status, term, product, version coverage, purpose) and the
    version's verified files at ``paths`` (all of them without), in one query."""
    params: dict[str, Any] = {"entitlement_id": entitlement_id, "user_id": principal.user_id, "version": version}
    if paths is not None:
        params["paths"] = list(paths)
    query = _TARGET_ALL_FILES if paths is None else _TARGET_FILES
    # The transaction's first statement: through SQLAlchemy, which begins the transaction with it.
    rows: Sequence[Any] = (await (await session.connection()).exec_driver_sql(query.sql, query.args(params))).all()
    entitlement = await _current(session, principal, rows[0] if rows else None)
    buyer_org, product_slug, version_id, state, withdrawn_reason, manifest_digest, latest, *_ = rows[0][
        len(_STANDING) :
    ]
    _check_active(entitlement, utcnow())
    if product_slug != slug:
        raise Refused(403, "version-not-covered", f"this entitlement is for '{product_slug}', not '{slug}'")
    if version_id is None or state in ("draft", "in_review"):
        raise not_found(f"version {version} of '{slug}'")
    if state == "withdrawn":
        why = f": {withdrawn_reason}" if withdrawn_reason else ""
        raise Refused(403, "version-withdrawn", f"version {version} was withdrawn{why}")
    if entitlement.versions == "latest" and latest != version:
        raise Refused(
            403,
            "version-not-covered",
            f"this entitlement covers the latest version only ({latest}), not {version}",
            latest_version=latest,
        )
    if purpose not in entitlement.purposes:
        raise Refused(
            403,
            "purpose-not-permitted",
            f"this entitlement was granted for {', '.join(entitlement.purposes)}, not {purpose}",
            permitted_purposes=list(entitlement.purposes),
        )
    assert manifest_digest is not None  # released versions have their manifest
    files = [FileRef(*row[-5:]) for row in rows if row[-5] is not None]
    return Target(entitlement, buyer_org, slug, version, version_id, manifest_digest, files)


# The charge, the audit events and the grant rows in one statement: from the UPDATE on, this transaction holds
# the entitlement's row lock until it commits, and every other grant under the entitlement waits; one round trip
# keeps that short. The WHERE clause is the quota check: when it fails nothing is charged, recorded or inserted.
# Each event takes its org from the charged row, so none is recorded unless the charge succeeded. Recording an
# event locks nothing shared (the sequencer chains it after the commit), so grants under different entitlements
# commit concurrently; each grant row keeps its event's content digest, which the receipt carries.
_CHARGE_AND_RECORD = DriverStatement(
    text(
        """
WITH charged AS (
    UPDATE entitlements
    SET downloads_used = downloads_used + CAST(:downloads AS bigint), bytes_used = bytes_used + CAST(:bytes AS bigint)
    WHERE id = CAST(:entitlement_id AS uuid) AND status = 'active'
      AND valid_from <= CAST(:now AS timestamptz) AND valid_until > CAST(:now AS timestamptz)
      AND (downloads_limit IS NULL OR downloads_used + CAST(:downloads AS bigint) <= downloads_limit)
      AND (bytes_limit IS NULL OR bytes_used + CAST(:bytes AS bigint) <= bytes_limit)
    RETURNING buyer_org_id, downloads_used, downloads_limit, bytes_used, bytes_limit
), files AS (
    SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:file_ids AS uuid[]), CAST(:paths AS text[]),
                         CAST(:sha256s AS text[]), CAST(:sizes AS bigint[]), CAST(:details AS jsonb[]))
        AS f(id, file_id, path, sha256, size, details)
), events AS (
    INSERT INTO audit_pending (actor, org_id, action, target_type, target_id, request_id, client_addr, details)
    SELECT CAST(:actor AS text), c.buyer_org_id, 'download.granted', 'download', CAST(f.id AS text),
           CAST(:request_id AS text), CAST(:client_addr AS text), f.details
    FROM charged AS c CROSS JOIN files AS f
    RETURNING target_id, audit_content_digest(actor, org_id, action, target_type, target_id, request_id,
                                              client_addr, details) AS digest
), inserted AS (
INSERT INTO download_grants (id, entitlement_id, user_id, api_key_id, file_id, version_id, path, sha256, size,
                             purpose, mode, manifest_digest, granted_at, window_ends_at, url_expires_at, refreshed,
                             bytes_charged, bytes_served, audit_hash)
SELECT f.id, CAST(:entitlement_id AS uuid), CAST(:user_id AS uuid), CAST(:api_key_id AS uuid), f.file_id,
       CAST(:version_id AS uuid), f.path, f.sha256, f.size, CAST(:purpose AS text), CAST(:mode AS text),
       CAST(:manifest_digest AS text), CAST(:now AS timestamptz), CAST(:window_ends_at AS timestamptz),
       CAST(:url_expires_at AS timestamptz), 0, f.size, 0, encode(e.digest, 'hex')
FROM files AS f JOIN events AS e ON e.target_id = CAST(f.id AS text)
RETURNING id, audit_hash
)
SELECT i.id, i.audit_hash, c.buyer_org_id, c.downloads_used, c.downloads_limit, c.bytes_used, c.bytes_limit
FROM inserted AS i CROSS JOIN charged AS c
"""
    )
)


async def _charge_and_record(
    session: AsyncSession, context: AuditContext, target: Target, rows: Sequence[DownloadGrant]
) -> None:
    """Charge the rows' downloads and bytes, record their audit events and insert them; or refuse, changing
    nothing, with what remains of the quota."""
    first = rows[0]
    entitlement = target.entitlement
    # On the driver's connection of the transaction the target query began (DriverStatement).
    charged = await (await driver_connection(session)).fetch(
        _CHARGE_AND_RECORD.sql,
        *_CHARGE_AND_RECORD.args(
            {
                "downloads": len(rows),
                "bytes": sum(row.size for row in rows),
                "entitlement_id": entitlement.id,
                "now": first.granted_at,
                "ids": [row.id for row in rows],
                "file_ids": [row.file_id for row in rows],
                "paths": [row.path for row in rows],
                "sha256s": [row.sha256 for row in rows],
                "sizes": [row.size for row in rows],
                "details": [
                    audit.encode_details(
                        {
                            "entitlement_id": str(entitlement.id),
                            "product": target.product,
                            "version": target.version,
                            "path": row.path,
                            "sha256": row.sha256,
                            "bytes_charged": row.size,
                            "purpose": row.purpose,
                            "mode": row.mode,
                        }
                    )
                    for row in rows
                ],
                "actor": context.actor,
                "request_id": context.request_id,
                "client_addr": context.client_addr,
                "user_id": first.user_id,
                "api_key_id": first.api_key_id,
                "version_id": first.version_id,
                "purpose": first.purpose,
                "mode": first.mode,
                "manifest_digest": first.manifest_digest,
                "window_ends_at": first.window_ends_at,
                "url_expires_at": first.url_expires_at,
            }
        ),
    )
    if charged:
        hashes = {download_id: audit_hash for download_id, audit_hash, *_ in charged}
        for row in rows:
            row.audit_hash = hashes[row.id]
        _, _, buyer_org_id, downloads_used, downloads_limit, bytes_used, bytes_limit = charged[0]
        for quota, used, amount, limit in [
            ("downloads", downloads_used, len(rows), downloads_limit),
            ("bytes", bytes_used, sum(row.size for row in rows), bytes_limit),
        ]:
            await notices.quota_crossed(
                session,
                entitlement_id=entitlement.id,
                buyer_org_id=buyer_org_id,
                product=target.product,
                quota=quota,
                used=used,
                charged=amount,
                limit=limit,
            )
        return
    await _refuse_charge(session, entitlement.id, len(rows), sum(row.size for row in rows), first.granted_at)


async def _refuse_charge(
    session: AsyncSession, entitlement_id: uuid.UUID, downloads: int, size: int, now: dt.datetime
) -> None:
    """Why a charge did not happen: the entitlement's status or term, else the quota, with what remains."""
    current = (
        await session.execute(
            select(Entitlement).where(Entitlement.id == entitlement_id).execution_options(populate_existing=True)
        )
    ).scalar_one()
    _check_active(current, now)
    remaining = {
        "downloads_remaining": None
        if current.downloads_limit is None
        else current.downloads_limit - current.downloads_used,
        "bytes_remaining": None if current.bytes_limit is None else current.bytes_limit - current.bytes_used,
    }
    raise Refused(
        429,
        "quota-exceeded",
        f"this needs {downloads} download(s) and {size} bytes; the entitlement has "
        f"{remaining['downloads_remaining'] if remaining['downloads_remaining'] is not None else 'unlimited'} "
        f"download(s) and "
        f"{remaining['bytes_remaining'] if remaining['bytes_remaining'] is not None else 'unlimited'} bytes left",
        **remaining,
    )


def sign_receipt(
    keyring: KeyRing, grant: DownloadGrant, *, product: str, version: str, buyer_org: str, issuer: str
) -> str:
    """An Ed25519 JWS the buyer keeps as proof of lawful acquisition; verifiable with the public JWKS.

    ``audit_event_hash`` is the content digest of the grant's ``download.granted`` event
    (``app.audit.service.content_digest``): the event joins the log after the grant commits, so its chain hash is
    not known yet; the digest identifies the event once it is there (recompute it from the event's fields).
    """
    key = keyring.active
    claims = {
        "iss": issuer,
        "sub": buyer_org,
        "iat": int(grant.granted_at.timestamp()),
        "download_id": str(grant.id),
        "entitlement_id": str(grant.entitlement_id),
        "product": product,
        "version": version,
        "path": grant.path,
        "sha256": grant.sha256,
        "size": grant.size,
        "purpose": grant.purpose,
        "manifest_digest": grant.manifest_digest,
        "granted_at": grant.granted_at.isoformat(),
        "audit_event_hash": grant.audit_hash,
    }
    return jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": RECEIPT_TYPE})


def _taken_down(paths: Sequence[str], slug: str, version: str) -> Refused:
    """451 (RFC 7725): an upheld takedown withdrew this content."""
    return Refused(
        451,
        "taken-down",
        f"{', '.join(repr(p) for p in paths[:5])} of {slug}@{version} was taken down after a rights holder's "
        "complaint and is no longer delivered",
        paths=list(paths),
    )


def _url_expiry(mode: str, now: dt.datetime, url_seconds: int, window_ends_at: dt.datetime) -> dt.datetime:
    """When the grant's URL stops working: a presigned URL after ``url_seconds``; the proxy URL, which needs
    the caller's bearer token as well, when the grant's window ends."""
    if mode == "proxy":
        return window_ends_at
    return min(now + dt.timedelta(seconds=url_seconds), window_ends_at)


async def grant(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    keyring: KeyRing,
    *,
    entitlement_id: uuid.UUID,
    slug: str,
    version: str,
    paths: Sequence[str] | None,
    patterns: Sequence[str] | None = None,
    purpose: str,
    lawful_only: bool = False,
    mode: str,
    url_seconds: int,
    issuer: str,
    locate: Locate,
    charge_turn: asyncio.Lock,
) -> list[Grant]:
    """Grant the named files (or those matching ``patterns``), charged together: all or nothing. A named file
    that was taken down refuses the grant, unless ``lawful_only`` (a manifest), which leaves it out."""
    target = await resolve_target(session, principal, entitlement_id, slug, version, purpose, paths)
    files = target.files
    if paths is not None:
        by_path = {f.path: f for f in files}
        missing = [p for p in paths if p not in by_path]
        if missing:
            raise not_found(f"file '{missing[0]}' in {slug}@{version}")
        files = [by_path[p] for p in dict.fromkeys(paths)]
        taken_down = [f.path for f in files if f.taken_down]
        if taken_down and not lawful_only:
            raise _taken_down(taken_down, slug, version)
    elif patterns is not None:
        files = [f for f in files if any(fnmatch.fnmatchcase(f.path, p) for p in patterns)]
    if not files:
        raise not_found(f"files matching {list(patterns or [])} in {slug}@{version}")
    # A version's lawful files stay available when some of its content was taken down.
    lawful = [f for f in files if not f.taken_down]
    if not lawful:
        raise _taken_down([f.path for f in files], slug, version)
    files = lawful
    now = utcnow()
    rows = [
        DownloadGrant(
            id=uuid.uuid4(),
            entitlement_id=entitlement_id,
            user_id=principal.user_id,
            api_key_id=principal.api_key_id,
            file_id=file.id,
            version_id=target.version_id,
            path=file.path,
            sha256=file.sha256,
            size=file.size,
            purpose=purpose,
            mode=mode,
            manifest_digest=target.manifest_digest,
            granted_at=now,
            window_ends_at=now + GRANT_WINDOW,
            url_expires_at=_url_expiry(mode, now, url_seconds, now + GRANT_WINDOW),
            refreshed=0,
            bytes_charged=file.size,
            bytes_served=0,
            audit_hash="",
        )
        for file in files
    ]
    # URLs are made first: once the charge is sent, every other grant under the entitlement waits for this
    # transaction to commit.
    urls = [await locate(row) for row in rows]
    # Grants under one entitlement commit one at a time (its row stays locked from the charge to the commit), so
    # charges in this process queue here first: PostgreSQL then sees one waiter per process rather than dozens,
    # whose lock queue costs more CPU than the grants. The turn ends when the statement returns, so the next
    # charge is already waiting in PostgreSQL when this commits, and charges under other entitlements (which
    # share no lock since audit events are sequenced after commit) only wait for a statement, not a commit.
    async with charge_turn:
        await _charge_and_record(session, context, target, rows)
    return [
        Grant(
            row,
            slug,
            version,
            sign_receipt(keyring, row, product=slug, version=version, buyer_org=target.buyer_org, issuer=issuer),
            charged=True,
            url=url,
        )
        for row, url in zip(rows, urls, strict=True)
    ]


async def refresh(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    keyring: KeyRing,
    download_ids: Sequence[uuid.UUID],
    *,
    url_seconds: int,
    issuer: str,
    locate: Locate,
) -> list[Grant]:
    """Fresh URLs for the caller's grants still in their window; nothing is charged again."""
    grants: list[Grant] = []
    for download_id in dict.fromkeys(download_ids):
        row = await grant_for_content(session, principal, download_id, lock=True)
        now = utcnow()
        row.refreshed += 1
        row.url_expires_at = _url_expiry(row.mode, now, url_seconds, row.window_ends_at)
        slug, version, buyer_org, buyer_org_id = (
            await session.execute(
                select(Product.slug, ProductVersion.version, Organization.slug, Organization.id)
                .join(Product, Product.id == ProductVersion.product_id)
                .join(Entitlement, Entitlement.product_id == Product.id)
                .join(Organization, Organization.id == Entitlement.buyer_org_id)
                .where(ProductVersion.id == row.version_id, Entitlement.id == row.entitlement_id)
            )
        ).one()
        await session.flush()
        await audit.record(
            session,
            context,
            "download.refreshed",
            org_id=buyer_org_id,
            target_type="download",
            target_id=row.id,
            details={"path": row.path, "refreshed": row.refreshed},
        )
        receipt = sign_receipt(keyring, row, product=slug, version=version, buyer_org=buyer_org, issuer=issuer)
        grants.append(Grant(row, slug, version, receipt, charged=False, url=await locate(row)))
    return grants


async def grant_for_content(
    session: AsyncSession, principal: Principal, download_id: uuid.UUID, *, lock: bool = False
) -> DownloadGrant:
    """The caller's grant, re-checked now: revocation, expiry, withdrawal and takedowns cut proxied transfers and
    refreshes (so no presigned URL is issued for taken-down content again)."""
    query = select(DownloadGrant).where(DownloadGrant.id == download_id, DownloadGrant.user_id == principal.user_id)
    row = await session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise not_found("download")
    connection = await session.connection()
    found = await connection.execute(
        _DOWNLOADABLE, {"entitlement_id": row.entitlement_id, "user_id": principal.user_id}
    )
    entitlement = await _current(session, principal, found.one_or_none())
    now = utcnow()
    _check_active(entitlement, now)
    if row.window_ends_at <= now:
        raise Refused(403, "grant-expired", "this download's window has ended; request a new grant")
    state, taken_down = (
        await session.execute(
            select(ProductVersion.state, withdrawn(row.sha256, Product.org_id))
            .join(Product, Product.id == ProductVersion.product_id)
            .where(ProductVersion.id == row.version_id)
        )
    ).one()
    if state == "withdrawn":
        raise Refused(403, "version-withdrawn", "the version was withdrawn; its files are no longer delivered")
    if taken_down:
        raise Refused(451, "taken-down", f"'{row.path}' was taken down and is no longer delivered", paths=[row.path])
    return row


async def resumable_grant(
    session: AsyncSession,
    principal: Principal,
    *,
    entitlement_id: uuid.UUID,
    slug: str,
    version: str,
    path: str,
    purpose: str,
) -> uuid.UUID | None:
    """The caller's newest grant of this file, for this purpose, still in its window: what a resumed
    transfer continues."""
    return await session.scalar(
        select(DownloadGrant.id)
        .join(ProductVersion, ProductVersion.id == DownloadGrant.version_id)
        .join(Product, Product.id == ProductVersion.product_id)
        .where(
            DownloadGrant.entitlement_id == entitlement_id,
            DownloadGrant.user_id == principal.user_id,
            DownloadGrant.api_key_id.is_not_distinct_from(principal.api_key_id),
            DownloadGrant.path == path,
            DownloadGrant.purpose == purpose,
            DownloadGrant.window_ends_at > utcnow(),
            Product.slug == slug,
            ProductVersion.version == version,
        )
        .order_by(DownloadGrant.granted_at.desc())
        .limit(1)
    )


async def record_served(session: AsyncSession, download_id: uuid.UUID, sent: int) -> None:
    await session.execute(
        update(DownloadGrant)
        .where(DownloadGrant.id == download_id)
        .values(bytes_served=DownloadGrant.bytes_served + sent)
    )
