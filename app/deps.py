"""Names of the per-request dependencies that handlers declare (provided in ``app.main``)."""

from __future__ import annotations

from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import AuditContext
from app.auth.principal import Principal

# Declared as ``session: Session``, ``principal: Caller``, ``audit_context: Audit`` in handlers.
Session = NamedDependency[AsyncSession]
Caller = NamedDependency[Principal]
OptionalCaller = NamedDependency[Principal | None]
Audit = NamedDependency[AuditContext]
