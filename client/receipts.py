"""Download receipts checked against the platform's published keys (JWKS) before a pull keeps them.

A receipt is an Ed25519 JWS the platform signs for each grant; a buyer keeps it as proof of lawful
acquisition. Checking it when it arrives means a receipt kept on disk always verifies later, offline, with
the same public keys, and that it names exactly the file that was downloaded.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

RECEIPT_TYPE = "corpora-receipt+jwt"
# What a receipt must say about the grant it came with.
_MATCHED = ("download_id", "path", "sha256", "size")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64decode(segment: str) -> bytes:
    """base64url without padding, strictly: other characters are refused."""
    if _BASE64URL.fullmatch(segment) is None:
        raise ValueError("a segment is not base64url")
    try:
        return base64.b64decode(segment.encode("ascii") + b"=" * (-len(segment) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"bad base64url: {exc}") from None


class ReceiptInvalid(Exception):
    """A receipt that does not verify, or that names another grant than the one it came with."""


class ReceiptVerifier:
    """Verifies receipts with the keys of ``fetch_jwks()``, fetched once and again for an unknown key id."""

    def __init__(self, fetch_jwks: Callable[[], Mapping[str, Any]]) -> None:
        self._fetch = fetch_jwks
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._lock = threading.Lock()

    def _key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            for refresh in (self._keys is None, True):
                if refresh:
                    self._keys = {str(k["kid"]): jwt.PyJWK(dict(k)) for k in self._fetch().get("keys", [])}
                assert self._keys is not None
                if kid in self._keys:
                    return self._keys[kid]
        raise ReceiptInvalid(f"it was signed with key '{kid}', which the platform's JWKS does not list")

    def verify(self, receipt: str, grant: Mapping[str, Any]) -> dict[str, Any]:
        """The receipt's claims, once its signature verifies and it names ``grant``'s file.

        The compact JWS is taken apart here and its Ed25519 signature checked with the key itself (RFC 7515
        §5.2, RFC 8037): a pull checks thousands of receipts, and a general JWT library's decoding costs several
        times the signature check."""
        try:
            signing_input, _, signature_part = receipt.rpartition(".")
            header_part, dot, payload_part = signing_input.partition(".")
            if not dot or "." in payload_part:
                raise ValueError("not three segments")
            header = json.loads(_b64decode(header_part))
            payload = _b64decode(payload_part)
            signature = _b64decode(signature_part)
            if not isinstance(header, dict):
                raise ValueError("the header is not an object")
        except ValueError as exc:  # includes malformed base64, JSON and UTF-8
            raise ReceiptInvalid(f"it is not a JWS ({exc})") from None
        if header.get("typ") != RECEIPT_TYPE or header.get("alg") != "EdDSA":
            raise ReceiptInvalid(f"its header says {header.get('typ')}/{header.get('alg')}, not {RECEIPT_TYPE}/EdDSA")
        key = self._key(str(header.get("kid"))).key
        if not isinstance(key, Ed25519PublicKey):
            raise ReceiptInvalid(f"key '{header.get('kid')}' of the JWKS is not an Ed25519 key")
        try:
            key.verify(signature, signing_input.encode("ascii"))
        except (InvalidSignature, UnicodeEncodeError):
            raise ReceiptInvalid("its signature does not verify") from None
        try:
            claims = json.loads(payload)
        except ValueError:
            raise ReceiptInvalid("its payload is not JSON") from None
        if not isinstance(claims, dict):
            raise ReceiptInvalid("its payload is not a JSON object")
        wrong = [name for name in _MATCHED if str(claims.get(name)) != str(grant.get(name))]
        if wrong:
            raise ReceiptInvalid(f"it names another grant ({', '.join(wrong)} differ)")
        return claims
