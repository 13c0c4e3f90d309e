"""How much memory a model will need once loaded, from its GGUF header alone."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from bridge.domain import LoadOptions
from bridge.models.gguf_info import GGUFInfo, TensorInfo

_GIB = 1024**3
_LAYER = re.compile(r"blk\.(\d+)\.")
# What a model's GPU context takes beyond its buffers (cuBLAS workspace, the CUDA pools), as
# measured on an H200 with bench/gpu_check.py: 100 to 190 MB.
GPU_OVERHEAD = 256 * 1024**2


def _num(meta: Mapping[str, Any], key: str, default: int) -> int:
    v = meta.get(key)
    if isinstance(v, list) and v:  # per-layer values: take the largest
        v = max(x for x in v if isinstance(x, int | float))
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else default


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a model's memory goes: `size` bytes in all, `vram` of them on the GPUs, with
    `gpu_layers` as llama.cpp's n_gpu_layers (0 = CPU only; block_count + 1 = everything).
    `booked` is what it takes of the GPUs' budget (`vram` says "all" for a model wholly
    offloaded, as Ollama shows it, though its token embeddings stay in RAM)."""

    size: int
    vram: int = 0
    gpu_layers: int = 0
    booked: int = 0

    @property
    def ram(self) -> int:
        return self.size - self.vram


class MemoryPlan:
    """A model's memory need from its GGUF header, split the way llama.cpp offloads layers.

    llama.cpp's n_gpu_layers = N puts the output layer and then the last N - 1 repeating blocks
    (weights and their KV cache) on the GPU, with the compute buffer and any projector; the
    token embeddings always stay in RAM. `at(vram)` offloads as many layers as fit in `vram`
    bytes when the request leaves num_gpu automatic (negative), exactly `num_gpu` otherwise.
    """

    def __init__(
        self,
        info: GGUFInfo,
        opts: LoadOptions,
        *,
        file_bytes: int,
        extra_bytes: int,
        offload: bool,
        devices: int = 1,
    ) -> None:
        """`file_bytes`: the model file; `extra_bytes`: its projectors and adapters; `devices`:
        the GPUs llama.cpp spreads the layers over (each gets a context and compute buffer)."""
        self.size = estimate(info, file_bytes + extra_bytes, opts)
        self._requested = opts.num_gpu
        self._offload = offload
        blocks = _num(info.metadata, f"{info.architecture}.block_count", 0)
        per_layer = [0] * blocks
        output = 0
        embd = 0
        for t in info.tensors:
            m = _LAYER.match(t.name)
            if m and int(m.group(1)) < blocks:
                per_layer[int(m.group(1))] += _nbytes(t)
            elif t.name.startswith("output"):
                output += _nbytes(t)
            elif t.name == "token_embd.weight":
                embd = _nbytes(t)
        if not any(t.name == "output.weight" for t in info.tensors):
            output += embd  # tied embeddings: llama.cpp copies them for the output layer
        kv = kv_bytes(info, opts) // blocks if blocks else 0
        # Offloaded from the last block backwards, after the output layer.
        self._layers = [output] + [b + kv for b in reversed(per_layer)]
        self._compute = compute_bytes(info, opts) * max(1, devices)
        self._overhead = GPU_OVERHEAD * max(1, devices)
        self._fixed = self._overhead + self._compute + extra_bytes

    @property
    def output_bytes(self) -> int:
        """What the output layer puts on the GPU (the first layer offloaded)."""
        return self._layers[0]

    @property
    def max_layers(self) -> int:
        return len(self._layers)

    def at(self, vram: int) -> Placement:
        if not self._offload:
            return Placement(self.size)
        if self._requested >= 0:
            n = min(self._requested, self.max_layers)
        elif self._on_gpu(self.max_layers) <= vram:
            n = self.max_layers
        else:
            n = 0
            while n + 1 < self.max_layers and self._on_gpu(n + 1) <= vram:
                n += 1
        if n == 0:
            return Placement(self.size)
        on_gpu = self._on_gpu(n)
        # Offloading adds the GPU context's overhead and, for a split, a second compute buffer.
        size = self.size + self._overhead + (self._compute if n < self.max_layers else 0)
        if n == self.max_layers:  # all of it: shown as "100% GPU", as Ollama shows it
            return Placement(size, size, n, on_gpu)
        return Placement(size, on_gpu, n, on_gpu)

    def _on_gpu(self, n: int) -> int:
        if n == 0:
            return 0
        # Split between devices, llama.cpp also runs the big products of the layers left on
        # the CPU on the GPU (op offload): a second compute buffer's worth there.
        partial = self._compute if n < self.max_layers else 0
        return self._fixed + partial + sum(self._layers[:n])


def _nbytes(t: TensorInfo) -> int:
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[t.type_name]]
    except KeyError:
        return 0
    return t.n_elements * size // block


def estimate(info: GGUFInfo, weights_bytes: int, opts: LoadOptions) -> int:
    """Weights + f16 KV cache for num_ctx x parallel + compute buffers, in bytes."""
    return weights_bytes + kv_bytes(info, opts) + compute_bytes(info, opts)


def kv_bytes(info: GGUFInfo, opts: LoadOptions) -> int:
    """The f16 KV cache for num_ctx x parallel tokens, all layers."""
    meta = info.metadata
    arch = info.architecture
    n_embd = info.embedding_length or _num(meta, f"{arch}.embedding_length", 4096)
    n_layer = _num(meta, f"{arch}.block_count", 32)
    n_head = max(1, _num(meta, f"{arch}.attention.head_count", 32))
    n_head_kv = _num(meta, f"{arch}.attention.head_count_kv", n_head)
    k_dim = _num(meta, f"{arch}.attention.key_length", n_embd // n_head)
    v_dim = _num(meta, f"{arch}.attention.value_length", n_embd // n_head)
    n_ctx = opts.num_ctx * max(1, opts.parallel)
    return n_ctx * n_layer * n_head_kv * (k_dim + v_dim) * 2


def compute_bytes(info: GGUFInfo, opts: LoadOptions) -> int:
    """llama.cpp's graph buffers: the logits of one batch and, without flash attention, the
    attention scores of one batch against a sequence's whole context dominate them. An
    embedding model takes a whole input in one batch (the engine sizes it to the context)."""
    meta = info.metadata
    arch = info.architecture
    n_head = max(1, _num(meta, f"{arch}.attention.head_count", 32))
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = _num(meta, f"{arch}.vocab_size", getattr(tokens, "count", 32000))
    if info.pooling:
        batch = max(opts.num_batch, opts.num_ctx)
    else:
        batch = min(opts.num_batch, opts.num_ctx * max(1, opts.parallel))
    return 4 * batch * (n_vocab + n_head * opts.num_ctx)


def available_memory() -> int:
    """Memory the OS could give us now (MemAvailable on Linux; total RAM elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError):
        return 16 * _GIB


def human(n: int) -> str:
    """Ollama's format.HumanBytes2 style: "1.2 GiB"."""
    for unit, size in (("GiB", _GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
