"""A complete, tiny llama model in F16 that llama.cpp loads and quantizes (not a test module).

One block, 256-wide (so every K-quant type fits its 256-value super-blocks), four heads, and
a SentencePiece vocabulary of the 256 byte tokens plus a few words. The weights are random;
the model runs, it just says nothing sensible.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGUFWriter, LlamaFileType, TokenType

N_EMBD = 256
N_FF = 256
N_HEAD = 4
N_LAYER = 1
WORDS = ["▁hello", "▁world", "▁hi", "▁the", "▁a", "."]


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    tokens += WORDS
    types += [TokenType.NORMAL] * len(WORDS)
    scores = [0.0] * len(tokens)
    for i in range(len(tokens) - len(WORDS), len(tokens)):
        scores[i] = -float(i)
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(
    path: str | os.PathLike[str],
    *,
    dtype: str = "f16",
    chat_template: str | None = None,
    n_layer: int = N_LAYER,
    n_embd: int = N_EMBD,
    n_ff: int = N_FF,
    context: int = 256,
) -> Path:
    """Write the model; `dtype` is "f16" or "f32" storage of the matrices. Larger shapes make
    a model of real size (bench/gpu_check.py) that still says nothing sensible."""
    out = Path(path)
    rng = np.random.default_rng(0)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    w = GGUFWriter(out, "llama")
    try:
        w.add_name("tinyllama")
        w.add_context_length(context)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(N_HEAD)
        w.add_head_count_kv(N_HEAD)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(n_embd // N_HEAD)
        w.add_vocab_size(n_vocab)
        w.add_file_type(LlamaFileType.ALL_F32 if dtype == "f32" else LlamaFileType.MOSTLY_F16)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        if chat_template is not None:
            w.add_chat_template(chat_template)
        mat = np.float32 if dtype == "f32" else np.float16

        def matrix(rows: int, cols: int) -> npt.NDArray[Any]:
            return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(mat)

        w.add_tensor("token_embd.weight", matrix(n_vocab, n_embd))
        for i in range(n_layer):
            p = f"blk.{i}."
            w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
            for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
                w.add_tensor(p + name + ".weight", matrix(n_embd, n_embd))
            w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
            w.add_tensor(p + "ffn_gate.weight", matrix(n_ff, n_embd))
            w.add_tensor(p + "ffn_up.weight", matrix(n_ff, n_embd))
            w.add_tensor(p + "ffn_down.weight", matrix(n_embd, n_ff))
        w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor("output.weight", matrix(n_vocab, n_embd))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return out
