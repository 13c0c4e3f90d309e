"""Thin /v1/messages handler (Anthropic's Messages API) over the service's chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from aiohttp import web

from bridge.domain import ChatRequest, Chunk
from bridge.errors import CapabilityMissing, InvalidRequest
from bridge.http.anthropic import estimate, wire
from bridge.http.anthropic.request import decode_messages
from bridge.http.errors import ANTHROPIC_PATH, anthropic_rejection
from bridge.http.jsonbody import read_object
from bridge.http.keys import SERVICE
from bridge.http.streaming import collect, sse_events
from bridge.service import Service


async def messages(request: web.Request) -> web.StreamResponse:
    try:
        decoded = decode_messages(
            await read_object(request, "anthropic.MessagesRequest", empty="EOF")
        )
    except InvalidRequest as exc:
        return anthropic_rejection(exc)
    req = decoded.request
    chunks = await _chat(request.app[SERVICE], req)
    mid = wire.new_message_id()
    if not decoded.stream:
        items = await collect(chunks)
        body = wire.message(mid, req.model, items, tools=bool(req.tools))
        return web.Response(body=body, content_type="application/json")

    converter = wire.StreamConverter(mid, req.model, estimate.input_tokens(decoded))

    async def events() -> AsyncIterator[bytes]:
        async for c in chunks:
            if frames := converter.process(c):
                yield frames

    return await sse_events(request, events(), chunks, wire.sse_error)


async def _chat(service: Service, req: ChatRequest) -> AsyncIterator[Chunk]:
    try:
        return await service.chat(req)
    except CapabilityMissing:
        if not req.think:
            raise
        # Ollama's layer has its chat handler drop thinking that the model cannot do
        # ("relax_thinking") instead of refusing it: Claude Code asks every model to think.
        # Any other missing capability is refused again by the second try.
        return await service.chat(replace(req, think=None))


def add_routes(app: web.Application) -> None:
    app.router.add_post(ANTHROPIC_PATH, messages)
