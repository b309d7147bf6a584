"""A per-process cache of what ``GET /me`` answers, kept exact by PostgreSQL notifications.

``/me`` is the hottest authenticated read and changes rarely. Triggers on users, memberships and
organisations (migration 0005) ``NOTIFY accounts_changed`` at commit; each process listens on a connection
of its own and evicts what changed. Three rules keep answers from going stale:

- nothing is cached or served from the cache unless the listening connection is up, and losing it clears
  the cache (a change may have been missed meanwhile);
- an answer read from the database is stored only if no notification arrived while it was being read
  (the ``generation`` ticket), so a change that commits during the read is never cached over;
- a transaction that changed accounts evicts the users it touched in its own process right after commit,
  so a client reads its own writes even before the notification comes back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
import weakref
from collections.abc import Iterable

import asyncpg
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.accounts.models import Membership, User
from app.accounts.schemas import OrgRoleOut
from app.db import libpq_url

log = logging.getLogger("corpora.accounts")

CHANNEL = "accounts_changed"
LISTENER_NAME = "corpora-me-cache"
ENTRIES_KEPT = 50_000
HEALTH_CHECK_SECONDS = 10.0
_CHANGED_USERS = "accounts_changed_users"

_caches: weakref.WeakSet[MeCache] = weakref.WeakSet()


@dataclasses.dataclass(frozen=True, slots=True)
class MeEntry:
    """The database's part of the answer; platform roles come from the token."""

    id: uuid.UUID
    email: str
    display_name: str
    orgs: tuple[OrgRoleOut, ...]


class MeCache:
    def __init__(self, database_url: str) -> None:
        self._dsn = libpq_url(database_url)
        self._entries: dict[uuid.UUID, MeEntry] = {}
        self._generation = 0
        self._listening = False
        _caches.add(self)

    def get(self, user_id: uuid.UUID) -> MeEntry | None:
        return self._entries.get(user_id) if self._listening else None

    def ticket(self) -> int | None:
        """Taken before reading from the database; ``None`` means the answer must not be cached."""
        return self._generation if self._listening else None

    def put(self, ticket: int | None, entry: MeEntry) -> None:
        if ticket is None or ticket != self._generation or not self._listening:
            return
        if len(self._entries) >= ENTRIES_KEPT:
            self._entries.pop(next(iter(self._entries)))
        self._entries[entry.id] = entry

    def evict(self, user_ids: Iterable[uuid.UUID] | None) -> None:
        """Forget the given users, or everyone for ``None``."""
        self._generation += 1
        if user_ids is None:
            self._entries.clear()
            return
        for user_id in user_ids:
            self._entries.pop(user_id, None)

    def _on_notification(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            self.evict([uuid.UUID(payload)])
        except ValueError:  # "*" or anything unexpected: forget everything
            self.evict(None)

    async def run(self) -> None:
        """Listen for changes until cancelled, reconnecting with backoff; the cache is off while disconnected."""
        delay = 0.25
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("/me cache off: not listening for account changes (%s); retrying", exc)
            finally:
                was_listening, self._listening = self._listening, False
                self.evict(None)
            delay = 0.5 if was_listening else min(delay * 2, 10)
            await asyncio.sleep(delay)

    async def _listen(self) -> None:
        connection = await asyncpg.connect(self._dsn, timeout=5, server_settings={"application_name": LISTENER_NAME})
        try:
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(CHANNEL, self._on_notification)
            self.evict(None)
            self._listening = True
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), HEALTH_CHECK_SECONDS)
                except TimeoutError:
                    # A silently broken connection would deliver nothing: prove it is alive.
                    await connection.execute("SELECT 1", timeout=5)
            raise ConnectionError("the listening connection closed")
        finally:
            connection.terminate()


@event.listens_for(Session, "after_flush")
def _note_changed_users(session: Session, _flush_context: object) -> None:
    changed = session.info.setdefault(_CHANGED_USERS, set())
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, Membership):
            changed.add(obj.user_id)
        elif isinstance(obj, User):
            changed.add(obj.id)


@event.listens_for(Session, "after_commit")
def _evict_changed_users(session: Session) -> None:
    changed = session.info.pop(_CHANGED_USERS, None)
    if changed:
        for cache in _caches:
            cache.evict(changed)


@event.listens_for(Session, "after_rollback")
def _forget_changed_users(session: Session) -> None:
    session.info.pop(_CHANGED_USERS, None)
