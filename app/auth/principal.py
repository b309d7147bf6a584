"""Who is calling: built from token claims (or an API key row) once per request."""

from __future__ import annotations

import dataclasses
import uuid

from app.audit.service import AuditContext


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    user_id: uuid.UUID
    platform_roles: frozenset[str]
    api_key_id: uuid.UUID | None = None
    api_key_org_id: uuid.UUID | None = None
    scopes: frozenset[str] | None = None  # None: an interactive session, not limited by scopes
    # How audit events and the access log name the caller; made once, a principal serves many requests.
    actor: str = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        actor = f"api_key:{self.api_key_id}" if self.api_key_id is not None else f"user:{self.user_id}"
        object.__setattr__(self, "actor", actor)

    def audit_context(self, request_id: str | None, client_addr: str | None) -> AuditContext:
        return AuditContext(actor=self.actor, request_id=request_id, client_addr=client_addr)
