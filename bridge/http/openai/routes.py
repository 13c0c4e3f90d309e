"""Thin /v1/* handlers over the same service the native API uses."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from bridge.domain import Chunk
from bridge.errors import InvalidRequest, ModelNotFound
from bridge.http.jsonbody import read_object
from bridge.http.keys import SERVICE
from bridge.http.openai import wire
from bridge.http.streaming import collect, stream_response
from bridge.models.names import InvalidName, ModelName

SSE = "text/event-stream"
DONE = b"data: [DONE]\n\n"


def _json(obj: Any) -> web.Response:
    return web.Response(body=wire.body(obj), content_type="application/json")


def _require_model(model: str) -> None:
    if not model:
        raise InvalidRequest("model is required", param="model")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req, stream, include_usage = wire.decode_chat(
        await read_object(request, "openai.ChatCompletionRequest")
    )
    _require_model(req.model)
    chunks = await request.app[SERVICE].chat(req)
    cid = wire.new_id("chatcmpl")
    if not stream:
        items = await collect(chunks)
        final = items[-1] if items else Chunk(done=True)
        calls = [t for c in items for t in c.tool_calls]
        return _json(
            wire.chat_completion(
                cid,
                req.model,
                int(time.time()),
                "".join(c.text for c in items),
                "".join(c.thinking for c in items),
                calls,
                final,
                tuple(lp for c in items for lp in c.logprobs),
            )
        )

    async def events() -> AsyncIterator[bytes]:
        created = int(time.time())
        first = True
        sent_calls = 0
        async for c in chunks:
            deltas: list[dict[str, Any]] = []
            if c.thinking:
                deltas.append({"reasoning": c.thinking})
            if c.text or c.tool_calls or (not c.done and not c.thinking):
                d: dict[str, Any] = {"content": c.text}
                if c.tool_calls:
                    d["tool_calls"] = [
                        wire.tool_call(t, sent_calls + i) for i, t in enumerate(c.tool_calls)
                    ]
                    sent_calls += len(c.tool_calls)
                deltas.append(d)
            lps = c.logprobs
            for d in deltas:
                if first:
                    d = {"role": "assistant", **d}
                    first = False
                yield wire.sse(wire.chat_chunk(cid, req.model, created, d, None, lps))
                lps = ()
            if c.done:
                yield wire.sse(
                    wire.chat_chunk(
                        cid,
                        req.model,
                        created,
                        {},
                        wire.finish_reason(c, tool_calls=sent_calls > 0),
                        lps,
                    )
                )
                if include_usage:
                    yield wire.sse(
                        wire.usage_chunk(
                            cid, req.model, created, "chat.completion.chunk", c.metrics
                        )
                    )

    return await stream_response(
        request,
        _closing(events(), chunks),
        encode=_identity,
        encode_error=wire.sse_error,
        content_type=SSE,
        trailer=DONE,
    )


async def completions(request: web.Request) -> web.StreamResponse:
    req, stream, include_usage = wire.decode_completion(
        await read_object(request, "openai.CompletionRequest")
    )
    _require_model(req.model)
    chunks = await request.app[SERVICE].generate(req)
    cid = wire.new_id("cmpl")
    if not stream:
        items = await collect(chunks)
        final = items[-1] if items else Chunk(done=True)
        text = "".join(c.text for c in items)
        lps = tuple(lp for c in items for lp in c.logprobs)
        return _json(wire.completion(cid, req.model, int(time.time()), text, final, lps))

    async def events() -> AsyncIterator[bytes]:
        async for c in chunks:
            if c.text or c.logprobs:
                yield wire.sse(
                    wire.completion_chunk(cid, req.model, c.text, None, include_usage, c.logprobs)
                )
            if c.done:
                yield wire.sse(
                    wire.completion_chunk(cid, req.model, "", wire.finish_reason(c), include_usage)
                )
                if include_usage:
                    yield wire.sse(
                        wire.usage_chunk(
                            cid, req.model, int(time.time()), "text_completion", c.metrics
                        )
                    )

    return await stream_response(
        request,
        _closing(events(), chunks),
        encode=_identity,
        encode_error=wire.sse_error,
        content_type=SSE,
        trailer=DONE,
    )


async def embeddings(request: web.Request) -> web.Response:
    req, encoding = wire.decode_embeddings(await read_object(request, "openai.EmbedRequest"))
    _require_model(req.model)
    result = await request.app[SERVICE].embed(req)
    return web.Response(
        body=wire.embeddings(req.model, result, encoding), content_type="application/json"
    )


async def models(request: web.Request) -> web.Response:
    specs = await request.app[SERVICE].list_models()
    data = [wire.model_entry(s) for s in specs] or None
    return _json({"object": "list", "data": data})


async def model(request: web.Request) -> web.Response:
    raw = request.match_info["model"]
    spec = await request.app[SERVICE].describe(raw)
    if spec is None:
        try:
            short = ModelName.parse(raw).display
        except InvalidName:
            short = raw
        raise ModelNotFound(f"model '{short}' not found")
    return _json(wire.model_entry(spec, raw))


def _identity(b: bytes) -> bytes:
    return b


async def _closing(
    events: AsyncIterator[bytes], source: AsyncIterator[Chunk]
) -> AsyncIterator[bytes]:
    """`events`, making sure the underlying chunk stream is closed when the events stop."""
    try:
        async for e in events:
            yield e
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        await source.aclose()  # type: ignore[attr-defined]


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model}", model)
