"""How much memory a model will need once loaded, from its GGUF header alone."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from bridge.domain import LoadOptions
from bridge.models.gguf_info import GGUFInfo

_GIB = 1024**3


def _num(meta: Mapping[str, Any], key: str, default: int) -> int:
    v = meta.get(key)
    if isinstance(v, list) and v:  # per-layer values: take the largest
        v = max(x for x in v if isinstance(x, int | float))
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else default


def estimate(info: GGUFInfo, weights_bytes: int, opts: LoadOptions) -> int:
    """Weights + f16 KV cache for num_ctx x parallel + compute buffers, in bytes.

    The compute estimate covers the logits of one batch and the attention scores of one batch
    against the whole context, which dominate llama.cpp's graph buffers.
    """
    meta = info.metadata
    arch = info.architecture
    n_embd = info.embedding_length or _num(meta, f"{arch}.embedding_length", 4096)
    n_layer = _num(meta, f"{arch}.block_count", 32)
    n_head = max(1, _num(meta, f"{arch}.attention.head_count", 32))
    n_head_kv = _num(meta, f"{arch}.attention.head_count_kv", n_head)
    k_dim = _num(meta, f"{arch}.attention.key_length", n_embd // n_head)
    v_dim = _num(meta, f"{arch}.attention.value_length", n_embd // n_head)
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = _num(meta, f"{arch}.vocab_size", getattr(tokens, "count", 32000))
    n_ctx = opts.num_ctx * max(1, opts.parallel)
    kv = n_ctx * n_layer * n_head_kv * (k_dim + v_dim) * 2
    batch = min(opts.num_batch, n_ctx)
    compute = 4 * batch * (n_vocab + n_head * min(n_ctx, 4096))
    return weights_bytes + kv + compute


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
