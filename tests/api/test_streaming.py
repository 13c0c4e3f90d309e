"""The stream writer under failure: a source that dies mid-stream never leaves the client
hanging, and the source is closed (its clean-up runs) whatever ends the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from aiohttp import web

from bridge.errors import BridgeError, UpstreamProtocolError
from bridge.http.streaming import stream_response


class Boom(BaseException):
    """Not an Exception: what a stray KeyboardInterrupt-like error looks like to a task."""


def app_with(source: Any, closed: list[str]) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        async def items() -> AsyncIterator[int]:
            try:
                async for item in source():
                    yield item
            finally:
                closed.append("closed")

        return await stream_response(
            request,
            items(),
            encode=lambda i: b"%d\n" % i,
            encode_error=lambda e: b"error: " + e.message.encode() + b"\n",
            content_type="application/x-ndjson",
        )

    app = web.Application()
    app.router.add_get("/", handler)
    return app


async def get_lines(server: Any) -> list[str]:
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30) as http:
        lines: list[str] = []
        try:
            async with http.stream("GET", "/") as r:
                async for line in r.aiter_lines():
                    lines.append(line)
        except httpx.RemoteProtocolError:
            lines.append("<cut>")
        return lines


async def test_a_long_stream_arrives_whole_and_in_order(aiohttp_server: Any) -> None:
    async def source() -> AsyncIterator[int]:
        for i in range(500):
            if i % 50 == 0:
                await asyncio.sleep(0)  # some items arrive together, some apart
            yield i

    closed: list[str] = []
    server = await aiohttp_server(app_with(source, closed))
    assert await get_lines(server) == [str(i) for i in range(500)]
    assert closed == ["closed"]


async def test_an_error_mid_stream_is_the_last_record(aiohttp_server: Any) -> None:
    async def source() -> AsyncIterator[int]:
        for i in range(10):
            await asyncio.sleep(0)
            yield i
        raise UpstreamProtocolError("the upstream sent a broken record")

    closed: list[str] = []
    server = await aiohttp_server(app_with(source, closed))
    lines = await get_lines(server)
    assert lines == [*map(str, range(10)), "error: the upstream sent a broken record"]
    assert closed == ["closed"]
    assert issubclass(UpstreamProtocolError, BridgeError)


async def test_a_source_that_dies_oddly_ends_the_stream(aiohttp_server: Any) -> None:
    async def source() -> AsyncIterator[int]:
        for i in range(10):
            await asyncio.sleep(0)
            yield i
        raise Boom()

    closed: list[str] = []
    server = await aiohttp_server(app_with(source, closed))
    lines = await asyncio.wait_for(get_lines(server), timeout=60)  # a guard, not a measurement
    assert lines[:10] == [str(i) for i in range(10)] and lines[10:] in ([], ["<cut>"])
    assert closed == ["closed"]
