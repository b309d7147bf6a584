"""Download receipts checked against the platform's published keys (JWKS) before a pull keeps them.

A receipt is an Ed25519 JWS the platform signs for each grant; a buyer keeps it as proof of lawful
acquisition. Checking it when it arrives means a receipt kept on disk always verifies later, offline, with
the same public keys, and that it names exactly the file that was downloaded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import jwt

RECEIPT_TYPE = "corpora-receipt+jwt"
# What a receipt must say about the grant it came with.
_MATCHED = ("download_id", "path", "sha256", "size")


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
        """The receipt's claims, once its signature verifies and it names ``grant``'s file."""
        try:
            header = jwt.get_unverified_header(receipt)
        except jwt.PyJWTError as exc:
            raise ReceiptInvalid(f"it is not a JWS ({exc})") from None
        if header.get("typ") != RECEIPT_TYPE or header.get("alg") != "EdDSA":
            raise ReceiptInvalid(f"its header says {header.get('typ')}/{header.get('alg')}, not {RECEIPT_TYPE}/EdDSA")
        try:
            claims: dict[str, Any] = jwt.decode(
                receipt, self._key(str(header.get("kid"))), algorithms=["EdDSA"], options={"verify_aud": False}
            )
        except jwt.PyJWTError as exc:
            raise ReceiptInvalid(f"its signature does not verify ({exc})") from None
        wrong = [name for name in _MATCHED if str(claims.get(name)) != str(grant.get(name))]
        if wrong:
            raise ReceiptInvalid(f"it names another grant ({', '.join(wrong)} differ)")
        return claims
