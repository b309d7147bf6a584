"""``corpora push``: upload a directory as the files of a draft version, over the HTTP API.

The client never sends file bytes through the API: for each file it asks for an upload plan, PUTs the
bytes straight to the object store on the presigned URLs of the plan (one PUT up to 8 MiB, otherwise the
parts of a multipart upload, in parallel, each streamed from disk), and completes the file, after which
the server checks size and SHA-256 before the file counts.

- Files the version already has, verified with the same SHA-256, are skipped: pushing again uploads nothing.
- An interrupted push resumes: asking for the plan of a pending file again returns the same upload with the
  parts the object store already holds, and only the other parts are sent. A pending file whose local
  content has changed since is discarded on the server and uploaded anew.
- The ``.corpora`` directory at the top, where ``corpora pull`` keeps its receipts, is not pushed: a directory
  that was pulled can be pushed as it is.
- SHA-256 digests are cached per file (size and modification time) in a small state file under
  ``$XDG_CACHE_HOME/corpora`` (``~/.cache/corpora``), so a resumed push does not read everything twice.

This module imports neither Litestar nor the service: it is a plain HTTP client (httpx for the API, urllib3 for
the object store), driven by ``app.cli`` and usable from scripts through :func:`push`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import mimetypes
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx
import urllib3
from tqdm import tqdm

from client import push_batch

CHUNK = 1024 * 1024
DEFAULT_API = "http://127.0.0.1:8000"
DEFAULT_PARALLEL = 8
# Renew presigned URLs that expire within this margin before starting a transfer with them.
URL_MARGIN = dt.timedelta(minutes=2)
RETRIES = 5
_FORBIDDEN_CHARS = {"\\", "\x00"}
_DRIVE = re.compile(r"[A-Za-z]:")
STATE_DIR = ".corpora"  # corpora pull's receipts: never a file of a version


class PushError(Exception):
    """A failure the user can act on: ``str()`` says what happened and what to do next."""

    def __init__(self, message: str, *, fatal: bool = True) -> None:
        super().__init__(message)
        self.fatal = fatal  # stops the whole push (auth, frozen version …) rather than one file


class Interrupted(Exception):
    """The push was stopped (Ctrl-C or a fatal error in another file) before this file finished."""


# --- results ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PushReport:
    product: str
    version: str
    files_local: int = 0
    files_skipped: int = 0  # already verified with the same content
    files_uploaded: int = 0
    files_reused: int = 0  # content the org already stores in another version: completed without sending bytes
    files_failed: int = 0
    bytes_uploaded: int = 0  # bytes sent to the object store by this run
    parts_uploaded: int = 0  # PUTs of this run (a single-PUT file counts as one part)
    parts_reused: int = 0  # parts of a resumed multipart upload that were already on the object store
    hash_seconds: float = 0.0  # summed over files (new files are hashed while others upload)
    transfer_seconds: float = 0.0  # from the first plan to the last completion
    complete_seconds: float = 0.0  # summed over files: the server verifying what was uploaded
    seconds: float = 0.0
    manifest_digest: str | None = None
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.files_failed == 0 and not self.failures

    def describe(self) -> str:
        rate = self.bytes_uploaded / self.transfer_seconds / 2**20 if self.transfer_seconds > 0 else 0.0
        text = (
            f"{self.product}@{self.version}: {self.files_uploaded} file(s) uploaded ({human_size(self.bytes_uploaded)}"
            f"{f', {rate:.1f} MiB/s' if self.bytes_uploaded else ''}), {self.files_skipped} already there"
        )
        if self.files_reused:
            text += f", {self.files_reused} already stored by the organisation (not sent)"
        if self.parts_reused:
            text += f", {self.parts_reused} part(s) resumed"
        if self.files_failed:
            text += f", {self.files_failed} FAILED"
        if self.manifest_digest:
            text += f"; manifest {self.manifest_digest}"
        return text


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# --- local files --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LocalFile:
    path: str  # relative POSIX path inside the version
    abspath: Path
    size: int
    mtime_ns: int
    sha256: str = ""
    media_type: str = "application/octet-stream"

    def unchanged(self) -> bool:
        try:
            stat = self.abspath.stat()
        except OSError:
            return False
        return (stat.st_size, stat.st_mtime_ns) == (self.size, self.mtime_ns)


def path_problem(path: str) -> str | None:
    """Why the server would refuse ``path`` (the rules of ``catalog.uploads.check_path``), or ``None``."""
    if path != path.strip():
        return "starts or ends with spaces"
    if any(c in _FORBIDDEN_CHARS or ord(c) < 0x20 or c == "\x7f" for c in path):
        return "contains a backslash, NUL or a control character"
    if _DRIVE.match(path):
        return "starts with a drive letter"
    segments = path.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "has an empty, '.' or '..' segment"
    if segments[0].lower() == STATE_DIR:
        return f"is under {STATE_DIR}/, where corpora pull keeps its receipts"
    if len(path.encode()) > 1024:
        return "is longer than 1024 bytes"
    return None


def scan(directory: Path, *, guess_media_types: bool) -> list[LocalFile]:
    """The regular files under ``directory`` (symlinked files included, symlinked directories not followed)."""
    found: list[LocalFile] = []
    for root, dirs, names in os.walk(directory):
        if Path(root) == directory and STATE_DIR in dirs:
            dirs.remove(STATE_DIR)
        dirs.sort()
        for name in sorted(names):
            full = Path(root) / name
            if not full.is_file():
                continue  # sockets, fifos, dangling links
            stat = full.stat()
            rel = full.relative_to(directory).as_posix()
            media_type = "application/octet-stream"
            if guess_media_types:
                media_type = mimetypes.guess_type(name, strict=False)[0] or media_type
            found.append(LocalFile(rel, full, stat.st_size, stat.st_mtime_ns, media_type=media_type))
    found.sort(key=lambda f: f.path)
    return found


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "corpora"


class HashCache:
    """SHA-256 of local files keyed by absolute path, valid while size and modification time are unchanged."""

    def __init__(self, cache_dir: Path | None, directory: Path) -> None:
        self.path: Path | None = None
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        if cache_dir is None:
            return
        digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:20]
        self.path = cache_dir / f"push-hashes-{digest}.json"
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.path.read_text())
            if isinstance(data, dict) and isinstance(data.get("files"), dict):
                self.entries = data["files"]

    def get(self, file: LocalFile) -> str | None:
        entry = self.entries.get(str(file.abspath))
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [file.size, file.mtime_ns]:
            return str(entry[2])
        return None

    def put(self, file: LocalFile) -> None:
        self.entries[str(file.abspath)] = [file.size, file.mtime_ns, file.sha256]
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"version": 1, "files": self.entries}))
            temporary.replace(self.path)
        except OSError:
            pass  # only a cache


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    hasher = hashlib.sha256()
    with path.open("rb", buffering=0) as stream:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while read := stream.readinto(buffer):
            hasher.update(view[:read])
            if progress is not None:
                progress(read)
    return hasher.hexdigest()


def read_range(path: Path, offset: int, length: int) -> Iterator[bytes]:
    """Stream ``length`` bytes of ``path`` from ``offset`` in chunks (the body of one PUT)."""
    with path.open("rb", buffering=0) as stream:
        stream.seek(offset)
        left = length
        while left > 0:
            chunk = stream.read(min(CHUNK, left))
            if not chunk:
                raise PushError(f"{path} became shorter while it was uploaded", fatal=False)
            left -= len(chunk)
            yield chunk


# --- the API ------------------------------------------------------------------------------------------------


def normalise_api(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    return url.removesuffix("/api/v1")


def _problem(response: httpx.Response) -> tuple[str, str]:
    """(problem type, detail) of an error response."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:300]
    if not isinstance(body, dict):
        return "", str(body)[:300]
    detail = str(body.get("detail") or body.get("title") or "")
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        detail += " (" + "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors) + ")"
    return str(body.get("type") or ""), detail


