"""Errors as RFC 9457 ``application/problem+json``.

Problem ``type`` values are short slugs (``quota-exceeded``, ``validation-error``, …): relative URI
references that clients compare as strings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.objectstore import ObjectStoreUnavailable

log = logging.getLogger("corpora")

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 5
# Raised by the database triggers that keep published versions and their files frozen.
FROZEN_SQLSTATE = "55000"
# PostgreSQL text and jsonb cannot hold U+0000: character_not_in_repertoire, untranslatable_character.
NUL_SQLSTATES = frozenset({"22021", "22P05"})
# The database is going away, restarting, in crash recovery, out of resources, or cancelled a statement at
# its deadline (statement_timeout): all mean "try again shortly", never a server error. Class 08 (connection
# exceptions) counts whole.
# 25006: the node this connection reached is read-only now (demoted by a failover that is under way).
UNAVAILABLE_SQLSTATES = frozenset(
    {"25006", "57P01", "57P02", "57P03", "57014", "53000", "53100", "53200", "53300", "53400"}
)


# nginx's "client closed request": the client went away before it could be answered.
CLIENT_CLOSED_REQUEST = 499


class ClientGone(Exception):
    """The client disconnected before its request was read: nobody is left to answer."""


class FieldProblem(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str = ""
    errors: list[FieldProblem] | None = None
    instance: str | None = None


class ProblemError(Exception):
    """Raised by services and routes; rendered as a problem response."""

    def __init__(
        self,
        status: int,
        type_: str,
        title: str,
        detail: str = "",
        *,
        errors: Sequence[FieldProblem] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.type = type_
        self.title = title
        self.detail = detail
        self.errors = list(errors) if errors else None
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def not_found(what: str) -> ProblemError:
    return ProblemError(404, "not-found", "Not found", f"{what} does not exist or is not visible to you")


def forbidden(detail: str) -> ProblemError:
    return ProblemError(403, "forbidden", "Forbidden", detail)


def conflict(detail: str, type_: str = "conflict") -> ProblemError:
    return ProblemError(409, type_, "Conflict", detail)


def unauthorized(detail: str = "a valid bearer token is required") -> ProblemError:
    return ProblemError(
        401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="corpora"'}
    )


def invalid(field: str, message: str) -> ProblemError:
    return ProblemError(
        422,
        "validation-error",
        "Invalid request",
        f"{field}: {message}",
        errors=[FieldProblem(field=field, message=message)],
    )


_NAMED_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def _name_fields(errors: list[FieldProblem] | None) -> list[FieldProblem] | None:
    """Blame the field itself when the decoder reports a missing or unknown field against its parent object."""
    if not errors:
        return errors
    named: list[FieldProblem] = []
    for problem in errors:
        match = _NAMED_FIELD.match(problem.message)
        if match is not None:
            parent = "" if problem.field in ("", "body", "data", "$") else f"{problem.field}."
            problem = FieldProblem(field=parent + match.group("name"), message=problem.message)
        named.append(problem)
    return named


def problem_response(
    status: int,
    type_: str,
    title: str,
    detail: str,
    *,
    request: Request[Any, Any, Any] | None = None,
    errors: list[FieldProblem] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response[Any]:
    body: dict[str, Any] = msgspec.to_builtins(
        Problem(
            type=type_,
            title=title,
            status=status,
            detail=detail,
            errors=_name_fields(errors),
            instance=request.url.path if request is not None else None,
        )
    )
    if extra:
        body.update(extra)
    return Response(content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=dict(headers or {}))


def _validation_errors(extra: Any) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict):
                key = str(item.get("key") or item.get("source") or "body")
                problems.append(FieldProblem(field=key, message=str(item.get("message", ""))))
    return problems


def nul_in_text() -> ProblemError:
    return ProblemError(
        400,
        "invalid-text",
        "Invalid text",
        "text in the request contains the NUL character (U+0000), which is not accepted anywhere; remove it",
    )


def handle_problem(request: Request[Any, Any, Any], exc: ProblemError) -> Response[Any]:
    return problem_response(
        exc.status,
        exc.type,
        exc.title,
        exc.detail,
        request=request,
        errors=exc.errors,
        headers=exc.headers,
        extra=exc.extra,
    )


def _body_missing(extra: Any) -> bool:
    """Litestar reports a handler's absent ``data`` (an empty body) as the message ``'data'`` for key ``data``."""
    return isinstance(extra, list) and any(
        isinstance(item, dict) and item.get("key") == "data" and item.get("message") == "'data'" for item in extra
    )


_MISSING_PARAMETER = re.compile(r"Missing required (?P<kind>\w+) parameter '(?P<name>[^']+)'")


def handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    detail = str(exc.detail)
    if "JSON is malformed" in detail or "malformed" in detail.lower():
        return problem_response(400, "malformed-json", "Malformed JSON", detail, request=request)
    if _body_missing(exc.extra):
        return problem_response(
            400, "malformed-json", "Malformed JSON", "the request body is empty; send a JSON object", request=request
        )
    errors = _validation_errors(exc.extra)
    if not errors and (missing := _MISSING_PARAMETER.match(detail)):
        # Litestar names a missing header, query or cookie parameter only in its message.
        errors = [FieldProblem(field=missing["name"], message=f"the {missing['kind']} parameter is required")]
    if errors:
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return problem_response(422, "validation-error", "Invalid request", detail, request=request, errors=errors or None)


_TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("body-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    429: ("too-many-requests", "Too many requests"),
}


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        return handle_internal(request, exc)
    if status == 400 and str(exc.detail).startswith("JSON is malformed"):
        # Litestar parses every body as JSON, whatever its declared type.
        media_type = request.content_type[0]
        if media_type and "json" not in media_type:
            return problem_response(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                f"send the body as application/json, not {media_type}",
                request=request,
            )
        return problem_response(400, "malformed-json", "Malformed JSON", str(exc.detail), request=request)
    type_, title = _TITLES.get(status, ("about:blank", "Request refused"))
    headers = exc.headers
    if status == 413:
        # The rest of the body is not read, so the connection cannot carry another request: the client is told to
        # open a new one, rather than have its next request meet a closed connection.
        headers = {**(headers or {}), "Connection": "close"}
    return problem_response(status, type_, title, str(exc.detail), request=request, headers=headers)


def handle_undecodable(request: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[Any]:
    """Request bodies and parameters are UTF-8; bytes that are not reach here from the JSON decoder."""
    return problem_response(
        400, "malformed-json", "Malformed JSON", f"the request is not valid UTF-8 text: {exc.reason}", request=request
    )


def _unavailable_sqlstate(sqlstate: object) -> bool:
    return isinstance(sqlstate, str) and (sqlstate in UNAVAILABLE_SQLSTATES or sqlstate.startswith("08"))


def dependency_unavailable(exc: BaseException | None) -> bool:
    """Whether ``exc`` says PostgreSQL or the object store is down, hung, restarting or overloaded.

    Sees through SQLAlchemy's wrappers (``DBAPIError`` around the driver's error, which wraps asyncpg's)."""
    if exc is None:
        return False
    if isinstance(exc, ObjectStoreUnavailable | PoolTimeoutError | OSError | asyncpg.InterfaceError):
        return True  # OSError: refused, reset, timed out (TimeoutError); asyncpg: the connection is gone
    if isinstance(exc, asyncpg.TargetServerAttributeNotMatched):
        return True  # a multi-host URL found no writable node: a failover is under way
    if isinstance(exc, asyncpg.PostgresError):
        return _unavailable_sqlstate(exc.sqlstate)
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        orig = exc.orig
        return _unavailable_sqlstate(getattr(orig, "sqlstate", None)) or (
            orig is not None and orig is not exc and dependency_unavailable(orig.__cause__)
        )
    return False


def answered_status(exc: BaseException) -> int:
    """The status the exception handlers answer ``exc`` with, for code that sees the exception (metrics)."""
    while isinstance(exc, ExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, ProblemError):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, ClientGone):
        return CLIENT_CLOSED_REQUEST
    if dependency_unavailable(exc):
        return 503
    return HTTP_500_INTERNAL_SERVER_ERROR


def handle_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("dependency unavailable on %s: %s", request.url.path, exc)
    which = "object store" if isinstance(exc, ObjectStoreUnavailable) else "database"
    return problem_response(
        503,
        "dependency-unavailable",
        "Service unavailable",
        f"the {which} is unreachable or not answering; nothing was changed, retry after {RETRY_AFTER_SECONDS} seconds",
        request=request,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def handle_dbapi(request: Request[Any, Any, Any], exc: DBAPIError) -> Response[Any]:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate == FROZEN_SQLSTATE:
        return problem_response(409, "frozen", "Frozen", str(exc.orig).split("\n")[0], request=request)
    if sqlstate in NUL_SQLSTATES:
        # The statement failed, so the transaction rolls back: nothing was changed.
        return handle_problem(request, nul_in_text())
    return handle_internal(request, exc)


def handle_internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if dependency_unavailable(exc):
        return handle_unavailable(request, exc)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "internal-error",
        "Internal server error",
        "an unexpected error occurred; it has been logged",
        request=request,
    )


def handle_client_gone(request: Request[Any, Any, Any], exc: ClientGone) -> Response[Any]:
    """Not a server error: noted at INFO, and answered (to nobody) with 499 so metrics count it as such."""
    log.info("client went away before its request was read: %s %s", request.method, request.url.path)
    return Response(content=b"", status_code=CLIENT_CLOSED_REQUEST)


def handle_exception_group(request: Request[Any, Any, Any], exc: ExceptionGroup[Exception]) -> Response[Any]:
    """Answer for the error inside the group.

    Litestar wraps an exception raised while a dependency cleans up (the session committing after a
    refused login, or failing to commit because the database went away) in an ``ExceptionGroup``; the
    client should get the problem response of that error, not a 500.
    """
    leaf: Exception = exc
    while isinstance(leaf, ExceptionGroup) and leaf.exceptions:
        leaf = leaf.exceptions[0]
    if leaf is exc:
        return handle_internal(request, exc)
    for cls in type(leaf).__mro__:
        handler = exception_handlers.get(cls)
        if handler is not None:
            response: Response[Any] = handler(request, leaf)
            return response
    return handle_internal(request, leaf)


exception_handlers: dict[Any, Any] = {
    ProblemError: handle_problem,
    ValidationException: handle_validation,
    HTTPException: handle_http,
    ObjectStoreUnavailable: handle_unavailable,
    DBAPIError: handle_dbapi,
    PoolTimeoutError: handle_unavailable,
    OSError: handle_unavailable,
    UnicodeDecodeError: handle_undecodable,
    ClientGone: handle_client_gone,
    ExceptionGroup: handle_exception_group,
    Exception: handle_internal,
}
