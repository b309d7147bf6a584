"""Password hashing (Argon2id) and the strength rule applied at sign-up."""

from __future__ import annotations

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 10
_COMMON = frozenset(
    {
        "password123",
        "password1234",
        "1234567890",
        "12345678910",
        "qwertyuiop",
        "qwerty12345",
        "iloveyou123",
        "letmein1234",
        "administrator",
        "passw0rd123",
        "abcdefghij",
        "0123456789",
    }
)

_hasher = PasswordHasher()
# Verified when the account does not exist, so a wrong email takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("corpora-timing-equaliser")


def weakness(password: str, email: str) -> str | None:
    """Why ``password`` is too weak, or ``None``."""
    if len(password) < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters"
    if password.lower() in _COMMON or len(set(password)) < 4:
        return "is too easy to guess; use a longer passphrase"
    local = email.split("@", 1)[0].lower()
    if len(local) >= 4 and local in password.lower():
        return "must not contain your email address"
    return None


async def hash_password(password: str) -> str:
    return await anyio.to_thread.run_sync(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    return await anyio.to_thread.run_sync(check)
