"""Checks made before a handler's parameters are parsed.

Strict JSON bodies: a string is not a number, whatever lenient parsing would make of it. Litestar converts
request data leniently (``"12"`` becomes ``12``) because it shares that path with query strings. JSON bodies
have real types, so each body is first decoded strictly against the handler's type.

Closed sets in the query: a query parameter typed as a ``Literal`` (which the OpenAPI schema lists as an
enum) refuses any other value with a 422 that names the parameter as clients spell it (``format``, not the
Python name it is declared under) and lists the values it takes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Request
from litestar.params import ParameterKwarg
from litestar.typing import FieldDefinition

from app.errors import FieldProblem, ProblemError, invalid

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
# Per handler function: (query parameter name, the values it takes) of each Literal-typed query parameter.
_closed_sets: dict[Callable[..., Any], tuple[tuple[str, tuple[str, ...]], ...]] = {}
_LOCATION = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def _decoder(annotation: Any) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(annotation)
    if decoder is None:
        decoder = _decoders[annotation] = msgspec.json.Decoder(annotation, strict=True)
    return decoder


def _literal_values(field: FieldDefinition) -> tuple[str, ...] | None:
    """The values of a ``Literal`` annotation, optional or not; None for any other type."""
    candidates = [field, *field.inner_types] if field.is_optional else [field]
    for candidate in candidates:
        if candidate.is_literal and all(isinstance(value, str) for value in candidate.args):
            return tuple(candidate.args)
    return None


def _query_closed_sets(request: Request[Any, Any, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    handler = request.route_handler
    found = _closed_sets.get(handler.fn)
    if found is None:
        sets: list[tuple[str, tuple[str, ...]]] = []
        for name, field in handler.parsed_fn_signature.parameters.items():
            kwarg = field.kwarg_definition
            if not isinstance(kwarg, ParameterKwarg) or kwarg.header or kwarg.cookie:
                continue
            values = _literal_values(field)
            if values is not None:
                sets.append((kwarg.name or kwarg.query or name, values))
        found = _closed_sets[handler.fn] = tuple(sets)
    return found


def known_query_values(request: Request[Any, Any, Any]) -> None:
    """422 for a value outside a query parameter's closed set, naming the parameter and the values it takes."""
    for name, allowed in _query_closed_sets(request):
        for value in request.query_params.getall(name, []):
            if value not in allowed:
                raise invalid(name, f"unknown value '{value}'; expected one of {', '.join(allowed)}")


async def check_request(request: Request[Any, Any, Any]) -> None:
    """Runs before every handler's parameters are parsed."""
    known_query_values(request)
    await strict_json_body(request)


async def strict_json_body(request: Request[Any, Any, Any]) -> None:
    parameter = request.route_handler.parsed_fn_signature.parameters.get("data")
    if parameter is None or "json" not in (request.content_type[0] or "application/json"):
        return
    body = await request.body()
    if not body:
        return
    decode_json(body, parameter.annotation)


def decode_json(body: bytes, annotation: Any) -> Any:
    """``body`` decoded strictly as ``annotation``: 400 when it is not JSON, 422 naming the field at fault."""
    try:
        return _decoder(annotation).decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _LOCATION.search(message)
        field = (match.group("path") if match else "") or "body"
        text = _LOCATION.sub("", message)
        raise ProblemError(
            422,
            "validation-error",
            "Invalid request",
            f"{field}: {text}",
            errors=[FieldProblem(field=field, message=text)],
        ) from None
    except msgspec.DecodeError as exc:
        raise ProblemError(400, "malformed-json", "Malformed JSON", f"the body is not valid JSON: {exc}") from None
