"""Single-stream decode speed and time to first token: bridge vs llama-cpp-python called directly.

Both sides run the same GGUF with the same load parameters and thread count, on the same raw
prompts (bridge gets them through `/api/generate` with `raw: true`, so both tokenize identical
text), greedy. Rounds are interleaved (direct, bridge, direct, bridge, ...) after one warm-up
each, so drift in machine speed hits both alike. The two never run at the same time: bridge
runs in a subprocess that sits idle while the direct model generates, and the direct model
sits idle (loaded, its compute threads parked) while bridge generates.

    python bench/decode.py                # 128 tokens, 5 rounds
    python bench/decode.py --tokens 256 --rounds 9 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import jinja2.sandbox
import llama_cpp
from _common import TOPICS, free_port, model_path, physical_cores, process_cpu

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TARGET_DECODE_RATIO = 0.95

WARMUP_TOPIC = "a lighthouse keeper who finds a message in a bottle"


@dataclass(slots=True)
class Sample:
    side: str  # "direct" or "bridge"
    round: int  # 0 = warm-up
    prompt_tokens: int
    eval_count: int
    ttft_s: float  # call (direct) / request sent (bridge) -> first token
    decode_tps: float  # (eval_count - 1) / (t_last_token - t_first_token)
    server_tps: float | None = None  # bridge only: eval_count / eval_duration
    server_ttft_s: float | None = None  # bridge only: prompt_eval_duration
    # Cores kept busy while the sample ran (Linux; None elsewhere): by other processes, by
    # this process (the direct model, or the HTTP client) and by the bridge server.
    other_cpu: float | None = None
    bench_cpu: float | None = None
    server_cpu: float | None = None
    text: str = ""


class Runner(Protocol):
    def run(self, prompt: str, opts: dict[str, Any], rnd: int) -> Sample: ...


PHRASINGS = (
    "Write a long, detailed story about {topic}.",
    "Tell me a long story about {topic}, with many details.",
    "Please write a long and vivid tale about {topic}.",
)


def render_prompt(llm: llama_cpp.Llama, topic: str, take: int = 0) -> str:
    """The model's own chat template, rendered once here and sent raw to both sides.

    `take` picks another phrasing for a repeated round, so that neither side finds the whole
    prompt already in its KV cache.
    """
    template = llm.metadata["tokenizer.chat_template"]
    env = jinja2.sandbox.ImmutableSandboxedEnvironment()
    content = PHRASINGS[take % len(PHRASINGS)].format(topic=topic)
    messages = [{"role": "user", "content": content}]
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token=""
    )


def sampling(args: argparse.Namespace) -> dict[str, Any]:
    """Ollama options, sent to bridge and mirrored for the direct calls."""
    return {
        "temperature": 0.0,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "repeat_last_n": 64,
        "seed": 0,
        "num_predict": args.tokens,
        "num_ctx": args.ctx,
        "num_batch": args.batch,
        "num_thread": args.threads,
    }


# --- direct ---------------------------------------------------------------------------------


class Direct:
    def __init__(self, path: str, args: argparse.Namespace) -> None:
        self.llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=args.ctx,
            n_batch=args.batch,
            n_ubatch=args.batch,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            verbose=False,
        )
        self.vocab = self.llm._model.vocab
        bos = self.llm.token_bos()
        self.bos_text = (
            self.llm.detokenize([bos], special=True).decode("utf-8", "replace") if bos >= 0 else ""
        )

    def run(self, prompt: str, opts: dict[str, Any], rnd: int) -> Sample:
        llm = self.llm
        t0 = time.perf_counter()
        # Tokenized exactly as bridge's engine does it.
        add_bos = not (self.bos_text and prompt.startswith(self.bos_text))
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        llm.set_seed(opts["seed"])
        llm.last_n_tokens_size = opts["repeat_last_n"]
        gen = llm.generate(
            tokens,
            top_k=opts["top_k"],
            top_p=opts["top_p"],
            min_p=opts["min_p"],
            typical_p=opts["typical_p"],
            temp=opts["temperature"],
            repeat_penalty=opts["repeat_penalty"],
        )
        out: list[int] = []
        t_first = t_last = 0.0
        for token in gen:
            now = time.perf_counter()
            if not t_first:
                t_first = now
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                break
            out.append(token)
            t_last = now
            if len(out) >= opts["num_predict"]:
                break
        gen.close()
        text = llm.detokenize(out).decode("utf-8", "replace")
        return Sample(
            side="direct",
            round=rnd,
            prompt_tokens=len(tokens),
            eval_count=len(out),
            ttft_s=t_first - t0,
            decode_tps=_rate(len(out), t_first, t_last),
            text=text,
        )


# --- bridge ---------------------------------------------------------------------------------


class BridgeServer:
    def __init__(self, gguf: str, workdir: Path) -> None:
        self.port = free_port()
        gguf_dir = workdir / "gguf"
        store = workdir / "store"
        gguf_dir.mkdir()
        store.mkdir()
        (gguf_dir / os.path.basename(gguf)).symlink_to(gguf)
        self.log_path = workdir / "bridge.log"
        env = dict(os.environ)
        env.update(
            OLLAMA_HOST=f"127.0.0.1:{self.port}",
            OLLAMA_MODELS=str(store),
            OLLAMA_KEEP_ALIVE="-1",
        )
        self.cmd = [
            sys.executable,
            "-m",
            "bridge",
            "serve",
            "--gguf-dir",
            str(gguf_dir),
            "--demo-model",
            "off",
        ]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(600.0))
        self._wait_ready()
        names = [m["name"] for m in self.client.get("/api/tags").json()["models"]]
        if len(names) != 1:
            self.fail(f"expected one model in /api/tags, got {names}")
        self.model = names[0]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"bridge exited with code {self.proc.returncode} during start-up")
            try:
                if self.client.get("/").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.fail("bridge did not answer GET / within 60 s")

    def fail(self, why: str) -> None:
        self.close()
        tail = self.log_path.read_text(errors="replace")[-4000:]
        sys.exit(f"bridge: {why}\n--- bridge log (tail) ---\n{tail}")

    def run(self, prompt: str, opts: dict[str, Any], rnd: int) -> Sample:
        body = {"model": self.model, "prompt": prompt, "raw": True, "stream": True, "options": opts}
        text: list[str] = []
        final: dict[str, Any] = {}
        t_first = t_last = 0.0
        t0 = time.perf_counter()
        try:
            with self.client.stream("POST", "/api/generate", json=body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    self.fail(f"/api/generate answered {resp.status_code}: {resp.text}")
                for line in resp.iter_lines():
                    now = time.perf_counter()
                    if not line:
                        continue
                    obj = json.loads(line)
                    if "error" in obj:
                        self.fail(f"/api/generate streamed an error: {obj['error']}")
                    if obj.get("response"):
                        if not t_first:
                            t_first = now
                        t_last = now
                        text.append(obj["response"])
                    if obj.get("done"):
                        final = obj
        except httpx.TransportError as exc:
            self.fail(f"/api/generate failed: {exc!r}")
        if not final:
            self.fail("/api/generate stream ended without a done object")
        n = int(final.get("eval_count", 0))
        eval_ns = int(final.get("eval_duration", 0))
        return Sample(
            side="bridge",
            round=rnd,
            prompt_tokens=int(final.get("prompt_eval_count", 0)),
            eval_count=n,
            ttft_s=t_first - t0,
            decode_tps=_rate(n, t_first, t_last),
            server_tps=n / (eval_ns / 1e9) if eval_ns else None,
            server_ttft_s=int(final.get("prompt_eval_duration", 0)) / 1e9,
            text="".join(text),
        )

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class CpuMeter:
    """CPU time over one sample, from /proc (Linux): this process, the bridge server, others.

    The bench machine may be shared; llama.cpp's threads wait on each other at every step, so
    one busy core elsewhere can slow decoding by far more than its share. Each sample records
    how many cores others kept busy while it ran, so a disturbed number can be recognised, and
    how much CPU this process (the direct model, or the HTTP client) and the server used.
    """

    def __init__(self, server_pid: int) -> None:
        self.pids = (os.getpid(), server_pid)
        self._start = self._read()

    def _read(self) -> tuple[float, float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        bench, server = (process_cpu(pid) for pid in self.pids)
        if bench is None or server is None:
            return None
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        return busy, bench, server, time.monotonic()

    def finish(self, sample: Sample) -> None:
        end = self._read()
        if self._start is None or end is None or end[3] <= self._start[3]:
            return
        busy, bench, server, wall = (e - s for e, s in zip(end, self._start, strict=True))
        sample.other_cpu = max(0.0, busy - bench - server) / wall
        sample.bench_cpu = bench / wall
        sample.server_cpu = server / wall


def machine_busy_cores(interval: float = 0.5) -> float | None:
    """Cores the whole machine kept busy over `interval` seconds (Linux /proc/stat)."""

    def busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")

    a = busy()
    time.sleep(interval)
    b = busy()
    return None if a is None or b is None else (b - a) / interval


def wait_quiet(max_wait: float) -> None:
    """Wait (up to `max_wait` s) until other processes leave the CPUs nearly idle."""
    deadline = time.monotonic() + max_wait
    told = False
    while max_wait > 0:
        cores = machine_busy_cores()
        if cores is None or cores < CONTENTION_CORES:
            return
        if time.monotonic() > deadline:
            print(f"  machine still busy ({cores:.2f} cores); going on anyway", flush=True)
            return
        if not told:
            print(f"  machine busy ({cores:.2f} cores used by others); waiting ...", flush=True)
            told = True
        time.sleep(1.0)


def _rate(n: int, t_first: float, t_last: float) -> float:
    return (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else 0.0


# --- report ---------------------------------------------------------------------------------


CONTENTION_CORES = 0.25


def _cores(v: float | None) -> str:
    return f"{v:5.2f}" if v is not None else "  n/a"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(samples: list[Sample]) -> dict[str, Any]:
    timed = [s for s in samples if s.round > 0]
    d = [s for s in timed if s.side == "direct"]
    b = [s for s in timed if s.side == "bridge"]
    pairs = list(zip(d, b, strict=True))
    server_tps = [s.server_tps for s in b if s.server_tps is not None]
    server_ttft = [s.server_ttft_s for s in b if s.server_ttft_s is not None]
    out: dict[str, Any] = {
        "direct": {
            "decode_tps_median": median([s.decode_tps for s in d]),
            "ttft_ms_median": 1000 * median([s.ttft_s for s in d]),
            "eval_count_median": median([float(s.eval_count) for s in d]),
        },
        "bridge": {
            "decode_tps_median": median([s.decode_tps for s in b]),
            "ttft_ms_median": 1000 * median([s.ttft_s for s in b]),
            "eval_count_median": median([float(s.eval_count) for s in b]),
            "server_tps_median": median(server_tps),
            "server_ttft_ms_median": 1000 * median(server_ttft),
        },
        "paired_decode_ratio_median": median([x.decode_tps / y.decode_tps for y, x in pairs]),
        "same_prompt_tokens": all(x.prompt_tokens == y.prompt_tokens for x, y in pairs),
        "same_output_text": all(x.text == y.text for x, y in pairs),
        "client_cpu_median": median([s.bench_cpu for s in b if s.bench_cpu is not None]),
        "other_cpu_max": max((s.other_cpu for s in timed if s.other_cpu is not None), default=None),
    }
    out["decode_ratio"] = out["bridge"]["decode_tps_median"] / out["direct"]["decode_tps_median"]
    out["server_decode_ratio"] = (
        out["bridge"]["server_tps_median"] / out["direct"]["decode_tps_median"]
    )
    out["ttft_ratio"] = out["bridge"]["ttft_ms_median"] / out["direct"]["ttft_ms_median"]
    out["target"] = f"decode ratio (bridge/direct) >= {TARGET_DECODE_RATIO}"
    out["target_met"] = out["decode_ratio"] >= TARGET_DECODE_RATIO
    return out


def print_report(samples: list[Sample], summary: dict[str, Any]) -> None:
    print()
    head = f"{'round':>5} {'side':<7} {'prompt':>6} {'tokens':>6} {'TTFT ms':>8} {'decode t/s':>10}"
    print(
        head + f" {'server t/s':>10} {'server TTFT ms':>14} {'bench CPU':>9} {'server CPU':>10}"
        f" {'other CPU':>9}"
    )
    print("-" * (len(head) + 57))
    for s in samples:
        rnd = "warm" if s.round == 0 else str(s.round)
        server = f"{s.server_tps:10.1f}" if s.server_tps is not None else f"{'':>10}"
        sttft = f"{1000 * s.server_ttft_s:14.1f}" if s.server_ttft_s is not None else " " * 14
        print(
            f"{rnd:>5} {s.side:<7} {s.prompt_tokens:6d} {s.eval_count:6d} "
            f"{1000 * s.ttft_s:8.1f} {s.decode_tps:10.1f} {server} {sttft} "
            f"{_cores(s.bench_cpu):>9} {_cores(s.server_cpu):>10} {_cores(s.other_cpu):>9}"
        )
    d, b = summary["direct"], summary["bridge"]
    print()
    print(f"{'median':<28} {'direct':>10} {'bridge':>10} {'bridge/direct':>14}")
    print(
        f"{'decode tokens/s (client)':<28} {d['decode_tps_median']:10.1f} "
        f"{b['decode_tps_median']:10.1f} {summary['decode_ratio']:14.3f}"
    )
    print(
        f"{'decode tokens/s (server)':<28} {'':>10} "
        f"{b['server_tps_median']:10.1f} {summary['server_decode_ratio']:14.3f}"
    )
    print(
        f"{'time to first token ms':<28} {d['ttft_ms_median']:10.1f} "
        f"{b['ttft_ms_median']:10.1f} {summary['ttft_ratio']:14.3f}"
    )
    print(f"{'  (server prompt_eval ms)':<28} {'':>10} {b['server_ttft_ms_median']:10.1f}")
    print()
    print(f"paired decode ratio, median of rounds: {summary['paired_decode_ratio_median']:.3f}")
    print(
        f"identical prompt tokens: {summary['same_prompt_tokens']}; "
        f"identical output text: {summary['same_output_text']}"
    )
    print(
        f"HTTP client (this process) CPU while bridge generated, median: "
        f"{summary['client_cpu_median']:.2f} cores (CPU columns: cores busy, from /proc)"
    )
    busy = summary["other_cpu_max"]
    if busy is not None and busy > CONTENTION_CORES:
        print(
            f"WARNING: other processes kept up to {busy:.2f} cores busy during a timed run; "
            "the numbers are disturbed (rerun on a quiet machine)"
        )
    if summary.get("repeated_rounds"):
        print(f"rounds repeated because others used the CPUs: {summary['repeated_rounds']}")
    verdict = "MET" if summary["target_met"] else "NOT MET"
    print(f"target: {summary['target']} -> {summary['decode_ratio']:.3f} ({verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="num_predict per run")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up")
    parser.add_argument("--threads", type=int, default=0, help="0 = physical cores (as bridge)")
    parser.add_argument("--ctx", type=int, default=4096, help="n_ctx / num_ctx")
    parser.add_argument("--batch", type=int, default=512, help="n_batch / num_batch")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="before each round, wait up to this many seconds for other processes to leave "
        "the CPUs idle (0 = do not wait)",
    )
    parser.add_argument(
        "--tries", type=int, default=3, help="attempts per round disturbed by other processes"
    )
    parser.add_argument("--model", default="", help="GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--out", type=Path, default=RESULTS / "decode.json")
    args = parser.parse_args()
    args.threads = args.threads or physical_cores()
    path = args.model or model_path()
    opts = sampling(args)

    print(
        f"model {path}\nthreads {args.threads}, n_ctx {args.ctx}, n_batch {args.batch}, "
        f"{args.tokens} tokens, {args.rounds} rounds, greedy"
    )
    direct = Direct(path, args)
    topics = [WARMUP_TOPIC] + [TOPICS[i % len(TOPICS)] for i in range(args.rounds)]
    samples: list[Sample] = []
    discarded: list[Sample] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        server = BridgeServer(path, Path(tmp))
        try:
            sides: tuple[Runner, Runner] = (direct, server)
            for rnd, topic in enumerate(topics):
                for take in range(args.tries):
                    wait_quiet(args.quiet_wait)
                    prompt = render_prompt(direct.llm, topic, take)
                    pair: list[Sample] = []
                    for side in sides:
                        meter = CpuMeter(server.proc.pid)
                        s = side.run(prompt, opts, rnd)
                        meter.finish(s)
                        pair.append(s)
                        label = "warm-up" if rnd == 0 else f"round {rnd}"
                        print(
                            f"  {label:<8} {s.side:<7} {s.eval_count:4d} tokens  "
                            f"ttft {1000 * s.ttft_s:7.1f} ms  {s.decode_tps:7.1f} t/s  "
                            f"other CPU {_cores(s.other_cpu)}",
                            flush=True,
                        )
                    disturbed = any((s.other_cpu or 0.0) > CONTENTION_CORES for s in pair)
                    if rnd == 0 or not disturbed or take == args.tries - 1:
                        break
                    print("  disturbed by other processes; repeating the round", flush=True)
                    discarded.extend(pair)
                samples.extend(pair)
            if server.proc.poll() is not None:
                server.fail(f"bridge exited with code {server.proc.returncode}")
        finally:
            server.close()

    summary = summarize(samples)
    summary["repeated_rounds"] = len(discarded) // 2
    print_report(samples, summary)
    result = {
        "benchmark": "decode",
        "command": shlex.join(["python", *sys.argv]),
        "started": started,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "llama_cpp_python": llama_cpp.__version__,
        },
        "model": path,
        "params": {**vars(args), "out": str(args.out), "options": opts},
        "summary": summary,
        "samples": [asdict(s) for s in samples],
        "discarded_samples": [asdict(s) for s in discarded],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
