"""Sending requests with aiohttp's client: bridge's way to its upstreams.

httpx's own transport (httpcore and h11, in pure Python) costs about twice the CPU per request
of aiohttp's C-accelerated client, and on a proxy that is the time every request waits for the
event loop. So the requests that carry generations (`post`) go through aiohttp directly and come
back as a `Received`, which has the few members of `httpx.Response` that the caller reads; the
rest (model lists, health) go through httpx, for which this is also a transport (so tests can
inject httpx transports, and respx works). aiohttp's exceptions become httpx's here, so the rest
of the package translates httpx errors alone. One transport per upstream: its connector is that
upstream's connection pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDict
from yarl import URL

# httpx sets these itself; aiohttp sets them from the URL and the body, so they are dropped.
_SKIP = frozenset({b"host", b"content-length", b"transfer-encoding"})
# aiohttp decodes a compressed body itself, so httpx must not be told it is compressed.
_DECODED = frozenset({b"content-encoding", b"content-length"})


def client_timeout(
    *, pool: float | None, connect: float | None, read: float | None
) -> aiohttp.ClientTimeout:
    """httpx's timeouts in aiohttp's terms. No limit on a whole reply (a generation may run
    for hours), only on its silences."""
    # aiohttp's `connect` includes waiting for a free connection in the pool.
    return aiohttp.ClientTimeout(total=None, connect=pool, sock_connect=connect, sock_read=read)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Requests through one aiohttp session (created on first use, inside the event loop)."""

    def __init__(self, *, max_connections: int = 100) -> None:
        self._max = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max, limit_per_host=self._max),
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                trust_env=False,
            )
        return self._session

    async def post(
        self, url: URL, headers: CIMultiDict[str], content: bytes, limits: aiohttp.ClientTimeout
    ) -> Received:
        """-> the reply, its body not yet read. The arguments are made once per upstream."""
        return await self._send("POST", url, headers, content, limits)

    async def _send(
        self,
        method: str,
        url: URL | str,
        headers: CIMultiDict[str] | list[tuple[str, str]],
        content: bytes | None,
        limits: aiohttp.ClientTimeout,
    ) -> Received:
        try:
            resp = await self._open().request(
                method,
                url,
                headers=headers,
                data=content or None,
                timeout=limits,
                allow_redirects=False,
                compress=None,
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timed out") from exc
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc.os_error)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _read_error(exc) from exc
        return Received(resp)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t: dict[str, Any] = request.extensions.get("timeout", {})
        limits = client_timeout(pool=t.get("pool"), connect=t.get("connect"), read=t.get("read"))
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in _SKIP
        ]
        try:
            received = await self._send(
                request.method, str(request.url), headers, request.content, limits
            )
        except httpx.TransportError as exc:
            exc.request = request
            raise
        return httpx.Response(
            received.status_code,
            headers=[(k, v) for k, v in received.raw_headers if k.lower() not in _DECODED],
            stream=_Body(received, request),
            extensions={"reason_phrase": received.reason_phrase.encode()},
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class Received:
    """An aiohttp reply, read as `httpx.Response` is: status, headers, body bytes, close."""

    __slots__ = ("_resp", "headers", "num_bytes_downloaded", "raw_headers", "reason_phrase")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.headers: Mapping[str, str] = resp.headers
        self.raw_headers = resp.raw_headers
        self.reason_phrase = resp.reason or ""
        self.num_bytes_downloaded = 0

    @property
    def status_code(self) -> int:
        return self._resp.status

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived (some of it may not have been read yet)."""
        return self._resp.content.is_eof()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.content.iter_any():
                self.num_bytes_downloaded += len(data)
                yield data
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _read_error(exc) from exc

    async def aclose(self) -> None:
        # A body read to its end leaves the connection to the pool; anything else closes it.
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


class _Body(httpx.AsyncByteStream):
    def __init__(self, received: Received, request: httpx.Request) -> None:
        self._received = received
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._received.aiter_bytes():
                yield data
        except httpx.TransportError as exc:
            exc.request = self._request
            raise

    async def aclose(self) -> None:
        await self._received.aclose()


def _read_error(exc: BaseException) -> httpx.TransportError:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(detail)
    return httpx.ReadError(detail)
