"""``corpora pull``: download the files of a licensed corpus version, over the HTTP API.

The client finds the caller's entitlement for the product (or takes ``--entitlement``), asks for a download
manifest (one metered grant per file, charged a batch of ``GRANT_BATCH`` files at a time, the next batch
asked for while the previous one downloads), then downloads the files in parallel, each into ``<file>.part``
and renamed once its SHA-256 matches the version's manifest.

- Files already complete (same size and SHA-256) are skipped without asking for a grant: nothing is charged.
- An interrupted pull resumes: a ``.part`` file continues from its size with an HTTP ``Range`` request, under
  the grant it was started with while that grant's window lasts. Expired URLs are renewed with
  ``POST /downloads/refresh``, which charges nothing.
- Receipts (Ed25519 JWS, the proof of lawful acquisition) are kept beside the data, each in its download's entry
  of ``DIR/.corpora/receipts.json``: one file for any number of downloads, not a file each (creating a file costs
  more than a small file's transfer). Until a run ends they are in its journal ``receipts.journal``, written a
  batch at a time before any of the batch is downloaded, and folded into the index when the run ends (or by the
  next run, after a crash).
- Presigned URLs go straight to the object store, without the API token; proxy URLs (``CORPORA_DOWNLOAD_MODE=
  proxy``) are the API's own and carry it.

This module imports neither Litestar nor the service, nor the catalogue: it is a plain HTTP client (httpx for
the API, urllib3 for the transfers), driven by ``app.cli`` and usable from scripts through :func:`pull`. Only the
standard library is imported at module level, so registering the command keeps ``corpora --help`` fast.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import fnmatch
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from client.push import human_size, sha256_file
from client.receipts import ReceiptInvalid, ReceiptVerifier

if TYPE_CHECKING:
    import httpx
    from tqdm import tqdm

CHUNK = 1024 * 1024
DEFAULT_API = "http://127.0.0.1:8000"
DEFAULT_PARALLEL = 4
RETRIES = 5
GRANT_BATCH = 100  # files granted per manifest request: the first downloads start while later ones are granted
GRANTS_IN_FLIGHT = 3  # manifest requests at once: the server grants some while the client checks receipts of others
URL_MARGIN = dt.timedelta(seconds=30)  # renew a URL expiring sooner than this before using it
STATE_DIR = ".corpora"
DOWNLOADER_ROLES = ("owner", "admin", "member")


class PullError(Exception):
    """A failure the user can act on: ``str()`` says what happened and what to do next."""


class Refusal(PullError):
    """The licence said no (quota, expiry, revocation, purpose, withdrawal): running again will not help."""


class _Stopped(Exception):
    pass


# --- results ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PullReport:
    product: str
    version: str
    out: Path
    entitlement_id: str | None = None
    files_selected: int = 0
    files_skipped: int = 0  # already complete with the right SHA-256: no grant asked for
    files_downloaded: int = 0
    files_failed: int = 0
    bytes_downloaded: int = 0  # bytes received by this run
    bytes_resumed: int = 0  # bytes of .part files this run continued from
    grants_new: int = 0  # charged by this run
    grants_reused: int = 0  # grants of an earlier run, still in their window: not charged again
    refreshes: int = 0
    seconds: float = 0.0
    failures: list[str] = dataclasses.field(default_factory=list)
    refusal: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and self.refusal is None and self.files_failed == 0

    def describe(self) -> str:
        rate = self.bytes_downloaded / self.seconds / 2**20 if self.seconds > 0 else 0.0
        text = (
            f"{self.product}@{self.version} → {self.out}: {self.files_downloaded} file(s) downloaded "
            f"({human_size(self.bytes_downloaded)}{f', {rate:.1f} MiB/s' if self.bytes_downloaded else ''}), "
            f"{self.files_skipped} already complete"
        )
        if self.bytes_resumed:
            text += f", {human_size(self.bytes_resumed)} resumed"
        text += f"; {self.grants_new} new grant(s)"
        if self.grants_reused:
            text += f", {self.grants_reused} reused"
        if self.files_failed:
            text += f", {self.files_failed} FAILED"
        return text


def _when(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- the API ------------------------------------------------------------------------------------------------


def normalise_api(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    return url.removesuffix("/api/v1")


def problem_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text[:300]}
    return body if isinstance(body, dict) else {"detail": str(body)[:300]}


def _remaining(problem: dict[str, Any]) -> str:
    downloads, size = problem.get("downloads_remaining"), problem.get("bytes_remaining")
    count = "unlimited downloads" if downloads is None else f"{downloads} download(s)"
    volume = "unlimited bytes" if size is None else f"{human_size(size)} ({size} bytes)"
    return f"{count} and {volume} remain"


def explain(response: httpx.Response, what: str) -> PullError:
    """Turn an error answer of the API into a message that says what happened and what to do next."""
    problem = problem_of(response)
    kind, detail, status = str(problem.get("type") or ""), str(problem.get("detail") or ""), response.status_code
    if status == 401:
        return PullError(
            f"{what}: the token was refused ({detail or 'expired or revoked'}). Access tokens live 15 minutes: get "
            "a fresh one with POST /api/v1/auth/token, or use an API key with the 'downloads' scope, and pass it "
            "with --token or CORPORA_TOKEN."
        )
    if kind == "quota-exceeded":
        return Refusal(
            f"{what}: quota exceeded — {detail}. Now {_remaining(problem)}. Narrow the files with --include, or ask "
            "the provider for a larger quota."
        )
    if kind == "entitlement-inactive":
        return Refusal(
            f"{what}: the entitlement cannot be used — {detail}. Obtain a new licence (POST /api/v1/orders)."
        )
    if kind == "purpose-not-permitted":
        permitted = ", ".join(problem.get("permitted_purposes") or []) or "none"
        return Refusal(f"{what}: purpose not permitted — {detail}. Permitted purposes: {permitted}.")
    if kind == "version-withdrawn":
        return Refusal(f"{what}: {detail}. Withdrawn versions are no longer delivered.")
    if kind == "version-not-covered":
        latest = problem.get("latest_version")
        return Refusal(f"{what}: {detail}." + (f" Pull {latest} instead." if latest else ""))
    if kind == "grant-expired":
        return PullError(f"{what}: {detail}. Run pull again: it asks for a new grant (charged again).")
    if status == 403:
        return PullError(f"{what}: forbidden ({detail}). An API key needs the 'downloads' scope.")
    if status == 404:
        return PullError(f"{what}: not found ({detail}).")
    if status in (429, 502, 503, 504):
        return PullError(f"{what}: the server is unavailable ({status}: {detail}). Try again in a moment.")
    return PullError(f"{what}: refused ({status} {kind}: {detail}).")


class Api:
    """The API calls pull needs, retrying transient failures (connection errors, 502/503/504)."""

    def __init__(self, base: str, token: str, *, timeout: float = 60) -> None:
        import httpx

        self.base = normalise_api(base)
        self.token = token
        self.client = httpx.Client(
            base_url=self.base + "/api/v1",
            headers={"Authorization": f"Bearer {token}", "User-Agent": "corpora-pull"},
            timeout=httpx.Timeout(timeout, connect=10),
        )

    def close(self) -> None:
        self.client.close()

    def call(
        self,
        method: str,
        url: str,
        what: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        anonymous: bool = False,
    ) -> Any:
        import httpx

        delay = 0.5
        for attempt in range(RETRIES + 1):
            try:
                request = self.client.build_request(method, url, json=json_body, params=params)
                if anonymous:  # a public document: the token goes nowhere it is not needed
                    del request.headers["Authorization"]
                response = self.client.send(request)
            except httpx.TransportError as exc:
                if attempt == RETRIES:
                    raise PullError(
                        f"{what}: cannot reach the API at {self.base} ({type(exc).__name__}: {exc}). Is the server "
                        "running? Set the address with --api or CORPORA_API_URL."
                    ) from None
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                if response.status_code not in (502, 503, 504) or attempt == RETRIES:
                    raise explain(response, what)
                with contextlib.suppress(ValueError):
                    delay = max(delay, min(float(response.headers.get("retry-after", "")), 30))
            time.sleep(delay)
            delay = min(delay * 2, 30)
        raise AssertionError("unreachable")

    def jwks(self) -> dict[str, Any]:
        """The platform's public signing keys, which verify download receipts."""
        keys: dict[str, Any] = self.call(
            "GET", self.base + "/.well-known/jwks.json", "reading the platform's keys", anonymous=True
        )
        return keys

    def version(self, slug: str, version: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call(
            "GET", f"/products/{quote(slug)}/versions/{quote(version)}", f"reading {slug}@{version}"
        )
        return found

    def entitlements(self, slug: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params = {"product": slug, "limit": "100"}
        while True:
            page = self.call("GET", "/entitlements", f"listing your entitlements for {slug}", params=params)
            items += page["items"]
            if not page.get("next_cursor"):
                return items
            params = {**params, "cursor": page["next_cursor"]}


# --- choosing the entitlement -------------------------------------------------------------------------------


def _usable(entitlement: dict[str, Any], purpose: str, now: dt.datetime) -> str | None:
    """Why ``entitlement`` cannot be used for ``purpose`` now, or ``None``."""
    ident = f"entitlement {entitlement['id']}"
    status, reason = entitlement["status"], entitlement.get("status_reason")
    valid_from, valid_until = _when(entitlement.get("valid_from")), _when(entitlement.get("valid_until"))
    if status == "revoked":
        return f"{ident} was revoked" + (f": {reason}" if reason else "")
    if status == "suspended":
        return f"{ident} is suspended" + (f": {reason}" if reason else "")
    if status == "expired" or (valid_until is not None and valid_until <= now):
        return f"{ident} expired on {valid_until:%Y-%m-%d %H:%M} UTC" if valid_until else f"{ident} expired"
    if status != "active":
        return f"{ident} is {status}"
    if valid_from is not None and now < valid_from:
        return f"{ident} is valid only from {valid_from:%Y-%m-%d %H:%M} UTC"
    if purpose not in entitlement["purposes"]:
        return (
            f"{ident} does not permit the purpose '{purpose}'; permitted purposes: "
            f"{', '.join(entitlement['purposes']) or 'none'}"
        )
    return None


def choose_entitlement(api: Api, slug: str, purpose: str, wanted: str | None) -> dict[str, Any]:
    """The entitlement to download under: ``wanted``, or the caller's active one for ``slug`` and ``purpose``."""
    now = _now()
    if wanted:
        found: dict[str, Any] = api.call("GET", f"/entitlements/{quote(wanted)}", f"reading entitlement {wanted}")
        if found["product"] != slug:
            raise PullError(f"entitlement {wanted} is for '{found['product']}', not '{slug}'")
        problem = _usable(found, purpose, now)
        if problem is not None:
            raise Refusal(problem + ".")
        return found
    candidates = api.entitlements(slug)
    try:
        me = api.call("GET", "/me", "reading your organisations")
        mine = {o["slug"] for o in me["orgs"] if o["role"] in DOWNLOADER_ROLES}
        # Providers also see the entitlements granted on their products: only the caller's own org's count.
        candidates = [e for e in candidates if e["buyer_org"] in mine]
    except PullError:
        pass  # e.g. an API key confined to one organisation: the list is already the caller's
    if not candidates:
        raise Refusal(
            f"you hold no entitlement for '{slug}'. Obtain one first: see its offers (GET /api/v1/products/{slug}/"
            "offers) and order (POST /api/v1/orders)."
        )
    usable = [e for e in candidates if _usable(e, purpose, now) is None]
    if not usable:
        reasons = "; ".join(str(_usable(e, purpose, now)) for e in candidates)
        raise Refusal(f"no entitlement for '{slug}' can be used for '{purpose}': {reasons}.")

    def preference(e: dict[str, Any]) -> tuple[bool, float, str]:
        quota = e["quota"]
        downloads = (
            float("inf") if quota["downloads_limit"] is None else quota["downloads_limit"] - quota["downloads_used"]
        )
        return (e["versions"] == "all", downloads, e["valid_until"])

    return max(usable, key=preference)


def check_quota(entitlement: dict[str, Any], files: int, size: int) -> None:
    """Refuse before asking for anything when the entitlement's quota cannot cover ``files`` and ``size``."""
    quota = entitlement["quota"]
    downloads = None if quota["downloads_limit"] is None else quota["downloads_limit"] - quota["downloads_used"]
    left = None if quota["bytes_limit"] is None else quota["bytes_limit"] - quota["bytes_used"]
    if (downloads is not None and downloads < files) or (left is not None and left < size):
        remaining = _remaining({"downloads_remaining": downloads, "bytes_remaining": left})
        raise Refusal(
            f"quota exceeded: this pull needs {files} download(s) and {human_size(size)} ({size} bytes); "
            f"on entitlement {entitlement['id']} {remaining}. Nothing was charged. Narrow the files with "
            "--include, or ask the provider for a larger quota."
        )


# --- local state --------------------------------------------------------------------------------------------


def path_problem(path: str) -> str | None:
    """Why a path of the version cannot be written under the output directory, or ``None``."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(p in ("", ".", "..") for p in path.split("/")):
        return "is not a relative path inside the version"
    if "\\" in path or "\x00" in path:
        return "contains a backslash or NUL"
    if pure.parts[0] == STATE_DIR:
        return f"falls inside {STATE_DIR}/, where pull keeps its receipts"
    return None


class State:
    """``DIR/.corpora``: the receipts of every grant, and digests of completed files (keyed by size and mtime)."""

    def __init__(self, out: Path, receipts: ReceiptVerifier) -> None:
        self.verifier = receipts
        self.dir = out / STATE_DIR
        self.index = self.dir / "receipts.json"
        # Each grant and completion is appended here as one line the moment it happens, so an interrupted run
        # loses nothing; ``save`` folds the journal into the index. Rewriting the whole index per file would
        # cost time quadratic in the number of files.
        self.journal = self.dir / "receipts.journal"
        self.lock = threading.Lock()
        self._journal: IO[str] | None = None  # open for appending while the run writes to it
        self.downloads: dict[str, dict[str, Any]] = {}
        self.verified: dict[str, list[Any]] = {}
        self._open: dict[tuple[str, ...], dict[str, Any]] | None = None  # uncompleted grants, built on first use
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            data = json.loads(self.index.read_text())
            if isinstance(data, dict):
                self.downloads = {str(d["download_id"]): d for d in data.get("downloads") or []}
                self.verified = dict(data.get("verified") or {})
        with contextlib.suppress(OSError):
            for line in self.journal.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    self._apply(json.loads(line))

    def _apply(self, change: dict[str, Any]) -> None:
        if "grant" in change:
            entry = change["grant"]
            earlier = self.downloads.get(str(entry["download_id"]), {})
            # The first receipt of a grant is kept. An older pull journaled the JWS beside the grant, whose "receipt"
            # named the file it meant to write; its index's entries name files it wrote.
            receipt = earlier.get("receipt") or change.get("jws") or entry["receipt"]
            self.downloads[str(entry["download_id"])] = {**earlier, **entry, "receipt": receipt}
        else:
            self.downloads[change["completed"]]["completed_at"] = change["at"]
            self.verified[change["path"]] = change["verified"]

    def _append(self, *changes: dict[str, Any]) -> None:
        """Apply ``changes`` and journal them (the caller holds the lock). Flushed at once: a process killed
        afterwards loses none of them."""
        for change in changes:
            self._apply(change)
        if self._journal is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._journal = self.journal.open("a")
        self._journal.write("".join(json.dumps(change, sort_keys=True) + "\n" for change in changes))
        self._journal.flush()

    def save(self) -> None:
        """Write the whole index, then empty the journal (the caller holds the lock)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {
            "version": 1,
            "downloads": sorted(self.downloads.values(), key=lambda d: (d["granted_at"], d["path"])),
            "verified": self.verified,
        }
        temporary = self.index.with_name(f".receipts.{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
        temporary.replace(self.index)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.journal.unlink(missing_ok=True)

    def record_grant(self, item: dict[str, Any], entitlement_id: str, purpose: str) -> None:
        self.record_grants([item], entitlement_id, purpose)

    def record_grants(self, items: Sequence[dict[str, Any]], entitlement_id: str, purpose: str) -> None:
        """Keep the receipts of grants (new or refreshed) and index them, before any byte is downloaded; a receipt
        that does not verify against the platform's keys stops the pull."""
        for item in items:
            try:
                self.verifier.verify(item["receipt"], item)
            except ReceiptInvalid as exc:
                raise PullError(
                    f"the receipt of {item['path']} does not verify: {exc}. Nothing of it was downloaded; pull "
                    "again, and if it persists, the API at this address is not the platform that signs receipts."
                ) from None
        # Journaled with the grants, one write a batch: a file per receipt written now, while downloads run, cost
        # small files more than their transfer (each system call hands the interpreter lock between threads).
        with self.lock:
            self._append(*(self._grant_entry(item, entitlement_id, purpose) for item in items))

    def _grant_entry(self, item: dict[str, Any], entitlement_id: str, purpose: str) -> dict[str, Any]:
        earlier = self.downloads.get(str(item["download_id"]), {})
        return {
            "grant": {
                "download_id": str(item["download_id"]),
                "product": item["product"],
                "version": item["version"],
                "path": item["path"],
                "size": item["size"],
                "sha256": item["sha256"],
                "manifest_digest": item["manifest_digest"],
                "entitlement_id": entitlement_id,
                "purpose": purpose,
                "mode": item["mode"],
                "window_ends_at": item["window_ends_at"],
                "receipt": item["receipt"],
                "granted_at": earlier.get("granted_at") or _now().isoformat(),
                "completed_at": earlier.get("completed_at"),
            },
        }

    def complete(self, download_id: str, path: str, file: Path, sha256: str) -> None:
        stat = file.stat()
        with self.lock:
            verified = [stat.st_size, stat.st_mtime_ns, sha256]
            self._append({"completed": download_id, "at": _now().isoformat(), "path": path, "verified": verified})

    def mark_verified(self, path: str, file: Path, sha256: str) -> None:
        stat = file.stat()
        with self.lock:
            self.verified[path] = [stat.st_size, stat.st_mtime_ns, sha256]

    def is_complete(self, path: str, file: Path, size: int, sha256: str) -> bool:
        """Whether ``file`` holds the expected content (hashed unless unchanged since it was last verified)."""
        try:
            stat = file.stat()
        except OSError:
            return False
        if stat.st_size != size:
            return False
        if self.verified.get(path) == [stat.st_size, stat.st_mtime_ns, sha256]:
            return True
        if sha256_file(file) != sha256:
            return False
        self.mark_verified(path, file, sha256)
        return True

    def finish_part(self, path: str, file: Path, size: int, sha256: str) -> bool:
        """Move a ``.part`` file that is already whole and right into place (a run stopped just before that)."""
        part = file.with_name(file.name + ".part")
        try:
            if part.stat().st_size != size or sha256_file(part) != sha256:
                return False
        except OSError:
            return False
        os.replace(part, file)
        self.mark_verified(path, file, sha256)
        return True

    def reusable(
        self, slug: str, version: str, path: str, sha256: str, entitlement_id: str, purpose: str
    ) -> str | None:
        """A grant of an earlier run for this file, not completed and still in its window."""
        if self._open is None:
            self._open = {}
            for entry in sorted(self.downloads.values(), key=lambda d: str(d.get("granted_at"))):
                if not entry.get("completed_at"):
                    key = (entry["product"], entry["version"], entry["path"], entry["sha256"])
                    self._open[(*key, entry["entitlement_id"], entry["purpose"])] = entry  # the latest wins
        latest = self._open.get((slug, version, path, sha256, entitlement_id, purpose))
        soon = _now() + URL_MARGIN
        if latest is None or (_when(latest.get("window_ends_at")) or soon) <= soon:
            return None
        return str(latest["download_id"])


# --- progress -----------------------------------------------------------------------------------------------


class Progress:
    """A total bar and one bar per file in flight (tqdm, on stderr), or plain lines when bars are off."""

    def __init__(self, *, bars: bool, quiet: bool, out: IO[str]) -> None:
        self.bars = bars
        self.quiet = quiet
        self.out = out
        self.lock = threading.Lock()
        self.total: tqdm[Any] | None = None

    def start_total(self, total: int, initial: int, desc: str) -> None:
        if self.bars:
            from tqdm import tqdm

            self.total = tqdm(
                total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, position=0
            )

    def file_bar(self, path: str, size: int, initial: int) -> tqdm[Any] | None:
        if not self.bars:
            return None
        from tqdm import tqdm

        name = path if len(path) <= 40 else "…" + path[-39:]
        return tqdm(total=size, initial=initial, desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=False)

    def advance(self, bar: tqdm[Any] | None, n: int) -> None:
        if bar is not None:
            bar.update(n)
        if self.total is not None:
            self.total.update(n)

    def line(self, text: str, *, error: bool = False) -> None:
        if self.quiet and not error:
            return
        if self.bars:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)
        else:
            with self.lock:
                print(text, file=sys.stderr if error else self.out, flush=True)

    def close(self) -> None:
        if self.total is not None:
            self.total.close()
            self.total = None


# --- downloading --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Item:
    """One file to download under one grant."""

    path: str
    size: int
    sha256: str
    download_id: str
    url: str
    expires_at: dt.datetime
    mode: str


class Downloader:
    def __init__(self, api: Api, out: Path, state: State, progress: Progress, report: PullReport, parallel: int):
        import urllib3

        self.api = api
        self.out = out
        self.state = state
        self.progress = progress
        self.report = report
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.folders: set[Path] = set()  # made already
        # urllib3 for the transfers themselves: a 10 KiB GET from SeaweedFS cost 440-480 us of client CPU against
        # httpx's 620-810 (its URL parsing and cookie handling on every response), and 16 threads moved 1,900
        # files/s against 1,000-1,400.
        # No retries of its own: ``fetch`` retries, resuming. Presigned URLs carry their own signature: the API
        # token travels only with proxied downloads, to the API.
        self.pool = urllib3.PoolManager(
            maxsize=parallel * 2, block=False, retries=False, timeout=urllib3.Timeout(connect=10, read=120)
        )
        self.headers = {"User-Agent": "corpora-pull", "Accept-Encoding": "identity"}
        self.proxy_headers = {**self.headers, "Authorization": f"Bearer {api.token}"}

    def close(self) -> None:
        self.pool.clear()

    def _count(self, **amounts: int) -> None:
        with self.lock:
            for name, amount in amounts.items():
                setattr(self.report, name, getattr(self.report, name) + amount)

    def _refresh(self, item: Item) -> None:
        fresh = self.api.call("POST", f"/downloads/{item.download_id}/refresh", f"renewing the URL of {item.path}")
        item.url, item.expires_at = str(fresh["url"]), _when(fresh["expires_at"]) or _now()
        self._count(refreshes=1)

    def fetch(self, item: Item) -> None:
        """Download ``item`` into ``<file>.part`` (continuing what is there), verify it, and move it into place."""
        import httpx
        import urllib3

        final = self.out / item.path
        part = final.with_name(final.name + ".part")
        if part.parent not in self.folders:  # each a system call, which hands the interpreter lock around
            part.parent.mkdir(parents=True, exist_ok=True)
            self.folders.add(part.parent)
        hasher = hashlib.sha256()
        try:
            offset = part.stat().st_size
        except FileNotFoundError:
            offset = 0
        if offset > item.size:
            part.unlink()
            offset = 0
        if offset:
            with part.open("rb") as existing:
                while data := existing.read(CHUNK):
                    hasher.update(data)
            self._count(bytes_resumed=offset)
        bar = self.progress.file_bar(item.path, item.size, offset)
        delay, refreshed, problem = 0.5, False, ""
        try:
            for _attempt in range(RETRIES + 1):
                if offset >= item.size:
                    break
                if self.stop.is_set():
                    raise _Stopped
                if item.mode == "presigned" and item.expires_at - _now() < URL_MARGIN:
                    self._refresh(item)
                headers = self.proxy_headers if item.mode == "proxy" else self.headers
                if offset:
                    headers = {**headers, "Range": f"bytes={offset}-"}
                    if item.mode == "proxy":
                        headers["If-Range"] = f'"{item.sha256}"'
                try:
                    response = self.pool.request("GET", item.url, headers=headers, preload_content=False)
                    try:
                        status = response.status
                        if status == 206 and not response.headers.get("content-range", "").startswith(
                            f"bytes {offset}-"
                        ):
                            status = 0  # not the range asked for: start over
                        if status in (200, 206):
                            if status == 200 and offset:
                                offset, hasher = 0, hashlib.sha256()
                                self.progress.advance(bar, -part.stat().st_size)
                            with part.open("ab" if offset else "wb") as sink:
                                for data in response.stream(CHUNK, decode_content=False):
                                    if self.stop.is_set():
                                        raise _Stopped
                                    sink.write(data)
                                    hasher.update(data)
                                    offset += len(data)
                                    self._count(bytes_downloaded=len(data))
                                    self.progress.advance(bar, len(data))
                            continue
                        body = response.read(decode_content=True)
                    finally:
                        response.release_conn()
                    if status in (0, 416):  # the partial file is not a prefix the server recognises
                        problem = f"the server answered {response.status} to a resume"
                        part.unlink(missing_ok=True)
                        self.progress.advance(bar, -offset)
                        offset, hasher = 0, hashlib.sha256()
                        continue
                    if item.mode == "presigned" and status in (400, 403) and not refreshed:
                        # Expired (or otherwise refused) signature: a fresh URL, charged nothing.
                        self._refresh(item)
                        refreshed = True
                        continue
                    if item.mode == "proxy" and 400 <= status < 500:
                        answer = httpx.Response(status, headers=dict(response.headers), content=body)
                        raise explain(answer, f"downloading {item.path}")
                    problem = f"{status}: {body[:200].decode(errors='replace')}"
                    if status < 500:
                        break
                except urllib3.exceptions.HTTPError as exc:  # connecting, a timeout, a broken stream
                    problem = f"{type(exc).__name__}: {exc}"
                time.sleep(delay)
                delay = min(delay * 2, 20)
            if offset < item.size:
                raise PullError(
                    f"{item.path}: the download did not finish ({problem or 'interrupted'}); "
                    f"{human_size(offset)} of {human_size(item.size)} kept in {part.name}. Run pull again to resume."
                )
        finally:
            if bar is not None:
                bar.close()
        digest = hasher.hexdigest()
        if offset != item.size or digest != item.sha256:
            part.unlink(missing_ok=True)
            raise PullError(
                f"{item.path}: SHA-256 mismatch — expected {item.sha256}, got {digest} ({offset} bytes); the "
                "download was deleted. Run pull again to fetch it anew."
            )
        os.replace(part, final)
        self.state.complete(item.download_id, item.path, final, item.sha256)
        self._count(files_downloaded=1)
        self.progress.line(f"downloaded {item.path} ({human_size(item.size)})")

    def run(self, items: Iterable[Item], parallel: int) -> None:
        """Fetch every item, ``parallel`` at a time, as ``items`` yields them; a refusal stops the others (their
        .part files remain)."""
        pool = concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix="pull")
        try:
            futures = {pool.submit(self.fetch, item): item for item in items}
            pending = set(futures)
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=0.5)
                for future in finished:
                    error = future.exception()
                    if error is None or isinstance(error, _Stopped | concurrent.futures.CancelledError):
                        continue
                    self.report.files_failed += 1
                    if isinstance(error, Refusal):
                        if self.report.refusal is None:
                            self.report.refusal = str(error)
                            self.stop.set()
                            for other in pending:
                                other.cancel()
                    elif isinstance(error, PullError):
                        self.report.failures.append(str(error))
                        self.progress.line(f"error: {error}", error=True)
                    else:
                        message = f"{futures[future].path}: {type(error).__name__}: {error}"
                        self.report.failures.append(message)
                        self.progress.line(f"error: {message}", error=True)
        except KeyboardInterrupt:
            self.stop.set()
            raise
        finally:
            self.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)


