"""What makes two file paths of a version the same file on a buyer's disk, and which paths could mislead.

Paths are stored in NFC. Two paths collide when they are equal after NFKC and case folding: on a
case-insensitive file system (macOS, Windows) or after a tool normalises them, one would overwrite the other.
"""

from __future__ import annotations

import unicodedata

# Characters that reorder or hide text: a name shown as "invoice_fdp.exe" may be "invoice_\u202eexe.pdf".
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def path_key(path: str) -> str:
    """The form two paths of one version may not share: NFKC, then case folded (then NFKC again, as
    case folding can leave a string that is not NFKC)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", path).casefold())


def misleading(path: str) -> str | None:
    """Why a path (already NFC) could escape the version or show a different name than it has, else None."""
    if any(c in BIDI_CONTROLS or unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") for c in path):
        return "must not contain control, bidirectional-override, private-use or unassigned characters"
    compatible = unicodedata.normalize("NFKC", path)
    if compatible != path:
        # Lookalikes such as two U+2024 ONE DOT LEADERs or a U+FF0F FULLWIDTH SOLIDUS become ".." or a new
        # separator once a tool applies NFKC.
        segments = compatible.replace("\\", "/").split("/")
        if compatible.startswith("/") or any(segment in ("", ".", "..") for segment in segments):
            return "must not contain characters that read as '/', '\\', '.' or '..' once normalised (NFKC)"
        if len(segments) != path.count("/") + 1:
            return "must not contain characters that read as '/' or '\\' once normalised (NFKC)"
    return None
