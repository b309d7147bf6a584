"""Licence terms as data: SPDX validation, the ODRL 2.2 policy, and the combined licence check."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any

from app.errors import invalid
from licensing.licences.models import DUTIES, USES

ODRL_CONTEXT = "http://www.w3.org/ns/odrl.jsonld"
AI_PROFILE = "https://corpora.dev/odrl/ai-use"
# Uses that put the corpus, or something derived from it, into other hands: where share-alike bites.
DISTRIBUTING_USES = frozenset(
    {"redistribution", "derivative_datasets", "open_weights_release", "synthetic_data_generation"}
)
_DUTY_ACTIONS = {
    "attribution": "odrl:attribute",
    "share_alike": "cc:ShareAlike",
    "usage_reporting": "odrl:inform",
    "delete_on_termination": "odrl:delete",
}


@functools.cache
def _spdx() -> Any:
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


def validate_spdx(expression: str, field: str = "spdx") -> str:
    """A valid SPDX licence expression, normalised; ``LicenseRef-…`` ids stand for custom licences."""
    has_refs = re.search(r"LicenseRef-[\w.-]+", expression) is not None
    # LicenseRef ids are free-form by design; check the expression's shape with a known id in their place.
    checked = re.sub(r"LicenseRef-[\w.-]+", "MIT", expression)
    try:
        parsed = _spdx().parse(checked, validate=True, strict=True)
    except Exception as exc:  # the library raises several unrelated types for malformed input
        raise invalid(field, f"'{expression}' is not a valid SPDX expression: {exc}") from None
    if parsed is None:
        raise invalid(field, "the licence expression is empty")
    return expression.strip() if has_refs else str(parsed)


def odrl_policy(licence: dict[str, Any], base_url: str) -> dict[str, Any]:
    """An ODRL 2.2 ``Set`` policy: the AI uses as actions of a profile, duties attached to each permission,
    the uses the licence does not grant as prohibitions, and territories as a spatial constraint."""
    uid = f"{base_url}/api/v1/licences/{licence['id']}/odrl"
    constraints = (
        [{"leftOperand": "spatial", "operator": "isAnyOf", "rightOperand": licence["territories"]}]
        if licence["territories"]
        else []
    )
    duties = [{"action": _DUTY_ACTIONS[d]} for d in licence["duties"] if d in _DUTY_ACTIONS]
    permissions = []
    for use in licence["uses"]:
        permission: dict[str, Any] = {"target": uid.removesuffix("/odrl"), "action": f"ai:{use}"}
        if constraints:
            permission["constraint"] = constraints
        if duties:
            permission["duty"] = duties
        permissions.append(permission)
    return {
        "@context": [ODRL_CONTEXT, {"ai": f"{AI_PROFILE}#", "cc": "http://creativecommons.org/ns#"}],
        "@type": "Set",
        "uid": uid,
        "profile": AI_PROFILE,
        "dc:title": licence["name"],
        "dc:source": licence.get("url"),
        "spdx": licence.get("spdx"),
        "permission": permissions,
        "prohibition": [
            {"target": uid.removesuffix("/odrl"), "action": f"ai:{use}"} for use in USES if use not in licence["uses"]
        ],
    }


@dataclasses.dataclass(frozen=True, slots=True)
class CheckItem:
    """One corpus version in a combination, with the terms of its licence."""

    product: str
    version: str
    title: str
    provider: str
    licence_id: str
    uses: frozenset[str]
    duties: frozenset[str]
    territories: frozenset[str]


@dataclasses.dataclass(slots=True)
class ItemVerdict:
    product: str
    version: str
    licence_id: str
    allowed: bool
    reason: str
    duties: list[str]


@dataclasses.dataclass(slots=True)
class CheckResult:
    allowed: bool
    items: list[ItemVerdict]
    duties: dict[str, Any]
    conflicts: list[str]


def check(items: Sequence[CheckItem], use: str, territory: str | None) -> CheckResult:
    """Whether the combination may be used for ``use`` in ``territory``, item by item, with the duties that
    accumulate and the conflicts between the items' terms."""
    verdicts: list[ItemVerdict] = []
    for item in items:
        if use not in item.uses:
            allowed, reason = False, f"{item.licence_id} does not permit {use}"
        elif territory and item.territories and territory not in item.territories:
            allowed, reason = False, f"{item.licence_id} applies only in {', '.join(sorted(item.territories))}"
        else:
            allowed, reason = True, f"{item.licence_id} permits {use}"
        duties = sorted(item.duties, key=DUTIES.index)
        verdicts.append(ItemVerdict(item.product, item.version, item.licence_id, allowed, reason, duties))
    conflicts = _conflicts(items, use)
    share_alike = [f"{i.product}@{i.version} ({i.licence_id})" for i in items if "share_alike" in i.duties]
    return CheckResult(
        allowed=all(v.allowed for v in verdicts) and not conflicts,
        items=verdicts,
        duties={
            "attribution": [
                {
                    "product": i.product,
                    "version": i.version,
                    "title": i.title,
                    "provider": i.provider,
                    "licence": i.licence_id,
                }
                for i in items
                if "attribution" in i.duties
            ],
            "share_alike": share_alike,
            "usage_reporting": sorted({f"{i.product}@{i.version}" for i in items if "usage_reporting" in i.duties}),
            "delete_on_termination": sorted(
                {f"{i.product}@{i.version}" for i in items if "delete_on_termination" in i.duties}
            ),
        },
        conflicts=conflicts,
    )


def _conflicts(items: Sequence[CheckItem], use: str) -> list[str]:
    if use not in DISTRIBUTING_USES:
        return []
    conflicts: list[str] = []
    copyleft = sorted({i.licence_id for i in items if "share_alike" in i.duties})
    if len(copyleft) > 1:
        conflicts.append(
            f"share-alike licences {', '.join(copyleft)} each require what is derived to carry their own terms"
        )
    if copyleft:
        for item in items:
            if "share_alike" not in item.duties and not {"redistribution", "derivative_datasets"} <= item.uses:
                conflicts.append(
                    f"{item.product}@{item.version} ({item.licence_id}) forbids redistribution or derivatives, but "
                    f"share-alike terms ({', '.join(copyleft)}) require the combination to be shared under them"
                )
    return conflicts
