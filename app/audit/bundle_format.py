"""The evidence bundle (``corpora-evidence-bundle/1``) and its offline verification.

A bundle holds events of the audit log exactly as they were hashed, each with its RFC 9162 inclusion proof in
the tree of ``checkpoint.tree_size`` events, the signed checkpoint of that tree, and the JWKS whose key signed
it. Verification needs nothing else: no server, no database. Every byte of an event counts: its fields are
re-encoded as ``app.audit.service.canonical`` describes (``details`` is kept as the very text PostgreSQL
rendered, so it is hashed as found in the file), and both its chain hash and its leaf hash are recomputed.
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
import re
from typing import Any

import jwt
import msgspec

FORMAT = "corpora-evidence-bundle/1"
CHECKPOINT_JWS_TYPE = "corpora-audit-checkpoint+jwt"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BundleEvent(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One event in the form it was hashed; ``details`` is the raw JSON text PostgreSQL printed. A ``redacted``
    one (a buyer's grant event in its provider's bundle) has a pseudonym for its actor and no request id or
    client address: it cannot be hashed again, and only its ``leaf_hash`` is proven."""

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
    redacted: bool = False


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
    # Events shown redacted to a provider: their inclusion is proven, their content only by their leaf hash.
    redacted_events: int = 0


class _Bad(Exception):
    def __init__(self, problem: str, seq: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.seq = seq


def _checkpoint_claims(bundle: Bundle | _BundleIn) -> None:
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


class _EventIn(msgspec.Struct, forbid_unknown_fields=True):
    """An event as verification reads it: ``details`` and ``audit_path`` stay raw JSON text (no string per hash
    is made for the parts of a path that an earlier event already proved)."""

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
    audit_path: msgspec.Raw
    redacted: bool = False


class _BundleIn(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    issuer: str
    generated_at: str
    org: str | None
    product: str | None
    since: str | None
    until: str | None
    checkpoint: BundleCheckpoint
    jwks: dict[str, Any]
    events: list[_EventIn]


_ENTRY = 67  # one compact path entry: a quote, 64 hex digits, a quote and a comma (or the closing bracket)


def _compact_path(raw: msgspec.Raw) -> bytes:
    """The audit path as compact JSON (``["<hex>",…]``), each entry at a fixed offset: as found when the file
    is compact (as the server writes it), else re-encoded from its decoded value."""
    path = bytes(raw)
    if len(path) % _ENTRY == 1 or path == b"[]":
        return path
    try:
        return msgspec.json.encode(msgspec.json.decode(path, type=list[str]))
    except msgspec.ValidationError:
        return b"!"  # not a list of strings: fails the first entry check


def _verify_events(events: list[_EventIn], size: int, root: bytes) -> tuple[int, int]:
    """Check each event's hashes and inclusion proof; the number checked and the number redacted. Raises
    :class:`_Bad` at the first bad event.

    All proofs lead to the same root, so they share their upper nodes: a node reached by a proof is recorded
    with the rest of that proof (an offset into its path's bytes). A later proof that reaches a recorded node
    with the same hash is proven there, and the rest of its path must repeat the recorded one byte for byte
    (one comparison instead of hashing on), so no altered byte goes unnoticed. Each event thus costs its two
    hashes and, for events near one another, a node or two.
    """
    encode = msgspec.json.Encoder().encode
    sha256 = hashlib.sha256
    unhex = binascii.unhexlify
    known: dict[int, tuple[bytes, bytes, int]] = {}  # (fn << 6 | level) -> (node, path, offset of what follows)
    last_seq, last_hash = 0, "0" * 64  # the first event links to the genesis: 32 zero bytes
    redacted = 0
    for event in events:
        seq = event.seq
        if seq <= last_seq:
            raise _Bad(f"event {seq} is out of order (after event {last_seq})", seq)
        if seq > size:
            raise _Bad(f"event {seq} is beyond the checkpoint's tree of {size} events", seq)
        try:
            if event.redacted:
                # Pseudonymised for a provider: the content cannot be hashed again; the leaf is what is proven.
                if not _HEX64.fullmatch(event.leaf_hash):
                    raise _Bad(f"event {seq} has a malformed leaf_hash", seq)
                leaf = unhex(event.leaf_hash)
                redacted += 1
            else:
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
                if sha256(unhex(event.prev_hash) + encoded).hexdigest() != event.hash:
                    raise _Bad(f"event {seq} was altered: its content does not match its chain hash", seq)
                leaf = sha256(b"\x00" + encoded).digest()
                if leaf.hex() != event.leaf_hash:
                    raise _Bad(f"event {seq} was altered: its content does not match its leaf hash", seq)
        except (ValueError, TypeError):  # binascii.Error is a ValueError
            raise _Bad(f"event {seq} has a malformed prev_hash", seq) from None
        if seq == last_seq + 1 and event.prev_hash != last_hash:
            raise _Bad(f"event {seq} does not link to event {last_seq}", seq)
        raw_path = event.audit_path
        path = bytes(raw_path) if len(raw_path) % _ENTRY == 1 else _compact_path(raw_path)
        end = len(path)
        fn, sn, level, node, at = seq - 1, size - 1, 0, leaf, 0
        proven = False
        try:
            while True:
                # Hash the node's parent from the next sibling of the path (a leaf is never shared: start there).
                if sn == 0:
                    proven = node == root and path[at:] == (b"]" if at else b"[]")
                    break
                if path[at + 1] != 34 or path[at + 66] != 34 or path[at + 67] != (44 if at + 68 < end else 93):
                    break
                sibling = unhex(path[at + 2 : at + 66])
                at += _ENTRY
                if fn & 1 or fn == sn:
                    node = sha256(b"\x01" + sibling + node).digest()
                    while not fn & 1 and fn:
                        fn >>= 1
                        sn >>= 1
                        level += 1
                else:
                    node = sha256(b"\x01" + node + sibling).digest()
                fn >>= 1
                sn >>= 1
                level += 1
                key = fn << 6 | level
                seen = known.get(key)
                if seen is not None:
                    # Proven from here by an earlier event: the rest of the path must be that event's.
                    proven = seen[0] == node and path[at:] == seen[1][seen[2] :]
                    break
                known[key] = (node, path, at)
        except (ValueError, IndexError):
            proven = False
        if not proven:
            raise _Bad(f"event {seq}'s inclusion proof does not lead to the checkpoint's root", seq)
        last_seq, last_hash = seq, event.hash
    return len(events), redacted


def verify_bundle(data: bytes) -> BundleReport:
    """Verify a bundle offline; the report names the first bad event, if any."""
    try:
        bundle = msgspec.json.decode(data, type=_BundleIn)
    except msgspec.DecodeError as exc:
        return BundleReport(False, 0, None, None, f"not an evidence bundle: {exc}")
    if bundle.format != FORMAT:
        return BundleReport(False, 0, None, None, f"format {bundle.format!r} is not {FORMAT!r}")
    size = bundle.checkpoint.tree_size
    try:
        _checkpoint_claims(bundle)
        checked, redacted = _verify_events(bundle.events, size, bytes.fromhex(bundle.checkpoint.root_hash))
    except _Bad as bad:
        index = next((i for i, e in enumerate(bundle.events) if e.seq == bad.seq), 0)
        return BundleReport(False, index, size, bad.seq, bad.problem)
    return BundleReport(True, checked, size, None, None, redacted)
