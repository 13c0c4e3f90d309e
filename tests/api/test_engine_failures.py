"""Engine failures injected through the engine_factory seam become clear protocol errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson

from bridge.domain import Chunk, Completion, LoadOptions, ModelSpec
from bridge.engine.base import LoadedModel
from bridge.engine.llamacpp import LlamaCppEngine
from bridge.errors import ModelLoadFailed
from bridge.hardware import GPU
from tests.conftest import SMOL, Start, settings_for
from tests.store import Store


class RefusingEngine:
    """An engine whose loads fail, as llama.cpp does for an unsupported architecture."""

    loads = 0

    def gpus(self) -> list[GPU]:
        return []

    async def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedModel:
        RefusingEngine.loads += 1
        raise ModelLoadFailed(f"unable to load model {spec.name}: unknown architecture 'nova'")


async def test_load_failure_is_a_clear_error_in_both_protocols(
    start: Start, store: Store, tmp_path: Path
) -> None:
    RefusingEngine.loads = 0
    server = await start(settings_for(store), engine_factory=RefusingEngine)
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30) as http:
        msgs = [{"role": "user", "content": "hi"}]
        r = await http.post("/api/chat", json={"model": SMOL, "messages": msgs})
        assert r.status_code == 500
        assert r.json() == {"error": f"unable to load model {SMOL}: unknown architecture 'nova'"}
        r = await http.post("/v1/chat/completions", json={"model": SMOL, "messages": msgs})
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "api_error"
        # Nothing is left half-loaded, and the broken model is not reloaded in a tight loop:
        # within the cool-down the same error comes back without another load.
        assert (await http.get("/api/ps")).json() == {"models": []}
        assert RefusingEngine.loads == 1
        assert (await http.get("/api/tags")).status_code == 200


async def test_after_the_cooldown_the_load_is_retried(start: Start, store: Store) -> None:
    RefusingEngine.loads = 0
    server = await start(settings_for(store, load_cooldown=0), engine_factory=RefusingEngine)
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30) as http:
        for _ in range(2):
            r = await http.post("/api/generate", json={"model": SMOL, "prompt": "hi"})
            assert r.status_code == 500
    assert RefusingEngine.loads == 2


class SlowEngine:
    """Loads the real model, but only once the test lets it (a slow disk, a big model)."""

    started: asyncio.Event
    release: asyncio.Event

    def gpus(self) -> list[GPU]:
        return []

    async def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedModel:
        SlowEngine.started.set()
        await SlowEngine.release.wait()
        return await LlamaCppEngine().load(spec, options)


async def test_abandoned_wait_on_a_load_leaks_nothing(start: Start, store: Store) -> None:
    SlowEngine.started = asyncio.Event()
    SlowEngine.release = asyncio.Event()
    server = await start(settings_for(store, max_queue=1), engine_factory=SlowEngine)
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=60) as http:
        body = {"model": SMOL, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
        waiting = asyncio.create_task(http.post("/api/generate", json=body))
        await SlowEngine.started.wait()
        waiting.cancel()  # the client gives up while the model loads
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        SlowEngine.release.set()
        # Its queue place was given back (max_queue is 1) and the load it started finished.
        r = await http.post("/api/generate", json=body)
        assert r.status_code == 200 and r.json()["eval_count"] == 2
        assert [m["name"] for m in (await http.get("/api/ps")).json()["models"]] == [SMOL]


class CountingEngine(LlamaCppEngine):
    """The real engine, counting its loads."""

    loads = 0

    async def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedModel:  # type: ignore[override]
        CountingEngine.loads += 1
        return await super().load(spec, options)


async def test_a_gguf_folder_model_is_loaded_once_across_preload_and_chat(
    start: Start, gguf_dir: Path
) -> None:
    # Its detected stop list changes the chat path's view of the model, not the weights.
    CountingEngine.loads = 0
    server = await start(settings_for(None, gguf_dir), engine_factory=CountingEngine)
    name = "smollm2-135m-instruct.q4_1"
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=120) as http:
        assert (await http.post("/api/chat", json={"model": name, "messages": []})).json()[
            "done_reason"
        ] == "load"
        msgs = [{"role": "user", "content": "hi"}]
        body = {"model": name, "messages": msgs, "stream": False, "options": {"num_predict": 2}}
        assert (await http.post("/api/chat", json=body)).status_code == 200
        assert (await http.post("/api/generate", json={"model": name})).json()[
            "done_reason"
        ] == "load"
    assert CountingEngine.loads == 1


class BuggyEngine(LlamaCppEngine):
    """The real engine, whose streams raise a plain exception (a bug) after the first token."""

    async def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedModel:  # type: ignore[override]
        return _Buggy(await super().load(spec, options))  # type: ignore[return-value]


class _Buggy:
    def __init__(self, inner: LoadedModel) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def complete(self, completion: Completion) -> AsyncIterator[Chunk]:
        async with contextlib.aclosing(self._inner.complete(completion)) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk
                raise RuntimeError("a bug in the engine")


async def test_a_bug_mid_stream_ends_the_stream_in_band(start: Start, store: Store) -> None:
    """After the status line went out, a non-protocol error still ends the stream with an
    in-band error in its own framing (not a second status line or a 500 reply)."""
    server = await start(settings_for(store), engine_factory=BuggyEngine)
    msgs = [{"role": "user", "content": "hi"}]
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=120) as http:
        r = await http.post("/api/chat", json={"model": SMOL, "messages": msgs})
        lines = [orjson.loads(line) for line in r.text.splitlines()]
        assert r.status_code == 200 and lines[0]["done"] is False
        assert lines[-1] == {"error": "internal server error"}
        body = {"model": SMOL, "messages": msgs, "stream": True}
        r = await http.post("/v1/chat/completions", json=body)
        events = [e for e in r.text.split("\n\n") if e]
        assert r.status_code == 200 and events[0].startswith("data: {")
        error = orjson.loads(events[-1].removeprefix("data: "))
        assert error["error"]["message"] == "internal server error"
        # The connection is still good for the next request.
        assert (await http.get("/api/version")).status_code == 200