# --- the command --------------------------------------------------------------------------------------------


def parse_target(target: str) -> tuple[str, str]:
    slug, sep, version = target.partition("@")
    if not sep or not slug or not version:
        raise PullError(f"{target!r} is not <product>@<version>, e.g. filings-en@1.0.0")
    return slug, version


def _selected(files: Iterable[dict[str, Any]], include: Sequence[str]) -> list[dict[str, Any]]:
    """The version's files matching any of the globs, as the server matches them (``*`` also crosses ``/``)."""
    return [f for f in files if any(fnmatch.fnmatchcase(f["path"], pattern) for pattern in include)]


def _grant(
    api: Api,
    state: State,
    entitlement_id: str,
    slug: str,
    version: str,
    purpose: str,
    paths: Sequence[str],
) -> list[dict[str, Any]]:
    body = {
        "entitlement_id": entitlement_id,
        "product": slug,
        "version": version,
        "purpose": purpose,
        "paths": list(paths),
    }
    manifest = api.call("POST", "/downloads/manifest", f"asking for {slug}@{version}", json_body=body)
    items: list[dict[str, Any]] = manifest["items"]
    state.record_grants(items, entitlement_id, purpose)
    return items


def _item(grant: dict[str, Any]) -> Item:
    return Item(
        path=grant["path"],
        size=int(grant["size"]),
        sha256=str(grant["sha256"]),
        download_id=str(grant["download_id"]),
        url=str(grant["url"]),
        expires_at=_when(grant["expires_at"]) or _now(),
        mode=str(grant["mode"]),
    )


