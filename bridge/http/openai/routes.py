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
from bridge.http.openai import responses, wire
from bridge.http.streaming import collect, sse_events
from bridge.models.names import InvalidName, ModelName

DONE = b"data: [DONE]\n\n"


def _json(obj: Any) -> web.Response:
    return web.Response(body=wire.body(obj), content_type="application/json")


def _require_model(model: str) -> None:
    # As the native handlers the layer passes requests on to: chat says this, while generate
    # and embed look the empty name up.
    if not model:
        raise InvalidRequest("model is required")


def _look_up_model(model: str) -> None:
    if not model:
        raise ModelNotFound("model '' not found")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req, stream, include_usage = wire.decode_chat(
        await read_object(request, "openai.ChatCompletionRequest", empty="EOF")
    )
    _require_model(req.model)
    chunks = await request.app[SERVICE].chat(req)
    cid = wire.new_id("chatcmpl")
    if req.debug_render_only:  # the rendered prompt, nothing generated (streamed or not)
        (rendered, *_) = await collect(chunks)
        return _json(wire.debug_completion(cid, req.model, int(time.time()), rendered))
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
            deltas = _deltas(c, sent_calls)
            if first and not deltas:  # a wholly empty reply still opens with the role
                deltas = [{"content": ""}]
            sent_calls += len(c.tool_calls)
            lps = c.logprobs
            for d in deltas:
                if first:  # the role goes in the first delta alone
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
                        wire.finish_reason(c, tool_calls=sent_calls > 0, default="stop"),
                        lps,
                    )
                )
                if include_usage:
                    yield wire.sse(
                        wire.usage_chunk(
                            cid, req.model, created, "chat.completion.chunk", c.metrics
                        )
                    )

    return await sse_events(request, events(), chunks, wire.sse_error, trailer=DONE)


async def completions(request: web.Request) -> web.StreamResponse:
    req, stream, include_usage = wire.decode_completion(
        await read_object(request, "openai.CompletionRequest", empty="EOF")
    )
    _look_up_model(req.model)
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

    return await sse_events(request, events(), chunks, wire.sse_error, trailer=DONE)


async def create_response(request: web.Request) -> web.StreamResponse:
    """/v1/responses, stateless, over the same chat the other routes use."""
    req, stream, meta = responses.decode(
        await read_object(request, "openai.ResponsesRequest", empty="EOF")
    )
    _require_model(req.model)
    chunks = await request.app[SERVICE].chat(req)
    if not stream:
        items = await collect(chunks)
        final = items[-1] if items else Chunk(done=True)
        calls = [t for c in items for t in c.tool_calls]
        text = "".join(c.text for c in items)
        thinking = "".join(c.thinking for c in items)
        return _json(responses.response(meta, text, thinking, calls, final))
    converter = responses.StreamEvents(meta)

    async def events() -> AsyncIterator[bytes]:
        async for c in chunks:
            for event in converter.feed(c):
                yield event

    return await sse_events(request, events(), chunks, converter.failed)


async def embeddings(request: web.Request) -> web.Response:
    req, encoding = wire.decode_embeddings(
        await read_object(request, "openai.EmbedRequest", empty="EOF")
    )
    _look_up_model(req.model)
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


def _deltas(c: Chunk, sent_calls: int) -> list[dict[str, Any]]:
    """A chunk's deltas as Ollama's layer writes them: content always (possibly ""), beside
    the reasoning and tool calls; a chunk with reasoning and content or calls is split in two,
    the reasoning first, alone. The final metrics-only chunk gives none."""
    calls = [wire.tool_call(t, sent_calls + i) for i, t in enumerate(c.tool_calls)]
    if c.done and not (c.text or c.thinking or calls):
        return []
    if c.thinking and (c.text or calls):
        return [{"reasoning": c.thinking}, _delta(c.text, "", calls)]
    return [_delta(c.text, c.thinking, calls)]


def _delta(text: str, thinking: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {"content": text}
    if thinking:
        d["reasoning"] = thinking
    if calls:
        d["tool_calls"] = calls
    return d


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/responses", create_response)
    # GET only (gin answers HEAD with 405 here, unlike the native listing routes).
    app.router.add_get("/v1/models", models, allow_head=False)
    app.router.add_get("/v1/models/{model}", model, allow_head=False)
