"""``corpora push`` of many small files: plans and completions in batches, the PUTs in parallel.

One file at a time, each file costs a plan and a completion besides its PUT; for a corpus of many small files
those round trips, not the bytes, set the pace. Files up to ``SMALL`` (one PUT each) are therefore planned and
completed ``BATCH_FILES`` at a time (``POST …/uploads`` and ``…/uploads/complete``), with a few batches in flight
so that one batch's plan and completion overlap the others' PUTs. When the server hands out ``direct`` uploads
(the PUT goes straight to the content-addressed key, and the object store checks the SHA-256 signed into the
URL), the completion names the object version the PUT created.

Anything a batch cannot finish (the server refuses an item for a reason one file at a time can resolve, an
upload that went missing) is handed back to be pushed one file at a time, as before.

This module imports nothing of ``client.push``: it gets what it needs (the API call, a PUT with retries, the
report's counters) as arguments.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

SMALL = 8 * 1024 * 1024  # the server's single-PUT limit: larger files are uploaded in parts, one by one
BATCH_FILES = 250
BATCH_BYTES = 256 * 1024  # of request JSON: well below the API's default 1 MiB body limit
BATCHES_IN_FLIGHT = 3
# Problems of an item that pushing the file on its own may resolve (e.g. a path registered meanwhile).
RETRY_ALONE = {"upload-missing", "too-large-for-batch", "multipart-upload"}


class File(Protocol):
    path: str
    abspath: Path
    size: int
    sha256: str
    media_type: str

    def unchanged(self) -> bool: ...


class Call(Protocol):
    def __call__(self, method: str, url: str, what: str, *, json_body: Any = None) -> Any: ...


# (file, URL renewer, headers) → (ETag, object version id or None); raises on failure.
Put = Callable[[File, Callable[[bool], str], dict[str, str]], tuple[str, str | None]]
# (file, its plan item, URL renewer, headers)
_Upload = tuple[File, dict[str, Any], Callable[[bool], str], dict[str, str]]


class Batches:
    """Pushes small files in batches; ``run`` returns the files to push one at a time."""

    def __init__(
        self,
        *,
        call: Call,
        put: Put,
        discard: Callable[[str, str], None],
        transfers: concurrent.futures.Executor,
        lanes: int,
        slug: str,
        version: str,
        pending: dict[str, dict[str, Any]],
        count: Callable[..., None],
        fail: Callable[[str], None],
        line: Callable[[str], None],
        item_error: Callable[[dict[str, Any], str], Exception],
        margin: Callable[[], dt.timedelta],
        stop: threading.Event,
    ) -> None:
        self.call = call
        self.put = put
        self.discard = discard  # (file id, path): delete a pending file
        self.transfers = transfers
        self.lanes = lanes  # the transfers that run at once
        self.base = f"/products/{quote(slug)}/versions/{quote(version)}"
        self.pending = pending
        self.count = count
        self.fail = fail
        self.line = line
        self.item_error = item_error
        self.margin = margin
        self.stop = stop
        self.lock = threading.Lock()
        self.alone: list[File] = []

    @staticmethod
    def split(files: Sequence[File]) -> list[list[File]]:
        """Batches of at most ``BATCH_FILES`` files and about ``BATCH_BYTES`` of request body each."""
        batches: list[list[File]] = []
        current: list[File] = []
        size = 0
        for file in files:
            cost = len(json.dumps(file.path)) + len(file.media_type) + 120
            if current and (len(current) >= BATCH_FILES or size + cost > BATCH_BYTES):
                batches.append(current)
                current, size = [], 0
            current.append(file)
            size += cost
        if current:
            batches.append(current)
        return batches

    def plan(self, files: Sequence[File]) -> list[dict[str, Any]]:
        body = {
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "media_type": f.media_type} for f in files]
        }
        what = f"planning {len(files)} file(s)" if len(files) > 1 else f"planning {files[0].path}"
        items: list[dict[str, Any]] = self.call("POST", f"{self.base}/uploads", what, json_body=body)["items"]
        return items

    def run(self, batch: Sequence[File]) -> None:
        """Plan, upload and complete one batch."""
        for file in batch:
            # A pending upload of this path with other content (the file changed since an interrupted push)
            # cannot be resumed: discard it.
            old = self.pending.get(file.path)
            if old is not None and (old["sha256"], old["size"]) != (file.sha256, file.size):
                self.line(f"discarding the earlier upload of {file.path}: its content has changed since")
                self.discard(str(old["file_id"]), file.path)
        planned = self.plan(batch)
        uploads: list[_Upload] = []
        completing: list[tuple[File, dict[str, Any], str | None]] = []
        for file, item in zip(batch, planned, strict=True):
            status = item["status"]
            if status == "verified":
                self.count(files_skipped=1)
            elif status == "stored" and file.unchanged():
                completing.append((file, item, None))
            elif status == "stored":
                self.fail(f"{file.path} changed while it was pushed; run push again once it no longer changes.")
            elif status == "upload":
                uploads.append((file, item, self._renewer(file, item), dict(item["upload"]["headers"])))
            else:
                self._refuse(file, item.get("problem") or {})
        # A task per lane, each PUTting its share of the batch in turn, rather than a task per file: a future per
        # small file cost the client about as much as its PUT.
        lanes = [uploads[lane :: self.lanes] for lane in range(min(self.lanes, len(uploads)))]
        for done in concurrent.futures.as_completed([self.transfers.submit(self._put_each, lane) for lane in lanes]):
            for (file, item, _, _), outcome in done.result():
                if isinstance(outcome, Exception):
                    self.fail(str(outcome) if str(outcome).startswith(file.path) else f"{file.path}: {outcome}")
                    continue
                self._completed(file, item, outcome, completing)
        if completing:
            self._complete(completing)

    def _put_each(self, uploads: list[_Upload]) -> list[tuple[_Upload, str | Exception | None]]:
        """PUT each upload in turn: (upload, the object version it created, or what went wrong)."""
        outcomes: list[tuple[_Upload, str | Exception | None]] = []
        for upload in uploads:
            file, _, renew, headers = upload
            try:
                outcomes.append((upload, self.put(file, renew, headers)[1]))
            except Exception as error:
                if self.stop.is_set():
                    raise
                outcomes.append((upload, error))
        return outcomes

    def _completed(
        self,
        file: File,
        item: dict[str, Any],
        version_id: str | None,
        completing: list[tuple[File, dict[str, Any], str | None]],
    ) -> None:
        """Queue an uploaded file for completion, unless it changed while it was uploaded."""
        if not file.unchanged():
            self.fail(
                f"{file.path} changed while it was uploaded; nothing was completed. Run push again once it no "
                "longer changes."
            )
            return
        kind = item["upload"]["kind"]
        completing.append((file, item, version_id if kind == "direct" else None))

    def _renewer(self, file: File, item: dict[str, Any]) -> Callable[[bool], str]:
        """The URL of the item's upload, planned again when it is refused or about to expire."""
        state = {"upload": item["upload"]}
        lock = threading.Lock()

        def url(renew: bool) -> str:
            with lock:
                upload = state["upload"]
                expires = dt.datetime.fromisoformat(str(upload["expires_at"]).replace("Z", "+00:00"))
                if renew or expires - dt.datetime.now(dt.UTC) < self.margin():
                    fresh = self.plan([file])[0]
                    if fresh.get("upload") is not None:
                        state["upload"] = upload = fresh["upload"]
                        item["upload"] = upload
                return str(upload["url"])

        return url

    def _complete(self, completing: list[tuple[File, dict[str, Any], str | None]]) -> None:
        body = {
            "files": [
                {"file_id": item["file_id"], **({"version_id": version} if version else {})}
                for _, item, version in completing
            ]
        }
        what = f"completing {len(completing)} file(s)"
        answer = self.call("POST", f"{self.base}/uploads/complete", what, json_body=body)
        for (file, item, _), result in zip(completing, answer["items"], strict=True):
            if result["status"] == "verified":
                if item["status"] == "stored":
                    self.count(files_reused=1)
                    self.line(f"{file.path}: already stored by this organisation, not sent again")
                else:
                    self.count(files_uploaded=1)
                    self.line(f"uploaded {file.path}")
            else:
                self._refuse(file, result.get("problem") or {})

    def _refuse(self, file: File, problem: dict[str, Any]) -> None:
        if problem.get("type") in RETRY_ALONE:
            with self.lock:
                self.alone.append(file)
            return
        self.fail(str(self.item_error(problem, file.path)))
