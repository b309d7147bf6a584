"""Personal data found in text: e-mail addresses, phone numbers, PRC resident IDs, bank cards, IP addresses.

Each kind is a pattern plus, where the format has one, its check digit: a PRC resident ID must carry the
GB 11643-1999 ISO 7064 MOD 11-2 checksum, a bank card the Luhn one, an IP address must parse. Kinds are matched in
the order of ``KINDS`` and a span claimed by one is not counted again by a later one (an 18-digit ID is never also
a card), so each finding is counted once. The same spans are what the preview masks.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
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


# The characters a number kind consumes (digits, X, spaces and ().+-), by code point below 128.
_NUMBER_CHARS = np.array([chr(c) in "0123456789Xx ().+-" for c in range(128)])
# The characters of an address's local part, by code point below 128.
_LOCAL_CHARS = np.array([chr(c).isalnum() or chr(c) in "._%+-" for c in range(128)])


@cache
def _wide_digit_codes() -> np.ndarray:
    """The code points of the digits ``\\d`` matches beyond ASCII (fullwidth, Arabic-Indic, Devanagari...)."""
    return np.array([c for c in range(128, sys.maxunicode + 1) if chr(c).isdecimal()], np.uint32)


@cache
def _wide_digit_table() -> np.ndarray:
    """Whether each code point is a digit beyond ASCII."""
    table = np.zeros(sys.maxunicode + 1, np.bool_)
    table[_wide_digit_codes()] = True
    return table


@cache
def _wide_digits() -> tuple[bytes, np.ndarray]:
    """The digits ``\\d`` matches beyond ASCII (fullwidth, Arabic-Indic, Devanagari...), in UTF-8: a table
    mapping the bytes that lead them to 1 (others to 0), and each one's bytes as a big-endian number padded to
    four bytes."""
    leads = bytearray(256)
    keys = []
    for code in _wide_digit_codes().tolist():
        encoded = chr(code).encode()
        leads[encoded[0]] = 1
        keys.append(int.from_bytes(encoded.ljust(4, b"\0"), "big"))
    return bytes(leads), np.array(sorted(keys), np.uint32)


_KEEP_BYTES = np.array([0, 0, 0xFFFF0000, 0xFFFFFF00, 0xFFFFFFFF], np.uint32)  # by the length of the character


def _wide_digit_positions(data: bytes, start: int) -> np.ndarray:
    """Where digits of other scripts begin in ``data[start:]``."""
    leads, keys = _wide_digits()
    at = np.flatnonzero(np.frombuffer(data[start:].translate(leads), np.bool_)) + start  # translate: one C pass
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


# Digits become "D", the separators a number may hold ( ().-) are deleted, newlines stay, everything else is "x":
# any ID, card or phone without a leading "+" then shows as ten "D" in a row within one line.
_DIGIT_MAP = bytes(ord("D") if 48 <= c <= 57 else 10 if c == 10 else ord("x") for c in range(256))
_DIGIT_SEPARATORS = b" ().-"
_TEN_DIGITS = re.compile(b"D" * 10)


def _line_numbers(newlines: np.ndarray, positions: np.ndarray) -> set[int]:
    return set(np.searchsorted(newlines, positions).tolist())


def count_into(texts: list[str], counts: dict[str, int]) -> int:
    """Count what ``findings`` finds in each of ``texts``, scanning only the lines that can hold a finding; return
    the characters the texts hold (the joins below know them).

    No kind matches across a newline and each pattern treats a newline as it treats the end of the text, so the
    findings of a text are those of its lines, in any order. Cheap byte-level tests over all texts at once pick the
    lines that can hold a finding; the patterns run over those lines only, each where it may match, with the same
    claiming order."""
    # ASCII texts first: joined apart from the others they stay one byte a character, so encoding them is a copy
    # and the search for digits of other scripts skips them
    ascii_texts = list(filter(str.isascii, texts))
    data = "\n".join(ascii_texts).encode()
    chars = len(data) - max(0, len(ascii_texts) - 1)
    wide_from = None  # where the texts that are not ASCII start
    if len(ascii_texts) < len(texts):
        joined = "\n".join(itertools.filterfalse(str.isascii, texts))
        chars += len(joined) - (len(texts) - len(ascii_texts) - 1)
        others = joined.encode("utf-8", "surrogatepass")
        data, wide_from = (b"\n".join([data, others]), len(data) + 1) if ascii_texts else (others, 0)
    raw = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(raw == 10)
    email = _line_numbers(newlines, np.flatnonzero(raw == 64))
    numbers = _line_numbers(newlines, np.flatnonzero(raw == 43))  # "+": international phone numbers
    squeezed = data.translate(_DIGIT_MAP, _DIGIT_SEPARATORS)
    runs = list(map(re.Match.start, _TEN_DIGITS.finditer(squeezed)))  # a literal: searched, not tried
    if runs:
        squeezed_newlines = np.flatnonzero(np.frombuffer(squeezed, np.uint8) == 10)
        numbers |= _line_numbers(squeezed_newlines, np.array(runs))
    if wide_from is not None:  # digits of other scripts count too
        numbers |= _line_numbers(newlines, _wide_digit_positions(data, wide_from))
    # An IPv4 address holds a dot before an ASCII digit, an IPv6 one two colons at most five bytes apart.
    dots = np.flatnonzero((raw[:-1] == 46) & (raw[1:] >= 48) & (raw[1:] <= 57))
    colons = np.flatnonzero(raw == 58)
    ip = _line_numbers(newlines, np.concatenate([dots, colons[1:][np.diff(colons) <= 5]]))
    candidates = email | numbers | ip
    if not candidates:
        return chars
    # Only the candidate lines are cut out of the bytes and decoded, as one text with the IP lines first: no finding
    # spans a line, so each pattern runs once over that text instead of once a line, and the IP one over its start.
    bounds = np.concatenate([[-1], newlines, [len(data)]])

    def cut(picked: set[int]) -> str:
        lines = np.array(sorted(picked))
        slices = map(slice, (bounds[lines] + 1).tolist(), bounds[lines + 1].tolist())
        return b"\n".join(map(data.__getitem__, slices)).decode("utf-8", "surrogatepass")

    ip_text = cut(ip) if ip else ""
    rest = candidates - ip
    text = f"{ip_text}\n{cut(rest)}" if ip and rest else ip_text or cut(rest)
    _count_text(text, len(ip_text), counts)
    return chars


# The digits a run needs to hold an ID (17 and a check character) or a card.
_FEWEST_DIGITS = {"cn_resident_id": 17, "bank_card": 13}


def _count_text(text: str, ip_end: int, counts: dict[str, int]) -> None:
    """Count ``findings`` of the lines of ``text``, the IP addresses only in ``text[:ip_end]``, running each
    pattern only where it may match.

    A number kind needs ten digits (separators left out), a "+" or a digit of another script in its line, which
    is what picked the line, so the number kinds may run over every line picked: on a line picked for an "@" or an
    IP address alone they find nothing."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    ascii_codes = np.minimum(codes, 127).astype(np.intp)  # 127 is in none of the tables; an index type: faster
    claimed: list[tuple[int, int]] = []  # sorted spans of earlier kinds
    # An address's local part is the whole run of its characters before the "@" (the pattern's lookbehind refuses
    # to start inside such a run, and the run stops at a newline), so each "@" has one possible start: matched
    # exactly there.
    ats = np.flatnonzero(codes == 64)
    if len(ats):
        others = np.concatenate([[-1], np.flatnonzero(~_LOCAL_CHARS[ascii_codes])])  # each "@" among them
        end = 0
        for at, start in zip(ats.tolist(), (others[np.searchsorted(others, ats) - 1] + 1).tolist(), strict=True):
            if at - start <= 64 and start >= end and (address := _EMAIL.match(text, start)):
                end = address.end()
                claimed.append(address.span())
                counts["email"] += 1
    windows = _number_windows(codes, ascii_codes)
    for kind, pattern in _PATTERNS[1:4]:
        found = []
        fewest = _FEWEST_DIGITS.get(kind, 0)
        for start, end, digit_count in windows:
            if digit_count < fewest:
                continue
            match = pattern.search(text, start, end)  # search by search: a finditer costs more per window
            while match is not None:
                span = match.span()
                if not (claimed and _overlaps(claimed, *span)) and _accept(kind, match.group()):
                    found.append(span)
                    counts[kind] += 1
                match = pattern.search(text, span[1], end)
        if found:
            claimed = sorted(claimed + found)
    for match in _IP.finditer(text, 0, ip_end):
        span = match.span()
        if not (claimed and _overlaps(claimed, *span)) and _accept("ip_address", match.group()):
            counts["ip_address"] += 1


