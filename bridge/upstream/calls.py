"""Sending one request to the replicas of a model, and reading the reply.

The replica with the fewest requests in flight is tried first; a failure before the upstream
sent a byte of its reply moves on to the next replica, a failure after it is the caller's. httpx
errors become bridge errors here, in `translate`, and nowhere else. Every attempt ends in
`_close`: the reader is closed, then the response (which returns a connection read to its end
to the pool, and drops any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
import httpx
import orjson
from multidict import CIMultiDict
from yarl import URL

from bridge import __version__
from bridge.domain import Chunk, Metrics
from bridge.errors import (
    BridgeError,
    InvalidRequest,
    ModelNotFound,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bridge.upstream.aiohttp_transport import AiohttpTransport, Received, client_timeout
from bridge.upstream.balancer import Balancer, Member
from bridge.upstream.catalog import Replica, Route
from bridge.upstream.config import UpstreamConfig
from bridge.upstream.streams import Reply, error_text

log = logging.getLogger(__name__)

T = TypeVar("T")

# After the last chunk, the rest of the body (the end of the chunked encoding, a trailing
# `[DONE]`) is read so that the connection can be reused, for at most this long.
DRAIN_SECONDS = 1.0
# The most of an error reply's body that is read for its message.
ERROR_BODY_LIMIT = 64 * 1024
NO_METRICS = Metrics()
_FRAMING = frozenset({"content-length", "transfer-encoding"})

# A reply as the caller reads it: aiohttp's on the fast path, httpx's otherwise.
Response = httpx.Response | Received


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request to one replica: where, what, and how to read the reply."""

    path: str
    body: dict[str, Any] | None  # None: GET
    read: Callable[[AsyncIterator[bytes], Reply], AsyncGenerator[T, None]]


@dataclass(slots=True)
class Opened(Generic[T]):
    member: Member
    response: Response
    items: AsyncGenerator[T, None]
    first: T
    who: str


class _Failure(Exception):
    """A failed attempt, with what it means for retrying and for the upstream's record."""

    def __init__(self, error: BridgeError, *, retry: bool, unhealthy: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry = retry
        self.unhealthy = unhealthy


def label(config: UpstreamConfig) -> str:
    """How messages name an upstream."""
    return f"upstream '{config.name}'"


def unhealthy(exc: BridgeError) -> bool:
    """Failures that count against an upstream (an error it reports about a request does not)."""
    return isinstance(exc, UpstreamTimeout | UpstreamUnavailable | UpstreamProtocolError)


def translate(exc: httpx.HTTPError, config: UpstreamConfig) -> UpstreamError:
    """The one place httpx errors become bridge errors."""
    who = label(config)
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):  # aiohttp's also covers waiting for the pool
        return UpstreamTimeout(f"{who} did not accept a connection in time")
    if isinstance(exc, httpx.PoolTimeout):
        return UpstreamTimeout(f"{who} had no free connection for {config.read_timeout:g}s")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{who} sent nothing for {config.read_timeout:g}s")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamUnavailable(f"{who} cannot be reached: {detail}")
    if isinstance(exc, httpx.TransportError | httpx.DecodingError):
        return UpstreamProtocolError(f"{who} broke off its reply: {detail}")
    return UpstreamError(f"{who} failed: {detail}")


