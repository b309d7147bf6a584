"""Response bodies of the audit endpoints."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec


class AuditEventOut(msgspec.Struct, omit_defaults=True):
    """One event of the hash chain, as stored (``redacted`` appears only when true)."""

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
    redacted: Annotated[
        bool,
        msgspec.Meta(
            description="present (true) only on another organisation's grant event of the caller's product: "
            "`actor` is a pseudonym, `request_id` and `client_addr` are null (the hashes cover the original)"
        ),
    ] = False


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
    pending_events: Annotated[
        int,
        msgspec.Meta(
            description="events committed but not yet sequenced into the log (the sequencer reaches each within "
            "about a second of its commit); they are not part of this check"
        ),
    ] = 0


class CheckpointOut(msgspec.Struct):
    """A signed checkpoint object in the object store; ``valid`` tells whether its signature verified. Its signed
    content is ``{seq, head_hash, tree_size, root_hash}``: the chain head and the Merkle tree of the first
    ``tree_size`` events."""

    key: Annotated[str, msgspec.Meta(description="object key, audit/checkpoints/<20-digit seq>.jws")]
    valid: bool
    seq: int | None
    head_hash: Annotated[str | None, msgspec.Meta(description="hex hash of the chain head at seq")]
    tree_size: Annotated[
        int | None,
        msgspec.Meta(description="events in the signed Merkle tree (equal to seq); null for a checkpoint without one"),
    ]
    root_hash: Annotated[
        str | None, msgspec.Meta(description="hex RFC 9162 root hash of the first tree_size events' leaves")
    ]
    hash: Annotated[str | None, msgspec.Meta(description="the same as head_hash (the checkpoint's older name)")]
    issued_at: str | None
    kid: Annotated[str | None, msgspec.Meta(description="the signing key, see /.well-known/jwks.json")]
    jws: Annotated[str | None, msgspec.Meta(description="the compact JWS as stored (EdDSA)")]
    problem: str | None = None


class CheckpointPage(msgspec.Struct):
    items: list[CheckpointOut]
    next_cursor: str | None


class InclusionProofOut(msgspec.Struct):
    """RFC 9162 §2.1.3: the audit path of one leaf."""

    leaf_index: Annotated[int, msgspec.Meta(description="the event's seq - 1")]
    tree_size: int
    leaf_hash: Annotated[str, msgspec.Meta(description="hex sha256(0x00 || canonical event)")]
    audit_path: Annotated[list[str], msgspec.Meta(description="hex hashes, the leaf's sibling first")]


class ConsistencyProofOut(msgspec.Struct):
    """RFC 9162 §2.1.4: the tree of ``first`` leaves is a prefix of the tree of ``second`` leaves."""

    first: int
    second: int
    proof: Annotated[list[str], msgspec.Meta(description="hex hashes in RFC 9162 order")]


class BundleEventOut(msgspec.Struct):
    """An event exactly as it was hashed, with its hashes and inclusion proof."""

    seq: int
    occurred_at: Annotated[str, msgspec.Meta(description="UTC, microseconds, as hashed: YYYY-MM-DDTHH:MM:SS.ffffffZ")]
    actor: str
    org_id: str | None
    action: str
    target_type: str | None
    target_id: str | None
    request_id: str | None
    client_addr: str | None
    details: Annotated[dict[str, Any], msgspec.Meta(description="as PostgreSQL renders it: these bytes are hashed")]
    prev_hash: str
    hash: str
    leaf_hash: str
    audit_path: list[str]
    redacted: Annotated[
        bool,
        msgspec.Meta(
            description="present (true) only on another organisation's grant event of the caller's product: the "
            "actor is a pseudonym and the request id and client address are null, so the event cannot be "
            "re-hashed; its leaf_hash is proven in the tree, and its content is attested by that leaf only"
        ),
    ] = False


class BundleCheckpointOut(msgspec.Struct):
    seq: int
    head_hash: str
    tree_size: int
    root_hash: str
    issued_at: str
    kid: str
    jws: Annotated[str, msgspec.Meta(description="compact JWS (EdDSA) over seq, head_hash, tree_size, root_hash")]


class EvidenceBundleOut(msgspec.Struct):
    """``corpora-evidence-bundle/1``: verifiable offline with ``corpora audit verify-bundle``."""

    format: Annotated[str, msgspec.Meta(description='"corpora-evidence-bundle/1"')]
    issuer: str
    generated_at: str
    org: str | None
    product: str | None
    since: str | None
    until: str | None
    checkpoint: BundleCheckpointOut
    jwks: dict[str, Any]
    events: list[BundleEventOut]
