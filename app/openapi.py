"""The OpenAPI document tells the truth: every status an operation can answer, each with the one Problem schema.

Statuses are derived centrally from what every route shares, after Litestar has generated the document:

- any operation: 401 (a credential that is presented is checked everywhere, and refused when invalid) and 503
  (a dependency is down: an API key is looked up in the database on any route);
- a write (not GET/HEAD/OPTIONS): 403, since platform auditors never write;
- a caller dependency or a guard: 403 (a role or an API-key scope is missing) and 404 (what it names is not
  visible to this caller);
- path parameters: 404; any parameter or a body: 422; a body: 400 (malformed), 408 (it did not arrive in time),
  413 (too large) and 415 (not JSON, or not a form where one is accepted); a ``cursor`` query parameter: 400 (a
  cursor no listing issued).

Every 503 names its ``Retry-After`` header, and every 429 the one it may carry.

What only one handler raises (409 conflicts, 429 quotas, 451 takedowns, …) it declares with ``responses=``
built by :func:`problems`. A schema-driven fuzz run (tests/test_schema_fuzz.py) fails on any status that is
not documented here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from litestar import Litestar
from litestar.enums import MediaType, ParamType
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    Schema,
)
from litestar.routes import HTTPRoute

from app.auth.guards import requires
from app.errors import PROBLEM_MEDIA_TYPE, Problem
from app.validation import FORM_BODY, FORM_MEDIA_TYPE

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Handler option: the media types its success body may also come in, besides the declared one.
ALSO_ANSWERS = "also_answers"
# Handler option: a :class:`DocumentedAt`, where the operation is documented.
DOCUMENTED_AT = "documented_at"
PROBLEM_REF = Reference(ref="#/components/schemas/Problem")

_PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    description="An RFC 9457 problem document; some problem types add members of their own.",
    required=["type", "title", "status"],
    properties={
        "type": Schema(type=OpenAPIType.STRING, description="A short slug naming the kind of problem"),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER, minimum=400, maximum=599),
        "detail": Schema(type=OpenAPIType.STRING),
        "instance": Schema(type=OpenAPIType.STRING),
        "errors": Schema(
            type=OpenAPIType.ARRAY,
            description="The fields at fault",
            items=Schema(
                type=OpenAPIType.OBJECT,
                required=["field", "message"],
                properties={"field": Schema(type=OpenAPIType.STRING), "message": Schema(type=OpenAPIType.STRING)},
            ),
        ),
    },
)

_DESCRIPTIONS = {
    400: "The body is not valid JSON (or UTF-8), or a cursor was not issued by this listing",
    401: "No bearer token where one is needed, or an invalid, expired or revoked one",
    403: "The caller may see this but not do it: a missing role or API-key scope, or a platform auditor writing",
    404: "Something the request names does not exist or is not visible to the caller",
    408: "The request body did not arrive within the deadline (`request-timeout`); the connection is closed",
    409: "The request conflicts with the current state",
    413: "The request body is larger than the service accepts",
    415: "The body is not sent as a media type this operation accepts",
    422: "A field or parameter is invalid; `errors` names each one",
    429: "Too many requests; `Retry-After` says when to try again, when waiting helps",
    503: "A dependency (database or object store) is unreachable or slow; nothing was changed, retry after "
    "`Retry-After` seconds",
}


@dataclasses.dataclass(frozen=True)
class DocumentedAt:
    """The path a client calls, for an operation whose route shares a wider template: Litestar routes a
    ``{path:path}`` parameter greedily, so ``…/files/{file_id}/complete`` is served by the ``…/files/{path}``
    route, whose handler reads the id from the path itself. The document shows the path as the client calls it,
    with ``{parameter}`` replaced by ``template``; the template's own parameters are UUIDs."""

    parameter: str
    template: str


def problem(description: str) -> ResponseSpec:
    return ResponseSpec(Problem, description=description, media_type=PROBLEM_MEDIA_TYPE, generate_examples=False)


def problems(statuses: Mapping[int, str]) -> dict[int, ResponseSpec]:
    """``responses=`` for the statuses only this handler answers, each a problem document."""
    return {status: problem(description) for status, description in statuses.items()}


def _derived(handler: HTTPRouteHandler, method: str, operation: Operation) -> set[int]:
    statuses = {401, 503}
    if method not in SAFE_METHODS:
        statuses.add(403)
    # Every route names its action with ``requires``; only the public ones refuse nobody.
    guards = [g for g in handler.resolve_guards() if not (isinstance(g, requires) and g.action == "public")]
    if guards or "principal" in handler.parsed_fn_signature.parameters:
        statuses |= {403, 404}
    if operation.request_body is not None:
        statuses |= {400, 408, 413, 415, 422}
    for parameter in operation.parameters or []:
        if isinstance(parameter, Reference):
            continue
        statuses.add(422)
        if parameter.param_in == ParamType.PATH:
            statuses.add(404)
        if parameter.param_in == ParamType.QUERY and parameter.name == "cursor":
            statuses.add(400)
    return statuses


