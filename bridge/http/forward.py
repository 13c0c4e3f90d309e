"""A worker process's front door: requests it serves itself, and the rest passed to the primary.

With `workers` > 1, several processes listen on the port (see `bridge.workers`). A worker
answers generation requests for models an upstream serves (the traffic a gateway has a lot of)
and passes every other request, as it came, to the primary over a private Unix socket: local
models live in the primary alone, and so do the store, /api/ps and model management.

The choice is made before any of the worker's own middlewares run, so a passed request meets
CORS, the Host guard and request ids once, in the primary, and its answer comes back as the
primary gave it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout, UnixConnector, hdrs, web
from aiohttp.typedefs import Handler, Middleware

from bridge.http.errors import error_body, is_openai
from bridge.http.expect import send_continue
from bridge.http.keys import SERVICE
from bridge.service import decided

log = logging.getLogger(__name__)

# What a worker may answer itself, when the model goes to an upstream.
GENERATION = frozenset(
    {
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection; lengths are the sender's.
_HOP = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION,
        hdrs.KEEP_ALIVE,
        hdrs.PROXY_AUTHENTICATE,
        hdrs.PROXY_AUTHORIZATION,
        hdrs.TE,
        hdrs.TRAILER,
        hdrs.TRANSFER_ENCODING,
        hdrs.UPGRADE,
        hdrs.CONTENT_LENGTH,
    )
)
# The worker's server has already decoded a compressed request body; so must its headers.
# An expectation is the worker's to meet (it asks the client for the body before passing it
# on), not the primary's.
_NOT_FORWARDED = _HOP | {hdrs.CONTENT_ENCODING.lower(), hdrs.HOST.lower(), hdrs.EXPECT.lower()}
_PRIMARY = web.AppKey("primary_session", ClientSession)


def _model_of(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model else None


def worker_middleware() -> Middleware:
    """Serve upstream generations here; pass everything else to the primary. Put it first."""

    @web.middleware
    async def to_primary(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == hdrs.METH_POST and request.path in GENERATION:
            # A malformed body or an unknown model goes on too: the primary words the error.
            model = _model_of(await request.read())
            service = request.app[SERVICE]
            if model is not None and (route := await service.upstream_route(model)) is not None:
                # Decided once: the handler's own lookup gets this route, whatever the store
                # does meanwhile (a local model created now goes to the primary next time).
                with decided(model, route):
                    return await handler(request)
        return await forward(request)

    return to_primary


async def forward(request: web.Request) -> web.StreamResponse:
    """Pass `request` to the primary and stream its answer back as it comes."""
    session = request.app[_PRIMARY]
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED]
    # The Host as the client sent it, none included (the primary's Host guard judges it), never
    # the client library's own.
    headers.append((hdrs.HOST, request.headers.get(hdrs.HOST, "")))
    if request.body_exists:
        await send_continue(request)  # a blob upload's, which the route defers
        # Already read (the generation check) or streamed as it arrives (a blob upload).
        data = (
            await request.read()
            if request.path in GENERATION
            else request.content.iter_chunked(1 << 20)
        )
    else:
        data = None
    response: web.StreamResponse | None = None
    try:
        async with session.request(
            request.method,
            "http://primary" + request.path_qs,
            headers=headers,
            data=data,
            allow_redirects=False,
        ) as answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            # Raw, so that each name keeps the primary's spelling.
            for raw_key, raw_value in answer.raw_headers:
                key = raw_key.decode("latin-1")
                if key.lower() not in _HOP or key.lower() == "content-length":
                    response.headers.add(key, raw_value.decode("latin-1"))
            await response.prepare(request)
            async for piece in answer.content.iter_any():
                await response.write(piece)
            await response.write_eof()
            return response
    except ConnectionResetError:
        raise  # the client went away (aiohttp's ClientConnectionResetError is a ClientError too)
    except ClientError as exc:
        log.warning("%s %s: the primary process failed: %s", request.method, request.path, exc)
        if response is not None and response.prepared:
            raise  # broke off mid-answer: the client sees the stream cut, as from the primary
        message = "the primary bridge process is not answering"
        return web.Response(
            status=502,
            body=error_body(message, 502, openai=is_openai(request)),
            content_type="application/json",
        )


def install_forwarding(app: web.Application, primary_socket: str) -> None:
    """Make `app` a worker of the primary listening on `primary_socket`."""
    app.middlewares.insert(0, worker_middleware())

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        # No read timeout: a local generation may think for minutes between tokens.
        app[_PRIMARY] = ClientSession(
            connector=UnixConnector(path=primary_socket, limit=0),
            timeout=ClientTimeout(total=None, sock_connect=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )
        yield
        await app[_PRIMARY].close()

    app.cleanup_ctx.append(session_ctx)