def explain(response: httpx.Response, what: str, *, target: str) -> PushError:
    """Turn an error answer of the API into a message that says what to do next."""
    kind, detail = _problem(response)
    return explain_problem(response.status_code, kind, detail, what, target=target)


def explain_item(problem: dict[str, Any], path: str, *, target: str) -> PushError:
    """The message for one refused item of a batch (its ``problem``)."""
    detail = str(problem.get("detail") or problem.get("title") or "")
    errors = problem.get("errors")
    if isinstance(errors, list) and errors:
        detail += " (" + "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors) + ")"
    status = int(problem.get("status") or 422)
    return explain_problem(status, str(problem.get("type") or ""), detail, path, target=target)


def explain_problem(status: int, kind: str, detail: str, what: str, *, target: str) -> PushError:
    if status == 401:
        return PushError(
            f"{what}: the token was refused ({detail or 'expired or revoked'}). Access tokens live 15 minutes: "
            "get a fresh one with POST /api/v1/auth/token, or, for long pushes, an API key with the "
            "'catalog:write' scope (POST /api/v1/api-keys); pass it with --token or CORPORA_TOKEN and run the "
            "same command again: it resumes where it stopped."
        )
    if status == 403:
        return PushError(
            f"{what}: forbidden ({detail}). Only owners, admins and members of the product's organisation may add "
            "files, and an API key needs the 'catalog:write' scope."
        )
    if status == 404:
        return PushError(
            f"{what}: not found ({detail}). Check the product slug and version in {target!r}; create the version "
            "first with POST /api/v1/products/<slug>/versions."
        )
    if status == 409 and kind == "version-frozen":
        return PushError(f"{what}: {detail}. Push to a new draft version instead.")
    if status == 409 and kind == "path-exists":
        return PushError(
            f"{what}: {detail}. Files of a version are never overwritten: delete the file from the draft version "
            "(DELETE .../files/<file_id>) or push to a new version.",
            fatal=False,
        )
    if status == 422 and kind in ("checksum-mismatch", "size-mismatch"):
        return PushError(
            f"{what}: the server received different bytes than were hashed before the upload ({detail}). The file "
            "probably changed while it was uploaded. Run push again once it no longer changes.",
            fatal=False,
        )
    if status == 422 and kind == "upload-incomplete":
        return PushError(f"{what}: {detail}. Run push again: it resumes and sends the missing parts.", fatal=False)
    if status == 413:
        return PushError(f"{what}: the request was too large for the server ({detail}).", fatal=False)
    if status in (429, 502, 503, 504):
        return PushError(f"{what}: the server is unavailable ({status}: {detail}). Try again in a moment.")
    if 400 <= status < 500:
        return PushError(f"{what}: refused ({status} {kind or ''}: {detail}).", fatal=False)
    return PushError(f"{what}: server error {status} ({detail}). Try again; if it persists, tell the operator.")


