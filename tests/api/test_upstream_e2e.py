"""The same client code against a local model, an Ollama upstream and an OpenAI upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import ollama
import openai
import orjson
import pytest

from bridge.config import load_settings
from tests.api.test_fidelity import CALL_SCHEMA, TOOLS_TEMPLATE, WEATHER
from tests.conftest import PARAMS, SMOL, Start
from tests.fake_upstreams import Fake, Script, fakes
from tests.ggufgen import write_tiny_gguf
from tests.store import Store


async def serve(start: Start, store: Store, tmp_path: Path, *ups: Fake, extra: str = "") -> str:
    """bridge over `store` with the fakes as upstreams "box" (Ollama) and "vllm" (OpenAI)."""
    tables = [
        f'[[upstream]]\nname = "{"box" if f.kind == "ollama" else "vllm"}"\n'
        f'url = "{f.base}"\nkind = "{f.kind}"\n{extra}'
        for f in ups
    ]
    cfg = tmp_path / "bridge.toml"
    cfg.write_text("\n".join(tables))
    settings = load_settings(
        {"host": "127.0.0.1:0", "models": str(store.root), "demo_model": "off"},
        environ={},
        config_path=str(cfg),
    )
    return str((await start(settings)).make_url(""))


@pytest.fixture
async def base(start: Start, store: Store, tmp_path: Path) -> AsyncIterator[str]:
    async with fakes(
        Fake("ollama", models=("remote-ollama:latest",)), Fake("openai", models=("remote-openai",))
    ) as (ol, oa):
        yield await serve(start, store, tmp_path, ol, oa)


@pytest.mark.parametrize("model", [SMOL, "remote-ollama", "remote-openai"])
async def test_same_client_code_everywhere(base: str, model: str) -> None:
    msgs = [{"role": "user", "content": "Hello"}]
    async with ollama.AsyncClient(host=base) as client:
        names = {m.model for m in (await client.list()).models}
        assert {SMOL, "remote-ollama:latest"} <= names
        assert "completion" in ((await client.show(model)).capabilities or [])
        resp = await client.chat(model, messages=msgs, options={"num_predict": 4})
        assert resp.done and resp.message.role == "assistant" and resp.message.content
        assert resp.eval_count
        parts = [
            p
            async for p in await client.chat(
                model, messages=msgs, options={"num_predict": 4}, stream=True
            )
        ]
        assert parts[-1].done and "".join(p.message.content for p in parts)
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0) as oai:
        r = await oai.chat.completions.create(model=model, messages=msgs, max_tokens=4)  # type: ignore[arg-type]
        assert r.choices[0].message.content and r.usage is not None
        chunks = [
            c
            async for c in await oai.chat.completions.create(
                model=model, messages=msgs, max_tokens=4, stream=True
            )
        ]  # type: ignore[arg-type]
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert (await oai.models.retrieve(model)).id == model


@pytest.fixture
async def ps_base(start: Start, store: Store, tmp_path: Path) -> AsyncIterator[str]:
    async with fakes(
        Fake("ollama", models=("big:70b", "idle:latest"), loaded=("big:70b",)),
        Fake("openai", models=("remote-openai",)),
    ) as (ol, oa):
        yield await serve(start, store, tmp_path, ol, oa)


async def test_ps_lists_local_and_upstream_runners(ps_base: str) -> None:
    async with ollama.AsyncClient(host=ps_base) as client:
        await client.generate(SMOL, prompt="", keep_alive="10m")  # load the local model
        async with httpx.AsyncClient(base_url=ps_base) as http:
            models = (await http.get("/api/ps")).json()["models"]
        listed = await client.ps()
    # The upstream's runner expires in 2030: latest expiry first, as Ollama sorts.
    assert [m["name"] for m in models] == ["big:70b", SMOL]
    remote, local = models
    assert (
        list(remote)[:8]
        == list(local)
        == [
            "name",
            "model",
            "size",
            "digest",
            "details",
            "expires_at",
            "size_vram",
            "context_length",
        ]
    )
    assert remote["remote_model"] == "big:70b" and remote["remote_host"].startswith("http://")
    assert (remote["size"], remote["size_vram"], remote["context_length"]) == (5000, 4000, 8192)
    assert remote["expires_at"].startswith("2030-01-01")
    assert [m.model for m in listed.models] == ["big:70b", SMOL]


@pytest.mark.parametrize("model", ["remote-ollama", "remote-openai"])
async def test_embeddings_through_upstreams(base: str, model: str) -> None:
    async with ollama.AsyncClient(host=base) as client:
        reply = await client.embed(model, input=["one two", "three"])
    assert len(reply.embeddings) == 2
    for v in reply.embeddings:
        assert abs(sum(x * x for x in v) - 1.0) < 1e-6  # normalised, whoever served it
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0) as oai:
        r = await oai.embeddings.create(model=model, input=["one two", "three"])
    assert [d.index for d in r.data] == [0, 1] and r.usage.prompt_tokens == 3
    # The first input is longer: the fakes put its length first.
    assert r.data[0].embedding[0] > r.data[1].embedding[0]


async def test_fallback_serves_local_models_that_cannot_load(
    start: Start, store: Store, tmp_path: Path
) -> None:
    odd = write_tiny_gguf(tmp_path / "odd.gguf", arch="no-such-architecture")
    store.add("odd:latest", model=odd)  # readable header, but llama.cpp cannot load it
    store.add("gone:latest", model=write_tiny_gguf(tmp_path / "gone.gguf", context_length=99))
    blob = store.root / "blobs" / f"sha256-{_weights_digest(store, 'gone')}"
    blob.unlink()  # the weights are missing: the model has a problem before any load
    async with fakes(Fake("ollama", models=("elsewhere:latest",))) as (ol,):
        base = await serve(start, store, tmp_path, ol, extra="fallback = true\n")
        msgs = [{"role": "user", "content": "Hello"}]
        async with ollama.AsyncClient(host=base) as client:
            for name in ("odd", "gone"):
                resp = await client.chat(name, messages=msgs)
                assert resp.done and resp.message.content  # the fake upstream answered
                assert ol.generations()[-1].body["model"] == f"{name}:latest"
                async with httpx.AsyncClient(base_url=base) as http:
                    shown = (await http.post("/api/show", json={"model": name})).json()
                assert (shown["remote_model"], shown["remote_host"]) == (f"{name}:latest", ol.base)
            # A model that loads is still served here.
            local = await client.chat(SMOL, messages=msgs, options={"num_predict": 2})
            assert local.done
            assert all(s.body["model"] != SMOL for s in ol.generations())
            emb = await client.embed("odd", input="hi")
            assert len(emb.embeddings) == 1
        async with httpx.AsyncClient(base_url=base) as http:
            no_fallback = await http.post("/api/show", json={"model": SMOL})
        assert "remote_host" not in no_fallback.json()


async def test_a_local_model_made_through_bridge_takes_the_name_from_the_next_request(
    start: Start, store: Store, tmp_path: Path
) -> None:
    """Names an upstream serves skip the disk on every request; a model copied, created or
    pulled through bridge under such a name still wins it from the very next request on."""
    async with fakes(Fake("ollama", models=("shared:latest",))) as (ol,):
        base = await serve(start, store, tmp_path, ol)
        body = {"model": "shared", "messages": [{"role": "user", "content": "Hi"}]}
        body |= {"stream": False, "options": {"num_predict": 2}}
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            assert (await http.post("/api/chat", json=body)).status_code == 200
            assert len(ol.generations()) == 1  # the upstream's model
            r = await http.post("/api/copy", json={"source": SMOL, "destination": "shared"})
            assert r.status_code == 200
            r = await http.post("/api/chat", json=body)
            assert r.status_code == 200 and r.json()["model"] == "shared"
            assert len(ol.generations()) == 1  # served here, by the copied SmolLM2
            shown = (await http.post("/api/show", json={"model": "shared"})).json()
            assert "remote_host" not in shown
            tags = {m["name"] for m in (await http.get("/api/tags")).json()["models"]}
            assert {"shared:latest", "box/shared:latest"} <= tags


def _weights_digest(store: Store, model: str) -> str:
    manifest = store.root / "manifests/registry.ollama.ai/library" / model / "latest"
    layers = orjson.loads(manifest.read_bytes())["layers"]
    digest: str = layers[0]["digest"]
    return digest.removeprefix("sha256:")


@pytest.fixture
async def tools_base(start: Start, tmp_path: Path, smollm2: Path) -> AsyncIterator[str]:
    store = Store(tmp_path / "models")
    store.add("tooly:latest", model=smollm2, template=TOOLS_TEMPLATE, params=PARAMS)
    call = Script(text=(), tool_calls=({"name": "get_weather", "arguments": {"city": "Oslo"}},))
    async with fakes(
        Fake("ollama", models=("remote-ollama:latest",), script=call),
        Fake("openai", models=("remote-openai",), script=call),
    ) as (ol, oa):
        yield await serve(start, store, tmp_path, ol, oa)


@pytest.mark.parametrize("model", ["tooly", "remote-ollama", "remote-openai"])
async def test_same_tool_calling_code_everywhere(tools_base: str, model: str) -> None:
    msgs = [{"role": "user", "content": "What is the weather in Oslo?"}]
    opts = {"temperature": 0, "num_predict": 40}
    async with ollama.AsyncClient(host=tools_base) as client:
        resp = await client.chat(
            model, messages=msgs, tools=[WEATHER], format=CALL_SCHEMA, options=opts
        )
        calls = resp.message.tool_calls
        assert calls and calls[0].function.name == "get_weather"
        assert isinstance(calls[0].function.arguments["city"], str)
        parts = [
            p
            async for p in await client.chat(
                model, messages=msgs, tools=[WEATHER], format=CALL_SCHEMA, options=opts, stream=True
            )
        ]
        streamed = [c for p in parts for c in (p.message.tool_calls or [])]
        assert [c.function.name for c in streamed] == ["get_weather"]
    async with openai.AsyncOpenAI(base_url=tools_base + "/v1", api_key="x", max_retries=0) as oai:
        r = await oai.chat.completions.create(
            model=model,
            messages=msgs,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "c", "schema": CALL_SCHEMA},
            },
            temperature=0,
            max_tokens=40,
        )
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        fn = choice.message.tool_calls[0].function  # type: ignore[union-attr]
        assert fn.name == "get_weather" and "city" in orjson.loads(fn.arguments)


async def test_native_records_under_the_clients_name_are_relayed_as_they_came(
    start: Start, store: Store, tmp_path: Path
) -> None:
    async with fakes(Fake("ollama", models=("remote-ollama:latest",))) as (ol,):
        base = await serve(start, store, tmp_path, ol)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            msgs = [{"role": "user", "content": "hi"}]

            async def lines(model: str) -> list[bytes]:
                body = {"model": model, "messages": msgs}
                async with http.stream("POST", "/api/chat", json=body) as r:
                    return [line async for line in r.aiter_bytes()]

            # Asked by the name the upstream writes: its delta records pass byte for byte
            # (its own created_at), and the last record is bridge's, with bridge's durations.
            relayed = b"".join(await lines("remote-ollama:latest")).splitlines()
            for i, text in enumerate(("Hello", " from", " upstream")):
                record = orjson.loads(relayed[i])
                assert record["created_at"] == "2025-05-01T10:00:00Z"
                assert record["message"]["content"] == text
                assert relayed[i] == orjson.dumps(
                    {
                        "model": "remote-ollama:latest",
                        "created_at": "2025-05-01T10:00:00Z",
                        "message": {"role": "assistant", "content": text},
                        "done": False,
                    }
                )
            final = orjson.loads(relayed[-1])
            assert final["done"] is True and final["created_at"] != "2025-05-01T10:00:00Z"
            # Asked by another spelling of the name: every record is re-encoded under it.
            renamed = [orjson.loads(x) for x in b"".join(await lines("remote-ollama")).splitlines()]
            assert {r["model"] for r in renamed} == {"remote-ollama"}
            assert all(r["created_at"] != "2025-05-01T10:00:00Z" for r in renamed)


async def test_openai_stream_deltas_carry_content_beside_reasoning(
    start: Start, store: Store, tmp_path: Path
) -> None:
    """As Ollama's layer writes them: a reasoning-only delta has `content: ""`; one with both
    is split, the reasoning alone first; the finish chunk has an empty delta."""
    script = Script(thinking=("hmm",), text=("Hi",))
    async with fakes(Fake("ollama", models=("t:latest",), script=script)) as (up,):
        base = await serve(start, store, tmp_path, up)
        body = {"model": "t", "messages": [{"role": "user", "content": "x"}], "stream": True}
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            r = await http.post("/v1/chat/completions", json=body)
            debug = await http.post("/api/chat", json={**body, "_debug_render_only": True})
    # Not an upstream's to answer (an OpenAI-kind one has no such thing): said plainly.
    assert debug.status_code == 400 and "_debug_render_only" in debug.json()["error"]
    events = [orjson.loads(e[6:]) for e in r.content.split(b"\n\n") if e.startswith(b"data: {")]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas[0] == {"role": "assistant", "content": "", "reasoning": "hmm"}
    assert {"content": "Hi"} in deltas and deltas[-1] == {}
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
