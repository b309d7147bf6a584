"""The fast personal-data count finds exactly what scanning each text with every pattern finds."""

from __future__ import annotations

import random

from catalog.inspection import pii
from tests.inspection.test_inspection import luhn_card, resident_id

ATOMS = [
    *"0123456789" * 6,
    *" ().-+@:xX_%aAfFz\n",
    "\uff11",  # fullwidth one: \d matches it
    "\u0663",  # Arabic-Indic three
    "中",
    "，",  # noqa: RUF001 - fullwidth comma, shares its first UTF-8 bytes with fullwidth digits
    "é",
    "\ud800",  # a lone surrogate: the scan encodes with surrogatepass and must count as the patterns do
    ".com",
    "@example.org",
    "::",
    "192.168.",
    "+86 ",
    "(555) ",
]


def one_text(rng: random.Random) -> str:
    parts = [rng.choice(ATOMS) for _ in range(rng.randrange(0, 60))]
    for _ in range(rng.randrange(0, 3)):  # whole findings, some with a bad check digit, in random context
        parts.insert(
            rng.randrange(len(parts) + 1),
            rng.choice(
                [
                    resident_id(f"11010519{rng.randrange(50, 99)}{rng.randrange(1, 13):02d}{rng.randrange(10, 29)}123"),
                    luhn_card(f"4{rng.randrange(10**14):014d}"),
                    f"{rng.randrange(10**17, 10**18)}",
                    f"writer{rng.randrange(100)}@mail.example.com",
                    f"138{rng.randrange(10**8):08d}",
                    f"10.{rng.randrange(300)}.0.{rng.randrange(300)}",
                    "fe80::1",
                ]
            ),
        )
    return "".join(parts)


def test_fast_count_matches_findings_of_every_text() -> None:
    rng = random.Random(16)
    seen = dict.fromkeys(pii.KINDS, 0)
    for _ in range(3000):
        texts = [one_text(rng) for _ in range(rng.randrange(1, 8))]
        fast = dict.fromkeys(pii.KINDS, 0)
        assert pii.count_into(texts, fast) == sum(map(len, texts))  # the characters it scanned
        slow = dict.fromkeys(pii.KINDS, 0)
        for text in texts:
            for kind, _, _ in pii.findings(text):
                slow[kind] += 1
        assert fast == slow, texts
        for kind, count in slow.items():
            seen[kind] += count
    assert all(count > 50 for count in seen.values()), seen  # every kind was exercised
