"""The one place that maps domain errors to HTTP statuses and protocol error bodies."""

from __future__ import annotations

import logging
import secrets
from typing import Any

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
from bridge.http import gojson

log = logging.getLogger(__name__)

OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}
# Anthropic's error types by status, as Ollama's anthropic.NewError picks them.
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
ANTHROPIC_PATH = "/v1/messages"


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


def is_anthropic(request: web.BaseRequest) -> bool:
    return request.path == ANTHROPIC_PATH


def anthropic_error(message: str, status: int) -> dict[str, Any]:
    """The `error` object of Anthropic's error bodies and stream events."""
    return {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}


def anthropic_error_body(message: str, status: int) -> dict[str, Any]:
    """`{"type": "error", "error": {type, message}, "request_id": "req_..."}`."""
    return {
        "type": "error",
        "error": anthropic_error(message, status),
        "request_id": "req_" + secrets.token_hex(12),
    }


def anthropic_rejection(exc: BridgeError) -> web.Response:
    """A /v1/messages request refused before it reaches the chat handler (a body that does not
    decode, a missing field, a block that does not convert): Ollama's middleware answers these
    with gin's JSON (charset=utf-8, no trailing newline); later errors pass its writer, which
    sends plain application/json and a newline (`error_response`)."""
    status = status_of(exc)
    return web.Response(
        status=status,
        body=gojson.dumps(anthropic_error_body(exc.message, status)),
        content_type="application/json",
        charset="utf-8",
    )


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
    if is_anthropic(request):
        resp = web.Response(
            status=status,
            body=gojson.dumps(anthropic_error_body(exc.message, status)) + b"\n",
            content_type="application/json",
        )
    else:
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
    if is_anthropic(request):
        body = gojson.dumps(anthropic_error_body("internal server error", status)) + b"\n"
    else:
        body = error_body("internal server error", status, openai=is_openai(request))
    return web.Response(status=status, body=body, content_type="application/json")


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