def pull(
    target: str,
    out: Path,
    *,
    api: str,
    token: str,
    purpose: str,
    include: Sequence[str] | None = None,
    entitlement: str | None = None,
    parallel: int = DEFAULT_PARALLEL,
    quiet: bool = False,
    progress_bars: bool | None = None,
    stdout: IO[str] | None = None,
) -> PullReport:
    """Pull the files of ``target`` (``<product>@<version>``) matching ``include`` into ``out``.

    Raises :class:`PullError` (:class:`Refusal` when the licence says no) for a failure that stops the pull
    before any download; failures of single files are in the report (``report.ok`` is false), and so is a
    refusal met while downloading. ``KeyboardInterrupt`` stops the transfers and propagates.
    """
    started = time.monotonic()
    slug, version = parse_target(target)
    if not token:
        raise PullError(
            "no token: pass --token or set CORPORA_TOKEN (an access token from POST /api/v1/auth/token, or an API "
            "key with the 'downloads' scope)"
        )
    if parallel < 1:
        raise PullError("--parallel must be at least 1")
    patterns = list(include or ["*"])
    report = PullReport(product=slug, version=version, out=out)
    bars = (not quiet and sys.stderr.isatty()) if progress_bars is None else progress_bars
    progress = Progress(bars=bars, quiet=quiet, out=stdout or sys.stdout)
    client = Api(api, token)
    try:
        found = client.version(slug, version)
        if found["state"] == "withdrawn":
            raise Refusal(f"{slug}@{version} was withdrawn; its files are no longer delivered.")
        if found["state"] not in ("published", "deprecated"):
            raise PullError(f"{slug}@{version} is {found['state']}, not published: there is nothing to pull yet.")
        files = _selected(found["files"], patterns)
        if not files:
            raise PullError(f"no file of {slug}@{version} matches {', '.join(patterns)}")
        bad = [f"{f['path']!r} {problem}" for f in files if (problem := path_problem(f["path"])) is not None]
        if bad:
            raise PullError("these files cannot be written under the output directory: " + "; ".join(bad[:10]))
        report.files_selected = len(files)
        out.mkdir(parents=True, exist_ok=True)
        state = State(out, ReceiptVerifier(client.jwks))

        todo = [
            f
            for f in files
            if not state.is_complete(f["path"], out / f["path"], f["size"], f["sha256"])
            and not state.finish_part(f["path"], out / f["path"], f["size"], f["sha256"])
        ]
        report.files_skipped = len(files) - len(todo)
        if not todo:
            with state.lock:
                state.save()
            return report

        chosen = choose_entitlement(client, slug, purpose, entitlement)
        entitlement_id = str(chosen["id"])
        report.entitlement_id = entitlement_id
        progress.line(f"using entitlement {entitlement_id} ({chosen['buyer_org']}, {purpose})")

        # Grants of an earlier, interrupted run are renewed without a new charge while their window lasts.
        granted: dict[str, dict[str, Any]] = {}
        for f in todo:
            earlier = state.reusable(slug, version, f["path"], f["sha256"], entitlement_id, purpose)
            if earlier is None:
                continue
            try:
                fresh = client.call("POST", f"/downloads/{earlier}/refresh", f"renewing the grant of {f['path']}")
            except Refusal:
                raise
            except PullError:
                continue  # gone or out of its window: a new grant below
            state.record_grant(fresh, entitlement_id, purpose)
            granted[f["path"]] = fresh
            report.grants_reused += 1
            report.refreshes += 1

        missing = [f["path"] for f in todo if f["path"] not in granted]
        if missing:
            check_quota(chosen, len(missing), sum(f["size"] for f in todo if f["path"] not in granted))
        wanted = {f["path"] for f in todo}

        def transfers() -> Iterator[Item]:
            """The renewed grants, then new ones a batch at a time: each batch downloads while the next ones are
            granted (and charged), ``GRANTS_IN_FLIGHT`` at once."""
            yield from (_item(i) for path, i in sorted(granted.items()) if path in wanted)
            starts = iter(range(0, len(missing), GRANT_BATCH))
            asking: collections.deque[tuple[int, concurrent.futures.Future[list[dict[str, Any]]]]]
            asking = collections.deque()
            with concurrent.futures.ThreadPoolExecutor(GRANTS_IN_FLIGHT, thread_name_prefix="pull-grant") as pool:

                def ask() -> None:
                    start = next(starts, None)
                    if start is not None:
                        batch = missing[start : start + GRANT_BATCH]
                        args = (client, state, entitlement_id, slug, version, purpose, batch)
                        asking.append((start, pool.submit(_grant, *args)))

                for _ in range(GRANTS_IN_FLIGHT):
                    ask()
                while asking:
                    start, future = asking.popleft()
                    try:
                        new = future.result()
                    except Refusal as refusal:
                        for _, other in asking:
                            other.cancel()
                        if not granted and not start:
                            raise
                        report.refusal = str(refusal)  # download what was granted (and charged) before it
                        return
                    report.grants_new += len(new)
                    ask()
                    yield from (_item(i) for i in new if i["path"] in wanted)

        done = sum(f["size"] for f in files if f["path"] not in wanted)
        progress.start_total(sum(f["size"] for f in files), done, f"{slug}@{version}")
        downloader = Downloader(client, out, state, progress, report, parallel)
        try:
            downloader.run(transfers(), parallel)
        finally:
            downloader.close()
            with state.lock:
                state.save()
    finally:
        progress.close()
        client.close()
        report.seconds = time.monotonic() - started
    return report


