"""Search terms: words, and CJK characters and character pairs, indexed in a GIN array.

Chinese and Japanese have no spaces between words, so "金融" inside "金融新闻语料" is found by indexing
every character and every pair of adjacent characters; a query matches a product when all of its terms
are among the product's terms. No database extension is needed.
"""

from __future__ import annotations

import re
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
    """The distinct terms of ``texts``, lower-cased, in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for run in _RUNS.findall(text.lower()):
            for term in _run_terms(run, for_query=for_query):
                seen.setdefault(term, None)
    return list(seen)


def product_terms(title: str, summary: str, description: str, tags: Iterable[str]) -> list[str]:
    return terms([title, summary, description, *tags])


def query_terms(q: str) -> list[str]:
    return terms([q], for_query=True)