class Api:
    """The few API calls push needs, with retries of transient failures (connection errors, 502/503/504)."""

    def __init__(self, base: str, token: str, *, target: str, timeout: float = 60) -> None:
        self.base = normalise_api(base)
        self.target = target
        self.client = httpx.Client(
            base_url=self.base + "/api/v1",
            headers={"Authorization": f"Bearer {token}", "User-Agent": "corpora-push"},
            timeout=httpx.Timeout(timeout, connect=10),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
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
        read_timeout: float | None = None,
        missing_ok: bool = False,
        retries: int = RETRIES,
    ) -> Any:
        delay = 0.5
        for attempt in range(retries + 1):
            try:
                extensions = {}
                if read_timeout is not None:
                    extensions["timeout"] = httpx.Timeout(60, connect=10, read=read_timeout).as_dict()
                response = self.client.request(method, url, json=json_body, extensions=extensions)
            except httpx.TransportError as exc:
                if attempt == retries:
                    raise PushError(
                        f"{what}: cannot reach the API at {self.base} ({type(exc).__name__}: {exc}). Is the server "
                        "running? Set the address with --api or CORPORA_API_URL."
                    ) from None
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                if response.status_code == 404 and missing_ok:
                    return None
                if response.status_code not in (502, 503, 504) or attempt == retries:
                    raise explain(response, what, target=self.target)
                with contextlib.suppress(ValueError):
                    delay = max(delay, min(float(response.headers.get("retry-after", "")), 30))
            time.sleep(delay)
            delay = min(delay * 2, 30)
        raise AssertionError("unreachable")

    def version(self, slug: str, version: str, *, retries: int = RETRIES) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "GET", f"/products/{quote(slug)}/versions/{quote(version)}", f"reading {slug}@{version}", retries=retries
        )
        return result

    def plan(self, slug: str, version: str, file: LocalFile) -> dict[str, Any]:
        body = {"path": file.path, "size": file.size, "sha256": file.sha256, "media_type": file.media_type}
        result: dict[str, Any] = self.call(
            "POST", f"/products/{quote(slug)}/versions/{quote(version)}/files", f"planning {file.path}", json_body=body
        )
        return result

    def complete(self, slug: str, version: str, file_id: str, body: dict[str, Any], size: int) -> dict[str, Any]:
        # The server reads the whole object back to verify it: allow for that on large files.
        result: dict[str, Any] = self.call(
            "POST",
            f"/products/{quote(slug)}/versions/{quote(version)}/files/{file_id}/complete",
            f"completing {file_id}",
            json_body=body,
            read_timeout=120 + size / (20 * 2**20),
        )
        return result

    def delete_file(self, slug: str, version: str, file_id: str, path: str) -> None:
        self.call(
            "DELETE",
            f"/products/{quote(slug)}/versions/{quote(version)}/files/{file_id}",
            f"discarding the earlier upload of {path}",
            missing_ok=True,
        )


