"""What a provider sees of its buyers' grant events: the buyer organisation, never who in it acted.

The actor becomes a pseudonym, ``pseudonym:<32 hex>``: HMAC-SHA256 of the actor under a key derived from a server
secret and the provider organisation. It is stable (the same buyer member is the same pseudonym in every listing,
export and bundle of that provider), not reversible without the secret, and different for each provider, so two
providers cannot join their views. The request id and the client address are removed.

The secret is ``CORPORA_AUDIT_PSEUDONYM_SECRET``; unset, it is derived from the oldest signing key of the ring
(pseudonyms then change when that key leaves the ring).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from cryptography.hazmat.primitives import serialization

from app.auth.keys import KeyRing
from app.settings import Settings

PREFIX = "pseudonym:"


def secret(settings: Settings, keyring: KeyRing) -> bytes:
    if settings.audit_pseudonym_secret is not None:
        return hashlib.sha256(b"corpora audit pseudonyms\x00" + settings.audit_pseudonym_secret.encode()).digest()
    raw = keyring.keys[-1].private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return hashlib.sha256(b"corpora audit pseudonyms\x00" + raw).digest()


class Pseudonyms:
    """Pseudonyms of actors as one provider organisation or another sees them."""

    __slots__ = ("_keys", "_secret")

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._keys: dict[uuid.UUID, bytes] = {}

    def __call__(self, provider_org_id: uuid.UUID | str | None, actor: str) -> str:
        provider = uuid.UUID(str(provider_org_id)) if provider_org_id is not None else uuid.UUID(int=0)
        key = self._keys.get(provider)
        if key is None:
            key = self._keys[provider] = hmac.new(self._secret, b"provider:" + provider.bytes, hashlib.sha256).digest()
        return PREFIX + hmac.new(key, actor.encode(), hashlib.sha256).hexdigest()[:32]
