"""Response bodies of the audit endpoints."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec


class AuditEventOut(msgspec.Struct):
    """One event of the hash chain, as stored."""

    seq: Annotated[int, msgspec.Meta(description="position in the chain: 1, 2, 3, … without gaps")]
    occurred_at: dt.datetime
    actor: Annotated[str, msgspec.Meta(description='"user:<id>", "api_key:<id>", "anonymous", "system" or "cli:…"')]
    org: Annotated[str | None, msgspec.Meta(description="slug of the organisation the event belongs to")]
    action: Annotated[str, msgspec.Meta(description='what happened, e.g. "org.created", "download.granted"')]
    target_type: str | None
    target_id: str | None
    request_id: str | None
    client_addr: str | None
    details: dict[str, Any]
    prev_hash: Annotated[str, msgspec.Meta(description="hex SHA-256 of the previous event (zeros for the first)")]
    hash: Annotated[str, msgspec.Meta(description="hex SHA-256 of prev_hash and this event's canonical encoding")]


class AuditEventPage(msgspec.Struct):
    items: list[AuditEventOut]
    next_cursor: Annotated[str | None, msgspec.Meta(description="pass as `cursor` for the next page; null at the end")]


class BadCheckpointOut(msgspec.Struct):
    key: str
    problem: str


class VerifyOut(msgspec.Struct):
    """The chain recomputed from the genesis and compared with every signed checkpoint."""

    ok: bool
    events_checked: int
    head_seq: Annotated[int, msgspec.Meta(description="the last event that was checked")]
    head_hash: Annotated[str | None, msgspec.Meta(description="hex hash of the last event checked")]
    first_bad_event: Annotated[
        int | None, msgspec.Meta(description="the first event that cannot be trusted; null when ok")
    ]
    problem: Annotated[str | None, msgspec.Meta(description="what is wrong, in words; null when ok")]
    checkpoints_found: int
    checkpoints_checked: Annotated[int, msgspec.Meta(description="signed checkpoints compared with the chain")]
    last_checkpoint_seq: Annotated[
        int | None, msgspec.Meta(description="the newest signed checkpoint that matched the recomputed chain")
    ]
    bad_checkpoints: Annotated[
        list[BadCheckpointOut],
        msgspec.Meta(description="checkpoint objects whose signature, key or content was rejected"),
    ]
    deleted_checkpoints: Annotated[
        list[str],
        msgspec.Meta(
            description="checkpoint keys someone deleted; their retained versions were still compared with the chain"
        ),
    ]
    seconds: float


class CheckpointOut(msgspec.Struct):
    """A signed checkpoint object in the object store; ``valid`` tells whether its signature verified."""

    key: Annotated[str, msgspec.Meta(description="object key, audit/checkpoints/<20-digit seq>.jws")]
    valid: bool
    seq: int | None
    hash: Annotated[str | None, msgspec.Meta(description="hex hash of the chain head at seq")]
    issued_at: str | None
    kid: Annotated[str | None, msgspec.Meta(description="the signing key, see /.well-known/jwks.json")]
    jws: Annotated[str | None, msgspec.Meta(description="the compact JWS as stored (EdDSA)")]
    problem: str | None = None


class CheckpointPage(msgspec.Struct):
    items: list[CheckpointOut]
    next_cursor: str | None