# --- progress -----------------------------------------------------------------------------------------------


class Progress:
    """A total bar and one bar per file in flight (tqdm, on stderr), or plain lines when bars are off."""

    def __init__(self, *, bars: bool, quiet: bool, out: IO[str]) -> None:
        self.bars = bars
        self.quiet = quiet
        self.out = out
        self.lock = threading.Lock()
        self.total: tqdm[Any] | None = None

    def start_total(self, total: int, desc: str) -> None:
        if self.bars:
            self.total = tqdm(
                total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, position=0, dynamic_ncols=True
            )

    def file_bar(self, file: LocalFile, initial: int) -> tqdm[Any] | None:
        if not self.bars:
            return None
        name = file.path if len(file.path) <= 40 else "…" + file.path[-39:]
        return tqdm(
            total=file.size,
            initial=initial,
            desc=name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            leave=False,
            dynamic_ncols=True,
        )

    def advance(self, bar: tqdm[Any] | None, n: int) -> None:
        if bar is not None:
            bar.update(n)
        if self.total is not None:
            self.total.update(n)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.bars:
            tqdm.write(text, file=sys.stderr)
        else:
            with self.lock:
                print(text, file=self.out, flush=True)

    def close(self) -> None:
        if self.total is not None:
            self.total.close()
            self.total = None


# --- uploading ----------------------------------------------------------------------------------------------


class _Stopped(Exception):
    pass


