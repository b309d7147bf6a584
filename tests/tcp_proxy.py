"""A tiny TCP proxy that can be cut and restored, to take a dependency away from a running app.

It listens on ``127.0.0.1:<port>`` and forwards every connection to an upstream: a TCP ``host:port`` or a
unix socket (the embedded PostgreSQL listens on one). ``stop()`` closes the listener *and* aborts every
open connection, as a crashed server or a cut network would; ``start()`` listens again on the same port.
``blackhole()`` accepts connections but forwards nothing, as a server that hangs would.

The proxy runs its own event loop in a thread: the Litestar test client runs the app in another thread
and blocks the test's loop while a request is in flight, so a proxy on the test's loop would deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

T = TypeVar("T")

DEFAULT_PG_PORT = 5432


@dataclasses.dataclass(frozen=True)
class Upstream:
    host: str | None = None
    port: int | None = None
    unix_path: str | None = None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.unix_path is not None:
            return await asyncio.open_unix_connection(self.unix_path)
        assert self.host is not None
        assert self.port is not None
        return await asyncio.open_connection(self.host, self.port)


def postgres_upstream(database_url: str) -> Upstream:
    """Where a ``postgresql://`` URL points: a unix socket (``?host=/dir``) or a TCP host and port."""
    url = make_url(database_url)
    host = url.query.get("host") or url.host
    if isinstance(host, tuple):
        host = host[0]
    port = url.port or DEFAULT_PG_PORT
    if host is None or host.startswith("/"):
        return Upstream(unix_path=f"{host or '/var/run/postgresql'}/.s.PGSQL.{port}")
    return Upstream(host=host, port=port)


def proxied_database_url(database_url: str, proxy: TcpProxy) -> str:
    url = make_url(database_url)
    query = {k: v for k, v in url.query.items() if k not in ("host", "port")}
    return url.set(host=proxy.host, port=proxy.port, query=query).render_as_string(hide_password=False)


def http_upstream(endpoint: str) -> Upstream:
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    assert parts.hostname is not None
    return Upstream(host=parts.hostname, port=parts.port or (443 if parts.scheme == "https" else 80))


def proxied_endpoint(endpoint: str, proxy: TcpProxy) -> str:
    scheme = urlsplit(endpoint).scheme if "://" in endpoint else "http"
    return f"{scheme}://{proxy.host}:{proxy.port}"


class TcpProxy:
    host = "127.0.0.1"

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.port = 0  # chosen by the first start, kept by later ones
        self.connections_seen = 0
        self._forwarding = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()

    # --- control, from any thread ------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def start(self) -> TcpProxy:
        """Listen (again) and forward."""
        if not self._forwarding:
            self._call(self._stop())  # drop the connections left hanging
        self._forwarding = True
        self._call(self._listen())
        return self

    def stop(self) -> None:
        """Refuse new connections and abort the open ones."""
        self._call(self._stop())

    def blackhole(self) -> None:
        """Abort the open connections; accept new ones but never answer."""
        self._call(self._stop())
        self._forwarding = False
        self._call(self._listen())

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def listening(self) -> bool:
        return self._server is not None

    # --- the proxy, on its own loop ----------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections_seen += 1
        try:
            if not self._forwarding:
                while await reader.read(65536):
                    pass
                return
            try:
                up_reader, up_writer = await self.upstream.connect()
            except OSError:
                writer.transport.abort()
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                up_writer.transport.abort()
                self._writers.discard(up_writer)
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            if writer.can_write_eof() and not writer.is_closing():
                with contextlib.suppress(OSError):
                    writer.write_eof()
