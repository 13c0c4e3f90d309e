"""Thin /api/* handlers for model management: pull, push, create, copy, delete, blobs.

Progress streams are NDJSON (`stream` defaults to true); `stream:false` answers with the last
progress object only. Errors known before the first line get their real status; later ones end
the stream with an in-band `{"error"}` line, as Ollama does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
from aiohttp import web

from bridge.errors import BridgeError, InvalidRequest
from bridge.http.errors import error_body, status_of
from bridge.http.expect import defer_continue, send_continue
from bridge.http.jsonbody import Fields, read_object
from bridge.http.keys import SERVICE, SETTINGS
from bridge.http.ollama import wire
from bridge.http.streaming import collect, stream_response
from bridge.models import hf
from bridge.models.create import CreateRequest, Quantizer, valid_file_path
from bridge.models.manager import ModelManager, parse
from bridge.models.progress import Progress
from bridge.models.pull import TransferPolicy
from bridge.models.store_writer import StoreWriter, is_digest
from bridge.registry import RegistryClient
from bridge.service import source_suffix

log = logging.getLogger(__name__)

MANAGER = web.AppKey("manager", ModelManager)
NDJSON = "application/x-ndjson"


# --- replies ----------------------------------------------------------------------------------


async def _progress_reply(
    request: web.Request, items: AsyncIterator[Progress], stream: bool
) -> web.StreamResponse:
    try:
        if not stream:
            last = (await collect(items) or [Progress("success")])[-1]
            return web.Response(body=orjson.dumps(last.as_json()), content_type="application/json")
        return await stream_response(
            request,
            items,
            encode=lambda p: wire.ndjson(p.as_json()),
            encode_error=wire.error_line,
            content_type=NDJSON,
        )
    except BridgeError as exc:
        # Before the first record: Ollama writes these from its stream, whose content type
        # (plain application/json, no charset) is set before gin's c.JSON would add one.
        status = status_of(exc)
        body = error_body(exc.message, status, openai=False)
        return web.Response(status=status, body=body, content_type="application/json")


async def _body(request: web.Request, struct: str) -> Fields:
    return Fields(await read_object(request, f"api.{struct}"), struct)


# --- handlers ---------------------------------------------------------------------------------


async def pull(request: web.Request) -> web.StreamResponse:
    f = await _body(request, "PullRequest")
    name = source_suffix(f.string("model") or f.string("name"))[0]  # `name:local` is `name`
    items = await request.app[MANAGER].pull(name, insecure=f.boolean("insecure", False))
    return await _progress_reply(request, items, f.boolean("stream", True))


async def push(request: web.Request) -> web.StreamResponse:
    f = await _body(request, "PushRequest")
    name = wire.model_field(f, required_msg="model is required")
    items = await request.app[MANAGER].push(name, insecure=f.boolean("insecure", False))
    return await _progress_reply(request, items, f.boolean("stream", True))


async def create(request: web.Request) -> web.StreamResponse:
    f = await _body(request, "CreateRequest")
    req = decode_create(f)
    items = await request.app[MANAGER].create(req)
    return await _progress_reply(request, items, f.boolean("stream", True))


async def copy(request: web.Request) -> web.Response:
    f = await _body(request, "CopyRequest")
    await request.app[MANAGER].copy(f.string("source"), f.string("destination"))
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    f = await _body(request, "DeleteRequest")
    name = wire.model_field(f, required_msg="model is required")
    await request.app[MANAGER].delete(source_suffix(name)[0])
    return web.Response(status=200)


async def head_blob(request: web.Request) -> web.Response:
    await request.app[MANAGER].has_blob(request.match_info["digest"])
    return web.Response(status=200)


async def create_blob(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    digest = request.match_info["digest"]
    if await manager.blob_exists(digest):
        return web.Response(status=200)  # the body is not read, as in Ollama
    await send_continue(request)
    await manager.put_blob(digest, request.content.iter_chunked(1 << 20))
    return web.Response(status=201)


# --- decoding /api/create -------------------------------------------------------------------


def _files(f: Fields, key: str) -> dict[str, str] | None:
    obj = f.object(key, "map[string]string")
    if obj is None:
        return None
    out: dict[str, str] = {}
    for path, digest in obj.items():
        if not isinstance(digest, str):
            raise InvalidRequest(
                f"json: cannot unmarshal {type(digest).__name__} into Go struct field "
                f"CreateRequest.{key} of type string"
            )
        if not valid_file_path(path):
            raise InvalidRequest("file path must be relative")
        if not is_digest(digest):
            raise InvalidRequest("invalid digest format")
        out[path] = digest
    return out


def _license(f: Fields) -> tuple[str, ...]:
    v = f.raw("license")
    if v is None or v == "":
        return ()
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise InvalidRequest("json: cannot unmarshal into Go value of type []string")


def decode_create(f: Fields) -> CreateRequest:
    """An /api/create body -> CreateRequest; Ollama's 400s for bad input."""
    files = _files(f, "files")
    adapters = _files(f, "adapters")
    name = parse(f.string("model") or f.string("name"))
    messages = f.array("messages", "[]api.Message") or []
    for m in messages:
        if not isinstance(m, dict):
            raise InvalidRequest(
                "json: cannot unmarshal into Go struct field CreateRequest.messages of type api.Message"
            )
    return CreateRequest(
        name=name,
        from_=f.string("from"),
        files=files,
        adapters=adapters,
        template=f.string("template"),
        system=f.string("system"),
        license=_license(f),
        parameters=f.object("parameters"),
        messages=tuple(messages),
        quantize=f.string("quantize") or f.string("quantization"),
        renderer=f.string("renderer"),
        parser=f.string("parser"),
        requires=f.string("requires"),
        info=f.object("info"),
    )