class Uploader:
    def __init__(
        self,
        api: Api,
        slug: str,
        version: str,
        *,
        parallel: int,
        progress: Progress,
        report: PushReport,
        cache: HashCache,
        pending: dict[str, dict[str, Any]],
    ) -> None:
        self.api = api
        self.cache = cache
        self.pending = pending
        self.slug = slug
        self.version = version
        self.progress = progress
        self.report = report
        self.stop = threading.Event()
        self.counter_lock = threading.Lock()
        self.parallel = parallel
        self.transfers = concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix="push-transfer")
        # urllib3 for the PUTs to the object store: less CPU per request than httpx (see client/pull.py), which
        # small files feel. No retries of its own: ``_put`` retries, renewing the URL.
        self.s3 = urllib3.PoolManager(
            maxsize=parallel * 2, block=False, retries=False, timeout=urllib3.Timeout(connect=10, read=120)
        )

    def close(self) -> None:
        self.transfers.shutdown(wait=True, cancel_futures=True)
        self.s3.clear()

    def _count(self, **amounts: int) -> None:
        with self.counter_lock:
            for name, amount in amounts.items():
                setattr(self.report, name, getattr(self.report, name) + amount)

    # One PUT to the object store, retried; ``url`` is asked for again on each attempt so it can be renewed.
    def _put(
        self,
        file: LocalFile,
        url: Callable[[bool], str],
        offset: int,
        length: int,
        headers: dict[str, str],
        bar: tqdm[Any] | None,
    ) -> tuple[str, str | None]:
        """(ETag, the object version the PUT created, if the store keeps versions)."""
        delay = 0.5
        renew = False
        problem = ""
        for attempt in range(RETRIES + 1):
            if self.stop.is_set():
                raise _Stopped
            sent = 0

            def body() -> Iterator[bytes]:
                nonlocal sent
                for chunk in read_range(file.abspath, offset, length):
                    if self.stop.is_set():
                        raise _Stopped
                    yield chunk
                    sent += len(chunk)
                    self.progress.advance(bar, len(chunk))

            try:
                response = self.s3.request(
                    "PUT", url(renew), body=body(), headers={**headers, "Content-Length": str(length)}
                )
            except urllib3.exceptions.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, urllib3.exceptions.NewConnectionError):
                    host = httpx.URL(url(False)).netloc.decode()
                    problem += (
                        f"; the object store at {host} named in the upload URLs is not reachable from here — its "
                        "operator must set CORPORA_S3_ENDPOINT to an address clients can reach"
                    )
                response = None
            if response is not None and response.status < 300:
                etag = str(response.headers.get("etag") or "")
                if not etag:
                    raise PushError(f"{file.path}: the object store answered without an ETag", fatal=False)
                self._count(bytes_uploaded=length, parts_uploaded=1)
                return etag, response.headers.get("x-amz-version-id")
            self.progress.advance(bar, -sent)  # counted again when the part is sent again
            if response is not None:
                text = response.data.decode(errors="replace")
                problem = f"{response.status}: {text[:300]}"
                if response.status == 404 and "NoSuchUpload" in text:
                    raise PushError(
                        f"{file.path}: the object store no longer has this upload (it was discarded, e.g. by the "
                        "janitor after CORPORA_JANITOR_MAX_AGE_SECONDS). Run push again to start it over.",
                        fatal=False,
                    )
                # An expired or otherwise refused signature: renew the URLs and try again.
                renew = response.status in (400, 403)
                if response.status < 500 and response.status not in (400, 403, 408, 429):
                    break
            if attempt < RETRIES:
                time.sleep(delay)
                delay = min(delay * 2, 20)
        raise PushError(
            f"{file.path}: uploading to the object store failed ({problem}). Run push again to resume.", fatal=False
        )

    def put_whole(self, file: LocalFile, url: Callable[[bool], str], headers: dict[str, str]) -> tuple[str, str | None]:
        """One PUT of the whole file (a file of a batch: no bar of its own, the total advances)."""
        return self._put(file, url, 0, file.size, headers, None)

    def fail(self, message: str) -> None:
        with self.counter_lock:
            self.report.files_failed += 1
            self.report.failures.append(message)
        self.progress.line(f"error: {message}")

    def batches(self, target: str) -> push_batch.Batches:
        return push_batch.Batches(
            call=self.api.call,
            put=self.put_whole,  # type: ignore[arg-type]
            discard=lambda file_id, path: self.api.delete_file(self.slug, self.version, file_id, path),
            transfers=self.transfers,
            lanes=self.parallel,
            slug=self.slug,
            version=self.version,
            pending=self.pending,
            count=self._count,
            fail=self.fail,
            line=self.progress.line,
            item_error=lambda problem, path: explain_item(problem, path, target=target),
            margin=lambda: URL_MARGIN,
            stop=self.stop,
        )

    def _hash(self, file: LocalFile) -> None:
        started = time.monotonic()
        bar = None
        if self.progress.bars:
            name = file.path if len(file.path) <= 32 else "…" + file.path[-31:]
            bar = tqdm(
                total=file.size, desc=f"hashing {name}", unit="B", unit_scale=True, unit_divisor=1024, leave=False
            )
        try:
            file.sha256 = sha256_file(file.abspath, bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        with self.counter_lock:
            self.cache.put(file)
            self.report.hash_seconds += time.monotonic() - started

    def upload_file(self, file: LocalFile) -> None:
        if self.stop.is_set():
            raise _Stopped
        if not file.sha256:
            self._hash(file)
        # A pending upload of this path with other content (the file changed since an interrupted push)
        # cannot be resumed: discard it.
        old = self.pending.get(file.path)
        if old is not None and (old["sha256"], old["size"]) != (file.sha256, file.size):
            self.progress.line(f"discarding the earlier upload of {file.path}: its content has changed since")
            self.api.delete_file(self.slug, self.version, str(old["file_id"]), file.path)
        plan = self.api.plan(self.slug, self.version, file)
        file_id = str(plan["file_id"])
        if plan.get("stored") and file.unchanged():
            self.api.complete(self.slug, self.version, file_id, {}, file.size)
            self._count(files_reused=1)
            if self.progress.total is not None:
                self.progress.total.total -= file.size  # nothing to send
                self.progress.total.refresh()
            self.progress.line(f"{file.path}: already stored by this organisation, not sent again")
            return
        lock = threading.Lock()
        state: dict[str, Any] = {"plan": plan, "renewed": time.monotonic()}

        def current(renew: bool) -> dict[str, Any]:
            """The upload of the plan, asked for again when renewing or when its URLs are about to expire."""
            with lock:
                upload: dict[str, Any] = state["plan"]["upload"]
                expires = dt.datetime.fromisoformat(str(upload["expires_at"]).replace("Z", "+00:00"))
                # Several parts failing at once renew the URLs once.
                renew = renew and time.monotonic() - state["renewed"] > 5
                if renew or expires - dt.datetime.now(dt.UTC) < URL_MARGIN:
                    state["plan"], state["renewed"] = self.api.plan(self.slug, self.version, file), time.monotonic()
                    upload = state["plan"]["upload"]
                return upload

        upload = plan["upload"]
        if upload["kind"] == "single":
            bar = self.progress.file_bar(file, 0)
            try:
                future = self.transfers.submit(
                    self._put, file, lambda renew: str(current(renew)["url"]), 0, file.size, upload["headers"], bar
                )
                self._wait([future])
            finally:
                if bar is not None:
                    bar.close()
            body: dict[str, Any] = {}
        else:
            part_size = int(upload["part_size"])
            count = max(1, math.ceil(file.size / part_size))
            done: dict[int, str] = {}
            for part in upload.get("uploaded_parts") or []:
                number, size = int(part["part_number"]), int(part["size"])
                expected = min(part_size, file.size - (number - 1) * part_size)
                if 1 <= number <= count and size == expected:
                    done[number] = str(part["etag"])
            reused = sum(min(part_size, file.size - (n - 1) * part_size) for n in done)
            self._count(parts_reused=len(done))
            if self.progress.total is not None and reused:
                self.progress.total.total -= reused  # already on the server: not part of this run's work
                self.progress.total.refresh()
            bar = self.progress.file_bar(file, reused)

            def part_url(number: int) -> Callable[[bool], str]:
                def url(renew: bool) -> str:
                    urls = {int(p["part_number"]): str(p["url"]) for p in current(renew)["parts"]}
                    return urls[number]

                return url

            futures: dict[concurrent.futures.Future[tuple[str, str | None]], int] = {}
            try:
                for number in range(1, count + 1):
                    if number in done:
                        continue
                    offset = (number - 1) * part_size
                    length = min(part_size, file.size - offset)
                    futures[self.transfers.submit(self._put, file, part_url(number), offset, length, {}, bar)] = number
                self._wait(list(futures))
            finally:
                if bar is not None:
                    bar.close()
            for future, number in futures.items():
                done[number] = future.result()[0]
            body = {"parts": [{"part_number": n, "etag": done[n]} for n in sorted(done)]}
        if not file.unchanged():
            raise PushError(
                f"{file.path} changed while it was uploaded; nothing was completed. Run push again once it no "
                "longer changes (the partial upload is replaced).",
                fatal=False,
            )
        completing = time.monotonic()
        self.api.complete(self.slug, self.version, file_id, body, file.size)
        with self.counter_lock:
            self.report.complete_seconds += time.monotonic() - completing
        self._count(files_uploaded=1)
        self.progress.line(f"uploaded {file.path} ({human_size(file.size)})")

    def _wait(self, futures: list[concurrent.futures.Future[tuple[str, str | None]]]) -> None:
        """Wait for transfers; on the first failure stop the others of this file and raise it."""
        pending = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in finished:
                if future.cancelled():
                    raise _Stopped
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    concurrent.futures.wait(pending)
                    raise error


# --- the command --------------------------------------------------------------------------------------------


def parse_target(target: str) -> tuple[str, str]:
    slug, sep, version = target.partition("@")
    if not sep or not slug or not version:
        raise PushError(f"{target!r} is not <product>@<version>, e.g. filings-en@1.0.0")
    return slug, version


def push(
    target: str,
    directory: Path,
    *,
    api: str,
    token: str,
    parallel: int = DEFAULT_PARALLEL,
    guess_media_types: bool = False,
    quiet: bool = False,
    progress_bars: bool | None = None,
    cache_dir: Path | None = None,
    out: IO[str] | None = None,
) -> PushReport:
    """Push ``directory`` into the draft version ``target`` (``<product>@<version>``).

    Raises :class:`PushError` for a failure that stops the push as a whole; per-file failures are in the
    report (``report.ok`` is false). ``KeyboardInterrupt`` stops the transfers and propagates.
    """
    out = out or sys.stdout
    started = time.monotonic()
    slug, version = parse_target(target)
    if not token:
        raise PushError(
            "no token: pass --token or set CORPORA_TOKEN (an access token from POST /api/v1/auth/token, or an API key)"
        )
    if not directory.is_dir():
        raise PushError(f"{directory} is not a directory")
    if parallel < 1:
        raise PushError("--parallel must be at least 1")
    report = PushReport(product=slug, version=version)
    bars = (not quiet and sys.stderr.isatty()) if progress_bars is None else progress_bars
    progress = Progress(bars=bars, quiet=quiet, out=out)

    files = scan(directory, guess_media_types=guess_media_types)
    report.files_local = len(files)
    if not files:
        raise PushError(f"{directory} has no files to push")
    bad = [f"{f.path!r} {problem}" for f in files if (problem := path_problem(f.path)) is not None]
    if bad:
        raise PushError("these paths cannot be file paths of a version: " + "; ".join(bad[:10]))

    cache = HashCache(cache_dir or default_cache_dir(), directory)
    client = Api(api, token, target=target)
    try:
        remote = client.version(slug, version, retries=1)  # fail early on a bad token, name or address
        verified = {f["path"]: f for f in remote.get("files") or []}
        pending = {f["path"]: f for f in remote.get("pending_files") or []}
        new = [f for f in files if f.path not in verified]
        if new and remote.get("state") != "draft":
            raise PushError(
                f"{target} is {remote.get('state')}: published versions are frozen and {len(new)} local file(s) "
                "are not in it. Push to a new draft version (POST /api/v1/products/<slug>/versions)."
            )
        # Paths the version already has are hashed first: each is skipped, or the push refused up front.
        known = [f for f in files if f.path in verified]
        _hash_all(known, parallel, cache, progress, report)
        conflicts: list[str] = []
        for file in known:
            there = verified[file.path]
            if (there["sha256"], there["size"]) == (file.sha256, file.size):
                report.files_skipped += 1
            else:
                conflicts.append(file.path)
        if conflicts:
            raise PushError(
                f"{len(conflicts)} file(s) are already in {target} with different content: "
                + ", ".join(conflicts[:10])
                + ". Files of a version are never overwritten: push the new content to a new version, or delete "
                "those files from the draft first."
            )
        if new:
            # Small files go in batches, hashed first (each is quick); large ones are hashed by the upload workers,
            # so hashing one overlaps uploading others.
            small = [f for f in new if f.size <= push_batch.SMALL]
            _hash_all(small, parallel, cache, progress, report)
            for file in new:
                file.sha256 = file.sha256 or cache.get(file) or ""
            new.sort(key=lambda f: -f.size)  # the largest first: the shortest tail
            _upload_all(client, slug, version, new, parallel, progress, report, cache=cache, pending=pending)
            final = client.version(slug, version)
        else:
            final = remote
        report.manifest_digest = final.get("manifest_digest")
        manifest = {f["path"]: f["sha256"] for f in final.get("files") or []}
        missing = [f.path for f in files if not f.sha256 or manifest.get(f.path) != f.sha256]
        if missing and report.ok:
            report.failures.append(f"not in the version's manifest after the push: {', '.join(missing[:10])}")
    finally:
        progress.close()
        client.close()
        cache.save()
        report.seconds = time.monotonic() - started
    return report


def _hash_all(files: list[LocalFile], parallel: int, cache: HashCache, progress: Progress, report: PushReport) -> None:
    needed = []
    for file in files:
        cached = cache.get(file)
        if cached is not None:
            file.sha256 = cached
        else:
            needed.append(file)
    if not needed:
        return
    started = time.monotonic()
    bar = None
    if progress.bars:
        bar = tqdm(
            total=sum(f.size for f in needed),
            desc="hashing",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            leave=False,
            dynamic_ncols=True,
        )

    def one(file: LocalFile) -> None:
        file.sha256 = sha256_file(file.abspath, bar.update if bar is not None else None)
        cache.put(file)

    try:
        with concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix="push-hash") as pool:
            for _ in pool.map(one, needed):
                pass
    finally:
        if bar is not None:
            bar.close()
    report.hash_seconds += time.monotonic() - started


