"""Fake upstream servers: real aiohttp servers on loopback speaking Ollama's /api/* or OpenAI's
/v1/*, with faults injected per request (error statuses, resets, hangs, broken streams).

A fake answers every generation with its `Script` (text pieces, thinking, tool calls, usage),
records each request it gets, and counts the generations in progress, so tests can see where a
request went and that a connection bridge closed was closed at the upstream too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass(frozen=True)
class Script:
    """What the fake model answers."""

    text: tuple[str, ...] = ("Hello", " from", " upstream")
    thinking: tuple[str, ...] = ()
    tool_calls: tuple[dict[str, Any], ...] = ()  # {"name": ..., "arguments": {...}}
    finish: str = "stop"  # or "length"
    prompt_tokens: int = 11
    dims: int = 3
    timings: bool = False  # llama-server's `timings` in the last chunk (OpenAI kind)


@dataclass(frozen=True)
class Fault:
    """What goes wrong with one request. `after` counts the chunks sent first."""

    status: int | None = None  # answer with this status and `body` instead
    body: Any = None
    reset: bool = False  # close the connection abruptly (after `after` chunks, if set)
    hang: bool = False  # stop and wait (after `after` chunks, if set) until released
    garbage: bool = False  # after `after` chunks, a line that is not JSON
    truncate: bool = False  # after `after` chunks, end the reply cleanly without finishing
    error: str | None = None  # after `after` chunks, an in-band error record
    after: int | None = None


@dataclass
class Seen:
    method: str
    path: str
    body: Any
    headers: dict[str, str]
    peer: Any  # the client's address: the same one for requests on a reused connection


@dataclass
class Fake:
    """One fake upstream. `kind` is "ollama" or "openai"."""

    kind: str
    models: tuple[str, ...] = ("fake:latest",)
    script: Script = Script()
    faults: list[Fault] = field(default_factory=list)  # consumed one per generation request
    healthy: bool = True  # health and model-list endpoints answer 500 when False
    loaded: tuple[str, ...] = ()  # what /api/ps lists
    seen: list[Seen] = field(default_factory=list)
    active: int = 0  # generations in progress
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # a generation ended
    release: asyncio.Event = field(default_factory=asyncio.Event)  # let hung requests go on
    started: asyncio.Event = field(default_factory=asyncio.Event)  # a generation started
    got: asyncio.Event = field(default_factory=asyncio.Event)  # a request arrived
    url: str = ""
    _runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        """The URL as an [[upstream]] table gives it."""
        return self.url + ("/v1" if self.kind == "openai" else "")

    async def idle(self) -> None:
        """Wait until no generation is in progress (the client's connections were closed)."""
        while self.active:
            self.ended.clear()
            await self.ended.wait()

    def generations(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    async def start(self) -> Fake:
        app = web.Application()
        if self.kind == "ollama":
            app.router.add_get("/api/version", self._version)
            app.router.add_get("/api/tags", self._tags)
            app.router.add_get("/api/ps", self._ps)
            app.router.add_post("/api/chat", self._generation(self._ollama_chat))
            app.router.add_post("/api/generate", self._generation(self._ollama_generate))
            app.router.add_post("/api/embed", self._generation(self._ollama_embed))
            app.router.add_post("/api/show", self._show)
        else:
            app.router.add_get("/v1/models", self._openai_models)
            app.router.add_post("/v1/chat/completions", self._generation(self._openai_chat))
            app.router.add_post("/v1/completions", self._generation(self._openai_completion))
            app.router.add_post("/v1/embeddings", self._generation(self._openai_embed))
        # Handlers are cancelled when the client goes away, so `ended` says it did.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- plumbing --------------------------------------------------------------------------

    def _record(self, request: web.Request, body: Any) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(Seen(request.method, request.path, body, dict(request.headers), peer))
        self.got.set()

    def _generation(
        self, handler: Callable[[web.Request, Any, Fault], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.json(loads=orjson.loads)
            self._record(request, body)
            fault = self.faults.pop(0) if self.faults else Fault()
            self.active += 1
            self.started.set()
            try:
                if fault.status is not None:
                    return web.json_response(fault.body, status=fault.status)
                if fault.after is None and (fault.reset or fault.hang):
                    if fault.hang:
                        await self.release.wait()
                    _abort(request)
                    return web.Response()
                return await handler(request, body, fault)
            finally:
                self.active -= 1
                self.ended.set()

        return handle

    async def _stream(
        self,
        request: web.Request,
        records: list[bytes],
        fault: Fault,
        content_type: str,
        bad: bytes,
    ) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = content_type
        await resp.prepare(request)
        for i, record in enumerate(records):
            if fault.after is not None and i == fault.after:
                if fault.hang:
                    await self.release.wait()
                if fault.reset:
                    _abort(request)
                    return resp
                if fault.garbage:
                    await resp.write(bad)
                    break
                if fault.truncate:
                    break
                if fault.error is not None:
                    await resp.write(self._error_record(fault.error))
                    break
            await resp.write(record)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp

    def _error_record(self, message: str) -> bytes:
        if self.kind == "ollama":
            return orjson.dumps({"error": message}) + b"\n"
        return b"data: " + orjson.dumps({"error": {"message": message, "type": "x"}}) + b"\n\n"

    async def _version(self, request: web.Request) -> web.Response:
        self._record(request, None)
        return _health(self.healthy, {"version": "0.13.0"})

    # --- Ollama ----------------------------------------------------------------------------

    async def _tags(self, request: web.Request) -> web.Response:
        self._record(request, None)
        models = [
            {
                "name": m,
                "model": m,
                "modified_at": "2025-05-01T10:00:00.123456789+02:00",
                "size": 1000 + i,
                "digest": f"{i:064x}",
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "llama",
                    "families": ["llama"],
                    "parameter_size": "8B",
                    "quantization_level": "Q4_K_M",
                },
            }
            for i, m in enumerate(self.models)
        ]
        return _health(self.healthy, {"models": models})

    async def _ps(self, request: web.Request) -> web.Response:
        self._record(request, None)
        models = [
            {
                "name": m,
                "model": m,
                "size": 5000,
                "digest": "ab" * 32,
                "details": {"format": "gguf", "family": "llama"},
                "expires_at": "2030-01-01T00:00:00Z",
                "size_vram": 4000,
                "context_length": 8192,
            }
            for m in self.loaded
        ]
        return _health(self.healthy, {"models": models})

    async def _show(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        self._record(request, body)
        if body.get("model") not in self.models:
            return web.json_response(
                {"error": f"model '{body.get('model')}' not found"}, status=404
            )
        return web.json_response(
            {
                "template": "{{ .Prompt }}",
                "parameters": 'stop "<|im_end|>"',
                "details": {"format": "gguf", "family": "llama"},
                "model_info": {"general.architecture": "llama"},
                "capabilities": ["completion", "tools"],
            }
        )

    def _ollama_records(self, body: Any, chat: bool) -> list[bytes]:
        s = self.script
        model = body.get("model")

        def record(text: str = "", thinking: str = "", **extra: Any) -> bytes:
            obj: dict[str, Any] = {"model": model, "created_at": "2025-05-01T10:00:00Z"}
            if chat:
                msg: dict[str, Any] = {"role": "assistant", "content": text}
                if thinking:
                    msg["thinking"] = thinking
                if "tool_calls" in extra:
                    msg["tool_calls"] = extra.pop("tool_calls")
                obj["message"] = msg
            else:
                obj["response"] = text
                if thinking:
                    obj["thinking"] = thinking
            obj.update(extra)
            return orjson.dumps(obj) + b"\n"

        out = [record(thinking=t, done=False) for t in s.thinking]
        out += [record(text=t, done=False) for t in s.text]
        if s.tool_calls:
            calls = [
                {"id": f"call_{i}", "function": {"index": i, **c}}
                for i, c in enumerate(s.tool_calls)
            ]
            out.append(record(tool_calls=calls, done=False))
        final: dict[str, Any] = {
            "done": True,
            "done_reason": s.finish,
            "total_duration": 9_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": s.prompt_tokens,
            "prompt_eval_duration": 2_000_000,
            "eval_count": len(s.text),
            "eval_duration": 3_000_000,
        }
        if not chat:
            final["context"] = [1, 2, 3]
        out.append(record(**final))
        return out

    async def _ollama_chat(
        self, request: web.Request, body: Any, fault: Fault
    ) -> web.StreamResponse:
        if not body.get("messages"):
            return _load_reply(body, chat=True)
        return await self._ollama_reply(request, body, fault, chat=True)

    async def _ollama_generate(
        self, request: web.Request, body: Any, fault: Fault
    ) -> web.StreamResponse:
        if not body.get("prompt"):
            return _load_reply(body, chat=False)
        return await self._ollama_reply(request, body, fault, chat=False)

    async def _ollama_reply(
        self, request: web.Request, body: Any, fault: Fault, *, chat: bool
    ) -> web.StreamResponse:
        records = self._ollama_records(body, chat)
        if body.get("stream") is False:
            return web.json_response(_merged([orjson.loads(r) for r in records], chat))
        return await self._stream(request, records, fault, "application/x-ndjson", b"{oops\n")

    async def _ollama_embed(
        self, request: web.Request, body: Any, fault: Fault
    ) -> web.StreamResponse:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = [[float(len(t)), 1.0, 0.5][: self.script.dims] for t in inputs]
        return web.json_response(
            {
                "model": body["model"],
                "embeddings": vectors,
                "total_duration": 5_000_000,
                "load_duration": 1_000_000,
                "prompt_eval_count": sum(len(t.split()) for t in inputs),
            }
        )

    # --- OpenAI ----------------------------------------------------------------------------

    async def _openai_models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "vllm"}
            | ({"max_model_len": 32768} if i == 0 else {})
            for i, m in enumerate(self.models)
        ]
        return _health(self.healthy, {"object": "list", "data": data})

    def _sse_records(self, body: Any, chat: bool) -> list[bytes]:
        s = self.script
        base = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
        }

        def event(choice: dict[str, Any] | None, **extra: Any) -> bytes:
            obj = base | {"choices": [choice] if choice is not None else []} | extra
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        def piece(key: str, text: str) -> dict[str, Any]:
            if chat:
                return {"index": 0, "delta": {key: text}, "finish_reason": None}
            return {"index": 0, "text": text, "finish_reason": None}

        out = []
        if chat:
            out.append(event({"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}))
        out += [event(piece("reasoning_content", t)) for t in s.thinking]
        out += [event(piece("content", t)) for t in s.text]
        for i, call in enumerate(s.tool_calls):
            # vLLM's way: the name first, then the arguments in pieces.
            args = orjson.dumps(call["arguments"]).decode()
            head = {"index": i, "id": f"call_{i}", "type": "function"}
            out.append(
                event(
                    {
                        "index": 0,
                        "delta": {"tool_calls": [head | {"function": {"name": call["name"]}}]},
                        "finish_reason": None,
                    }
                )
            )
            for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                out.append(
                    event(
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [{"index": i, "function": {"arguments": part}}]
                            },
                            "finish_reason": None,
                        }
                    )
                )
        finish = "tool_calls" if s.tool_calls else s.finish
        last: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            last["delta"] = {}
        else:
            last["text"] = ""
        extra: dict[str, Any] = {}
        if s.timings:
            extra["timings"] = {
                "prompt_n": s.prompt_tokens,
                "prompt_ms": 2.5,
                "predicted_n": len(s.text),
                "predicted_ms": 7.5,
            }
        out.append(event(last, **extra))
        if (body.get("stream_options") or {}).get("include_usage"):
            n = len(s.text)
            usage = {"prompt_tokens": s.prompt_tokens, "completion_tokens": n}
            out.append(event(None, usage=usage | {"total_tokens": s.prompt_tokens + n}))
        out.append(b"data: [DONE]\n\n")
        return out

    async def _openai_chat(
        self, request: web.Request, body: Any, fault: Fault
    ) -> web.StreamResponse:
        if not body.get("stream"):
            return web.json_response(self._openai_whole(body))
        records = self._sse_records(body, chat=True)
        return await self._stream(request, records, fault, "text/event-stream", b"data: {oops\n\n")

    async def _openai_completion(
        self, request: web.Request, body: Any, fault: Fault
    ) -> web.StreamResponse:
        records = self._sse_records(body, chat=False)
        return await self._stream(request, records, fault, "text/event-stream", b"data: {oops\n\n")

    def _openai_whole(self, body: Any) -> dict[str, Any]:
        s = self.script
        message: dict[str, Any] = {"role": "assistant", "content": "".join(s.text)}
        if s.thinking:
            message["reasoning_content"] = "".join(s.thinking)
        if s.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {
                        "name": c["name"],
                        "arguments": orjson.dumps(c["arguments"]).decode(),
                    },
                }
                for i, c in enumerate(s.tool_calls)
            ]
        n = len(s.text)
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if s.tool_calls else s.finish,
                }
            ],
            "usage": {
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": n,
                "total_tokens": s.prompt_tokens + n,
            },
        }

    async def _openai_embed(
        self, request: web.Request, body: Any, fault: Fault
    ) -> web.StreamResponse:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [float(len(t)), 1.0, 0.5][: self.script.dims],
            }
            for i, t in enumerate(inputs)
        ]
        data.reverse()  # servers may answer out of order; `index` says which is which
        tokens = sum(len(t.split()) for t in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _merged(records: list[dict[str, Any]], chat: bool) -> dict[str, Any]:
    """A stream's records as one reply (`stream: false`): the last, with the text joined."""
    out = dict(records[-1])
    if chat:
        msgs = [r["message"] for r in records]
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(m["content"] for m in msgs)}
        thinking = "".join(m.get("thinking", "") for m in msgs)
        if thinking:
            msg["thinking"] = thinking
        calls = [c for m in msgs for c in m.get("tool_calls", [])]
        if calls:
            msg["tool_calls"] = calls
        out["message"] = msg
    else:
        out["response"] = "".join(r["response"] for r in records)
    return out


def _health(ok: bool, body: dict[str, Any]) -> web.Response:
    if ok:
        return web.json_response(body)
    return web.json_response({"error": "unhealthy"}, status=500)


def _load_reply(body: Any, *, chat: bool) -> web.Response:
    reason = "unload" if body.get("keep_alive") == 0 else "load"
    obj: dict[str, Any] = {"model": body["model"], "created_at": "2025-05-01T10:00:00Z"}
    if chat:
        obj["message"] = {"role": "assistant", "content": ""}
    else:
        obj["response"] = ""
    obj |= {"done": True, "done_reason": reason}
    return web.json_response(obj)


def _abort(request: web.Request) -> None:
    """Drop the connection at once (a crash, a reset), without an HTTP reply."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def fakes(*items: Fake) -> AsyncIterator[tuple[Fake, ...]]:
    """Start the fakes; stop them (releasing any hung request) on the way out."""
    try:
        for f in items:
            await f.start()
        yield items
    finally:
        for f in items:
            await f.close()
