"""`Expect: 100-continue` as Go's net/http answers it: "100 Continue" goes out when the handler
first reads the body. A handler that answers without reading it (the upload of a blob that is
there already) spares the client sending it; aiohttp would ask for the body up front."""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

_DEFERRED = web.RequestKey("continue_deferred", bool)


async def defer_continue(request: web.Request) -> None:
    """A route's expect handler: checks the expectation, sends nothing yet."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
    request[_DEFERRED] = True


async def send_continue(request: web.BaseRequest) -> None:
    """Before reading a body: the "100 Continue" a deferred expectation still owes."""
    if request.get(_DEFERRED):
        request[_DEFERRED] = False
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the reply proper has not begun
