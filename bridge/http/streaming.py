"""Writing response streams (NDJSON, SSE): status before the first byte, errors in-band after.

The first item is pulled before anything is sent, so an error that can be known up front still
gets its real status. After the first byte an error becomes one last in-band record. A client
that goes away is not an error: the stream's iterator is closed, which stops the generation.

Items that arrive together (the records of one upstream read, the tokens of one engine flush)
go out in one write: a write is a system call, and under load those calls, not the encoding,
are most of a stream's cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from aiohttp import web

from bridge.errors import BridgeError, EngineFailed

log = logging.getLogger(__name__)

T = TypeVar("T")

# Raised by aiohttp when writing to a connection the client has closed.
_GONE = (ConnectionResetError, ConnectionError)


class _Stream(web.StreamResponse):
    # The status line and headers go out with the first record, in one write; aiohttp would
    # otherwise send them alone at prepare(), one more system call for every reply. Nothing
    # waits for it: prepare() is called once the first record is there.
    _send_headers_immediately = False


async def stream_response(
    request: web.Request,
    items: AsyncIterator[T],
    *,
    encode: Callable[[T], bytes],
    encode_error: Callable[[BridgeError], bytes],
    content_type: str,
    trailer: bytes = b"",
    last: Callable[[T], bool] = lambda _: False,
) -> web.StreamResponse:
    """`last(item)`: whether `item` is the stream's final record. It is held back until the
    items are exhausted (their clean-up, a lease's release or an unload, done), then goes out
    with the trailer and the end of the body in one write."""
    try:
        try:
            first = await anext(items)
        except StopAsyncIteration:
            first = None
        response = _Stream(status=200)
        response.content_type = content_type
        if content_type == "text/event-stream":
            response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        out = _Writer(response, encode, last)
        try:
            if first is not None:
                await out.put(first)
                # A short reply (a token, then the final record) goes out as it comes; a longer
                # one gets the batching writer.
                for _ in range(2):
                    item = await anext(items, None)
                    if item is None:
                        break
                    await out.put(item)
                else:
                    await _write_batched(out, items)
            await out.finish(trailer)
        except BridgeError as exc:
            log.warning("%s %s failed mid-stream: %s", request.method, request.path, exc.message)
            with contextlib.suppress(*_GONE):
                await out.finish(encode_error(exc))
        except _GONE:
            log.debug("%s %s: client went away", request.method, request.path)
        except Exception:
            # A bug, after the status line went out: the error middleware's 500 reply would
            # break the stream's framing, so it ends in-band, as any other failure does.
            log.exception("unhandled error in %s %s mid-stream", request.method, request.path)
            with contextlib.suppress(*_GONE):
                await out.finish(encode_error(BridgeError("internal server error")))
        return response
    finally:
        await _aclose(items)


class _Writer(Generic[T]):
    """Encodes items onto the response; the final one waits for `finish`."""

    def __init__(
        self, response: web.StreamResponse, encode: Callable[[T], bytes], last: Callable[[T], bool]
    ) -> None:
        self.response = response
        self.encode = encode
        self.last = last
        self.held: bytes | None = None  # the final record (and any before it in its batch)

    async def put(self, item: T) -> None:
        await self.send([self.encode(item)], self.last(item))

    async def send(self, parts: list[bytes], final: bool) -> None:
        if self.held is not None:  # records after the final one (there should be none)
            return
        if final:
            self.held = b"".join(parts)
        elif parts:
            await self.response.write(b"".join(parts))

    async def finish(self, tail: bytes) -> None:
        await self.response.write_eof((self.held or b"") + tail)


async def _write_batched(out: _Writer[T], items: AsyncIterator[T]) -> None:
    """Write every item; those that are ready together in one write. Raises what the items
    raise, and the write's error when the client goes away.

    A producer task reads the items and closes them when it ends, however it ends; this
    function waits for it to end, even when cancelled again meanwhile, so that the stream's
    own clean-up (a lease's release, an unload) always runs to completion first."""
    loop = asyncio.get_running_loop()
    # Encoded records not yet written, and the future the writer sleeps on while there are
    # none (a list and a future: an asyncio.Queue costs about twice as much per record).
    ready: list[tuple[bytes, bool]] = []
    wake: asyncio.Future[None] | None = None

    def wake_writer(_: object = None) -> None:
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def produce() -> None:
        try:
            async for item in items:
                ready.append((out.encode(item), out.last(item)))
                wake_writer()
        finally:
            await _aclose(items)

    producer = asyncio.ensure_future(produce())
    producer.add_done_callback(wake_writer)
    try:
        while True:
            if not ready and not producer.done():
                wake = loop.create_future()
                await wake
                wake = None
            if ready:
                records = ready.copy()
                ready.clear()
                await out.send([data for data, _ in records], any(f for _, f in records))
            elif producer.done():
                break
        if producer.cancelled():  # not by us: the stream was cut short
            raise EngineFailed("the reply stream was interrupted")
        exc = producer.exception()
        if exc is not None:
            raise exc
    finally:
        producer.cancel()
        cancelled = False
        while not producer.done():
            try:
                await asyncio.wait({producer})
            except asyncio.CancelledError:
                cancelled = True
        if not producer.cancelled():
            producer.exception()  # retrieved: raised above, or beside the write's own error
        if cancelled:
            raise asyncio.CancelledError()


async def sse_events(
    request: web.Request,
    events: AsyncIterator[bytes],
    source: AsyncIterator[Any],
    encode_error: Callable[[BridgeError], bytes],
    *,
    trailer: bytes = b"",
) -> web.StreamResponse:
    """An SSE reply of ready-made `events` (frames made from `source`, which is closed with
    them)."""
    return await stream_response(
        request,
        _closing_with(events, source),
        encode=_identity,
        encode_error=encode_error,
        content_type="text/event-stream",
        trailer=trailer,
    )


def _identity(b: bytes) -> bytes:
    return b


async def _closing_with(events: AsyncIterator[T], source: AsyncIterator[Any]) -> AsyncIterator[T]:
    try:
        async for e in events:
            yield e
    finally:
        await _aclose(events)
        await _aclose(source)


async def collect(items: AsyncIterator[T]) -> list[T]:
    """Every item (for stream:false), closing the iterator whatever happens."""
    try:
        return [item async for item in items]
    finally:
        await _aclose(items)


async def _aclose(items: AsyncIterator[T]) -> None:
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()
