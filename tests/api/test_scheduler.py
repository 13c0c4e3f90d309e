"""Many models and many requests: keep-alive, /api/ps, eviction, slots, the queue, reloads."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Start, settings_for

GREEDY = {"temperature": 0, "num_predict": 4}


@pytest.fixture
def models_dir(tmp_path: Path, smollm2: Path) -> Path:
    """SmolLM2 under three names (separate files count as separate models)."""
    d = tmp_path / "many"
    d.mkdir()
    for name in ("alpha", "beta", "gamma"):
        (d / f"{name}.gguf").symlink_to(smollm2)
    return d


async def client_for(start: Start, models_dir: Path, **settings: Any) -> httpx.AsyncClient:
    server = await start(settings_for(None, models_dir, **settings))
    return httpx.AsyncClient(base_url=str(server.make_url("")), timeout=60)


@pytest.fixture
async def http_factory(start: Start, models_dir: Path) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    async def make(**settings: Any) -> httpx.AsyncClient:
        c = await client_for(start, models_dir, **settings)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.aclose()


async def ps(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in (await http.get("/api/ps")).json()["models"]}


def expires(entry: dict[str, Any]) -> datetime.datetime:
    text = entry["expires_at"]
    # Go prints nanoseconds; Python parses microseconds.
    head, _, rest = text.partition(".")
    if rest:
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def load(http: httpx.AsyncClient, model: str, **body: Any) -> dict[str, Any]:
    r = await http.post("/api/generate", json={"model": model, **body})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_keep_alive_values_show_in_ps(http_factory: Any) -> None:
    http = await http_factory()
    now = datetime.datetime.now(datetime.UTC)
    await load(http, "alpha", keep_alive="10m")
    await load(http, "beta", keep_alive=-1)
    models = await ps(http)
    assert list(models) == ["beta:latest", "alpha:latest"]  # latest expiry first
    ten = expires(models["alpha:latest"]) - now
    assert datetime.timedelta(minutes=9) < ten < datetime.timedelta(minutes=11)
    assert expires(models["beta:latest"]).year > 2200  # "forever", as Ollama shows it
    # The last request's keep_alive wins.
    await load(http, "alpha", keep_alive=30)
    left = expires((await ps(http))["alpha:latest"]) - datetime.datetime.now(datetime.UTC)
    assert left < datetime.timedelta(seconds=31)
    # keep_alive 0 on a real request unloads as soon as it ends.
    body = await load(http, "alpha", prompt="hi", keep_alive=0, stream=False, options=GREEDY)
    assert body["done"] is True
    assert list(await ps(http)) == ["beta:latest"]


async def test_eviction_with_one_model_slot(http_factory: Any) -> None:
    http = await http_factory(max_loaded_models=1)
    await load(http, "alpha")
    await load(http, "beta")
    assert list(await ps(http)) == ["beta:latest"]


async def test_eviction_under_a_memory_budget(http_factory: Any) -> None:
    # SmolLM2 with a 4096 context needs an estimated ~352 MiB: room for two, not three. Kept
    # in RAM (num_gpu 0), as on a machine without a GPU.
    http = await http_factory(memory_budget="800MiB", num_gpu=0, context_length=4096)
    await load(http, "alpha", keep_alive="1h")
    await load(http, "beta", keep_alive="10m")
    assert set(await ps(http)) == {"alpha:latest", "beta:latest"}
    await load(http, "gamma")
    # The idle model with the shortest keep_alive made room.
    assert set(await ps(http)) == {"alpha:latest", "gamma:latest"}
    small = await http_factory(memory_budget="50MiB", num_gpu=0)
    r = await small.post("/api/generate", json={"model": "alpha"})
    assert r.status_code == 500
    assert r.json()["error"].startswith("model requires more system memory")


async def test_a_busy_model_is_not_evicted(http_factory: Any) -> None:
    http = await http_factory(max_loaded_models=1)
    async with http.stream(
        "POST",
        "/api/generate",
        json={
            "model": "alpha",
            "prompt": "Write an endless story.",
            "options": {"num_predict": -1},
        },
    ) as r:
        it = r.aiter_lines()
        assert orjson.loads(await anext(it))["done"] is False
        waiting = asyncio.create_task(load(http, "beta"))
        # alpha keeps streaming while beta waits for it to become idle.
        for _ in range(3):
            assert orjson.loads(await anext(it))["done"] is False
        assert not waiting.done()
        assert list(await ps(http)) == ["alpha:latest"]
    body = await waiting  # alpha's stream closed: it is idle, so beta replaces it
    assert body["done_reason"] == "load"
    assert list(await ps(http)) == ["beta:latest"]


async def test_parallel_streams_all_complete(http_factory: Any) -> None:
    http = await http_factory(num_parallel=4)

    async def stream(i: int) -> list[dict[str, Any]]:
        async with http.stream(
            "POST",
            "/api/chat",
            json={
                "model": "alpha",
                "messages": [{"role": "user", "content": f"Story number {i}"}],
                "options": {"num_predict": 24, "temperature": 0},
            },
        ) as r:
            return [orjson.loads(line) async for line in r.aiter_lines() if line]

    results = await asyncio.gather(*(stream(i) for i in range(4)))
    for objs in results:
        assert objs[-1]["done"] is True and objs[-1]["eval_count"] == 24
        assert objs[-1]["done_reason"] == "length"


async def test_full_queue_answers_503_with_retry_after(http_factory: Any) -> None:
    http = await http_factory(num_parallel=1, max_queue=1)
    async with http.stream(
        "POST",
        "/api/generate",
        json={
            "model": "alpha",
            "prompt": "Write an endless story.",
            "options": {"num_predict": -1},
        },
    ) as r:
        it = r.aiter_lines()
        assert orjson.loads(await anext(it))["done"] is False  # alpha's only slot is busy
        quick = {"model": "alpha", "prompt": "hi", "stream": False, "options": GREEDY}
        b = asyncio.create_task(http.post("/api/generate", json=quick))
        c = asyncio.create_task(
            http.post(
                "/v1/completions",
                json={
                    "model": "alpha",
                    "prompt": "hi",
                    "max_tokens": 4,
                },
            )
        )
        done, pending = await asyncio.wait({b, c}, return_when=asyncio.FIRST_COMPLETED)
        rejected = done.pop().result()
        assert rejected.status_code == 503
        assert rejected.headers["retry-after"]
        message = "server busy, please try again.  maximum pending requests exceeded"
        body = rejected.json()
        assert body in (
            {"error": message},
            {"error": {"message": message, "type": "api_error", "param": None, "code": None}},
        )
        assert len(pending) == 1
    # The stream is closed: its slot is free and the queued request completes.
    accepted = await pending.pop()
    assert accepted.status_code == 200


async def test_reload_on_num_ctx_change_not_on_sampling(http_factory: Any) -> None:
    http = await http_factory()
    await load(http, "alpha", prompt="hi", stream=False, options={"num_ctx": 1024, **GREEDY})
    assert (await ps(http))["alpha:latest"]["context_length"] == 1024
    body = await load(
        http,
        "alpha",
        prompt="hi",
        stream=False,
        options={"num_ctx": 1024, "temperature": 0.5, "top_k": 3, "num_predict": 2},
    )
    assert body["load_duration"] < 50_000_000  # no reload: the model was ready
    await load(http, "alpha", prompt="hi", stream=False, options={"num_ctx": 2048, **GREEDY})
    assert (await ps(http))["alpha:latest"]["context_length"] == 2048


async def test_pinned_models_stay(start: Start, models_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text('[model."alpha"]\npinned = true\n')
    from bridge.config import load_settings

    settings = load_settings(
        {
            "host": "127.0.0.1:0",
            "models": "/nonexistent",
            "gguf_dirs": (str(models_dir),),
            "demo_model": "off",
            "max_loaded_models": 2,
        },
        environ={},
        config_path=str(cfg),
    )
    server = await start(settings)
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=60) as http:
        await load(http, "alpha", keep_alive=0, prompt="hi", stream=False, options=GREEDY)
        await load(http, "beta")
        await load(http, "gamma")
        models = await ps(http)
        assert set(models) == {"alpha:latest", "gamma:latest"}
        assert expires(models["alpha:latest"]).year > 2200


async def test_a_streamed_reply_with_keep_alive_0_ends_after_the_unload(
    http_factory: Any,
) -> None:
    # The final record waits for the stream's clean-up: once the body has ended, the model
    # is gone from /api/ps (as with a reply that is not streamed).
    http = await http_factory()
    body = {"model": "alpha", "prompt": "hi", "keep_alive": 0, "options": GREEDY}
    async with http.stream("POST", "/api/generate", json=body) as r:
        lines = [orjson.loads(line) async for line in r.aiter_lines() if line]
    assert lines[-1]["done"] is True and len(lines) > 1
    assert await ps(http) == {}
