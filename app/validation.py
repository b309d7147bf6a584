"""Strict JSON bodies: a string is not a number, whatever lenient parsing would make of it.

Litestar converts request data leniently (``"12"`` becomes ``12``) because it shares that path with query
strings. JSON bodies have real types, so each body is first decoded strictly against the handler's type.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request

from app.errors import FieldProblem, ProblemError

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_LOCATION = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def _decoder(annotation: Any) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(annotation)
    if decoder is None:
        decoder = _decoders[annotation] = msgspec.json.Decoder(annotation, strict=True)
    return decoder


async def strict_json_body(request: Request[Any, Any, Any]) -> None:
    parameter = request.route_handler.parsed_fn_signature.parameters.get("data")
    if parameter is None or "json" not in (request.content_type[0] or "application/json"):
        return
    body = await request.body()
    if not body:
        return
    try:
        _decoder(parameter.annotation).decode(body)
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
