"""JSON Lines records whose shape changes along the file profile exactly as records read one at a time would.

The profiler decodes the blocks after the first straight into the flat shape it saw (``profiler._Shape``); a block
that does not fit (a new key, another kind of value, a nested value, a line that does not parse) is decoded as
dicts; a line holding two records, either way, is one line that does not parse. Whichever way a block was read,
its counts must be the same, checked here against a plain reading of every record."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from typing import Any

from catalog.inspection import formats, pii, profiler
from tests.inspection.test_inspection import luhn_card

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object", list: "array"}


def record(i: int, rng: random.Random) -> dict[str, Any] | str:
    """Uniform for the first 20,000 records (well past the first block), then drifting."""
    text = f"record {i} " + "lorem ipsum " * rng.randrange(1, 4)
    if i % 7 == 0:
        text += f" mail me{i}@example.org"
    if i % 11 == 0:
        text += f" call 139{i:08d}"
    out: dict[str, Any] = {"id": i, "text": text, "note": None, "score": i / 3, "ok": i % 2 == 0}
    if i == 15_001:  # two records on one line, in a block read in the shape: one line that does not parse
        return f"{json.dumps(out)},{json.dumps(out)}"
    if i < 20_000:
        return out
    phase = (i // 3_000) % 6
    if phase == 0:
        out["note"] = 13_900_000_000 + i  # a number where only nulls were: a phone held as an integer
    elif phase == 1:
        out["extra"] = f"card {luhn_card(f'4{i:014d}')}"  # a key the shape does not know
    elif phase == 2:
        out["score"] = i  # an integer where numbers were
    elif phase == 3:
        out["note"] = {"nested": f"10.0.0.{i % 250 + 1}"}
    elif phase == 4:
        del out["text"]  # an absent field is a null
        out["ok"] = None
    elif i % 500 == 0:
        return '{"id": broken'  # a line that does not parse
    return out


def parsed(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return line  # counted as a text record


def expected(lines: list[str]) -> dict[str, Any]:
    records = list(map(parsed, lines))
    present: Counter[str] = Counter()
    kinds: dict[str, set[str]] = {}
    counts = dict.fromkeys(pii.KINDS, 0)
    for value in records:
        for text in formats.strings_of(value):
            for kind, _, _ in pii.findings(text):
                counts[kind] += 1
        if not isinstance(value, dict):
            continue
        for key, field in value.items():
            kinds.setdefault(key, set())
            if field is not None:
                present[key] += 1
                kinds[key].add(_JSON_TYPES[type(field)])
    types = {}
    for key, seen in kinds.items():
        types[key] = "number" if seen == {"integer", "number"} else seen.pop() if len(seen) == 1 else "mixed"
    return {
        "records": len(records),
        "distinct": len(set(lines)),
        "fields": {k: (types[k], round((len(records) - present[k]) / len(records), 6)) for k in kinds},
        "pii": counts,
        "invalid": sum(isinstance(r, str) for r in records),
    }


def test_records_of_a_changing_shape_count_as_read_one_by_one() -> None:
    rng = random.Random(3)
    lines = []
    for i in range(40_000):
        value = record(i, rng)
        lines.append(value if isinstance(value, str) else json.dumps(value))
        if i % 40 == 0:
            lines.append(lines[-1])  # an exact repeat
    data = ("\n".join(lines) + "\n").encode()
    assert len(data) > 3 * formats.BLOCK  # several blocks: the first learns the shape, the rest use it or not
    truth = expected(lines)

    profile = profiler.profile(io.BytesIO(data), "drift.jsonl", len(data))

    assert profile.records == truth["records"]
    assert profile.invalid_records == truth["invalid"] > 0
    assert profile.duplicates.exact_rate == round(1 - truth["distinct"] / truth["records"], 6)
    assert {f.name: (f.type, f.null_rate) for f in profile.fields} == truth["fields"]
    assert truth["fields"]["note"][0] == "mixed"
    assert truth["fields"]["score"][0] == "number"
    assert profile.pii == truth["pii"]
    assert all(truth["pii"][kind] > 0 for kind in ("email", "phone", "bank_card", "ip_address"))


def test_the_characters_behind_the_token_estimate_are_those_of_the_records_texts() -> None:
    """Integers of fewer than ten digits are counted without being scanned for personal data; the characters the
    token estimate scales by stay those of the records' texts."""
    records = [{"id": i * 7919 ** (i % 5), "text": f"t{i}", "n": -i} for i in range(1, 3000)]  # small and large
    state = profiler._Profile()
    state.add(records, [json.dumps(r).encode() for r in records], fields=True)
    assert state.all_chars == sum(len(profiler._record_text(r)) for r in records)
