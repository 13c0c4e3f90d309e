"""Start-up time of `python -m bridge serve` with an Ollama model store of many models.

Builds a store in Ollama's exact layout (manifests/registry.ollama.ai/library/<model>/<tag>,
blobs/sha256-<hex>); every model has its own small GGUF blob (llama architecture, a few tiny
tensors, a 1000-entry token list) and its own config blob, which leaves out context_length so
that bridge has to read each GGUF header. Then, for each run, spawns a fresh server and
measures from the spawn to the first answered `GET /` (polled every 10 ms) and to the first
`GET /api/tags` that lists every model, then the latency of a second (warm) `/api/tags`.
Files are in the page cache (the store was just written), so this is a warm-disk start.

    python bench/startup.py                    # 500 models, 5 runs
    python bench/startup.py --models 2000 --runs 3 --keep-store /tmp/store2000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TARGET_FIRST_REQUEST_S = 1.0
POLL_S = 0.01
VOCAB = 1000

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
MEDIA = "application/vnd.ollama.image."
TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}" + (
    "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
)
PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.7}


# --- the store ------------------------------------------------------------------------------


def tiny_gguf(path: Path, index: int) -> None:
    """A small, distinct, well-formed llama-architecture GGUF (not meant to be loaded)."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(f"bench-model-{index}")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_context_length(2048 * (1 + index % 4))
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{index}_{i}" for i in range(VOCAB)])
    w.add_token_scores([float(-i) for i in range(VOCAB)])
    w.add_token_types([1] * VOCAB)
    rng = np.random.default_rng(index)
    w.add_tensor("token_embd.weight", rng.standard_normal((16, 64), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def put_blob(store: Path, data: bytes, media_type: str) -> dict[str, Any]:
    hexdigest = hashlib.sha256(data).hexdigest()
    blob = store / "blobs" / f"sha256-{hexdigest}"
    if not blob.exists():
        blob.write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{hexdigest}", "size": len(data)}


def build_store(store: Path, count: int) -> None:
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    library = store / "manifests" / "registry.ollama.ai" / "library"
    scratch = store / "scratch.gguf"
    # Template and params are shared, as identical layers are in a real store.
    template = put_blob(store, TEMPLATE.encode(), MEDIA + "template")
    params = put_blob(store, json.dumps(PARAMS).encode(), MEDIA + "params")
    for i in range(count):
        tiny_gguf(scratch, i)
        model = put_blob(store, scratch.read_bytes(), MEDIA + "model")
        config = {
            "model_format": "gguf",
            "model_family": "llama",
            "model_families": ["llama"],
            "model_type": f"{1 + i % 9}.{i % 10}M",
            "file_type": "Q8_0",
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [model["digest"]]},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": put_blob(store, json.dumps(config).encode(), CONFIG_V1),
            "layers": [model, template, params],
        }
        folder = library / f"bench{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "latest").write_text(json.dumps(manifest))
    scratch.unlink()


# --- measuring ------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    run: int
    first_request_s: float  # spawn -> first answered GET /
    full_tags_s: float  # spawn -> first GET /api/tags listing every model
    first_tags_latency_s: float  # that /api/tags request alone
    warm_tags_latency_s: float  # the next /api/tags
    tags_attempts: int  # /api/tags calls until all models were listed
    models_listed: int
    other_cpu: float | None  # cores kept busy by other processes during the run (Linux)
    log_problems: list[str]  # WARNING/ERROR lines bridge logged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy (Linux /proc/stat), else None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, below: float = 0.25) -> None:
    """Wait (up to `max_wait` s) until other processes leave the CPUs nearly idle."""
    deadline = time.monotonic() + max_wait
    told = False
    while max_wait > 0:
        a = busy_cpu_s()
        time.sleep(0.5)
        b = busy_cpu_s()
        if a is None or b is None or (b - a) / 0.5 < below:
            return
        if time.monotonic() > deadline:
            print(f"  machine still busy ({(b - a) / 0.5:.2f} cores); going on anyway", flush=True)
            return
        if not told:
            print(f"  machine busy ({(b - a) / 0.5:.2f} cores); waiting ...", flush=True)
            told = True
        time.sleep(1.0)


def children_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Failed(Exception):
    pass


def measure(store: Path, count: int, run: int, log_path: Path, timeout: float) -> Run:
    port = free_port()
    env = dict(os.environ, OLLAMA_HOST=f"127.0.0.1:{port}", OLLAMA_MODELS=str(store))
    env.pop("BRIDGE_GGUF_DIRS", None)
    cmd = [sys.executable, "-m", "bridge", "serve", "--demo-model", "off"]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(60.0))
    busy0, ours0 = busy_cpu_s(), children_cpu_s()
    wall0 = time.monotonic()
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                if proc.poll() is not None:
                    raise Failed(f"bridge exited with code {proc.returncode} during start-up")
                if time.perf_counter() - t0 > timeout:
                    raise Failed(f"bridge did not answer GET / within {timeout} s")
                try:
                    if client.get("/").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(POLL_S)
            t_root = time.perf_counter()
            attempts = 0
            while True:
                attempts += 1
                t_ask = time.perf_counter()
                resp = client.get("/api/tags")
                t_tags = time.perf_counter()
                if resp.status_code != 200:
                    raise Failed(f"GET /api/tags answered {resp.status_code}: {resp.text[:500]}")
                listed = len(resp.json()["models"])
                if listed >= count:
                    break
                if t_tags - t0 > timeout:
                    raise Failed(f"/api/tags listed {listed} of {count} models after {timeout} s")
                time.sleep(POLL_S)
            t_warm = time.perf_counter()
            warm = client.get("/api/tags")
            warm_s = time.perf_counter() - t_warm
            if warm.status_code != 200 or len(warm.json()["models"]) != listed:
                raise Failed(f"warm GET /api/tags answered {warm.status_code} differently")
        except httpx.TransportError as exc:
            raise Failed(f"request failed: {exc!r}") from exc
        finally:
            client.close()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    busy1, ours1 = busy_cpu_s(), children_cpu_s()
    other = None
    if busy0 is not None and busy1 is not None:
        other = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (time.monotonic() - wall0)
    return Run(
        run=run,
        first_request_s=t_root - t0,
        full_tags_s=t_tags - t0,
        first_tags_latency_s=t_tags - t_ask,
        warm_tags_latency_s=warm_s,
        tags_attempts=attempts,
        models_listed=listed,
        other_cpu=other,
        log_problems=[
            line
            for line in log_path.read_text(errors="replace").splitlines()
            if " WARNING " in line or " ERROR " in line or "Traceback" in line
        ][:20],
    )