def _upload_all(
    client: Api,
    slug: str,
    version: str,
    todo: list[LocalFile],
    parallel: int,
    progress: Progress,
    report: PushReport,
    *,
    cache: HashCache,
    pending: dict[str, dict[str, Any]],
) -> None:
    started = time.monotonic()
    progress.start_total(sum(f.size for f in todo), f"{slug}@{version}")
    uploader = Uploader(
        client, slug, version, parallel=parallel, progress=progress, report=report, cache=cache, pending=pending
    )
    files = concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix="push-file")
    batch_pool = concurrent.futures.ThreadPoolExecutor(push_batch.BATCHES_IN_FLIGHT, thread_name_prefix="push-batch")
    batches = uploader.batches(f"{slug}@{version}")
    fatal: PushError | None = None
    try:
        # Many small files: batches of plans and completions (their PUTs share the transfer pool); large files
        # (and whatever a batch hands back) one at a time.
        small = [f for f in todo if f.size <= push_batch.SMALL]
        large = [f for f in todo if f.size > push_batch.SMALL]
        futures: dict[concurrent.futures.Future[None], str] = {
            batch_pool.submit(batches.run, batch): f"a batch of {len(batch)} file(s)" for batch in batches.split(small)
        }
        futures |= {files.submit(uploader.upload_file, file): file.path for file in large}
        running = set(futures)
        while running:
            finished, running = concurrent.futures.wait(running, timeout=0.5)
            for future in finished:
                name = futures[future]
                error = None if future.cancelled() else future.exception()
                if error is None or isinstance(error, _Stopped):
                    continue
                report.files_failed += 1
                if isinstance(error, PushError):
                    report.failures.append(str(error))
                    progress.line(f"error: {error}")
                    if error.fatal and fatal is None:
                        fatal = error
                        uploader.stop.set()
                        for other in running:
                            other.cancel()
                else:
                    report.failures.append(f"{name}: {type(error).__name__}: {error}")
                    progress.line(f"error: {name}: {type(error).__name__}: {error}")
            if not running and batches.alone and fatal is None:
                alone, batches.alone = batches.alone, []
                by_path = {f.path: f for f in small}
                new = {files.submit(uploader.upload_file, by_path[f.path]): f.path for f in alone}
                futures |= new
                running = set(new)
    except KeyboardInterrupt:
        uploader.stop.set()
        files.shutdown(wait=False, cancel_futures=True)
        batch_pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        uploader.stop.set()
        batch_pool.shutdown(wait=True, cancel_futures=True)
        files.shutdown(wait=True, cancel_futures=True)
        uploader.close()
        report.transfer_seconds = time.monotonic() - started
    if fatal is not None:
        raise fatal


def main(args: Any) -> int:
    """The ``corpora push`` command (``args`` from ``app.cli``)."""
    # One log line per request would bury the progress, and would print presigned URLs.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    directory = Path(args.directory)
    token = args.token or os.environ.get("CORPORA_TOKEN", "")
    try:
        report = push(
            args.target,
            directory,
            api=args.api,
            token=token,
            parallel=args.parallel,
            guess_media_types=args.media_type_guess,
            quiet=args.quiet,
            progress_bars=False if args.no_progress else None,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        )
    except PushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\ninterrupted: parts already on the object store are kept; run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    if not args.quiet or not report.ok:
        print(report.describe())
    for failure in report.failures:
        print(f"error: {failure}", file=sys.stderr)
    return 0 if report.ok else 1
