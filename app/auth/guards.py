"""Guards decided from token claims alone, and the per-request caller dependencies.

The guards are coroutines although they never wait: litestar runs a plain function guard in a worker
thread, a hop that costs more than the check itself.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app.accounts.access import RULES, refusal
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.errors import forbidden, unauthorized

# Non-GET requests a platform auditor may still make: signing in, and POSTs that only compute an answer.
OPEN_TO_AUDITORS = "open_to_auditors"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_AUDITOR_ONLY = frozenset({"auditor"})


class requires:
    """The route's action in the access table (``app.accounts.access.RULES``): refuses what the request alone
    decides (sign-in, the API key's scope, platform-only actions), and keeps a platform auditor (with no other
    platform role) from writing anywhere. Services check roles in the org concerned.

    Every route has exactly one such guard where it can: litestar copies the route handler for each guard call."""

    __slots__ = ("action",)

    def __init__(self, action: str) -> None:
        if action not in RULES:
            raise ValueError(f"no access rule for '{action}'")
        self.action = action

    async def __call__(self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        principal = connection.scope.get("user")
        if (problem := refusal(principal, self.action)) is not None:
            raise problem
        if (
            principal is not None
            and principal.platform_roles == _AUDITOR_ONLY
            and connection.scope.get("method") not in _SAFE_METHODS
            and not handler.opt.get(OPEN_TO_AUDITORS)
        ):
            raise forbidden("platform auditors read but never write")


def provide_principal(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal = request.scope.get("user")
    if principal is None:
        raise unauthorized()
    assert isinstance(principal, Principal)
    return principal


def provide_optional_principal(request: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    principal = request.scope.get("user")
    return principal if isinstance(principal, Principal) else None


def provide_audit_context(request: ASGIConnection[Any, Any, Any, Any]) -> AuditContext:
    state = request.scope.get("state", {})
    principal = request.scope.get("user")
    actor = principal.actor if isinstance(principal, Principal) else "anonymous"
    return AuditContext(actor=actor, request_id=state.get("request_id"), client_addr=state.get("client_addr"))
