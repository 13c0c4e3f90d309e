"""VRAM budgeting on a real GPU: what bridge plans against what the GPU's memory shows.

Needs a CUDA (or other GPU) build of llama-cpp-python and `nvidia-smi`. Runs `bridge serve` in
a subprocess over a folder holding two copies of a model (by default a 24-block F16 llama of
about 800 MB written with random weights; `--model` takes a real GGUF instead) and, for each
scenario, reads /api/ps and the GPU's used memory:

- full: the default budget offloads every layer; `size_vram` == `size` (100% GPU);
- partial: OLLAMA_GPU_OVERHEAD leaves half the model's need; some layers stay on the CPU;
- evict: room for one model; an idle one makes room for the next;
- busy: the same room, but the first model is generating: the second loads partly on the CPU.

Each scenario generates a few tokens on every loaded model, so the memory is really in use.

    python bench/gpu_check.py [--model PATH] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import REPO, free_port

MIB = 1024**2


def gpu_memory() -> tuple[int, int]:
    """Bytes in use on GPU 0 (every process, as the driver counts them) and its total."""
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used, total = out.splitlines()[0].split(",")
    return int(used) * MIB, int(total) * MIB


_GPUS = (
    "import json; from bridge.engine.llamacpp import gpus; "
    "print(json.dumps([dict(name=g.name, description=g.description, free=g.free, total=g.total) "
    "for g in gpus()]))"
)


def gpus() -> list[dict[str, Any]]:
    """The GPUs as a fresh bridge process sees them at start-up (its free memory is what the
    server's budget starts from). Asked in a child process, so that this one holds no GPU
    context of its own."""
    out = subprocess.run(
        [sys.executable, "-c", _GPUS], cwd=REPO, capture_output=True, text=True, check=True
    )
    found: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def overhead_for(budget: int) -> str:
    """OLLAMA_GPU_OVERHEAD that leaves a new server `budget` bytes of GPU 0."""
    return str(max(0, gpus()[0]["free"] - budget))


class Server:
    def __init__(self, models: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "OLLAMA_HOST": f"127.0.0.1:{self.port}",
            "BRIDGE_GGUF_DIRS": str(models),
            "BRIDGE_DEMO_MODEL": "off",
            "OLLAMA_MODELS": str(models / "no-store"),
            **env,
        }
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> httpx.AsyncClient:
        out = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "serve", cwd=REPO, env=self.env, stdout=out, stderr=out
        )
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=600)
        for _ in range(600):
            try:
                if (await self.http.get("/api/version")).status_code == 200:
                    return self.http
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        raise RuntimeError("bridge did not start; see " + str(self.log))

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        assert self.proc is not None
        self.proc.terminate()
        await asyncio.wait_for(self.proc.wait(), timeout=60)


async def ps(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in (await http.get("/api/ps")).json()["models"]}


async def generate(http: httpx.AsyncClient, model: str, n: int = 32) -> float:
    """Tokens per second of a short greedy generation."""
    r = await http.post(
        "/api/generate",
        json={
            "model": model,
            "prompt": "Tell me a story about a dragon.",
            "stream": False,
            "keep_alive": -1,
            "options": {"num_predict": n, "temperature": 0},
        },
    )
    r.raise_for_status()
    body = r.json()
    return float(body["eval_count"] / (body["eval_duration"] / 1e9))


async def settle() -> int:
    await asyncio.sleep(1.0)  # the driver's counter lags a little behind frees
    return gpu_memory()[0]


def row(name: str, m: dict[str, Any], measured: int) -> dict[str, Any]:
    return {
        "model": name,
        "size": m["size"],
        "size_vram": m["size_vram"],
        "measured_vram": measured,
        "ratio_measured_to_planned": round(measured / m["size_vram"], 3)
        if m["size_vram"]
        else None,
        "context_length": m["context_length"],
    }


async def run(model: Path, workdir: Path, report: dict[str, Any]) -> None:
    models = workdir / "models"
    models.mkdir()
    for name in ("first", "second"):
        (models / f"{name}.gguf").symlink_to(model)
    log = workdir / "bridge.log"
    a, b = "first:latest", "second:latest"

    # full
    async with Server(models, log) as http:
        base = await settle()
        tps = await generate(http, "first")
        used = await settle()
        m = (await ps(http))[a]
        report["full"] = {**row(a, m, used - base), "tokens_per_s": round(tps, 1)}
        need = m["size"]
        print("full:", report["full"], flush=True)

    # partial: half the model's need is left on the GPU
    booked = need  # a wholly offloaded model shows its whole need as its VRAM
    async with Server(models, log, OLLAMA_GPU_OVERHEAD=overhead_for(booked // 2)) as http:
        base = await settle()
        tps = await generate(http, "first")
        used = await settle()
        m = (await ps(http))[a]
        report["partial"] = {**row(a, m, used - base), "tokens_per_s": round(tps, 1)}
        print("partial:", report["partial"], flush=True)

    # evict, then busy: room for one and a half models
    async with Server(models, log, OLLAMA_GPU_OVERHEAD=overhead_for(booked * 3 // 2)) as http:
        base = await settle()
        await generate(http, "first")
        await generate(http, "second")
        used = await settle()
        loaded = await ps(http)
        report["evict"] = {
            "loaded": sorted(loaded),
            **row(b, loaded[b], used - base),
        }
        print("evict:", report["evict"], flush=True)

        # Three clients keep second busy (one generates, two wait for its slot), so that it
        # is never idle, whatever the model's replies' lengths.
        body = {
            "model": "second",
            "prompt": "Write a long story.",
            "keep_alive": -1,
            "options": {"num_predict": 256},
        }
        streaming = asyncio.Event()
        done = asyncio.Event()

        async def keep_busy() -> None:
            while not done.is_set():
                async with http.stream("POST", "/api/generate", json=body) as r:
                    async for _ in r.aiter_lines():
                        streaming.set()

        workers = [asyncio.create_task(keep_busy()) for _ in range(3)]
        await streaming.wait()
        before = await settle()
        started = time.perf_counter()
        tps = await generate(http, "first")
        waited = time.perf_counter() - started
        used = await settle()
        loaded = await ps(http)
        done.set()
        await asyncio.gather(*workers)
        report["busy"] = {
            "loaded": sorted(loaded),
            "second_still_full": loaded[b]["size_vram"] == loaded[b]["size"],
            "first_loaded_while_second_streamed_s": round(waited, 2),
            "first_tokens_per_s": round(tps, 1),
            **row(a, loaded[a], used - before),
        }
        print("busy:", report["busy"], flush=True)


def synthetic(workdir: Path) -> Path:
    from tests.tinyllama import write_tiny_llama

    return write_tiny_llama(
        workdir / "synthetic.gguf", n_layer=24, n_embd=1024, n_ff=4096, context=32768
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a GGUF file (default: a synthetic 24-block F16 llama)")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    if shutil.which("nvidia-smi") is None:
        sys.exit("nvidia-smi not found: this check needs an NVIDIA GPU")
    report: dict[str, Any] = {"gpus": gpus()}
    print("gpus:", report["gpus"], flush=True)
    if not report["gpus"]:
        sys.exit("this llama-cpp-python build sees no GPU")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = Path(args.model) if args.model else synthetic(workdir)
        report["model"] = str(model) if args.model else "synthetic 24-block F16 llama"
        report["model_bytes"] = model.stat().st_size
        try:
            asyncio.run(run(model, workdir, report))
        finally:
            log = workdir / "bridge.log"
            if log.exists():
                print(log.read_text()[-6000:], file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
