"""Proxy delivery through a real HTTP server: ranges and resumes, bytes served per grant, every request
re-checked, and aborted transfers that release the object store connection at once.

Aborts need a real server (the in-process ASGI client never drops a connection), so these tests run the
app in proxy mode under uvicorn in a background thread with its own event loop, and talk to it over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
import socket
import threading
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import httpx
import jwt
import psutil
import pytest
import pytest_asyncio
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.main import create_app
from app.objectstore import split_endpoint
from app.settings import Settings
from licensing.downloads.delivery import CHUNK_SIZE, ByteRange, stream_object
from tests.conftest import Account, Servers, asyncpg_dsn, sign_up
from tests.licensing.helpers import Market, download_body, market
from tests.tcp_proxy import TcpProxy, http_upstream, proxied_endpoint

T = TypeVar("T")
MiB = 1024 * 1024
# The send buffer of the listening socket, inherited by every connection it accepts. Fixed (instead of left to
# Linux to autotune up to net.ipv4.tcp_wmem's maximum, 4 MiB) so that what can sit between the server and the
# client stays small enough for the bytes-served bound of the abort test to mean something; likewise the
# client's receive buffer.
SERVER_SNDBUF = 64 * 1024
CLIENT_RCVBUF = 64 * 1024
LOOPBACK_SEGMENT = 64 * 1024


@dataclasses.dataclass
class LiveServer:
    url: str
    app: Litestar
    server: uvicorn.Server
    loop: asyncio.AbstractEventLoop
    sndbuf: int  # the effective send buffer of accepted connections (Linux doubles what was asked for)

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the server's event loop (where the app's connection pools live)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def idle(self, within: float = 30) -> float:
        """Wait until no request is being handled (every response finished, its clean-up run); return how long."""
        started = time.monotonic()
        while self.server.server_state.tasks:
            if time.monotonic() - started > within:
                raise AssertionError(f"{len(self.server.server_state.tasks)} request(s) still running")
            await asyncio.sleep(0.01)
        return time.monotonic() - started


@contextlib.contextmanager
def live_server(settings: Settings, *, sndbuf: int | None = None) -> Iterator[LiveServer]:
    """``create_app(settings)`` served by uvicorn on a free port, in a thread with its own event loop."""
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve(sockets=[sock])

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name=f"live-server-{port}")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.02)
    try:
        sndbuf_now = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        yield LiveServer(f"http://127.0.0.1:{port}", app, server, loops[0], sndbuf_now)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def proxy(settings: Settings) -> Iterator[LiveServer]:
    with live_server(dataclasses.replace(settings, download_mode="proxy"), sndbuf=SERVER_SNDBUF) as live:
        yield live


# Chunks beyond where the aborts stop, so the upstream is never read to its end; not a multiple of one.
BIG = 6 * MiB + 4321


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def big_market(client: AsyncTestClient[Any], servers: Servers) -> AsyncIterator[Market]:
    """A product with one file of a few chunks, and a buyer with unlimited downloads: shared by several tests."""
    db = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    try:
        yield await market(client, db, files={"data/big.bin": content_of(BIG, seed=1)}, downloads=None)
    finally:
        await db.close()


def content_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def s3_port(servers: Servers) -> int:
    host_port, _ = split_endpoint(servers.s3_endpoint, False)
    return int(host_port.rsplit(":", 1)[1])


def established(port: int, *, local: bool = False) -> set[int]:
    """The local ports of this process's ESTABLISHED TCP connections to ``port`` (with ``local``: accepted on it)."""
    found = set()
    for c in psutil.Process().net_connections(kind="tcp"):
        address = c.laddr if local else c.raddr
        if c.status == psutil.CONN_ESTABLISHED and address and address.port == port and c.laddr:
            found.add(c.laddr.port)
    return found


def checked_out(live: LiveServer) -> int:
    """Connections of the app's object store pool handed out and not given back."""
    manager = live.app.state.object_store.client._http
    pools = [manager.pools[key] for key in manager.pools.keys()]  # noqa: SIM118 - the container cannot iterate
    return sum(pool.pool.maxsize - pool.pool.qsize() for pool in pools)


