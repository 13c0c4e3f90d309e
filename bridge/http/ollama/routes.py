"""Thin /api/* handlers: decode the wire, call the service, encode or stream the result."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from bridge import OLLAMA_COMPAT_VERSION
from bridge.domain import Chunk, Metrics, ToolCall
from bridge.errors import InvalidRequest, ModelNotFound
from bridge.http.jsonbody import Fields, read_object
from bridge.http.keys import SERVICE, SETTINGS
from bridge.http.ollama import wire
from bridge.http.streaming import collect, stream_response
from bridge.models.resolver import parse_name
from bridge.service import source_suffix
from bridge.timefmt import local

NDJSON = "application/x-ndjson"


def json_response(obj: Any, status: int = 200) -> web.Response:
    """gin's c.JSON: charset=utf-8 and no trailing newline. `obj` may be encoded already."""
    body = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    return json_response({"version": OLLAMA_COMPAT_VERSION})


async def status(request: web.Request) -> web.Response:
    disabled, source = await asyncio.to_thread(request.app[SETTINGS].cloud_status)
    return json_response({"cloud": {"disabled": disabled, "source": source}})


async def tags(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    specs = await service.list_models()
    caps = await service.list_capabilities(specs)
    return json_response({"models": [wire.tags_entry(s, caps.get(s.name, ())) for s in specs]})


async def ps(request: web.Request) -> web.Response:
    """Local runners, then those upstreams report, latest expiry first as Ollama sorts."""
    service = request.app[SERVICE]
    now = time.time()
    entries: list[tuple[float, dict[str, Any]]] = []
    for r in service.running():
        expires = r.expires_at if r.expires_at is not None else now + r.keep_alive
        entry = wire.ps_entry(
            r.spec,
            size=max(r.placement.size, r.model.size),
            size_vram=min(r.placement.vram, max(r.placement.size, r.model.size)),
            context_length=r.model.n_ctx,
            expires_at=expires,
        )
        entries.append((expires, entry))
    for remote in await service.remote_running():
        entries.append((remote.expires_at or math.inf, wire.remote_ps_entry(remote)))
    entries.sort(key=lambda e: e[0], reverse=True)
    return json_response({"models": [e for _, e in entries]})


async def show(request: web.Request) -> web.Response:
    f = Fields(await read_object(request, "api.ShowRequest"), "ShowRequest")
    name = wire.model_field(f, required_msg="model is required")
    parse_name(source_suffix(name)[0])  # `name:local` names the local model
    info = await request.app[SERVICE].show(
        name,
        verbose=f.boolean("verbose", False),
        system=f.opt_string("system"),
        options=f.object("options"),
    )
    spec = info.spec
    out: dict[str, Any] = {}
    if spec.license:
        out["license"] = "\n".join(spec.license)
    out["modelfile"] = info.modelfile
    if info.parameters:
        out["parameters"] = info.parameters
    template = spec.template if spec.template is not None else info.chat_template
    if template:
        out["template"] = template
    if info.system:
        out["system"] = info.system
    if spec.renderer:
        out["renderer"] = spec.renderer
    if spec.parser:
        out["parser"] = spec.parser
    out["details"] = wire.details(spec.details, lengths=False)
    if spec.messages:
        out["messages"] = [{"role": m.role, "content": m.content} for m in spec.messages]
    if info.remote is not None:
        out["remote_model"], out["remote_host"] = info.remote
    out["model_info"] = info.model_info
    if info.tensors:
        out["tensors"] = info.tensors
    out["capabilities"] = list(info.capabilities)
    out["modified_at"] = local(spec.modified_at)
    if spec.requires:
        out["requires"] = spec.requires
    return json_response(out)


async def generate(request: web.Request) -> web.StreamResponse:
    req, stream = wire.decode_generate(await read_object(request, "api.GenerateRequest"))
    if not req.model:
        raise ModelNotFound("model '' not found")
    chunks = await request.app[SERVICE].generate(req)

    def encode(c: Chunk) -> dict[str, Any]:
        return wire.generate_chunk(req.model, c)

    if req.debug_render_only:
        return json_response(encode((await collect(chunks))[0]))
    # A load or unload reply is one object, streamed or not (Ollama's c.JSON).
    single = not stream or not (req.prompt or req.suffix)
    return await _reply(request, chunks, encode, not single, merge=_merge_generate)


async def chat(request: web.Request) -> web.StreamResponse:
    data = await read_object(request, "api.ChatRequest")
    req, stream = wire.decode_chat(data)
    if not req.model:
        raise InvalidRequest("model is required", param="model")
    chunks = await request.app[SERVICE].chat(req)

    def encode(c: Chunk) -> dict[str, Any]:
        return wire.chat_chunk(req.model, c)

    if req.debug_render_only:
        return json_response(encode((await collect(chunks))[0]))
    single = not stream or not req.messages  # a load or unload reply, as for generate
    return await _reply(request, chunks, encode, not single, merge=_merge_chat)


async def embed(request: web.Request) -> web.Response:
    req = wire.decode_embed(await read_object(request, "api.EmbedRequest"))
    if not req.model:
        raise ModelNotFound("model '' not found")
    parse_name(source_suffix(req.model)[0])
    result = await request.app[SERVICE].embed(req)
    return json_response(wire.embed_reply(req.model, result))


async def embeddings(request: web.Request) -> web.Response:
    req = wire.decode_embeddings(await read_object(request, "api.EmbeddingRequest"))
    if not req.model:
        raise InvalidRequest("model is required", param="model")
    result = await request.app[SERVICE].embed(req)
    return json_response(wire.embeddings_reply(result))


async def _reply(
    request: web.Request,
    chunks: AsyncIterator[Chunk],
    encode: Any,
    stream: bool,
    *,
    merge: Any,
) -> web.StreamResponse:
    if not stream:
        items = await collect(chunks)
        return json_response(merge(items, encode))
    return await stream_response(
        request,
        chunks,
        # An upstream's record under the client's own model name goes out as it came.
        encode=lambda c: c.raw if c.raw is not None else wire.ndjson(encode(c)),
        encode_error=wire.error_line,
        content_type=NDJSON,
        last=lambda c: c.done,
    )


def _final(items: list[Chunk]) -> Chunk:
    """The last chunk, carrying the logprobs of the whole reply (concatenated as Ollama does)."""
    final = items[-1] if items and items[-1].done else Chunk(done=True, metrics=Metrics())
    logprobs = tuple(lp for c in items for lp in c.logprobs)
    return replace(final, logprobs=logprobs) if logprobs else final


def _merge_generate(items: list[Chunk], encode: Any) -> dict[str, Any]:
    final = _final(items)
    text = "".join(c.text for c in items)
    thinking = "".join(c.thinking for c in items)
    out: dict[str, Any] = encode(final)
    out["response"] = text
    if thinking:
        out = _with_after(out, "response", "thinking", thinking)
    return out


def _merge_chat(items: list[Chunk], encode: Any) -> dict[str, Any]:
    final = _final(items)
    out: dict[str, Any] = encode(final)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(c.text for c in items)}
    thinking = "".join(c.thinking for c in items)
    if thinking:
        message["thinking"] = thinking
    calls: tuple[ToolCall, ...] = tuple(t for c in items for t in c.tool_calls)
    if calls:
        message["tool_calls"] = [wire.tool_call(t) for t in calls]
    out["message"] = message
    return out


def _with_after(d: dict[str, Any], after: str, key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out[k] = v
        if k == after:
            out[key] = value
    return out


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/status", status, allow_head=False)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps, allow_head=False)
    app.router.add_route("POST", "/api/show", show)
    app.router.add_route("POST", "/api/generate", generate)
    app.router.add_route("POST", "/api/chat", chat)
    app.router.add_route("POST", "/api/embed", embed)
    app.router.add_route("POST", "/api/embeddings", embeddings)
