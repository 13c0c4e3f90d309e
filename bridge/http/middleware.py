"""Request ids: one per request, on every log record it causes and echoed as X-Request-Id."""

from __future__ import annotations

import contextvars
import itertools
import logging
import secrets

from aiohttp import web
from aiohttp.typedefs import Handler

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_KEY = web.RequestKey("request_id", str)
# Ids need to be unique, not secret: a random prefix per process and a counter (cheaper than
# fresh randomness on every request).
_PREFIX = secrets.token_hex(3)
_COUNT = itertools.count(1)


class RequestIdFilter(logging.Filter):
    """Puts the current request id on each record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id") or f"{_PREFIX}{next(_COUNT):06x}"
    request[_KEY] = rid
    token = REQUEST_ID.set(rid)
    try:
        return await handler(request)
    finally:
        REQUEST_ID.reset(token)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(_KEY)
    if rid:
        response.headers["X-Request-Id"] = rid


def install_request_ids(app: web.Application) -> None:
    app.middlewares.append(request_id_middleware)
    app.on_response_prepare.append(_on_prepare)