async def released(live: LiveServer, s3: int, before: set[int]) -> None:
    """Every upstream connection given back to the pool, and none opened since ``before`` still open, save at
    most two: the tests' other apps share this process and keep a connection or two alive in their pools for
    their background work (audit checkpoints), which a leak of the streams here would far exceed."""
    deadline = time.monotonic() + 5
    while checked_out(live) or len(established(s3) - before) > 2:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{checked_out(live)} object store connection(s) not released; "
                f"{len(established(s3) - before)} opened and still open"
            )
        await asyncio.sleep(0.02)


async def grant(live: LiveServer, m: Market, path: str, account: Account | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=live.url, timeout=60) as http:
        response = await http.post(
            "/api/v1/downloads", json=download_body(m, path), headers=(account or m.buyer).headers
        )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def bytes_served(db: asyncpg.Connection, download_id: str) -> int:
    value: int = await db.fetchval("SELECT bytes_served FROM download_grants WHERE id = $1::uuid", download_id)
    return value


async def test_ranges_resumes_and_bytes_served(proxy: LiveServer, big_market: Market, db: asyncpg.Connection) -> None:
    m = big_market
    content = m.files["data/big.bin"]
    size = len(content)
    etag = f'"{hashlib.sha256(content).hexdigest()}"'
    granted = await grant(proxy, m, "data/big.bin")
    assert granted["mode"] == "proxy"
    # The proxy URL (which also needs the bearer token) works until the grant's window ends, and says so.
    assert granted["expires_at"] == granted["window_ends_at"]
    url = granted["url"]
    assert url == f"{proxy.url}/api/v1/downloads/{granted['download_id']}/content"
    quota = await db.fetchrow(
        "SELECT downloads_used, bytes_used FROM entitlements WHERE id = $1::uuid", m.entitlement_id
    )
    sent = 0
    async with httpx.AsyncClient(headers=m.buyer.headers, timeout=60) as http:
        full = await http.get(url)
        assert full.status_code == 200
        assert full.content == content
        assert full.headers["etag"] == etag
        assert full.headers["accept-ranges"] == "bytes"
        assert full.headers["content-length"] == str(size)
        assert full.headers["content-type"] == "application/octet-stream"
        assert 'filename="big.bin"' in full.headers["content-disposition"]
        sent += size

        # An interrupted transfer resumed twice, each time from where the previous piece ended.
        pieces = []
        for header, expected_range in [
            ("bytes=0-1048575", f"bytes 0-1048575/{size}"),
            ("bytes=1048576-2500000", f"bytes 1048576-2500000/{size}"),
            ("bytes=2500001-", f"bytes 2500001-{size - 1}/{size}"),
        ]:
            part = await http.get(url, headers={"Range": header, "If-Range": etag})
            assert part.status_code == 206, part.text
            assert part.headers["content-range"] == expected_range
            assert part.headers["content-length"] == str(len(part.content))
            assert part.headers["etag"] == etag
            pieces.append(part.content)
            sent += len(part.content)
        assert b"".join(pieces) == content

        suffix = await http.get(url, headers={"Range": "bytes=-100"})
        assert suffix.status_code == 206
        assert suffix.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
        assert suffix.content == content[-100:]
        sent += 100
        past_the_end = await http.get(url, headers={"Range": f"bytes=10-{size + 5000}"})
        assert past_the_end.status_code == 206
        assert past_the_end.headers["content-range"] == f"bytes 10-{size - 1}/{size}"
        sent += size - 10

        # The file changed since the client's partial copy (another ETag): the whole file, not a range.
        stale = await http.get(url, headers={"Range": "bytes=100-", "If-Range": '"' + "0" * 64 + '"'})
        assert stale.status_code == 200
        assert stale.content == content
        assert "content-range" not in stale.headers
        sent += size
        # Several ranges are answered with the whole file, as RFC 9110 allows.
        multiple = await http.get(url, headers={"Range": "bytes=0-9,20-29"})
        assert multiple.status_code == 200
        assert len(multiple.content) == size
        sent += size

        beyond = await http.get(url, headers={"Range": f"bytes={size}-"})
        assert beyond.status_code == 416
        assert beyond.headers["content-range"] == f"bytes */{size}"
        assert beyond.headers["content-type"].startswith("application/problem+json")
        assert beyond.json()["type"] == "range-not-satisfiable"
        # A unit the server does not know is ignored (RFC 9110 section 14.2): the whole file, as without Range.
        other_unit = await http.get(url, headers={"Range": "items=0-9"})
        assert other_unit.status_code == 200
        assert other_unit.content == content
        assert "content-range" not in other_unit.headers
        sent += size
        # HEAD answers like GET without a body, and sends (so records) nothing.
        whole, part = await http.head(url), await http.head(url, headers={"Range": "bytes=10-19"})
        assert (whole.status_code, whole.headers["content-length"], whole.content) == (200, str(size), b"")
        assert whole.headers["etag"] == etag
        assert whole.headers["accept-ranges"] == "bytes"
        assert (part.status_code, part.headers["content-range"], part.content) == (206, f"bytes 10-19/{size}", b"")
        assert part.headers["content-length"] == "10"
        for malformed in ["bytes=abc", "bytes=9-3", "bytes=-", "bytes=", "bytes 0-9", "bytes=0-9,x"]:
            bad = await http.get(url, headers={"Range": malformed})
            assert bad.status_code == 400, malformed
            assert bad.headers["content-type"].startswith("application/problem+json")
            assert bad.json()["type"] == "malformed-range"
    await proxy.idle()
    assert await bytes_served(db, granted["download_id"]) == sent
    # Resumes and repeats are deliveries of the same grant: nothing more was charged.
    assert (
        await db.fetchrow("SELECT downloads_used, bytes_used FROM entitlements WHERE id = $1::uuid", m.entitlement_id)
        == quota
    )


