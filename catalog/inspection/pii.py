"""Personal data found in text: e-mail addresses, phone numbers, PRC resident IDs, bank cards, IP addresses.

Each kind is a pattern plus, where the format has one, its check digit: a PRC resident ID must carry the
GB 11643-1999 ISO 7064 MOD 11-2 checksum, a bank card the Luhn one, an IP address must parse. Kinds are matched in
the order of ``KINDS`` and a span claimed by one is not counted again by a later one (an 18-digit ID is never also
a card), so each finding is counted once. The same spans are what the preview masks.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Iterator

KINDS = ("email", "cn_resident_id", "bank_card", "phone", "ip_address")

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b"
)
# 6-digit region, birth date (YYYYMMDD), 3-digit sequence, check character.
_CN_ID = re.compile(
    r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9A-Za-z])"
)
# 13 to 19 digits, optionally grouped by single spaces or hyphens.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\d+])(?:"
    r"(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}"  # mainland China mobiles: 1[3-9]x xxxx xxxx
    r"|\+\d{1,3}[ -]?(?:\(\d{1,4}\)[ -]?)?\d{1,4}(?:[ -]?\d{2,4}){1,4}"  # international, with a leading +
    r"|\(\d{3}\)[ -]?\d{3}[ -.]\d{4}"  # North American (555) 123-4567
    r"|\d{3}[-.]\d{3}[-.]\d{4}"  # 555-123-4567
    r")(?!\d)"
)
_IPV4 = r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV6 = r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}"
_IP = re.compile(rf"(?<![\w.:])(?:{_IPV4}|{_IPV6})(?![\w.:]|\.\d)")
# A record without any of these characters holds none of the kinds: most text is skipped at C speed.
_MAY_HOLD = re.compile(r"[@\d:]")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def resident_id_valid(value: str) -> bool:
    """GB 11643-1999: the 18th character is the ISO 7064 MOD 11-2 check of the first 17 digits."""
    total = sum(int(d) * w for d, w in zip(value[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == value[17].upper()


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _ip_valid(value: str) -> bool:
    if ":" in value and value.count(":") < 2:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _accept(kind: str, value: str) -> bool:
    if kind == "cn_resident_id":
        return resident_id_valid(value)
    if kind == "bank_card":
        return luhn_valid(value.replace(" ", "").replace("-", ""))
    if kind == "ip_address":
        return _ip_valid(value)
    return True


_PATTERNS = (
    ("email", _EMAIL),
    ("cn_resident_id", _CN_ID),
    ("bank_card", _CARD),
    ("phone", _PHONE),
    ("ip_address", _IP),
)


def findings(text: str) -> Iterator[tuple[str, int, int]]:
    """(kind, start, end) of every finding, each span counted by the first kind that claims it."""
    if not _MAY_HOLD.search(text):
        return
    claimed: list[tuple[int, int]] = []  # sorted spans of earlier kinds
    for kind, pattern in _PATTERNS:
        if kind == "email" and "@" not in text:
            continue
        found = []
        for match in pattern.finditer(text):
            start, end = match.span()
            if _overlaps(claimed, start, end) or not _accept(kind, match.group()):
                continue
            found.append((start, end))
            yield kind, start, end
        claimed = sorted(claimed + found)


def _overlaps(claimed: list[tuple[int, int]], start: int, end: int) -> bool:
    at = bisect.bisect_left(claimed, (end,))
    return at > 0 and claimed[at - 1][1] > start


# Joins records scanned together: no pattern matches across it, so no finding spans two records.
RECORD_SEPARATOR = "\n\x00\n"


def count_into(texts: list[str], counts: dict[str, int]) -> None:
    """Count the findings of many records with one pass of each pattern over all of them."""
    for kind, _, _ in findings(RECORD_SEPARATOR.join(texts)):
        counts[kind] += 1


def mask(text: str) -> str:
    """``text`` with every finding replaced by ``[kind]``."""
    spans = sorted(findings(text), key=lambda f: f[1])
    if not spans:
        return text
    out: list[str] = []
    position = 0
    for kind, start, end in spans:
        out.append(text[position:start])
        out.append(f"[{kind}]")
        position = end
    out.append(text[position:])
    return "".join(out)
