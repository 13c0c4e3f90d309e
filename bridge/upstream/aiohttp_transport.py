"""An httpx transport that sends requests with aiohttp's client.

httpx's own transport (httpcore and h11, in pure Python) costs about twice the CPU per request
of aiohttp's C-accelerated client, and on a proxy that is the time every request waits for the
event loop. httpx stays the interface (one client API, transports injected in tests, respx);
this transport only moves the bytes. aiohttp's exceptions become httpx's here, so the rest of
the package translates httpx errors alone. One transport per upstream: its connector is that
upstream's connection pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx

# httpx sets these itself; aiohttp sets them from the URL and the body, so they are dropped.
_SKIP = frozenset({b"host", b"content-length", b"transfer-encoding"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Requests through one aiohttp session (created on first use, inside the event loop)."""

    def __init__(self, *, max_connections: int = 100) -> None:
        self._max = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max, limit_per_host=self._max),
                auto_decompress=False,  # httpx decodes by the headers it is given
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                trust_env=False,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t: dict[str, Any] = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=t.get("pool"),  # aiohttp's connect includes waiting for a free connection
            sock_connect=t.get("connect"),
            sock_read=t.get("read"),
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in _SKIP
        ]
        try:
            resp = await self._open().request(
                request.method,
                str(request.url),
                headers=headers,
                data=request.content or None,
                timeout=timeout,
                allow_redirects=False,
                compress=None,
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc.os_error), request=request) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _read_error(exc, request) from exc
        return httpx.Response(
            resp.status,
            headers=resp.raw_headers,
            stream=_Body(resp, request),
            extensions={"reason_phrase": (resp.reason or "").encode()},
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class _Body(httpx.AsyncByteStream):
    def __init__(self, resp: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._resp = resp
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=self._request) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _read_error(exc, self._request) from exc

    async def aclose(self) -> None:
        # A body read to its end leaves the connection to the pool; anything else closes it.
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


def _read_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(detail, request=request)
    return httpx.ReadError(detail, request=request)
