"""The object store: a thin async wrapper over the synchronous ``minio`` SDK.

Every SDK call runs in a worker thread so the event loop never blocks on the network.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from functools import partial
from typing import TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
import urllib3
from minio import Minio
from minio.error import S3Error

from app.settings import Settings

T = TypeVar("T")

MAX_PRESIGN_SECONDS = 3600


class ObjectStoreUnavailable(Exception):
    """The object store could not be reached or answered with a server error."""


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
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3, read=60),
            maxsize=32,
            retries=urllib3.Retry(total=2, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(
            endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=secure,
            region=settings.s3_region,
            http_client=http,
        )

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(fn)
        except S3Error:
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ObjectStoreUnavailable(str(exc)) from exc

    async def ensure_bucket(self) -> None:
        def create() -> None:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket, object_lock=True)

        await self._run(create)

    async def ping(self) -> None:
        await self._run(partial(self.client.bucket_exists, self.bucket))

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        await self._run(partial(self.client.put_object, self.bucket, key, io.BytesIO(data), len(data), content_type))

    async def get_bytes(self, key: str) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(self.bucket, key)
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

    async def presigned_get(self, key: str, seconds: int, *, filename: str | None = None) -> str:
        seconds = min(seconds, MAX_PRESIGN_SECONDS)
        headers: dict[str, str | list[str] | tuple[str]] | None = None
        if filename is not None:
            headers = {"response-content-disposition": f'attachment; filename="{filename}"'}
        return await self._run(
            partial(
                self.client.presigned_get_object,
                self.bucket,
                key,
                expires=dt.timedelta(seconds=seconds),
                response_headers=headers,
            )
        )

    async def presigned_put(self, key: str, seconds: int) -> str:
        return await self._run(
            partial(
                self.client.presigned_put_object,
                self.bucket,
                key,
                expires=dt.timedelta(seconds=min(seconds, MAX_PRESIGN_SECONDS)),
            )
        )
