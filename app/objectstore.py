"""The object store: a thin async wrapper over the synchronous ``minio`` SDK.

Every SDK call runs in a worker thread so the event loop never blocks on the network. The one request sent
by the thousand, a batch completion's HEAD per upload, goes out on the event loop itself (aiohttp).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from functools import partial
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
import anyio.to_thread
import urllib3
from minio import Minio
from minio.commonconfig import COMPLIANCE, ComposeSource
from minio.datatypes import Part
from minio.error import S3Error
from minio.retention import Retention

from app.presign import UrlSigner
from app.settings import Settings

T = TypeVar("T")

MAX_PRESIGN_SECONDS = 3600
STORE_CALLS = 16  # calls of one batch at once (the client keeps up to 32 connections)
_NO_SUCH_VERSION = ("NoSuchKey", "NoSuchObject", "ResourceNotFound", "NoSuchVersion", "InvalidArgument", "BadRequest")


class ObjectStoreUnavailable(Exception):
    """The object store could not be reached or answered with a server error."""


class ObjectRefused(Exception):
    """The object store understood the request and refused it (e.g. a multipart upload with missing parts)."""


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``http://host:port`` or ``host:port`` → (``host:port``, secure)."""
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        return parts.netloc, parts.scheme == "https"
    return endpoint, secure