def main(args: argparse.Namespace) -> int:
    """The ``corpora pull`` command (``args`` from :func:`add_command`, ``args.api`` resolved by ``app.cli``)."""
    token = args.token or os.environ.get("CORPORA_TOKEN", "")
    try:
        report = pull(
            args.target,
            Path(args.out),
            api=args.api or os.environ.get("CORPORA_API_URL") or DEFAULT_API,
            token=token,
            purpose=args.purpose,
            include=args.include,
            entitlement=args.entitlement,
            parallel=args.parallel,
            quiet=args.quiet,
            progress_bars=False if args.no_progress else None,
        )
    except Refusal as refusal:
        print(f"refused: {refusal}", file=sys.stderr)
        return 1
    except PullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\ninterrupted: partial files are kept as <file>.part; run the same command again to resume them "
            "(without a new charge while their grants last).",
            file=sys.stderr,
        )
        return 130
    if not args.quiet or not report.ok:
        print(report.describe())
    for failure in report.failures:
        print(f"error: {failure}", file=sys.stderr)
    if report.refusal:
        print(f"refused: {report.refusal}", file=sys.stderr)
    return 0 if report.ok else 1


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser], handler: Callable[..., int]) -> None:
    """Register ``corpora pull`` on the CLI's subcommands, run by ``handler``."""
    parser = commands.add_parser(
        "pull",
        help="download the files of a licensed corpus version (metered, resumable, verified)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Download the files of PRODUCT@VERSION under your entitlement into DIR, keeping their paths. Each file\n"
            "is a metered grant (one download and its size, charged against the entitlement's quota, 100\n"
            "files at a time; the quota is checked for the whole pull first) with a signed receipt, kept in\n"
            "DIR/.corpora/receipts.json with the download it proves.\n\n"
            "- The entitlement is your organisation's active one for the product that permits --purpose (or\n"
            "  --entitlement). A refusal says why: quota (and what remains), expiry, revocation, purposes.\n"
            "- Files already in DIR with the right SHA-256 are skipped without a grant: pulling again is free.\n"
            "- Every file is written to <file>.part and renamed once its SHA-256 matches the version's manifest;\n"
            "  a mismatch deletes it and is reported.\n"
            "- An interrupted pull resumes with HTTP Range requests under the same grants (no new charge while\n"
            "  their 24-hour window lasts); expired URLs are renewed, also without a charge.\n"
            "- --include takes shell globs matched against the paths of the version ('*' also matches '/')."
        ),
        epilog=(
            "example:\n"
            "  export CORPORA_TOKEN=$(curl -s -X POST localhost:8000/api/v1/auth/token \\\n"
            "      -H 'Content-Type: application/json' \\\n"
            '      -d \'{"grant_type": "password", "username": "ada@example.com", "password": "..."}\' \\\n'
            "      | python3 -c 'import json, sys; print(json.load(sys.stdin)[\"access_token\"])')\n"
            "  corpora pull filings-en@1.0.0 --purpose research --include 'data/*.jsonl' --out ./filings\n\n"
            "environment: CORPORA_TOKEN (the token), CORPORA_API_URL (the API address; default\n"
            "http://CORPORA_HOST:CORPORA_PORT, i.e. http://127.0.0.1:8000).\n"
            "exit status: 0 when every selected file is in DIR and verified; 1 on a refusal or a failure (the\n"
            "message says what to do next); 130 when interrupted (run the same command again to resume)."
        ),
    )
    parser.add_argument("target", metavar="PRODUCT@VERSION", help="the product slug and version, e.g. filings-en@1.0.0")
    parser.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="only the files whose path matches GLOB; repeat for several (default: every file)",
    )
    parser.add_argument("--purpose", required=True, help="what the data is for: one of your entitlement's purposes")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the files go (created when missing)")
    parser.add_argument("--entitlement", metavar="ID", help="the entitlement to use (default: chosen for you)")
    parser.add_argument(
        "--api", metavar="URL", help="the API's address (CORPORA_API_URL, default http://127.0.0.1:8000)"
    )
    parser.add_argument("--token", help="access token or API key (default: CORPORA_TOKEN)")
    parser.add_argument(
        "--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N", help="files downloaded at once (default 4)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors and refusals")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (they are off anyway when stderr is not a TTY)"
    )
    parser.set_defaults(handler=handler)