async def test_aborted_downloads_release_the_object_store_at_once_and_record_what_was_sent(
    proxy: LiveServer, big_market: Market, db: asyncpg.Connection, servers: Servers
) -> None:
    """100 downloads dropped by the client part-way, 25 at a time (one per grant, so each one's record can be
    read on its own once the server is idle).

    Asserted for each: ``received - CHUNK_SIZE <= recorded <= received + slack``.

    A chunk counts once the server's ``send`` returned and the stream passed the checkpoint after it. Below: the
    only bytes the client can have without their being counted are those of the last chunk sent, when the
    disconnect cancels the stream at that checkpoint. Above: what was counted but never read by the client sits
    in buffers, or was dropped with them when the client left:

    - the kernel's: the server's send buffer and the client's receive buffer, both fixed for this test and read
      back from the sockets, each able to overshoot by one segment (Linux admits a write while the queue is
      below the limit; loopback segments are up to 64 KiB);
    - the server's write buffer: up to its high-water mark plus the chunk just written (servers write a chunk
      whole, then wait for the buffer to drain before the next);
    - one chunk written after the connection broke but before the server learnt so (the write is dropped).
    """
    m = big_market
    content = m.files["data/big.bin"]
    grants = [await grant(proxy, m, "data/big.bin") for _ in range(25)]
    port = s3_port(servers)
    await proxy.idle()
    before = established(port)
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    rcvbuf = probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    probe.close()
    kernel = proxy.sndbuf + rcvbuf + 2 * LOOPBACK_SEGMENT
    slack = kernel + 3 * CHUNK_SIZE
    rng = random.Random(11)
    transport = httpx.AsyncHTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)],
        limits=httpx.Limits(max_connections=25, max_keepalive_connections=0),
    )

    async def abort(http: httpx.AsyncClient, url: str, stop_after: int) -> int:
        async with http.stream("GET", url) as response:
            assert response.status_code == 200
            received = 0
            async for data in response.aiter_raw():
                received += len(data)
                if received >= stop_after:
                    break
        # Leaving the block before the end of the body closed the connection mid-transfer.
        return received

    recorded = {g["download_id"]: 0 for g in grants}
    results: list[tuple[int, int]] = []
    async with httpx.AsyncClient(transport=transport, headers=m.buyer.headers, timeout=60) as http:
        for _ in range(4):
            stops = [rng.randrange(0, 2 * CHUNK_SIZE + CHUNK_SIZE // 2) for _ in grants]
            received = await asyncio.gather(*[abort(http, g["url"], s) for g, s in zip(grants, stops, strict=True)])
            assert all(r < len(content) for r in received)
            # Every request finished, so every object store reader was closed: nothing left open upstream,
            # nor towards the clients.
            await proxy.idle()
            await released(proxy, port, before)
            assert not established(proxy.port, local=True)
            for g, got in zip(grants, received, strict=True):
                total = await bytes_served(db, g["download_id"])
                results.append((got, total - recorded[g["download_id"]]))
                recorded[g["download_id"]] = total
    assert len(results) == 100
    for got, served in results:
        assert got - CHUNK_SIZE <= served <= got + slack, (got, served, slack)
    # The aborts stopped anywhere in the first two and a half chunks, some past the first chunk.
    assert any(got > CHUNK_SIZE for got, _ in results)
    assert max(served for _, served in results) < len(content)


async def test_a_failing_send_closes_the_upstream_before_the_response_ends(
    proxy: LiveServer,
    big_market: Market,
    db: asyncpg.Connection,
    servers: Servers,
) -> None:
    """ASGI servers may raise from ``send`` once the client is gone (the spec suggests an ``OSError``): the stream
    is closed and recorded before the app returns, not whenever the garbage collector gets to it."""
    m = big_market
    granted = await grant(proxy, m, "data/big.bin")
    path = urlsplit(granted["url"]).path
    port = s3_port(servers)
    before = established(port)
    accepted = 0
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not gone.is_set():
            gone.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client never says it left: only send notices
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal accepted
        if message["type"] == "http.response.body" and message.get("body"):
            if accepted >= 2 * CHUNK_SIZE:
                raise OSError("the client went away")
            accepted += len(message["body"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver.local"), (b"authorization", f"Bearer {m.buyer.token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver.local", 80),
        "state": {},
    }

    async def call() -> None:
        with contextlib.suppress(Exception):
            await proxy.app(scope, receive, send)  # type: ignore[arg-type]

    await proxy.call(call())
    assert accepted == 2 * CHUNK_SIZE
    assert await bytes_served(db, granted["download_id"]) == accepted
    await released(proxy, port, before)


async def test_streaming_holds_one_chunk_whatever_the_size(client: AsyncTestClient[Any], app: Litestar) -> None:
    """Memory does not grow with the file: with 64 KiB chunks, a 3 MiB object streams within a few chunks."""
    store = app.state.object_store
    content = content_of(3 * MiB, seed=7)
    key = f"tests/stream-{uuid.uuid4().hex}"
    await store.put_bytes(key, content)
    chunk = 64 * 1024
    done: list[int] = []

    async def on_done(sent: int) -> None:
        done.append(sent)

    hasher = hashlib.sha256()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        async for piece in stream_object(store, key, ByteRange(0, len(content) - 1), on_done, chunk):
            hasher.update(piece)
            await asyncio.sleep(0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await store.delete(key)
    assert hasher.hexdigest() == hashlib.sha256(content).hexdigest()
    assert done == [len(content)]
    assert peak - baseline < 8 * chunk, peak - baseline


async def test_object_store_down_is_a_503_before_any_byte(
    settings: Settings, big_market: Market, db: asyncpg.Connection
) -> None:
    """The object is opened (and its first chunk read) before the response starts: an unreachable object store
    is a 503 with ``Retry-After``, not a 200 whose body breaks off; the transfer works again once it is back."""
    assert settings.s3_endpoint is not None
    s3 = TcpProxy(http_upstream(settings.s3_endpoint)).start()
    try:
        proxied = dataclasses.replace(
            settings, download_mode="proxy", s3_endpoint=proxied_endpoint(settings.s3_endpoint, s3)
        )
        with live_server(proxied) as live:
            m = big_market
            granted = await grant(live, m, "data/big.bin")
            async with httpx.AsyncClient(headers=m.buyer.headers, timeout=30) as http:
                s3.stop()
                down = await http.get(granted["url"], headers={"Range": "bytes=100-"})
                assert down.status_code == 503, down.text
                assert down.headers["content-type"].startswith("application/problem+json")
                assert int(down.headers["retry-after"]) > 0
                s3.start()
                back = await http.get(granted["url"], headers={"Range": "bytes=100-"})
                assert back.status_code == 206
                assert back.content == m.files["data/big.bin"][100:]
            await live.idle()
            assert await bytes_served(db, granted["download_id"]) == len(back.content)
    finally:
        s3.close()


async def test_file_names_in_any_script_reach_the_client(
    client: AsyncTestClient[Any], db: asyncpg.Connection, proxy: LiveServer
) -> None:
    """Header values are Latin-1 on the wire: a name in another script (or with quotes) travels RFC 6266-style,
    in both delivery modes, instead of breaking the response."""
    name = 'data/新闻 "摘要".jsonl'
    m = await market(client, db, files={name: b'{"text": "hello"}\n'})
    expected = (
        "attachment; filename=\"__ ____.jsonl\"; filename*=UTF-8''%E6%96%B0%E9%97%BB%20%22%E6%91%98%E8%A6%81%22.jsonl"
    )
    proxied = await grant(proxy, m, name)
    presigned = await client.post("/api/v1/downloads", json=download_body(m, name), headers=m.buyer.headers)
    assert presigned.status_code == 201, presigned.text
    async with httpx.AsyncClient(timeout=30) as http:
        through_api = await http.get(proxied["url"], headers=m.buyer.headers)
        from_store = await http.get(presigned.json()["url"])
    for response in (through_api, from_store):
        assert response.status_code == 200, response.text
        assert response.content == m.files[name]
        assert response.headers["content-disposition"] == expected


async def test_every_request_is_checked(
    client: AsyncTestClient[Any], db: asyncpg.Connection, proxy: LiveServer, big_market: Market
) -> None:
    """Last in this module: it withdraws the shared product's version and revokes its entitlement."""
    m = big_market
    colleague = await sign_up(client)
    added = await client.post(
        f"/api/v1/orgs/{m.buyer_org}/members",
        json={"email": colleague.email, "role": "member"},
        headers=m.buyer.headers,
    )
    assert added.status_code == 201, added.text
    mine = await grant(proxy, m, "data/big.bin")
    theirs = await grant(proxy, m, "data/big.bin", colleague)
    stranger = await sign_up(client)
    claims = jwt.decode(m.buyer.token, options={"verify_signature": False})
    header = jwt.get_unverified_header(m.buyer.token)
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": header["kid"]})
    tampered = m.buyer.token[:-4] + ("AAAA" if not m.buyer.token.endswith("AAAA") else "BBBB")
    base = f"{proxy.url}/api/v1/downloads"
    async with httpx.AsyncClient(timeout=60) as http:

        async def fetch(url: str, account: Account | None = None, token: str | None = None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else (account or m.buyer).headers
            return await http.get(url, headers=headers)

        assert (await fetch(mine["url"])).content == m.files["data/big.bin"]
        # Grants are personal: not the colleague's (same org, same entitlement), nor a stranger's, nor unknown ids.
        assert (await fetch(theirs["url"])).status_code == 404
        assert (await fetch(mine["url"], colleague)).status_code == 404
        assert (await fetch(mine["url"], stranger)).status_code == 404
        assert (await fetch(f"{base}/{uuid.uuid4()}/content")).status_code == 404
        assert (await fetch(f"{base}/not-a-uuid/content")).status_code == 404
        for token in (forged, tampered):
            refused = await fetch(mine["url"], token=token)
            assert refused.status_code == 401
            assert refused.headers["content-type"].startswith("application/problem+json")
        assert (await http.get(mine["url"])).status_code == 401

        async def provider(action: str, target: str) -> None:
            response = await client.post(f"{target}/{action}", json={"reason": "test"}, headers=m.provider.headers)
            assert response.status_code == 200, response.text

        entitlement = f"/api/v1/entitlements/{m.entitlement_id}"
        await provider("suspend", entitlement)
        suspended = await fetch(mine["url"])
        assert suspended.status_code == 403
        assert suspended.json()["type"] == "entitlement-inactive"
        await provider("reinstate", entitlement)
        assert (await fetch(mine["url"])).status_code == 200

        await db.execute(
            "UPDATE download_grants SET granted_at = now() - interval '2 seconds',"
            " window_ends_at = now() - interval '1 second' WHERE id = $1::uuid",
            theirs["download_id"],
        )
        ended = await fetch(theirs["url"], colleague)
        assert ended.status_code == 403
        assert ended.json()["type"] == "grant-expired"

        await provider("withdraw", f"/api/v1/products/{m.product}/versions/1.0.0")
        withdrawn = await fetch(mine["url"])
        assert withdrawn.status_code == 403
        assert withdrawn.json()["type"] == "version-withdrawn"
        await provider("revoke", entitlement)
        revoked = await fetch(mine["url"])
        assert revoked.status_code == 403
        assert revoked.json()["type"] == "entitlement-inactive"
        assert "revoked" in revoked.json()["detail"]
    await proxy.idle()
    assert await bytes_served(db, mine["download_id"]) == 2 * len(m.files["data/big.bin"])