def _problem_response(status: int) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=_DESCRIPTIONS.get(status, "A problem"),
        content={PROBLEM_MEDIA_TYPE: OpenAPIMediaType(schema=PROBLEM_REF)},
    )


_RETRY_AFTER = {
    "503": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
        description="Seconds to wait before retrying",
        required=True,
    ),
    "429": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
        description="Seconds to wait before retrying, when waiting helps (a spent quota does not refill by waiting)",
    ),
}


def _name_retry_after(responses: dict[str, OpenAPIResponse | Reference]) -> None:
    for status, header in _RETRY_AFTER.items():
        response = responses.get(status)
        if isinstance(response, OpenAPIResponse):
            response.headers = {**(response.headers or {}), "Retry-After": header}


def _answer_also(operation: Operation, media_types: tuple[str, ...]) -> None:
    """A success body that the caller may ask for in other media types (``opt={ALSO_ANSWERS: (...)}``)."""
    for status, response in (operation.responses or {}).items():
        if status.startswith("2") and isinstance(response, OpenAPIResponse):
            content = response.content if response.content is not None else {}
            for media_type in media_types:
                content.setdefault(media_type, OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING)))
            response.content = content


def _optional_body(handler: HTTPRouteHandler, operation: Operation) -> None:
    """A body with a default (``data: JSONBody[X | None] = None``) may be left out: an action such as
    ``POST /orders/{id}/approve`` is complete without one."""
    body = operation.request_body
    data = handler.parsed_fn_signature.parameters.get("data")
    if body is not None and not isinstance(body, Reference) and data is not None and data.has_default:
        body.required = False


def _accept_forms(operation: Operation) -> None:
    """A form body takes the same fields as the JSON one (OAuth 2.0 clients send forms, RFC 6749 §4.3)."""
    body = operation.request_body
    if body is None or isinstance(body, Reference) or MediaType.JSON not in body.content:
        return
    body.content[FORM_MEDIA_TYPE] = OpenAPIMediaType(schema=body.content[MediaType.JSON].schema)


def document_problems(app: Litestar) -> None:
    """Complete the app's OpenAPI document (built here, once, and served as it is left)."""
    openapi = app.openapi_schema
    if openapi.components.schemas is None:
        openapi.components.schemas = {}
    openapi.components.schemas["Problem"] = _PROBLEM_SCHEMA
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or openapi.paths is None:
            continue
        path_item = openapi.paths.get(route.path_format)
        if path_item is None:
            continue
        for method, (handler, _) in route.route_handler_map.items():
            operation = getattr(path_item, method.lower(), None)
            if not isinstance(operation, Operation) or not handler.resolve_include_in_schema():
                continue
            responses = operation.responses if operation.responses is not None else {}
            operation.responses = responses
            derived = _derived(handler, method, operation)
            stale = responses.get("400")
            # Litestar documents a validation-error body of its own for 400; this service answers problems.
            if isinstance(stale, OpenAPIResponse) and PROBLEM_MEDIA_TYPE not in (stale.content or {}):
                del responses["400"]
                derived.add(400)
            for status in sorted(derived):
                responses.setdefault(str(status), _problem_response(status))
            _name_retry_after(responses)
            _optional_body(handler, operation)
            if handler.opt.get(FORM_BODY):
                _accept_forms(operation)
            if also := handler.opt.get(ALSO_ANSWERS):
                _answer_also(operation, tuple(also))
            if (documented_at := handler.opt.get(DOCUMENTED_AT)) is not None:
                _move(openapi.paths, route.path_format, method.lower(), documented_at)


def _move(paths: dict[str, PathItem], path: str, method: str, to: DocumentedAt) -> None:
    """Document ``method`` of ``path`` where :class:`DocumentedAt` says, with the parameters of that path."""
    item = paths[path]
    operation: Operation = getattr(item, method)
    setattr(item, method, None)
    names = re.findall(r"{(\w+)}", to.template)
    operation.parameters = [
        parameter
        for parameter in operation.parameters or []
        if isinstance(parameter, Reference) or parameter.name != to.parameter
    ] + [
        Parameter(
            name=name,
            param_in=ParamType.PATH,
            required=True,
            schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.UUID),
        )
        for name in names
    ]
    target = paths.setdefault(path.replace("{" + to.parameter + "}", to.template), PathItem())
    setattr(target, method, operation)
