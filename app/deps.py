"""Names of the per-request dependencies that handlers declare (provided in ``app.main``)."""

from __future__ import annotations

from typing import Annotated

from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import AuditContext
from app.auth.principal import Principal

# Declared as ``session: Session``, ``principal: Caller``, ``audit_context: Audit`` in handlers.
Session = NamedDependency[AsyncSession]
# Endpoints that only read and may lag by a bounded time (app/replica.py) declare ``read_session: ReadSession``.
ReadSession = NamedDependency[AsyncSession]
Caller = NamedDependency[Principal]
OptionalCaller = NamedDependency[Principal | None]
Audit = NamedDependency[AuditContext]

# The OpenAPI security requirement of routes that need a signed-in caller; the page size of every list.
BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
Limit = Annotated[int, QueryParameter(ge=1, le=100, description="page size, 1 to 100 (default 50)")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page")]
