"""Presigned URLs are the ones the ``minio`` SDK makes: the same path, query parameters and signature."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qsl, urlsplit

import pytest
from minio import Minio

from app.presign import UrlSigner

ACCESS, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
WHEN = [dt.datetime(2026, 12, 7, 1, 2, 3, tzinfo=dt.UTC), dt.datetime(2027, 1, 1, 0, 0, 0, tzinfo=dt.UTC)]

CASES = [
    ("PUT", "blobs/" + "ab" * 32, 3600, [("x-amz-checksum-sha256", "q83vEjRWeJA+/=")]),
    ("GET", "blobs/" + "cd" * 32, 900, [("response-content-disposition", 'attachment; filename="a b/ü.jsonl"')]),
    ("PUT", "staging/2f1c0c1e-0000-4000-8000-000000000001", 60, [("partNumber", "7"), ("uploadId", "x/y+z=")]),
    ("PUT", "odd keys/with spaces, ümlauts & ~tilde*", 120, []),
    ("HEAD", "blobs/x", 5, [("versionId", "abc")]),
]


def _parts(url: str) -> tuple[str, str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.netloc, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))


@pytest.mark.parametrize(
    ("endpoint", "secure", "region"),
    [
        ("127.0.0.1:8333", False, "us-east-1"),
        ("store.example:80", False, "eu-central-1"),
        ("store.example:8443", True, "us-east-1"),
        ("s3.eu-west-1.amazonaws.com", True, "eu-west-1"),
        ("s3.amazonaws.com", True, "ap-south-1"),
    ],
)
@pytest.mark.parametrize("case", CASES, ids=[case[0] + " " + case[1][:12] for case in CASES])
@pytest.mark.parametrize("when", WHEN, ids=["december", "new-year"])
def test_the_signed_url_is_the_sdks(
    endpoint: str, secure: bool, region: str, case: tuple[str, str, int, list[tuple[str, str]]], when: dt.datetime
) -> None:
    method, key, seconds, params = case
    sdk = Minio(endpoint, access_key=ACCESS, secret_key=SECRET, secure=secure, region=region)
    expected = sdk.get_presigned_url(
        method,
        "corpora-data",
        key,
        expires=dt.timedelta(seconds=seconds),
        extra_query_params=dict(params),
        request_date=when,
    )
    signer = UrlSigner.like(sdk, "corpora-data", region=region, access_key=ACCESS, secret_key=SECRET)
    ours = signer.url(method, key, seconds, params, now=when)
    assert ours.startswith("https://" if secure else "http://")
    assert _parts(ours) == _parts(expected)


def test_parameters_of_one_name_are_signed_in_the_order_of_their_values() -> None:
    signer = UrlSigner("http://h:1/b/", region="r", access_key=ACCESS, secret_key=SECRET)
    one = signer.url("GET", "k", 5, [("a", "2"), ("a", "1")], now=WHEN[0])
    other = signer.url("GET", "k", 5, [("a", "1"), ("a", "2")], now=WHEN[0])
    assert one == other
    assert "a=1&a=2" in one


def test_a_signer_that_signed_on_one_day_signs_the_next_with_that_days_key() -> None:
    def signer() -> UrlSigner:
        return UrlSigner("http://h:1/b/", region="r", access_key=ACCESS, secret_key=SECRET)

    used = signer()
    used.url("GET", "k", 5, now=WHEN[0])
    assert used.url("GET", "k", 5, now=WHEN[1]) == signer().url("GET", "k", 5, now=WHEN[1])
