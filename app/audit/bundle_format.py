"""The evidence bundle (``corpora-evidence-bundle/1``) and its offline verification.

A bundle holds events of the audit log exactly as they were hashed, each with its RFC 9162 inclusion proof in
the tree of ``checkpoint.tree_size`` events, the signed checkpoint of that tree, and the JWKS whose key signed
it. Verification needs nothing else: no server, no database. Every byte of an event counts: its fields are
re-encoded as ``app.audit.service.canonical`` describes (``details`` is kept as the very text PostgreSQL
rendered, so it is hashed as found in the file), and both its chain hash and its leaf hash are recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

import jwt
import msgspec

FORMAT = "corpora-evidence-bundle/1"
CHECKPOINT_JWS_TYPE = "corpora-audit-checkpoint+jwt"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BundleEvent(msgspec.Struct, forbid_unknown_fields=True):
    """One event in the form it was hashed; ``details`` is the raw JSON text PostgreSQL printed."""

    seq: int
    occurred_at: str
    actor: str
    org_id: str | None
    action: str
    target_type: str | None
    target_id: str | None
    request_id: str | None
    client_addr: str | None
    details: msgspec.Raw
    prev_hash: str
    hash: str
    leaf_hash: str
    audit_path: list[str]


class BundleCheckpoint(msgspec.Struct, forbid_unknown_fields=True):
    seq: int
    head_hash: str
    tree_size: int
    root_hash: str
    issued_at: str
    kid: str
    jws: str


class Bundle(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    issuer: str
    generated_at: str
    org: str | None
    product: str | None
    since: str | None
    until: str | None
    checkpoint: BundleCheckpoint
    jwks: dict[str, Any]
    events: list[BundleEvent]


@dataclasses.dataclass(slots=True)
class BundleReport:
    ok: bool
    events_checked: int
    tree_size: int | None
    first_bad_event: int | None
    problem: str | None


class _Bad(Exception):
    def __init__(self, problem: str, seq: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.seq = seq


def _checkpoint_claims(bundle: Bundle) -> None:
    """The checkpoint's JWS verifies with a key of the bundle's JWKS and says what the bundle says it does."""
    checkpoint = bundle.checkpoint
    try:
        header = jwt.get_unverified_header(checkpoint.jws)
    except jwt.PyJWTError as exc:
        raise _Bad(f"the checkpoint is not a JWS: {exc}") from None
    if header.get("alg") != "EdDSA" or header.get("typ") != CHECKPOINT_JWS_TYPE:
        raise _Bad("the checkpoint is not an EdDSA-signed audit checkpoint")
    keys = [k for k in bundle.jwks.get("keys", []) if isinstance(k, dict) and k.get("kid") == header.get("kid")]
    if not keys:
        raise _Bad(f"the checkpoint's key {header.get('kid')!r} is not in the bundle's JWKS")
    try:
        public = jwt.PyJWK(keys[0], algorithm="EdDSA").key
        claims = jwt.decode(
            checkpoint.jws, public, algorithms=["EdDSA"], issuer=bundle.issuer, options={"verify_aud": False}
        )
    except jwt.PyJWTError as exc:
        raise _Bad(f"the checkpoint's signature does not verify: {exc}") from None
    signed = (claims.get("seq"), claims.get("head_hash"), claims.get("tree_size"), claims.get("root_hash"))
    stated = (checkpoint.seq, checkpoint.head_hash, checkpoint.tree_size, checkpoint.root_hash)
    if signed != stated or not isinstance(checkpoint.root_hash, str) or not _HEX64.fullmatch(checkpoint.root_hash):
        raise _Bad("the checkpoint's signed seq, head_hash, tree_size and root_hash differ from the bundle's")


def _verify_events(events: list[BundleEvent], size: int, root: bytes) -> int:
    """Check each event's hashes and inclusion proof; the number checked. Raises :class:`_Bad` at the first bad
    one. Proofs of many events share their upper nodes: once a path reaches a node an earlier proof verified,
    the rest of the path must repeat that proof's, and is compared instead of hashed again."""
    encode = msgspec.json.Encoder().encode
    sha256 = hashlib.sha256
    fromhex = bytes.fromhex
    known: dict[tuple[int, int], tuple[bytes, list[str], int]] = {}
    last_seq, last_hash = 0, "0" * 64  # the first event links to the genesis: 32 zero bytes
    for event in events:
        seq = event.seq
        if seq <= last_seq:
            raise _Bad(f"event {seq} is out of order (after event {last_seq})", seq)
        if seq > size:
            raise _Bad(f"event {seq} is beyond the checkpoint's tree of {size} events", seq)
        encoded = encode(
            (
                seq,
                event.occurred_at,
                event.actor,
                event.org_id,
                event.action,
                event.target_type,
                event.target_id,
                event.request_id,
                event.client_addr,
                event.details,
            )
        )
        leaf = sha256(b"\x00" + encoded).digest()
        try:
            if sha256(fromhex(event.prev_hash) + encoded).hexdigest() != event.hash:
                raise _Bad(f"event {seq} was altered: its content does not match its chain hash", seq)
        except ValueError:
            raise _Bad(f"event {seq} has a malformed prev_hash", seq) from None
        if leaf.hex() != event.leaf_hash:
            raise _Bad(f"event {seq} was altered: its content does not match its leaf hash", seq)
        if seq == last_seq + 1 and event.prev_hash != last_hash:
            raise _Bad(f"event {seq} does not link to event {last_seq}", seq)
        path = event.audit_path
        fn, sn, level, node = seq - 1, size - 1, 0, leaf
        fresh: list[tuple[tuple[int, int], tuple[bytes, list[str], int]]] = []
        proven = False
        try:
            for i, sibling in enumerate(path):
                seen = known.get((level, fn))
                if seen is not None:
                    proven = seen[0] == node and path[i:] == seen[1][seen[2] :]
                    break
                fresh.append(((level, fn), (node, path, i)))
                if sn == 0:
                    break
                if fn & 1 or fn == sn:
                    node = sha256(b"\x01" + fromhex(sibling) + node).digest()
                    while not fn & 1 and fn:
                        fn >>= 1
                        sn >>= 1
                        level += 1
                else:
                    node = sha256(b"\x01" + node + fromhex(sibling)).digest()
                fn >>= 1
                sn >>= 1
                level += 1
            else:
                proven = sn == 0 and node == root
        except ValueError:
            proven = False
        if not proven:
            raise _Bad(f"event {seq}'s inclusion proof does not lead to the checkpoint's root", seq)
        known.update(fresh)
        last_seq, last_hash = seq, event.hash
    return len(events)


def verify_bundle(data: bytes) -> BundleReport:
    """Verify a bundle offline; the report names the first bad event, if any."""
    try:
        bundle = msgspec.json.decode(data, type=Bundle)
    except msgspec.DecodeError as exc:
        return BundleReport(False, 0, None, None, f"not an evidence bundle: {exc}")
    if bundle.format != FORMAT:
        return BundleReport(False, 0, None, None, f"format {bundle.format!r} is not {FORMAT!r}")
    size = bundle.checkpoint.tree_size
    checked = 0
    try:
        _checkpoint_claims(bundle)
        checked = _verify_events(bundle.events, size, bytes.fromhex(bundle.checkpoint.root_hash))
    except _Bad as bad:
        index = next((i for i, e in enumerate(bundle.events) if e.seq == bad.seq), 0)
        return BundleReport(False, index, size, bad.seq, bad.problem)
    return BundleReport(True, checked, size, None, None)