def python_baseline(code: str, runs: int, quiet_wait: float) -> list[float]:
    times: list[float] = []
    for _ in range(runs):
        wait_quiet(quiet_wait)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
        times.append(time.perf_counter() - t0)
    return times


# --- report ---------------------------------------------------------------------------------


def ms(v: float) -> str:
    return f"{1000 * v:9.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=500, help="models in the store")
    parser.add_argument("--runs", type=int, default=5, help="fresh server starts")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per start")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="before each start, wait up to this many seconds for other processes to leave "
        "the CPUs idle (0 = do not wait)",
    )
    parser.add_argument(
        "--keep-store", type=Path, default=None, help="build (or reuse) the store here"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        store = args.keep_store or tmp / "store"
        t0 = time.perf_counter()
        if not (store / "manifests").exists():
            print(f"building a store of {args.models} models in {store} ...", flush=True)
            build_store(store, args.models)
        else:
            print(f"reusing the store in {store}", flush=True)
        build_s = time.perf_counter() - t0
        blobs = list((store / "blobs").iterdir())
        store_bytes = sum(p.stat().st_size for p in blobs)
        print(f"  {len(blobs)} blobs, {store_bytes / 1e6:.1f} MB, {build_s:.1f} s")

        print("python baselines ...", flush=True)
        bare = python_baseline("pass", args.runs, args.quiet_wait)
        imports = python_baseline("import bridge.app", args.runs, args.quiet_wait)

        print("empty-store baseline ...", flush=True)
        empty = tmp / "empty"
        empty.mkdir()
        empty_runs: list[float] = []
        for i in range(1, args.runs + 1):
            log_path = tmp / f"bridge-empty-{i}.log"
            wait_quiet(args.quiet_wait)
            try:
                empty_runs.append(measure(empty, 0, i, log_path, args.timeout).first_request_s)
            except Failed as exc:
                tail = log_path.read_text(errors="replace")[-4000:]
                sys.exit(f"empty store, run {i}: {exc}\n--- bridge log (tail) ---\n{tail}")

        runs: list[Run] = []
        for i in range(1, args.runs + 1):
            log_path = tmp / f"bridge-{i}.log"
            wait_quiet(args.quiet_wait)
            try:
                r = measure(store, args.models, i, log_path, args.timeout)
            except Failed as exc:
                tail = log_path.read_text(errors="replace")[-4000:]
                sys.exit(f"run {i}: {exc}\n--- bridge log (tail) ---\n{tail}")
            runs.append(r)
            for line in r.log_problems:
                print(f"    bridge log: {line}")
            print(
                f"  run {i}: first request {ms(r.first_request_s)} ms, "
                f"full /api/tags {ms(r.full_tags_s)} ms ({r.models_listed} models)",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(float(getattr(r, key)) for r in runs)

    summary: dict[str, Any] = {
        "models": args.models,
        "python_bare_s_median": statistics.median(bare),
        "python_import_bridge_app_s_median": statistics.median(imports),
        "empty_store_first_request_s_median": statistics.median(empty_runs),
        "first_request_s_median": med("first_request_s"),
        "full_tags_s_median": med("full_tags_s"),
        "first_tags_latency_s_median": med("first_tags_latency_s"),
        "warm_tags_latency_s_median": med("warm_tags_latency_s"),
        "other_cpu_max": max((r.other_cpu for r in runs if r.other_cpu is not None), default=None),
        "target": f"first answered request < {TARGET_FIRST_REQUEST_S} s",
    }
    summary["target_met"] = summary["first_request_s_median"] < TARGET_FIRST_REQUEST_S

    print()
    print(
        f"{'run':>3} {'GET / ms':>9} {'full tags ms':>12} {'1st tags ms':>11} {'warm tags ms':>12}"
    )
    print(f"{'':>3} {'':>9} {'(from spawn)':>12} {'(request)':>11} {'(request)':>12} other CPU")
    print("-" * 62)
    for r in runs:
        other = f"{r.other_cpu:9.2f}" if r.other_cpu is not None else "      n/a"
        print(
            f"{r.run:>3} {ms(r.first_request_s)} {ms(r.full_tags_s):>12} "
            f"{ms(r.first_tags_latency_s):>11} {ms(r.warm_tags_latency_s):>12} {other}"
        )
    print()
    print(f"median of {args.runs} runs, store of {args.models} models")
    rows = (
        ("python -c pass", summary["python_bare_s_median"]),
        ("python -c 'import bridge.app'", summary["python_import_bridge_app_s_median"]),
        ("empty store: spawn -> first GET /", summary["empty_store_first_request_s_median"]),
        ("spawn -> first answered GET /", summary["first_request_s_median"]),
        (f"spawn -> /api/tags with all {args.models}", summary["full_tags_s_median"]),
        ("first /api/tags request", summary["first_tags_latency_s_median"]),
        ("warm /api/tags request", summary["warm_tags_latency_s_median"]),
    )
    for label, value in rows:
        print(f"  {label:<36} {ms(value)} ms")
    busy = summary["other_cpu_max"]
    if busy is not None and busy > 0.25:
        print(f"WARNING: other processes kept up to {busy:.2f} cores busy during a run")
    verdict = "MET" if summary["target_met"] else "NOT MET"
    print(f"target: {summary['target']} -> {summary['first_request_s_median']:.3f} s ({verdict})")

    result = {
        "benchmark": "startup",
        "command": shlex.join(["python", *sys.argv]),
        "started": started,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
        "params": {**vars(args), "out": str(args.out), "keep_store": str(args.keep_store or "")},
        "store": {"blobs": len(blobs), "bytes": store_bytes, "build_s": build_s},
        "summary": summary,
        "python_bare_s": bare,
        "python_import_bridge_app_s": imports,
        "empty_store_first_request_s": empty_runs,
        "runs": [asdict(r) for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
