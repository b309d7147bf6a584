"""Ed25519 signing keys, identified by ``kid``: the first signs, all verify, all are published as JWKS.

The same keys sign access tokens, download receipts and audit checkpoints.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.settings import Settings

ALGORITHM = "EdDSA"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclasses.dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    # Derived once: every token verification needs it.
    public: Ed25519PublicKey = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", self.private.public_key())

    def jwk(self) -> dict[str, str]:
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(raw),
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
        }


def _kid_for(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64url(hashlib.sha256(raw).digest()[:12])


def load_key(path: Path) -> SigningKey:
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return SigningKey(kid=_kid_for(private), private=private)


def generate_key_file(path: Path) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.touch(mode=0o600)
    path.write_bytes(pem)
    return SigningKey(kid=_kid_for(private), private=private)


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRing:
    keys: tuple[SigningKey, ...]

    @property
    def active(self) -> SigningKey:
        return self.keys[0]

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        for key in self.keys:
            if key.kid == kid:
                return key.public
        return None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self.keys]}


def load_keyring(settings: Settings) -> KeyRing:
    """Keys from ``CORPORA_SIGNING_KEY_FILES``, or a development key generated in the data dir."""
    if settings.signing_key_files:
        return KeyRing(tuple(load_key(path) for path in settings.signing_key_files))
    path = settings.data_dir / "keys" / "signing-ed25519.pem"
    key = load_key(path) if path.exists() else generate_key_file(path)
    return KeyRing((key,))