class ObjectStore:
    def __init__(self, settings: Settings) -> None:
        if settings.s3_endpoint is None:
            raise ValueError("the object store endpoint must be resolved before the app starts")
        endpoint, secure = split_endpoint(settings.s3_endpoint, settings.s3_secure)
        self.bucket = settings.s3_bucket
        self.region = settings.s3_region

        def client(http: urllib3.PoolManager) -> Minio:
            return Minio(
                endpoint,
                access_key=settings.s3_access_key,
                secret_key=settings.s3_secret_key,
                secure=secure,
                region=settings.s3_region,
                http_client=http,
            )

        # Every call has a deadline: connecting, and each wait for the store's next bytes. A refused connection
        # or a 5xx is tried once more; a store that does not answer in time is not waited for again.
        deadline = settings.s3_timeout_seconds
        self.client = client(
            urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=min(3, deadline), read=deadline),
                maxsize=32,
                retries=urllib3.Retry(total=1, read=0, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
            )
        )
        # A proxied download, once the store has started answering, waits this long for each next piece.
        self.stream_timeout = settings.s3_stream_timeout_seconds
        # Readiness checks must answer quickly: a store that accepts connections but never replies is down.
        self.probe_client = client(
            urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=1), maxsize=2, retries=False)
        )
        self.urls = UrlSigner.like(
            self.client,
            self.bucket,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
        )
        self._checked_puts: bool | None = None
        self._deadline = deadline
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    async def _run(self, fn: Callable[[], T], *, abandon_on_cancel: bool = False) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, abandon_on_cancel=abandon_on_cancel)
        except S3Error:
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ObjectStoreUnavailable(str(exc)) from exc

    async def ensure_bucket(self) -> bool:
        """Create the bucket, with object lock, if it is missing; whether the bucket has object lock."""

        def create() -> bool:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket, object_lock=True)
                return True
            try:
                self.client.get_object_lock_config(self.bucket)
            except S3Error as exc:
                if exc.code == "ObjectLockConfigurationNotFoundError":
                    return False
                raise
            return True

        locked: bool = await self._run(create)
        return locked

    async def ping(self) -> None:
        await self._run(partial(self.probe_client.bucket_exists, self.bucket), abandon_on_cancel=True)

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        retain_until: dt.datetime | None = None,
    ) -> None:
        """Store ``data`` at ``key``; with ``retain_until``, under COMPLIANCE retention: until then the store
        refuses to delete this version or shorten its retention, whoever asks."""
        retention = None if retain_until is None else Retention(COMPLIANCE, retain_until)
        await self._run(
            partial(
                self.client.put_object,
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type,
                retention=retention,
            )
        )

    async def replace_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` at ``key`` and drop the key's earlier versions: for a small object rewritten often,
        which the bucket's versioning would otherwise keep every version of."""

        def put_and_prune() -> None:
            written = self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type)
            for version in self._versions(key):
                if version != written.version_id:
                    self.client.remove_object(self.bucket, key, version_id=version)

        await self._run(put_and_prune)

    def _versions(self, key: str) -> list[str | None]:
        """The version ids of ``key`` (delete markers included), newest first."""
        listing = self.client.list_objects(self.bucket, prefix=key, include_version=True)
        return [o.version_id for o in listing if o.object_name == key]

    async def get_bytes(self, key: str, version_id: str | None = None) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(self.bucket, key, version_id=version_id)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await self._run(read)

    async def list_keys(self, prefix: str) -> list[str]:
        def names() -> list[str]:
            return [
                o.object_name
                for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if o.object_name is not None
            ]

        return await self._run(names)

    # Presigning is local work (static credentials, the region given): it runs on the event loop, which costs
    # less than a hop to a worker thread and back.

    async def presigned_get(self, key: str, seconds: int, *, content_disposition: str | None = None) -> str:
        """A GET URL valid for ``seconds`` (at most an hour); the store answers it with ``content_disposition``."""
        params = [("response-content-disposition", content_disposition)] if content_disposition is not None else []
        return self.urls.url("GET", key, min(seconds, MAX_PRESIGN_SECONDS), params)

    async def presigned_put(self, key: str, seconds: int) -> str:
        return self.urls.url("PUT", key, min(seconds, MAX_PRESIGN_SECONDS))

    # --- uploads ------------------------------------------------------------------------------------------

    def _checked_put_url(self, key: str, sha256: str, seconds: int) -> str:
        # Signed into the URL's query: the uploader can neither drop nor change it.
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        return self.urls.url("PUT", key, min(seconds, MAX_PRESIGN_SECONDS), [("x-amz-checksum-sha256", checksum)])

    async def presigned_checked_put(self, key: str, sha256: str, seconds: int) -> str:
        """A PUT URL whose body the store refuses unless it hashes to ``sha256`` (see ``checks_puts``)."""
        return self._checked_put_url(key, sha256, seconds)

    async def checks_puts(self) -> bool:
        """Whether the store refuses a presigned PUT whose bytes do not match the SHA-256 signed into its URL, and
        answers each PUT with the id of the object version it created. Only then may clients upload straight to a
        content-addressed key: no one can put other bytes there, and a completion names exactly the version it
        uploaded. Probed once (two small PUTs); a store that fails the probe gets staged uploads."""
        if self._checked_puts is None:

            def probe() -> bool:
                key = f"staging/{uuid.uuid4()}"  # swept by the janitor should the cleanup below fail
                data = b"corpora checksum probe"
                url = self._checked_put_url(key, hashlib.sha256(data).hexdigest(), 60)
                http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=3, read=10), retries=False)
                try:
                    wrong = http.request("PUT", url, body=b"other bytes than were signed")
                    right = http.request("PUT", url, body=data)
                finally:
                    for version in self._versions(key):
                        self.client.remove_object(self.bucket, key, version_id=version)
                version = right.headers.get("x-amz-version-id")
                return 400 <= wrong.status < 500 and right.status == 200 and version not in (None, "", "null")

            self._checked_puts = await self._run(probe)
        return self._checked_puts

    async def remove_version(self, key: str, version_id: str) -> None:
        await self._run(partial(self.client.remove_object, self.bucket, key, version_id=version_id))

    async def drop_duplicate(self, key: str, version_id: str) -> None:
        """Remove ``version_id`` of ``key`` when the key has another version (the same content, uploaded earlier):
        content-addressed bytes are kept once."""

        def drop() -> None:
            if any(v != version_id for v in self._versions(key)):
                self.client.remove_object(self.bucket, key, version_id=version_id)

        await self._run(drop)

    async def create_multipart(self, key: str, content_type: str) -> str:
        return await self._run(
            partial(self.client._create_multipart_upload, self.bucket, key, {"Content-Type": content_type})
        )

    async def presigned_part(self, key: str, upload_id: str, part_number: int, seconds: int) -> str:
        params = [("partNumber", str(part_number)), ("uploadId", upload_id)]
        return self.urls.url("PUT", key, min(seconds, MAX_PRESIGN_SECONDS), params)

    async def uploaded_parts(self, key: str, upload_id: str) -> list[tuple[int, str, int]]:
        """(part number, ETag, size) of the parts already uploaded."""

        def parts() -> list[tuple[int, str, int]]:
            found: list[tuple[int, str, int]] = []
            marker: str | None = None
            while True:
                result = self.client._list_parts(self.bucket, key, upload_id, part_number_marker=marker)
                found += [(p.part_number, p.etag, p.size or 0) for p in result.parts]
                if not result.is_truncated:
                    return found
                marker = str(result.next_part_number_marker)

        return await self._run(parts)

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        ordered = [Part(number, etag.strip('"')) for number, etag in sorted(parts)]
        try:
            await self._run(partial(self.client._complete_multipart_upload, self.bucket, key, upload_id, ordered))
        except S3Error as exc:
            raise ObjectRefused(f"{exc.code}: {exc.message}") from exc

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._run(partial(self.client._abort_multipart_upload, self.bucket, key, upload_id))

    async def multipart_uploads(self, prefix: str) -> list[tuple[str, str, dt.datetime | None]]:
        """(key, upload id, initiated) of the unfinished multipart uploads under ``prefix``."""

        def uploads() -> list[tuple[str, str, dt.datetime | None]]:
            found: list[tuple[str, str, dt.datetime | None]] = []
            key_marker: str | None = None
            id_marker: str | None = None
            while True:
                result = self.client._list_multipart_uploads(
                    self.bucket, prefix=prefix, key_marker=key_marker, upload_id_marker=id_marker
                )
                found += [(u.object_name, u.upload_id or "", u.initiated_time) for u in result.uploads]
                if not result.is_truncated:
                    return found
                key_marker, id_marker = result.next_key_marker, result.next_upload_id_marker

        return await self._run(uploads)

    async def size_of(self, key: str) -> int | None:
        """The object's size, or ``None`` when there is no such object."""

        def stat() -> int | None:
            try:
                return self.client.stat_object(self.bucket, key).size
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return None
                raise

        return await self._run(stat)

    async def delete(self, key: str) -> None:
        """Remove the object with every version of it. The bucket keeps versions (object lock needs them), so a
        plain DELETE would only hide the bytes behind a delete marker."""

        def remove() -> None:
            for version in self._versions(key):
                self.client.remove_object(self.bucket, key, version_id=version)

        await self._run(remove)

    async def hold(self, key: str) -> bool:
        """Put the object under legal hold (no version of it can be deleted until the hold is lifted); False when
        the bucket has no object lock, or the object is missing."""

        def enable() -> bool:
            try:
                self.client.enable_object_legal_hold(self.bucket, key)
            except S3Error as exc:
                if exc.code in ("InvalidRequest", "NoSuchKey", "ObjectLockConfigurationNotFoundError"):
                    return False
                raise
            return bool(self.client.is_object_legal_hold_enabled(self.bucket, key))

        held: bool = await self._run(enable)
        return held

    async def version_digests(self, versions: Sequence[tuple[str, str]]) -> list[tuple[int, str, dt.datetime] | None]:
        """For each (key, version id), in order: (bytes, lower-case hex SHA-256, when it was written) of that version
        of the object as stored, or ``None`` when the key has no such version.

        The SHA-256 is the one the store recorded when it checked the upload against the checksum signed into its
        URL (``checks_puts``), asked for with a HEAD; a store that records none has the version read and hashed.
        Reading it back cost a 10 KiB upload's completion about as much of the store as a download. The HEADs go
        out on the event loop through aiohttp, ``STORE_CALLS`` at a time: through urllib3 in worker threads a
        HEAD cost the API 520 to 580 µs of CPU (the threads' hand-overs and http.client's header parsing), through
        aiohttp 140."""
        if not versions:
            return []
        calls = asyncio.Semaphore(STORE_CALLS)

        async def digest(key: str, version_id: str) -> tuple[int, str, dt.datetime] | None:
            async with calls:
                return await self._version_digest(key, version_id)

        return list(await asyncio.gather(*(digest(key, version_id) for key, version_id in versions)))

    async def _version_digest(self, key: str, version_id: str) -> tuple[int, str, dt.datetime] | None:
        # A presigned HEAD: the SDK's stat_object signs each request anew, and runs in a thread.
        mode = ("x-amz-checksum-mode", "ENABLED")
        url = self.urls.url("HEAD", key, 60, [("versionId", version_id)], headers=[mode])
        status, headers = await self._head(url, dict([mode]))
        if status in (400, 404):  # a malformed version id is refused as a bad request: no such version either
            return None
        if status != 200:
            raise ObjectStoreUnavailable(f"HEAD {key} version {version_id}: the store answered {status}")
        recorded = headers.get("x-amz-checksum-sha256")
        length, written = headers.get("content-length"), headers.get("last-modified")
        if recorded and length is not None and written is not None:
            return int(length), base64.b64decode(recorded).hex(), parsedate_to_datetime(written)
        return await self._run(partial(self._read_version, key, version_id))

    async def _head(self, url: str, headers: dict[str, str]) -> tuple[int, Mapping[str, str]]:
        """A HEAD with the store's deadlines, tried once more after a refused connection or a 5xx (as the
        SDK's calls are); a store that does not answer in time is not waited for again."""
        session = self._http_session()
        for attempt in (1, 2):
            try:
                async with session.head(url, headers=headers, allow_redirects=False) as response:
                    if response.status < 500 or attempt == 2:
                        return response.status, response.headers
            except aiohttp.ServerTimeoutError as exc:
                raise ObjectStoreUnavailable(f"HEAD: the store did not answer in time ({exc})") from exc
            except (aiohttp.ClientError, OSError) as exc:
                if attempt == 2:
                    raise ObjectStoreUnavailable(f"HEAD: {exc}") from exc
            await asyncio.sleep(0.1)
        raise AssertionError("unreachable")

    def _http_session(self) -> aiohttp.ClientSession:
        """This event loop's aiohttp session (one per worker; a session belongs to the loop that made it)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(sock_connect=min(3, self._deadline), sock_read=self._deadline),
                connector=aiohttp.TCPConnector(limit=STORE_CALLS * 2),
                auto_decompress=False,
            )
            self._session_loop = loop
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session, if this event loop made it (the SDK's connections need no closing). One that
        another loop made (a test's earlier loop) cannot be closed from here and is left to the collector."""
        session, self._session = self._session, None
        if session is not None and not session.closed and self._session_loop is asyncio.get_running_loop():
            await session.close()

    def _read_version(self, key: str, version_id: str) -> tuple[int, str, dt.datetime] | None:
        try:
            response = self.client.get_object(self.bucket, key, version_id=version_id)
        except S3Error as exc:
            if exc.code in _NO_SUCH_VERSION:
                return None
            raise
        hasher = hashlib.sha256()
        size = 0
        try:
            for chunk in response.stream(1024 * 1024, decode_content=False):
                hasher.update(chunk)
                size += len(chunk)
            modified = parsedate_to_datetime(response.headers["Last-Modified"])
        finally:
            response.close()
            response.release_conn()
        return size, hasher.hexdigest(), modified

    async def sha256_of(self, key: str, chunk_size: int = 4 * 1024 * 1024) -> tuple[int, str] | None:
        """Stream the object as stored (never content-decoded) and return (bytes read, lower-case hex SHA-256),
        or ``None`` when there is no such object.

        Each chunk is hashed in a second thread while the next one is read (``hashlib`` releases the GIL),
        so reading and hashing overlap. An object of one chunk is hashed in place (no thread).
        """

        def digest() -> tuple[int, str] | None:
            try:
                response = self.client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return None
                raise
            length = response.headers.get("Content-Length")
            if length is not None and int(length) <= chunk_size:
                try:
                    data = response.read(decode_content=False)
                finally:
                    response.close()
                    response.release_conn()
                return len(data), hashlib.sha256(data).hexdigest()
            hasher = hashlib.sha256()
            size = 0
            hashing: Future[None] | None = None
            try:
                with ThreadPoolExecutor(1, thread_name_prefix="sha256") as pool:
                    for chunk in response.stream(chunk_size, decode_content=False):
                        if hashing is not None:
                            hashing.result()
                        hashing = pool.submit(hasher.update, chunk)
                        size += len(chunk)
                    if hashing is not None:
                        hashing.result()
            finally:
                response.close()
                response.release_conn()
            return size, hasher.hexdigest()

        return await self._run(digest)

    async def copy(self, source: str, target: str) -> None:
        """A server-side copy; objects above S3's 5 GiB single-copy limit are copied in parts."""
        await self._run(partial(self.client.compose_object, self.bucket, target, [ComposeSource(self.bucket, source)]))

    async def objects(self, prefix: str) -> list[tuple[str, dt.datetime | None]]:
        """(key, last modified) of every object under ``prefix``."""

        def names() -> list[tuple[str, dt.datetime | None]]:
            return [
                (o.object_name, o.last_modified)
                for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if o.object_name is not None
            ]

        return await self._run(names)

    # --- downloads ----------------------------------------------------------------------------------------

    async def open_range(self, key: str, offset: int, length: int) -> ObjectReader:
        """A reader over ``length`` bytes from ``offset``; read it in chunks and always ``close()`` it.

        The store must start answering within the usual deadline; from then on the stream has its own, longer
        idle deadline (a slow client makes the server read slowly too, and the store may pause)."""

        def open_stream() -> urllib3.BaseHTTPResponse:
            response = self.client.get_object(self.bucket, key, offset=offset, length=length)
            connection = getattr(response, "connection", None)
            sock = getattr(connection, "sock", None)
            if sock is not None:
                sock.settimeout(self.stream_timeout)
            return response

        return ObjectReader(self, await self._run(open_stream))


class ObjectReader:
    """Chunks of one object read in a worker thread; closing releases the upstream connection at once."""

    def __init__(self, store: ObjectStore, response: urllib3.BaseHTTPResponse) -> None:
        self._store = store
        self._response = response

    async def read(self, size: int) -> bytes:
        # The stored bytes as they are: they are what the sha256 of the manifest covers.
        return await self._store._run(partial(self._response.read, size, decode_content=False))

    def close(self) -> None:
        # Closing (not draining) drops the connection instead of reading the rest of the object.
        self._response.close()
        self._response.release_conn()
