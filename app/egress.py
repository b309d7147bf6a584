"""Outbound HTTP to addresses users give us (webhooks, opt-out evidence): only where it is safe to go.

- URLs are ``http`` or ``https`` with a host and without credentials.
- The host is resolved when the connection is made, and every address it resolves to must be public: private,
  loopback, link-local, shared, multicast and reserved addresses are refused (unless ``allow_private``, the
  setting ``CORPORA_EGRESS_ALLOW_PRIVATE``), and the connection goes to the address that was checked, so a
  name that changes its answer between check and use (DNS rebinding) gains nothing. The same check runs for
  every connection, so for every redirect hop too.
- Every request has a connect, read and overall deadline, and reads at most ``max_bytes`` of the response.
- Environment proxies are ignored, so a request cannot be routed around the checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import Iterable, Mapping

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BYTES = 64 * 1024
MAX_URL_LENGTH = 2000


class EgressRefused(Exception):
    """The URL or the address it leads to is not one the service may reach."""


def _embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def is_public(address: IPAddress) -> bool:
    address = _embedded_ipv4(address)
    return address.is_global and not address.is_multicast


def check_url(url: str) -> httpx.URL:
    """Refuse (``EgressRefused``) a URL the service never fetches, whatever it resolves to."""
    if len(url) > MAX_URL_LENGTH:
        raise EgressRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise EgressRefused(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise EgressRefused("only http and https URLs are allowed")
    if not parsed.host:
        raise EgressRefused("the URL has no host")
    if parsed.userinfo:
        raise EgressRefused("the URL must not carry credentials (user:password@)")
    if parsed.fragment:
        raise EgressRefused("the URL must not have a fragment (#…)")
    return parsed


async def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EgressRefused(f"the host {host!r} does not resolve: {exc}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise EgressRefused(f"the host {host!r} does not resolve")
    return addresses


async def check_host(host: str, port: int, *, allow_private: bool) -> list[IPAddress]:
    """The host's addresses, all of them public unless ``allow_private``; else ``EgressRefused``."""
    addresses = await resolve(host, port)
    if not allow_private:
        refused = [str(a) for a in addresses if not is_public(a)]
        if refused:
            raise EgressRefused(
                f"the host {host!r} resolves to a private, loopback or link-local address ({', '.join(refused)})"
            )
    return addresses


class _Refused(httpcore.ConnectError):
    """Carries an ``EgressRefused`` through httpcore and httpx, which map connection errors to their own."""

    def __init__(self, refusal: EgressRefused) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks the host of every new connection, then connects to the checked address."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await check_host(host, port, allow_private=self.allow_private)
        except EgressRefused as exc:
            raise _Refused(exc) from exc
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@dataclasses.dataclass(frozen=True, slots=True)
class EgressResponse:
    status_code: int
    headers: Mapping[str, str]
    body: bytes  # at most max_bytes
    truncated: bool  # the response had more than max_bytes; the rest was not read
    url: str  # after redirects


class Egress:
    """One connection pool for a process's outbound requests; created without a loop, used within one."""

    def __init__(self, *, allow_private: bool = False, max_connections: int = 100) -> None:
        self.allow_private = allow_private
        self.max_connections = max_connections
        self._client: httpx.AsyncClient | None = None

    def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = httpx.AsyncHTTPTransport(
                trust_env=False, limits=httpx.Limits(max_connections=self.max_connections)
            )
            # The pool httpx builds, with the checking backend in place of the default one.
            transport._pool = httpcore.AsyncConnectionPool(
                ssl_context=httpx.create_ssl_context(trust_env=False),
                max_connections=self.max_connections,
                max_keepalive_connections=20,
                keepalive_expiry=30,
                network_backend=_CheckedBackend(self.allow_private),
            )
            self._client = httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)
        return self._client

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - applied with asyncio.timeout, over every hop
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_redirects: int = 0,
    ) -> EgressResponse:
        """Send one request (following at most ``max_redirects`` redirects, each checked like the first).

        Raises ``EgressRefused`` for a URL or address that is not allowed, and ``httpx.HTTPError`` (including
        ``httpx.TimeoutException``) when the exchange fails or takes longer than ``timeout`` seconds overall.
        """
        client = self._ensure_client()
        target = check_url(url)
        async with asyncio.timeout(timeout):
            for _hop in range(max_redirects + 1):
                request = client.build_request(
                    method, target, content=content, headers=headers, timeout=httpx.Timeout(timeout, connect=5)
                )
                try:
                    response = await client.send(request, stream=True)
                except httpx.ConnectError as exc:
                    if isinstance(exc.__cause__, _Refused):
                        raise exc.__cause__.refusal from None
                    raise
                try:
                    if response.is_redirect and _hop < max_redirects:
                        location = response.headers.get("location", "")
                        target = check_url(str(response.url.join(location)))
                        method, content = (
                            ("GET", None) if response.status_code in (301, 302, 303) else (method, content)
                        )
                        continue
                    body, truncated = await _read_limited(response, max_bytes)
                    return EgressResponse(response.status_code, dict(response.headers), body, truncated, str(target))
                finally:
                    await response.aclose()
        raise EgressRefused(f"more than {max_redirects} redirects")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def _read_limited(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(chunks)[:max_bytes], True
    return b"".join(chunks), False
