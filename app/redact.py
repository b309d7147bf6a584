"""Secrets never reach a log or the terminal: tokens, API keys and presigned URLs are redacted from every
log record (message, arguments and traceback), and from whatever a command writes to stdout or stderr
(its own messages, exceptions, an uncaught traceback).

Installed by the CLI for every command and by each server worker. Deliberately independent of the rest of
the service, so the client commands may use it too.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

REDACTED = "[redacted]"

_URL_END = r"[^\s'\"<>]"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A presigned URL, or its path as urllib3 logs it (host apart): its query string is the credential
    # (X-Amz-Signature, X-Amz-Credential, ...).
    (re.compile(rf"((?:https?://)?[^\s?#'\"<>]+)\?{_URL_END}*X-Amz-{_URL_END}*", re.I), rf"\1?{REDACTED}"),
    # Credentials in a query string seen without their URL.
    (
        re.compile(r"([?&](?:X-Amz-[A-Za-z-]+|Signature|AWSAccessKeyId|access_token|token)=)[^&\s'\"<>]+", re.I),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.I), rf"\1{REDACTED}"),
    # API keys, refresh tokens, webhook secrets; JWTs.
    (re.compile(r"\b(crp|crt|whsec)_[A-Za-z0-9_\-+/=]{8,}"), rf"\1_{REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
)


# What each secret above starts with, lower-cased: a text containing none of them (an access-log line, almost
# every message) is returned as it is, without running a single pattern.
_TRIGGERS = ("x-amz-", "signature=", "awsaccesskeyid=", "token=", "bearer", "crp_", "crt_", "whsec_", "eyj")


def redact(text: str) -> str:
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record with its secrets redacted, the traceback included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RedactingStream:
    """A text stream that redacts what is written through it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_FILTER = RedactingFilter()


def install() -> None:
    """Redact what the root logger's handlers write, and stdout and stderr."""
    root = logging.getLogger()
    for handler in root.handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    if _FILTER not in root.filters:
        root.addFilter(_FILTER)  # records logged on the root logger itself
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
