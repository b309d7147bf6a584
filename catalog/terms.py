"""Search terms of a text: words of alphabetic scripts, and single characters and bigrams of CJK runs."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_RUNS = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+", re.UNICODE)
_IS_CJK = re.compile(rf"[{_CJK}]")
MAX_TERM_LENGTH = 64


def _run_terms(run: str, *, for_query: bool) -> list[str]:
    if not _IS_CJK.match(run):
        return [run[:MAX_TERM_LENGTH]]
    if len(run) == 1:
        return [run]
    pairs = [run[i : i + 2] for i in range(len(run) - 1)]
    return pairs if for_query else [*run, *pairs]


def terms(texts: Iterable[str], *, for_query: bool = False) -> list[str]:
    """The distinct terms of ``texts``, NFKC-normalised (full-width letters are letters) and lower-cased."""
    seen: dict[str, None] = {}
    for text in texts:
        for run in _RUNS.findall(unicodedata.normalize("NFKC", text).lower()):
            for term in _run_terms(run, for_query=for_query):
                seen.setdefault(term, None)
    return list(seen)


def product_terms(title: str, summary: str, description: str, tags: Iterable[str]) -> list[str]:
    return terms([title, summary, description, *tags])


def query_terms(q: str) -> list[str]:
    return terms([q], for_query=True)