class Caller:
    """The HTTP clients, one per upstream, and the requests sent through them."""

    def __init__(self, balancer: Balancer, clock: Callable[[], float]) -> None:
        self._balancer = balancer
        self._clock = clock
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._urls: dict[tuple[str, str], URL] = {}
        # The per-request path of generations: each upstream's transport, headers and timeouts,
        # made once. aiohttp's transport (bridge's own) is called directly; another (a test's)
        # gets an httpx request.
        self._post: dict[str, tuple[AiohttpTransport, CIMultiDict[str], aiohttp.ClientTimeout]]
        self._post = {}
        self._direct: dict[str, tuple[httpx.AsyncBaseTransport, httpx.Headers, dict[str, Any]]]
        self._direct = {}

    def open_clients(
        self, configs: Sequence[UpstreamConfig], transport: httpx.AsyncBaseTransport | None
    ) -> None:
        for c in configs:
            # Every request bridge sends with a body sends JSON; a GET ignores the header.
            headers = {
                "user-agent": f"bridge/{__version__}",
                "content-type": "application/json",
                **c.headers,
            }
            if c.api_key:
                headers["authorization"] = f"Bearer {c.api_key}"
            timeout = httpx.Timeout(c.read_timeout, connect=c.connect_timeout)
            own = transport or AiohttpTransport(max_connections=c.max_connections)
            self._clients[c.name] = httpx.AsyncClient(
                base_url=c.url + "/",
                headers=headers,
                timeout=timeout,
                limits=httpx.Limits(
                    max_connections=c.max_connections, max_keepalive_connections=c.max_connections
                ),
                transport=own,
                trust_env=False,  # settings come from bridge's config, not proxy variables
            )
            if isinstance(own, AiohttpTransport):
                t = client_timeout(
                    pool=c.read_timeout, connect=c.connect_timeout, read=c.read_timeout
                )
                # Framing headers are aiohttp's to set, from the body it sends.
                sent = {k: v for k, v in headers.items() if k.lower() not in _FRAMING}
                self._post[c.name] = (own, CIMultiDict(sent, accept="*/*"), t)
            else:
                self._direct[c.name] = (own, self._clients[c.name].headers, timeout.as_dict())

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.aclose() for c in clients))

    def _client(self, c: UpstreamConfig) -> httpx.AsyncClient:
        client = self._clients.get(c.name)
        if client is None:
            raise UpstreamUnavailable(f"{label(c)} is not started")
        return client

    async def get(self, member: Member, path: str) -> Any:
        """A small JSON GET (model lists, health, ps), limited to the connect timeout."""
        c = member.config
        client = self._client(c)
        try:
            response = await client.get(path, timeout=httpx.Timeout(c.connect_timeout))
        except httpx.HTTPError as exc:
            raise translate(exc, c) from exc
        if response.status_code != 200:
            raise UpstreamError(f"{label(c)} answered {response.status_code} to GET /{path}")
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(
                f"{label(c)} sent a reply to /{path} that is not JSON"
            ) from exc

    async def stream(
        self, route: Route, build: Callable[[Replica], Call[Chunk]]
    ) -> AsyncGenerator[Chunk, None]:
        opened = await self.open(route, build, time.perf_counter_ns())
        member, items = opened.member, opened.items
        try:
            try:
                chunk = opened.first
                while not chunk.done:
                    yield chunk
                    try:
                        chunk = await anext(items)
                    except StopAsyncIteration:  # the readers raise first; a safety net
                        raise UpstreamProtocolError(f"{opened.who} ended early") from None
                member.succeeded()
                yield chunk  # its metrics' total_duration counts from `started`
                # Read to the end of the body (it is there already) so the connection is
                # reused; a server that keeps it open after its last record is not waited for.
                with contextlib.suppress(TimeoutError, UpstreamError, httpx.HTTPError):
                    if _received_whole(opened.response):  # no wait, so no timer (cheaper)
                        async for _ in items:
                            pass
                    else:
                        async with asyncio.timeout(DRAIN_SECONDS):
                            async for _ in items:
                                pass
            except httpx.HTTPError as exc:
                raise translate(exc, member.config) from exc
        except UpstreamError as exc:
            if unhealthy(exc):
                member.failed(exc.message, self._clock())
            raise
        finally:
            await self.release(opened)

    async def open(
        self, route: Route, build: Callable[[Replica], Call[T]], started_ns: int = 0
    ) -> Opened[T]:
        """Send to replicas in turn until one starts its reply; -> the reply and its first item.

        A replica is left for the next one only while its reply has not sent a byte."""
        tried: list[Replica] = []
        last: BridgeError | None = None
        while (picked := self._balancer.pick(route.replicas, tried)) is not None:
            replica, member = picked
            tried.append(replica)
            call = build(replica)
            who = label(member.config)
            member.outstanding += 1
            response: Response | None = None
            items: AsyncGenerator[T, None] | None = None
            try:
                sent = time.perf_counter_ns()
                response = await self._send(member, call)
                reply = Reply(who, started_ns or sent, sent, response.headers)
                items = call.read(response.aiter_bytes(), reply)
                first = await anext(items)
                return Opened(member, response, items, first, who)
            except _Failure as f:
                failure = f
            except httpx.HTTPError as exc:
                error = translate(exc, member.config)
                error.__cause__ = exc
                failure = _Failure(error, retry=_silent(response), unhealthy=True)
            except UpstreamError as exc:
                failure = _Failure(exc, retry=_silent(response), unhealthy=unhealthy(exc))
            except StopAsyncIteration:
                failure = _Failure(
                    UpstreamProtocolError(f"{who} sent an empty reply"),
                    retry=_silent(response),
                    unhealthy=True,
                )
            except BaseException:
                await self._close(member, response, items)
                raise
            await self._close(member, response, items)
            if failure.unhealthy:
                member.failed(failure.error.message, self._clock())
            last = failure.error
            if not failure.retry:
                raise failure.error
            log.info("%s failed before replying: %s", who, failure.error.message)
        if last is not None:
            raise last
        raise UpstreamUnavailable(
            f"no upstream can serve {route.name} now ({self._balancer.unavailable(route.replicas)})"
        )

    async def _send(self, member: Member, call: Call[T]) -> Response:
        c = member.config
        client = self._client(c)
        url = self._urls.get((c.name, call.path))
        if url is None:  # absolute URLs, made once: joining to base_url costs on every request
            url = self._urls[(c.name, call.path)] = URL(str(client.base_url.join(call.path)))
        response: Response
        try:
            if call.body is None:
                response = await client.send(client.build_request("GET", str(url)), stream=True)
            elif (post := self._post.get(c.name)) is not None:
                # Straight to aiohttp: httpx's request and response objects, and the client's
                # auth, redirect, cookie and event-hook machinery, have nothing to do here and
                # cost ~0.1 ms a request. Nor may a cookie an upstream sets for one user's
                # request go back with another user's.
                transport, headers, timeout = post
                response = await transport.post(url, headers, orjson.dumps(call.body), timeout)
            else:  # an injected transport (tests): to it directly, for the same reasons
                other, raw_headers, timeouts = self._direct[c.name]
                request = httpx.Request(
                    "POST",
                    str(url),
                    headers=raw_headers,
                    content=orjson.dumps(call.body),
                    extensions={"timeout": timeouts},
                )
                response = await other.handle_async_request(request)
                response.request = request
        except httpx.HTTPError as exc:
            error = translate(exc, c)
            error.__cause__ = exc
            raise _Failure(error, retry=True, unhealthy=True) from exc
        if not 200 <= response.status_code < 300:
            raise await self._refused(response, c)
        return response

    async def _refused(self, response: Response, c: UpstreamConfig) -> _Failure:
        """An error status -> the failure it means: the upstream's 400 and 404 are the client's
        (with the upstream's words); 408, 429 and 5xx are retried elsewhere first."""
        raw = bytearray()
        try:
            async for data in response.aiter_bytes():
                raw += data
                if len(raw) >= ERROR_BODY_LIMIT:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
        status = response.status_code
        try:
            text = error_text(orjson.loads(bytes(raw)))
        except orjson.JSONDecodeError:
            text = None
        text = text or bytes(raw[:200]).decode("utf-8", "replace").strip() or response.reason_phrase
        if status in (400, 422):
            return _Failure(InvalidRequest(text), retry=False, unhealthy=False)
        if status == 404:
            return _Failure(ModelNotFound(text), retry=True, unhealthy=False)
        error = UpstreamError(f"{label(c)} answered {status}: {text}")
        if status in (408, 429):
            return _Failure(error, retry=True, unhealthy=False)
        if status >= 500:
            return _Failure(error, retry=True, unhealthy=True)
        return _Failure(error, retry=False, unhealthy=False)

    async def release(self, opened: Opened[Any]) -> None:
        await self._close(opened.member, opened.response, opened.items)

    async def _close(
        self,
        member: Member,
        response: Response | None,
        items: AsyncGenerator[Any, None] | None,
    ) -> None:
        """The end of an attempt, however it went: the reader, then the connection."""
        member.outstanding -= 1
        try:
            if items is not None:
                await items.aclose()
        finally:
            if response is not None:
                await response.aclose()


def _received_whole(response: Response) -> bool:
    """Whether the whole body has arrived (known on aiohttp's replies only)."""
    return isinstance(response, Received) and response.complete


def _silent(response: Response | None) -> bool:
    """Whether the upstream has not sent a byte of its reply body (so a retry is safe)."""
    return response is None or response.num_bytes_downloaded == 0
