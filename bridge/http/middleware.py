"""Request ids: one per request, on every log record it causes and echoed as X-Request-Id."""

from __future__ import annotations

import contextvars
import logging
import secrets

from aiohttp import web
from aiohttp.typedefs import Handler

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_KEY = web.RequestKey("request_id", str)


class RequestIdFilter(logging.Filter):
    """Puts the current request id on each record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id") or secrets.token_hex(6)
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
