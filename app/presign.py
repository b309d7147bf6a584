"""Presigned S3 URLs: AWS Signature Version 4 in the query string, the URLs the ``minio`` SDK makes.

An upload plan signs a URL per file and a download grant one per file; the SDK spends about 100 µs on each
(building and re-parsing the URL, formatting dates, deriving the signing key anew). Here the day's signing key is
kept and the URL is assembled from fixed parts: about a quarter of that, and the same URL up to the order of its
query parameters (``tests/app/test_presign.py`` checks it against the SDK's).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from urllib.parse import quote, urlsplit

from minio import Minio

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_PROBE_KEY = "k"


def _encode(value: str, safe: str = "-_.~") -> str:
    """RFC 3986 percent-encoding of everything but the unreserved characters, as SigV4 requires."""
    return quote(value, safe=safe)


class UrlSigner:
    """Signs URLs for the objects of one bucket, addressed at ``bucket_url`` (``scheme://host[:port]/path/``, the
    path ending where object keys start), with one access key."""

    def __init__(self, bucket_url: str, *, region: str, access_key: str, secret_key: str) -> None:
        parts = urlsplit(bucket_url)
        self._host = parts.netloc
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._day = ""
        self._signing_key = b""

    @classmethod
    def like(cls, sdk: Minio, bucket: str, *, region: str, access_key: str, secret_key: str) -> UrlSigner:
        """A signer addressing ``bucket`` where the SDK does (the bucket in the path, or as the host's subdomain
        for the stores that want it), learnt from one URL the SDK presigns."""
        sample = urlsplit(sdk.get_presigned_url("GET", bucket, _PROBE_KEY, expires=dt.timedelta(seconds=1)))
        bucket_url = f"{sample.scheme}://{sample.netloc}{sample.path.removesuffix(_PROBE_KEY)}"
        return cls(bucket_url, region=region, access_key=access_key, secret_key=secret_key)

    def _key_for(self, day: str) -> bytes:
        if day != self._day:
            key = hmac.digest(f"AWS4{self._secret_key}".encode(), day.encode(), "sha256")
            for part in (self._region, "s3", "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            self._signing_key, self._day = key, day
        return self._signing_key

    def url(
        self,
        method: str,
        key: str,
        seconds: int,
        params: Sequence[tuple[str, str]] = (),
        *,
        headers: Sequence[tuple[str, str]] = (),
        now: dt.datetime | None = None,
    ) -> str:
        """A URL for ``method`` on the object ``key``, valid for ``seconds`` from ``now``, with ``params`` in its
        query (signed: the holder can neither drop nor change them). A request to it must send ``headers`` (lower
        case names), which are signed too: a store refuses ``x-amz-*`` headers that are not."""
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        scope = f"{day}/{self._region}/s3/aws4_request"
        signed_headers = sorted([("host", self._host), *headers])
        signed = ";".join(name for name, _ in signed_headers)
        fields = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", _encode(f"{self._access_key}/{scope}")),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(seconds)),
            ("X-Amz-SignedHeaders", _encode(signed)),
            *((_encode(name), _encode(value)) for name, value in params),
        ]
        query = "&".join(f"{name}={value}" for name, value in sorted(fields))  # by name, then value
        path = self._prefix + _encode(key, safe="/-_.~")
        canonical_headers = "".join(f"{name}:{value.strip()}\n" for name, value in signed_headers)
        canonical = f"{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{UNSIGNED_PAYLOAD}"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        signature = hmac.new(self._key_for(day), f"{ALGORITHM}\n{stamp}\n{scope}\n{digest}".encode(), "sha256")
        return f"{self._origin}{path}?{query}&X-Amz-Signature={signature.hexdigest()}"