def _number_windows(codes: np.ndarray, ascii_codes: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, digits) of the runs of a text a number finding may lie in, one character of context either
    side (all a pattern looks at); ``codes``: the text's code points, ``ascii_codes``: those below 128, the others
    127.

    Every number kind consumes only digits, X, spaces and ().+-, so each finding lies in a run of them, and holds a
    "+" or ten digits: other runs are left out. Found with array operations on the code points, not a pattern
    tried at every character."""
    digit = codes - np.uint32(48) <= 9  # unsigned: code points below "0" wrap past 9
    member = _NUMBER_CHARS[ascii_codes]
    beyond = np.flatnonzero(codes > 127)
    if len(beyond):
        digit[beyond] = member[beyond] = _wide_digit_table()[codes[beyond]]
    edges = np.flatnonzero(np.diff(member, prepend=False, append=False))
    starts, ends = edges[::2], edges[1::2]
    # most runs are a space between words: those shorter than ten characters are left out unless they hold a "+"
    keep = ends - starts >= 10
    pluses = np.flatnonzero(codes == 43)
    if len(pluses):
        keep[np.searchsorted(starts, pluses, "right") - 1] = True  # every "+" is in a run
    starts, ends = starts[keep], ends[keep]
    digits = np.flatnonzero(digit)
    digit_count = np.searchsorted(digits, ends) - np.searchsorted(digits, starts)
    has_plus = np.searchsorted(pluses, ends) > np.searchsorted(pluses, starts)
    keep = (digit_count >= 10) | (has_plus & (digit_count > 0))
    starts, ends, digit_count = starts[keep], ends[keep], digit_count[keep]
    return list(
        zip(
            np.maximum(starts - 1, 0).tolist(),
            np.minimum(ends + 1, len(codes)).tolist(),
            digit_count.tolist(),
            strict=True,
        )
    )


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
