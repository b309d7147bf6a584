"""Opt-out evidence: what a crawled site's robots.txt, TDMRep file and ``tdm-reservation`` header say about
text and data mining, fetched by the platform itself and kept byte for byte.

robots.txt is read with ``protego`` (RFC 9309: groups by user agent, longest match, ``Allow`` over ``Disallow`` on
ties); a crawler counts as disallowed when it may not fetch the source's URL. TDMRep (W3C Community Group report)
is ``/.well-known/tdmrep.json``, an array of ``{location, tdm-reservation, tdm-policy?}`` rules; a header
``tdm-reservation: 1`` on the source's own URL reserves it as well.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from urllib.parse import urlsplit

import httpx
from protego import Protego

from app.egress import Egress, EgressRefused

AI_CRAWLERS = ("GPTBot", "CCBot", "Google-Extended", "ClaudeBot", "Bytespider", "*")
MAX_BYTES = 512 * 1024  # robots.txt parsers must read at least 500 KiB (RFC 9309 §2.5)
TIMEOUT = 10.0
MAX_REDIRECTS = 5  # RFC 9309 §2.3.1.2: follow at least five redirects


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    status: int | None  # None: no answer (refused, timed out, unreachable)
    body: bytes
    sha256: str | None  # of ``body``, when there was an answer
    header: str | None  # the tdm-reservation header
    error: str | None


async def fetch(egress: Egress, url: str, *, method: str = "GET") -> Fetched:
    try:
        response = await egress.request(method, url, timeout=TIMEOUT, max_bytes=MAX_BYTES, max_redirects=MAX_REDIRECTS)
    except (EgressRefused, httpx.HTTPError, TimeoutError) as exc:
        return Fetched(None, b"", None, None, f"{type(exc).__name__}: {exc}"[:1000])
    header = next((v for k, v in response.headers.items() if k.lower() == "tdm-reservation"), None)
    return Fetched(response.status_code, response.body, hashlib.sha256(response.body).hexdigest(), header, None)


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def disallowed_crawlers(robots: Fetched, url: str) -> list[str]:
    """The AI crawlers robots.txt keeps away from ``url``. RFC 9309 §2.3.1.3-4: a 4xx means no rules, a 5xx means
    everything is disallowed. No answer at all (refused by the egress rules, unreachable) is no evidence: none."""
    if robots.status is None:
        return []
    if robots.status >= 500:
        return list(AI_CRAWLERS)
    if not 200 <= robots.status < 300:
        return []
    rules = Protego.parse(robots.body.decode("utf-8", "replace"))
    return [agent for agent in AI_CRAWLERS if not rules.can_fetch(url, agent)]


def tdm_reserved(tdmrep: Fetched, header: str | None, url: str) -> bool | None:
    """Whether text and data mining of ``url`` is reserved; None when the site declares nothing either way."""
    if header is not None and header.strip() in ("0", "1"):
        return header.strip() == "1"
    if tdmrep.status != 200:
        return None
    try:
        rules = json.loads(tdmrep.body)
    except ValueError:
        return None
    if not isinstance(rules, list):
        return None
    path = urlsplit(url).path or "/"
    for rule in rules:
        if not isinstance(rule, dict):
            continue
        location = str(rule.get("location", ""))
        if fnmatch.fnmatchcase(path, location) or fnmatch.fnmatchcase(path, location.rstrip("*") + "*"):
            return str(rule.get("tdm-reservation")) == "1"
    return None


def evidence_key(sha256: str) -> str:
    return f"evidence/sha256/{sha256[:2]}/{sha256}"
