"""Checks made before a handler's parameters are parsed.

Strict JSON bodies: a string is not a number, whatever lenient parsing would make of it. Litestar converts
request data leniently (``"12"`` becomes ``12``) because it shares that path with query strings. JSON bodies
have real types, so each body is first decoded strictly against the handler's type.

Closed sets in the query: a query parameter typed as a ``Literal`` (which the OpenAPI schema lists as an
enum) refuses any other value with a 422 that names the parameter as clients spell it (``format``, not the
Python name it is declared under) and lists the values it takes.

Limits that hold for every body and parameter, whatever its schema (each field's own schema may be stricter):
JSON nested at most ``MAX_JSON_DEPTH`` deep (checked on the bytes, before anything recurses into them), strings
of at most ``MAX_STRING_CHARS``, arrays and objects of at most ``MAX_ITEMS`` members, integers that fit 64 bits,
and dates and times between ``EARLIEST`` and ``LATEST``. Beyond them, a 422 naming the field.

Forms: a handler with ``opt={FORM_BODY: True}`` also takes its body as ``application/x-www-form-urlencoded``,
the same fields as the JSON object, checked the same way.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from litestar import Request
from litestar.params import ParameterKwarg
from litestar.typing import FieldDefinition

from app.errors import FieldProblem, ProblemError, invalid, nul_in_text

MAX_JSON_DEPTH = 32
MAX_STRING_CHARS = 500_000  # the longest text a field takes: a licence's full text
MAX_ITEMS = 10_000
INT_RANGE = (-(2**63), 2**63 - 1)
EARLIEST = dt.datetime(1900, 1, 1)
LATEST = dt.datetime(2200, 1, 1)
FORM_BODY = "form_body"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
# Members an OAuth 2.0 client may add to a token request form that this service has no use for.
_IGNORED_FORM_FIELDS = frozenset({"scope", "client_id"})

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


def no_nul_in_query(request: Request[Any, Any, Any]) -> None:
    """400 for a NUL character in the query: no text anywhere holds one, and a streamed answer (an export) would
    otherwise meet the database's refusal only after its headers went out."""
    if any("\x00" in name or "\x00" in value for name, value in request.query_params.multi_items()):
        raise nul_in_text()


def known_query_values(request: Request[Any, Any, Any]) -> None:
    """422 for a value outside a query parameter's closed set, naming the parameter and the values it takes."""
    for name, allowed in _query_closed_sets(request):
        for value in request.query_params.getall(name, []):
            if value not in allowed:
                raise invalid(name, f"unknown value '{value}'; expected one of {', '.join(allowed)}")


def _dated_parameters(request: Request[Any, Any, Any]) -> tuple[str, ...]:
    handler = request.route_handler
    found = _dated.get(handler.fn)
    if found is None:
        names: list[str] = []
        for name, field in handler.parsed_fn_signature.parameters.items():
            kwarg = field.kwarg_definition
            if isinstance(kwarg, ParameterKwarg) and (kwarg.header or kwarg.cookie):
                continue
            candidates = [field, *field.inner_types] if field.is_optional else [field]
            if any(c.annotation in (dt.datetime, dt.date) for c in candidates):
                names.append((kwarg.query if isinstance(kwarg, ParameterKwarg) and kwarg.query else None) or name)
        found = _dated[handler.fn] = tuple(names)
    return found


_dated: dict[Callable[..., Any], tuple[str, ...]] = {}


def dates_in_range(request: Request[Any, Any, Any]) -> None:
    """422 for a date or time parameter outside the range any record of this service can hold."""
    for name in _dated_parameters(request):
        for value in request.query_params.getall(name, []):
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                continue  # not a date at all: the parameter's own parsing names it
            _check_moment(name, parsed)


