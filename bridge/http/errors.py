"""The one place that maps domain errors to HTTP statuses and protocol error bodies."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from bridge.errors import (
    BlobNotFound,
    BridgeError,
    CreateFailed,
    EngineFailed,
    InvalidOption,
    InvalidRequest,
    ModelLoadFailed,
    ModelNotFound,
    QueueFull,
    RequestCanceled,
    TransferFailed,
    UpstreamError,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)

OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def status_of(exc: BridgeError) -> int:
    if isinstance(exc, InvalidRequest):
        return 400
    if isinstance(exc, ModelNotFound | BlobNotFound):
        return 404
    if isinstance(exc, QueueFull):
        return 503
    if isinstance(exc, RequestCanceled):
        return 499
    if isinstance(exc, UpstreamTimeout):
        return 504
    if isinstance(exc, UpstreamError):
        return 502
    if isinstance(
        exc, InvalidOption | ModelLoadFailed | EngineFailed | TransferFailed | CreateFailed
    ):
        return 500  # Ollama answers these with 500
    return 500


def is_openai(request: web.BaseRequest) -> bool:
    return request.path.startswith("/v1/")


def error_body(message: str, status: int, *, openai: bool, param: str | None = None) -> bytes:
    """`{"error": msg}` natively; `{"error": {message, type, param, code}}` on /v1."""
    if openai:
        kind = OPENAI_TYPES.get(status, "api_error")
        return (
            orjson.dumps(
                {"error": {"message": message, "type": kind, "param": param, "code": None}}
            )
            + b"\n"
        )
    return orjson.dumps({"error": message})


def error_response(exc: BridgeError, request: web.BaseRequest) -> web.Response:
    status = status_of(exc)
    openai = is_openai(request)
    resp = web.Response(
        status=status,
        # `param` stays null, as Ollama's OpenAI layer leaves it.
        body=error_body(exc.message, status, openai=openai),
        content_type="application/json",
        charset=None if openai else "utf-8",
    )
    if isinstance(exc, QueueFull):
        resp.headers["Retry-After"] = str(exc.retry_after)
    return resp


def internal_error(request: web.BaseRequest) -> web.Response:
    status = 500
    return web.Response(
        status=status,
        body=error_body("internal server error", status, openai=is_openai(request)),
        content_type="application/json",
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Domain errors -> protocol error bodies; aiohttp's 404/405 -> gin's plain-text replies."""
    try:
        return await handler(request)
    except BridgeError as exc:
        if isinstance(exc, InvalidRequest | ModelNotFound | BlobNotFound):
            log.debug("%s %s: %s", request.method, request.path, exc.message)
        else:
            log.warning("%s %s: %s", request.method, request.path, exc.message)
        return error_response(exc, request)
    except web.HTTPNotFound:
        return web.Response(status=404, text="404 page not found")
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, text="405 method not allowed")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return internal_error(request)
