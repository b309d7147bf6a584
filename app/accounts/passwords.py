"""Password hashing (Argon2id), the gate that bounds it, and the strength rule applied at sign-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.errors import ProblemError

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


# Password checks queued per one computed at once, beyond which the service answers 429 instead of queueing.
PASSWORD_HASHES_WAITING = 8


class HashingGate:
    """At most ``concurrency`` Argon2 computations at once in this process (each holds 64 MiB), and at most
    ``waiting`` more queued for a turn; beyond that, 429 at once rather than a queue that grows without end."""

    def __init__(self, concurrency: int, waiting: int) -> None:
        self._turns = asyncio.Semaphore(concurrency)
        self._capacity = concurrency + waiting
        self._admitted = 0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self._admitted >= self._capacity:
            raise ProblemError(
                429,
                "busy",
                "Too many password checks at once",
                "the service is checking as many passwords as it can; try again in 1 second",
                headers={"Retry-After": "1"},
            )
        self._admitted += 1
        try:
            async with self._turns:
                yield
        finally:
            self._admitted -= 1


@contextlib.asynccontextmanager
async def _no_gate() -> AsyncIterator[None]:
    yield


def turn(gate: HashingGate | None) -> contextlib.AbstractAsyncContextManager[None]:
    """A turn at ``gate``; without one (the CLI), no bound."""
    return gate.turn() if gate is not None else _no_gate()


async def hash_password(password: str, gate: HashingGate | None = None) -> str:
    async with turn(gate):
        return await anyio.to_thread.run_sync(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    return await anyio.to_thread.run_sync(check)