def _check_moment(field: str, moment: dt.datetime | dt.date) -> None:
    naive = moment.replace(tzinfo=None) if isinstance(moment, dt.datetime) else dt.datetime.combine(moment, dt.time())
    if not EARLIEST <= naive < LATEST:
        raise invalid(field, f"must be between {EARLIEST.date()} and {LATEST.date()}")


async def check_request(request: Request[Any, Any, Any]) -> None:
    """Runs before every handler's parameters are parsed."""
    if request.scope["query_string"]:  # most requests have none: nothing to parse or check
        no_nul_in_query(request)
        known_query_values(request)
        dates_in_range(request)
    if request.route_handler.parsed_fn_signature.parameters.get("data") is not None:
        await form_as_json(request)
        await strict_json_body(request)


async def form_as_json(request: Request[Any, Any, Any]) -> None:
    """A form body, where the handler takes one, becomes the JSON object with the same fields."""
    if not request.route_handler.opt.get(FORM_BODY) or request.content_type[0] != FORM_MEDIA_TYPE:
        return
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProblemError(400, "malformed-form", "Malformed form", f"the form is not UTF-8: {exc.reason}") from None
    fields: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name in fields:
            raise invalid(name, "is given more than once")
        if name not in _IGNORED_FORM_FIELDS:
            fields[name] = value
    body = msgspec.json.encode(fields)
    # Handed on as the JSON body it stands for: the handler's parameters are parsed from this.
    request._connection_state.body = request._body = body


async def strict_json_body(request: Request[Any, Any, Any]) -> None:
    parameter = request.route_handler.parsed_fn_signature.parameters.get("data")
    if parameter is None:
        return
    media_type = request.content_type[0] or "application/json"
    if "json" not in media_type and not (request.route_handler.opt.get(FORM_BODY) and media_type == FORM_MEDIA_TYPE):
        return
    body = await request.body()
    if not body:
        return
    decode_json(body, parameter.annotation)


def _json_depth(body: bytes) -> int:
    """How deeply ``body`` nests arrays and objects, brackets inside strings aside."""
    brackets = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in _OPENING:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    break
        else:
            depth -= 1
    return deepest


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPENING = frozenset(b"[{")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _check_limits(value: Any, path: str = "") -> None:
    """The limits every body keeps, walked without recursion (the depth is already bounded)."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        field = where or "body"
        if isinstance(item, str):
            if len(item) > MAX_STRING_CHARS:
                raise invalid(field, f"must be at most {MAX_STRING_CHARS} characters")
        elif isinstance(item, bool | float):
            continue
        elif isinstance(item, int):
            if not INT_RANGE[0] <= item <= INT_RANGE[1]:
                raise invalid(field, "is out of range: numbers must fit in 64 bits")
        elif isinstance(item, dt.datetime | dt.date):
            _check_moment(field, item)
        elif isinstance(item, dict):
            if len(item) > MAX_ITEMS:
                raise invalid(field, f"must have at most {MAX_ITEMS} members")
            stack.extend((member, f"{where}.{key}" if where else str(key)) for key, member in item.items())
            stack.extend((key, field) for key in item)
        elif isinstance(item, list | tuple | set | frozenset):
            if len(item) > MAX_ITEMS:
                raise invalid(field, f"must have at most {MAX_ITEMS} items")
            stack.extend((member, f"{where}[{n}]") for n, member in enumerate(item))
        elif isinstance(item, msgspec.Struct):
            stack.extend((getattr(item, name), f"{where}.{name}" if where else name) for name in item.__struct_fields__)


def decode_json(body: bytes, annotation: Any) -> Any:
    """``body`` decoded strictly as ``annotation``: 400 when it is not JSON, 422 naming the field at fault or
    a limit that it exceeds."""
    if _json_depth(body) > MAX_JSON_DEPTH:
        raise invalid("body", f"JSON may nest arrays and objects at most {MAX_JSON_DEPTH} deep")
    try:
        decoded = _decoder(annotation).decode(body)
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
    _check_limits(decoded)
    return decoded
