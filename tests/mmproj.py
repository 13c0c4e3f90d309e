"""A tiny LLaVA-style vision projector ("mmproj") GGUF that llama.cpp's mtmd loads and runs.

Not a test module. The file is a CLIP encoder with projector type "mlp": 32x32 images cut
into 8x8 patches (16 patches, so 16 image tokens per image), one 32-wide transformer
block with two heads, and a two-layer MLP projector whose output width is the text model's
embedding size (576 for SmolLM2-135M). Weights are random F32 (about 140 KB in all); the
images it encodes mean nothing to the text model, but the whole path runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGUFValueType, GGUFWriter, LlamaFileType

__all__ = ["IMAGE_TOKENS", "write_tiny_mmproj"]

IMAGE_SIZE = 32
PATCH_SIZE = 8
N_EMBD = 32
N_HEAD = 2
N_FF = 64
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2


def _tensors(text_embd: int) -> dict[str, npt.NDArray[Any]]:
    """Tensor shapes are numpy order, i.e. ggml's ``ne`` reversed (a linear layer is (out, in))."""
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    return {
        "v.patch_embd.weight": rand(N_EMBD, 3, PATCH_SIZE, PATCH_SIZE),
        "v.position_embd.weight": rand(IMAGE_TOKENS, N_EMBD),
        "v.blk.0.attn_q.weight": rand(N_EMBD, N_EMBD),
        "v.blk.0.attn_k.weight": rand(N_EMBD, N_EMBD),
        "v.blk.0.attn_v.weight": rand(N_EMBD, N_EMBD),
        "v.blk.0.attn_out.weight": rand(N_EMBD, N_EMBD),
        "v.blk.0.ffn_up.weight": rand(N_FF, N_EMBD),
        "v.blk.0.ffn_down.weight": rand(N_EMBD, N_FF),
        "mm.0.weight": rand(N_EMBD, N_EMBD),
        "mm.0.bias": rand(N_EMBD),
        "mm.2.weight": rand(text_embd, N_EMBD),
        "mm.2.bias": rand(text_embd),
    }


def write_tiny_mmproj(path: str | os.PathLike[str], *, text_embd: int = 576) -> Path:
    """Write the projector and return its path; `text_embd` must match the text model's n_embd."""
    out = Path(path)
    w = GGUFWriter(out, "clip")
    try:
        w.add_name("tiny-mmproj")
        w.add_file_type(LlamaFileType.ALL_F32)
        w.add_clip_has_vision_encoder(True)
        w.add_clip_projector_type("mlp")
        w.add_vision_image_size(IMAGE_SIZE)
        w.add_vision_patch_size(PATCH_SIZE)
        w.add_vision_embedding_length(N_EMBD)
        w.add_vision_feed_forward_length(N_FF)
        w.add_vision_block_count(1)
        w.add_vision_head_count(N_HEAD)
        w.add_vision_attention_layernorm_eps(1e-5)
        w.add_vision_projection_dim(text_embd)
        w.add_vision_image_mean([0.5, 0.5, 0.5])
        w.add_vision_image_std([0.5, 0.5, 0.5])
        # LLaVA stops one block short of the last by default; feature layer 1 (the output of
        # block 0) makes the single block run instead of being loaded and skipped.
        w.add_key_value("clip.vision.feature_layer", [1], GGUFValueType.ARRAY, GGUFValueType.INT32)
        for name, data in _tensors(text_embd).items():
            w.add_tensor(name, data)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return out
