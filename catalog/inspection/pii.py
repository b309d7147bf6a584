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
import sys
from collections.abc import Iterator
from functools import cache

import numpy as np

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


# Digits become "D", the separators a number may hold ( ().-) are deleted, newlines stay, everything else is "x":
# any ID, card or phone without a leading "+" then shows as ten "D" in a row within one line.
_DIGIT_MAP = bytes(ord("D") if 48 <= c <= 57 else 10 if c == 10 else ord("x") for c in range(256))
_DIGIT_SEPARATORS = b" ().-"
# A run of characters a number kind can consume, starting at a digit (a "+" or "(" may precede it).
_NUMBER_RUN = re.compile(r"\d[\dXx ().+-]*")
_LOCAL_PART_REVERSED = re.compile(r"[A-Za-z0-9._%+-]{0,65}")


@cache
def _wide_digits() -> tuple[bytes, np.ndarray]:
    """The digits ``\\d`` matches beyond ASCII (fullwidth, Arabic-Indic, Devanagari...), in UTF-8: a table
    mapping the bytes that lead them to 1 (others to 0), and each one's bytes as a big-endian number padded to
    four bytes."""
    leads = bytearray(256)
    keys = []
    for code in range(128, sys.maxunicode + 1):
        if chr(code).isdecimal():  # Unicode category Nd, what \\d matches in a str pattern
            encoded = chr(code).encode()
            leads[encoded[0]] = 1
            keys.append(int.from_bytes(encoded.ljust(4, b"\0"), "big"))
    return bytes(leads), np.array(sorted(keys), np.uint32)


_KEEP_BYTES = np.array([0, 0, 0xFFFF0000, 0xFFFFFF00, 0xFFFFFFFF], np.uint32)  # by the length of the character


def _wide_digit_positions(data: bytes) -> np.ndarray:
    leads, keys = _wide_digits()
    at = np.flatnonzero(np.frombuffer(data.translate(leads), np.bool_))  # bytes.translate: one C pass
    if not len(at):
        return at
    padded = np.frombuffer(data + b"\0\0\0", np.uint8)
    key = (
        (padded[at].astype(np.uint32) << 24)
        | (padded[at + 1].astype(np.uint32) << 16)
        | (padded[at + 2].astype(np.uint32) << 8)
        | padded[at + 3]
    )
    length = 2 + (padded[at] >= 0xE0) + (padded[at] >= 0xF0)
    key &= _KEEP_BYTES[length]
    found: np.ndarray = at[keys[np.searchsorted(keys, key).clip(max=len(keys) - 1)] == key]
    return found


_TEN_DIGITS = re.compile(b"D" * 10)


def _line_numbers(newlines: np.ndarray, positions: np.ndarray) -> set[int]:
    return set(np.searchsorted(newlines, positions).tolist())


def count_into(texts: list[str], counts: dict[str, int]) -> None:
    """Count what ``findings`` finds in each of ``texts``, scanning only the lines that can hold a finding.

    No kind matches across a newline and each pattern treats a newline as it treats the end of the text, so the
    findings of a text are those of its lines. Cheap byte-level tests over all texts at once pick the lines that
    can hold each kind; only those run the patterns, and only those kinds, with the same claiming order."""
    data = "\n".join(texts).encode("utf-8", "surrogatepass")
    raw = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(raw == 10)
    email = _line_numbers(newlines, np.flatnonzero(raw == 64))
    numbers = _line_numbers(newlines, np.flatnonzero(raw == 43))  # "+": international phone numbers
    squeezed = data.translate(_DIGIT_MAP, _DIGIT_SEPARATORS)
    runs = [match.start() for match in _TEN_DIGITS.finditer(squeezed)]  # a literal: searched, not tried
    if runs:
        squeezed_newlines = np.flatnonzero(np.frombuffer(squeezed, np.uint8) == 10)
        numbers |= _line_numbers(squeezed_newlines, np.array(runs))
    if not data.isascii():  # digits of other scripts count too
        numbers |= _line_numbers(newlines, _wide_digit_positions(data))
    # An IPv4 address holds a dot before an ASCII digit, an IPv6 one two colons at most five bytes apart.
    dots = np.flatnonzero((raw[:-1] == 46) & (raw[1:] >= 48) & (raw[1:] <= 57))
    colons = np.flatnonzero(raw == 58)
    ip = _line_numbers(newlines, np.concatenate([dots, colons[1:][np.diff(colons) <= 5]]))
    candidates = email | numbers | ip
    if not candidates:
        return
    # only the candidate lines are cut out of the bytes and decoded, never the whole text split
    lines = np.array(sorted(candidates))
    bounds = np.concatenate([[-1], newlines, [len(data)]])
    for number, start, end in zip(
        lines.tolist(), (bounds[lines] + 1).tolist(), bounds[lines + 1].tolist(), strict=True
    ):
        line = data[start:end].decode("utf-8", "surrogatepass")
        _count_line(line, number in email, number in numbers, number in ip, counts)


# An ID or a card consumes only characters of the run (its context characters are never digits), so a shorter run
# cannot hold one: 18 characters for an ID, 13 digits for a card.
_SHORTEST_RUN = {"cn_resident_id": 18, "bank_card": 13}


def _count_line(line: str, email: bool, numbers: bool, ip: bool, counts: dict[str, int]) -> None:
    """Count ``findings`` of one line, running only the kinds it may hold, each where it may match."""
    claimed: list[tuple[int, int]] = []
    if email:
        # An address's local part is the whole run of its characters before the "@" (the pattern's lookbehind
        # refuses to start inside such a run), so each "@" has one possible start: matched exactly there.
        end = 0
        at = line.find("@")
        while at != -1:
            local = _LOCAL_PART_REVERSED.match(line[max(0, at - 65) : at][::-1])
            start = at - (local.end() if local else 0)
            if at - start <= 64 and start >= end and (address := _EMAIL.match(line, start)):
                end = address.end()
                claimed.append(address.span())
                counts["email"] += 1
            at = line.find("@", at + 1)
    if numbers:
        # Every number kind consumes only digits, X, spaces and ().+- and starts at most one character before
        # a digit: scanned in each such run (one character of context either side) instead of the whole line.
        windows = []
        for run in _NUMBER_RUN.finditer(line):
            start, end = run.span()
            if end - start >= 10 or line[start - 1 : start] == "+" or "+" in run.group():
                windows.append((max(0, start - 1), min(len(line), end + 1), end - start))
        for kind, pattern in _PATTERNS[1:4]:
            found = []
            shortest = _SHORTEST_RUN.get(kind, 0)
            for start, end, length in windows:
                if length < shortest:
                    continue
                for match in pattern.finditer(line, start, end):
                    span = match.span()
                    if (claimed and _overlaps(claimed, *span)) or not _accept(kind, match.group()):
                        continue
                    found.append(span)
                    counts[kind] += 1
            if found:
                claimed = sorted(claimed + found)
    if ip:
        for match in _IP.finditer(line):
            span = match.span()
            if not (claimed and _overlaps(claimed, *span)) and _accept("ip_address", match.group()):
                counts["ip_address"] += 1


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
