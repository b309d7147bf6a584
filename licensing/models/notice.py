"""The attribution NOTICE of a model: every trained corpus whose licence carries the ``attribution`` duty."""

from __future__ import annotations

from collections.abc import Mapping

from licensing.models.schemas import ModelOut
from licensing.models.summary import VersionContext


def render(model: ModelOut, contexts: Mapping[tuple[str, str], VersionContext]) -> str:
    """Plain text, one block per corpus version, in the order of the licence check's attribution duty."""
    attributed = {(a["product"], a["version"]) for a in model.verdict.duties.get("attribution", [])}
    lines = [f"NOTICE for {model.name} {model.version} ({model.org})", ""]
    blocks = 0
    for item in model.items:
        key = (item.product, item.version)
        if key not in attributed:
            continue
        attributed.discard(key)  # one block per version, whatever the uses it trained
        context = contexts[key]
        licence = item.licence_terms
        lines += [
            f"{context.title} ({item.product} {item.version})",
            f"  Provided by: {context.provider}",
            f"  Licence: {licence.name} ({item.licence})" + (f" <{licence.url}>" if licence.url else ""),
        ]
        for source in context.provenance.get("sources") or []:
            holder = source.get("rights_holder")
            lines.append(f"  Source: {source.get('name', '')}" + (f", (c) {holder}" if holder else ""))
        lines += [f"  Corpus digest: {item.manifest_digest}", ""]
        blocks += 1
    if not blocks:
        lines += ["No licence of the training data requires attribution.", ""]
    return "\n".join(lines)