# --- wiring -----------------------------------------------------------------------------------


class _LlamaQuantizer:
    """llama.cpp's quantizer, imported only when a create asks for it."""

    def canonical_type(self, name: str) -> str:
        from bridge.engine.quantize import QuantizeError, canonical_type

        try:
            return canonical_type(name)
        except QuantizeError as exc:
            raise ValueError(str(exc)) from exc

    def quantize(self, src: str, dst: str, type_name: str) -> None:
        from bridge.engine.quantize import quantize_file

        quantize_file(src, dst, type_name)


@dataclass(frozen=True, slots=True)
class Seams:
    """What tests replace: the HTTP transport, the Hugging Face endpoint, transfer timings and
    the quantizer. Set with `configure` before the app starts."""

    transport: httpx.AsyncBaseTransport | None = None
    hf_endpoint: str | None = None
    policy: TransferPolicy | None = None
    quantizer: Quantizer | None = None
    read_timeout: float = 30.0


SEAMS = web.AppKey("manage_seams", Seams)


def configure(app: web.Application, seams: Seams) -> None:
    """Replace the defaults (call before the app starts)."""
    app[SEAMS] = seams


async def _manager_ctx(app: web.Application) -> AsyncIterator[None]:
    seams = app.get(SEAMS) or Seams()
    service = app[SERVICE]
    registry = RegistryClient(transport=seams.transport, read_timeout=seams.read_timeout)

    async def unload(raw: str) -> None:
        spec = await service.resolver.find(raw)
        if spec is not None:
            await service.scheduler.unload(spec)

    # HF_ENDPOINT is read here until config.py has a setting for it.
    endpoint = seams.hf_endpoint or os.environ.get("HF_ENDPOINT") or hf.DEFAULT_ENDPOINT
    app[MANAGER] = ModelManager(
        StoreWriter(Path(app[SETTINGS].models_dir()), on_change=service.resolver.changed),
        registry,
        find_local=service.resolver.find,
        unload=unload,
        quantizer=seams.quantizer or _LlamaQuantizer(),
        hf_endpoint=endpoint,
        policy=seams.policy,
    )
    try:
        yield
    finally:
        await registry.aclose()


def add_routes(app: web.Application) -> None:
    """Register the routes, and the manager in a cleanup context (after the service's)."""
    app.cleanup_ctx.append(_manager_ctx)
    app.router.add_route("POST", "/api/pull", pull)
    app.router.add_route("POST", "/api/push", push)
    app.router.add_route("POST", "/api/create", create)
    app.router.add_route("POST", "/api/copy", copy)
    app.router.add_route("DELETE", "/api/delete", delete)
    app.router.add_route("HEAD", "/api/blobs/{digest}", head_blob)
    app.router.add_route("POST", "/api/blobs/{digest}", create_blob, expect_handler=defer_continue)
