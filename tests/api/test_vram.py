"""VRAM budgeting apart from RAM: layers offloaded as far as they fit, idle models evicted to
make room on the GPU, busy ones kept (the newcomer then runs partly on the CPU).

The engine is the real one on a machine that reports one GPU of a given size (the engine
factory seam): what is tested is the scheduler's placement, which /api/ps and the layer count
each load receives show. On a CPU-only build llama.cpp keeps those layers in RAM; the real
offload is checked on a GPU by `bench/gpu_check.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
import pytest

from bridge.domain import LoadOptions, ModelSpec
from bridge.engine.base import LoadedModel
from bridge.engine.llamacpp import LlamaCppEngine
from bridge.hardware import GPU
from bridge.memory import MemoryPlan, Placement
from bridge.models.gguf_info import read_gguf
from tests.conftest import Start, settings_for
from tests.store import smollm2_path
from tests.tinyllama import write_tiny_llama

GIB = 1024**3
ALL = 31  # SmolLM2: 30 blocks + the output layer
# A small context and batch, so that SmolLM2's layers, not its compute buffer, are most of
# what it puts on a GPU: then a split between GPU and CPU is possible.
SMALL = {"num_ctx": 512, "num_batch": 64}


def smol(**opts: int) -> MemoryPlan:
    """The plan the server makes for SmolLM2 (its estimates are what /api/ps shows)."""
    path = smollm2_path()
    return MemoryPlan(
        read_gguf(str(path)),
        LoadOptions(**opts),
        file_bytes=path.stat().st_size,
        extra_bytes=0,
        offload=True,
    )


FULL = smol(num_ctx=4096).at(10**15)
SMALL_FULL = smol(**SMALL).at(10**15)
# The largest split below a whole model.
SPLIT: Placement = smol(**SMALL).at(SMALL_FULL.booked - 1)


class WithGPUs(LlamaCppEngine):
    """The real engine on a machine with `count` GPUs (one unless said; 0: none) of `free`
    bytes each (`total`, if set)."""

    free: ClassVar[int] = 0
    total: ClassVar[int] = 0
    count: ClassVar[int] = 1
    layers: ClassVar[list[int]] = []  # num_gpu of each load, in order

    def gpus(self) -> list[GPU]:
        return [
            GPU(f"CUDA{i}", "Test GPU", WithGPUs.free, WithGPUs.total or WithGPUs.free)
            for i in range(WithGPUs.count)
        ]

    async def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedModel:  # type: ignore[override]
        WithGPUs.layers.append(options.num_gpu)
        return await super().load(spec, options)


@pytest.fixture
def models_dir(tmp_path: Path, smollm2: Path) -> Path:
    d = tmp_path / "many"
    d.mkdir()
    for name in ("alpha", "beta"):
        (d / f"{name}.gguf").symlink_to(smollm2)
    return d


@pytest.fixture
async def gpu_server(start: Start, models_dir: Path) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    async def make(free: int, total: int = 0, count: int = 1, **settings: Any) -> httpx.AsyncClient:
        WithGPUs.free, WithGPUs.total, WithGPUs.layers, WithGPUs.count = free, total, [], count
        server = await start(settings_for(None, models_dir, **settings), engine_factory=WithGPUs)
        clients.append(httpx.AsyncClient(base_url=str(server.make_url("")), timeout=60))
        return clients[-1]

    yield make
    for c in clients:
        await c.aclose()


async def ps(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in (await http.get("/api/ps")).json()["models"]}


@contextlib.asynccontextmanager
async def alpha_generating(http: httpx.AsyncClient) -> AsyncIterator[AsyncIterator[str]]:
    """alpha streams an endless story while the block runs; -> its remaining lines."""
    body = {
        "model": "alpha",
        "prompt": "Write an endless story.",
        "options": {**SMALL, "num_predict": -1},
    }
    async with http.stream("POST", "/api/generate", json=body) as r:
        lines = r.aiter_lines()
        assert orjson.loads(await anext(lines))["done"] is False
        yield lines


async def load(http: httpx.AsyncClient, model: str, **body: Any) -> None:
    r = await http.post("/api/generate", json={"model": model, **body})
    assert r.status_code == 200, r.text
    assert r.json()["done_reason"] == "load"


async def test_a_model_that_fits_goes_wholly_to_the_gpu(gpu_server: Any) -> None:
    http = await gpu_server(free=8 * GIB)
    await load(http, "alpha")
    alpha = (await ps(http))["alpha:latest"]
    assert alpha["size_vram"] == alpha["size"] == FULL.size  # `ollama ps`: 100% GPU
    assert alpha["context_length"] == 4096  # under 23 GiB of VRAM, Ollama's default
    assert WithGPUs.layers == [ALL]


async def test_default_context_follows_the_vram_tier(gpu_server: Any) -> None:
    # 32768 from 23 GiB of VRAM, capped at SmolLM2's trained 8192.
    http = await gpu_server(free=20 * GIB, total=24 * GIB)
    await load(http, "alpha")
    assert (await ps(http))["alpha:latest"]["context_length"] == 8192
    # OLLAMA_CONTEXT_LENGTH still wins.
    http = await gpu_server(free=20 * GIB, total=24 * GIB, context_length=2048)
    await load(http, "alpha")
    assert (await ps(http))["alpha:latest"]["context_length"] == 2048


async def test_what_does_not_fit_runs_partly_on_the_cpu(gpu_server: Any) -> None:
    assert 0 < SPLIT.gpu_layers < ALL
    # OLLAMA_GPU_OVERHEAD keeps all but that split's need of the GPU for others.
    http = await gpu_server(free=8 * GIB, gpu_overhead=8 * GIB - SPLIT.booked)
    await load(http, "alpha", options=SMALL)
    alpha = (await ps(http))["alpha:latest"]
    assert (alpha["size_vram"], alpha["size"]) == (SPLIT.vram, SPLIT.size)
    assert 0 < alpha["size_vram"] < alpha["size"]
    assert WithGPUs.layers == [SPLIT.gpu_layers]
    r = await http.post(
        "/api/generate",
        json={
            "model": "alpha",
            "prompt": "Hi",
            "stream": False,
            "options": {**SMALL, "num_predict": 3},
        },
    )
    assert r.json()["eval_count"] == 3


async def test_num_gpu_zero_keeps_everything_in_ram_and_reloads(gpu_server: Any) -> None:
    http = await gpu_server(free=8 * GIB)
    await load(http, "alpha", options={"num_gpu": 0})
    assert (await ps(http))["alpha:latest"]["size_vram"] == 0
    await load(http, "alpha", options={"num_gpu": 0})  # the same: no reload
    await load(http, "alpha")  # automatic again: a different load-time option
    assert (await ps(http))["alpha:latest"]["size_vram"] == FULL.size
    assert WithGPUs.layers == [0, ALL]


async def test_an_idle_model_leaves_the_gpu_for_a_new_one(gpu_server: Any) -> None:
    # Room on the GPU for one SmolLM2 and a split, not two; RAM and the model count are no limit.
    http = await gpu_server(free=SMALL_FULL.booked + SPLIT.booked)
    await load(http, "alpha", keep_alive="1h", options=SMALL)
    await load(http, "beta", keep_alive="10m", options=SMALL)
    models = await ps(http)
    assert list(models) == ["beta:latest"]
    assert models["beta:latest"]["size_vram"] == SMALL_FULL.size
    assert WithGPUs.layers == [ALL, ALL]


async def test_a_busy_model_keeps_its_vram_and_the_new_one_runs_partly_on_the_cpu(
    gpu_server: Any,
) -> None:
    http = await gpu_server(free=SMALL_FULL.booked + SPLIT.booked)
    async with alpha_generating(http) as it:
        # beta does not wait for alpha: it loads at once with the layers that still fit.
        await asyncio.wait_for(load(http, "beta", options=SMALL), timeout=60)
        assert orjson.loads(await anext(it))["done"] is False
        models = await ps(http)
    assert set(models) == {"alpha:latest", "beta:latest"}
    assert models["alpha:latest"]["size_vram"] == SMALL_FULL.size
    beta = models["beta:latest"]
    assert beta["size_vram"] == SPLIT.vram < beta["size"]
    assert WithGPUs.layers == [ALL, SPLIT.gpu_layers]


async def test_three_models_per_gpu_by_default(gpu_server: Any, models_dir: Path) -> None:
    # OLLAMA_MAX_LOADED_MODELS unset: 3 x the GPUs. With one GPU the fourth model evicts one.
    for i in (2, 3):
        (models_dir / f"m{i}.gguf").symlink_to((models_dir / "alpha.gguf").resolve())
    names = ["alpha", "beta", "m2", "m3"]
    http = await gpu_server(free=16 * GIB)
    for name in names:
        await load(http, name)
    assert len(await ps(http)) == 3
    http = await gpu_server(free=16 * GIB, count=2)
    for name in names:
        await load(http, name)
    assert len(await ps(http)) == 4


async def test_a_full_gpu_gets_no_layers(gpu_server: Any) -> None:
    # All of the GPU's memory kept for others: nothing is offloaded (never llama.cpp's "all").
    http = await gpu_server(free=4 * GIB, gpu_overhead=4 * GIB)
    await load(http, "alpha")
    assert (await ps(http))["alpha:latest"]["size_vram"] == 0
    assert WithGPUs.layers == [0]


class BrokenGPUs(LlamaCppEngine):
    """The real engine on a machine whose GPU runtime fails when asked."""

    def gpus(self) -> list[GPU]:
        raise OSError("libcuda.so.1: cannot open shared object file")


async def test_gpus_that_cannot_be_read_leave_the_cpu_serving(
    start: Start, models_dir: Path
) -> None:
    server = await start(settings_for(None, models_dir), engine_factory=BrokenGPUs)
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=60) as http:
        for _ in range(2):  # not only the first request
            await load(http, "alpha")
        alpha = (await ps(http))["alpha:latest"]
        assert alpha["size_vram"] == 0 and alpha["context_length"] == 4096


async def test_without_a_gpu_num_gpu_reaches_the_engine_as_asked(gpu_server: Any) -> None:
    http = await gpu_server(free=0, count=0)
    await load(http, "alpha")
    await load(http, "beta", options={"num_gpu": 7})
    assert WithGPUs.layers == [-1, 7]


async def test_an_idle_model_is_not_evicted_when_that_gains_nothing(
    gpu_server: Any, models_dir: Path
) -> None:
    # A tiny model holds a little VRAM; alpha is busy and holds the rest. beta could not get a
    # single layer even with the tiny one gone, so the tiny one stays.
    tiny_path = write_tiny_llama(models_dir / "tiny.gguf")
    tiny = MemoryPlan(
        read_gguf(str(tiny_path)),
        LoadOptions(num_ctx=256, num_batch=256),
        file_bytes=tiny_path.stat().st_size,
        extra_bytes=0,
        offload=True,
    ).at(10**15)
    assert tiny.booked + 10_000_000 < SPLIT.booked  # less than beta's split needs
    http = await gpu_server(free=SMALL_FULL.booked + tiny.booked + 10_000_000)
    await load(http, "tiny", keep_alive="1h")
    async with alpha_generating(http):
        await load(http, "beta", options=SMALL)
        models = await ps(http)
    assert set(models) == {"tiny:latest", "alpha:latest", "beta:latest"}
    assert models["tiny:latest"]["size_vram"] > 0 and models["beta:latest"]["size_vram"] == 0
