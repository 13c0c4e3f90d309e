"""Tiny GGUF files for tests, written with ``gguf.GGUFWriter`` (not a test module)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGUFReader, GGUFValueType, GGUFWriter, Keys, LlamaFileType

__all__ = ["copy_with_keys", "write_corrupt_gguf", "write_tiny_gguf"]


def _default_tensors(embedding_length: int) -> dict[str, npt.NDArray[Any]]:
    return {
        "token_embd.weight": np.zeros((8, embedding_length), dtype=np.float32),
        "output_norm.weight": np.ones(embedding_length, dtype=np.float32),
    }


def write_tiny_gguf(
    path: str | os.PathLike[str],
    *,
    arch: str = "llama",
    file_type: int | None = LlamaFileType.MOSTLY_Q8_0,
    context_length: int = 2048,
    embedding_length: int = 64,
    chat_template: str | None = None,
    extra: dict[str, Any] | None = None,
    tensors: dict[str, npt.NDArray[Any]] | None = None,
) -> Path:
    """Write a small valid GGUF v3 file and return its path.

    ``extra`` maps keys to values typed the way ``GGUFValueType.get_type`` guesses
    (str -> STRING, bool -> BOOL, int -> INT32, float -> FLOAT32, list -> ARRAY), or to
    ``(value, GGUFValueType)`` pairs to pin the type. The default tensors are two small
    F32 tensors (a matrix and a vector).
    """
    out = Path(path)
    writer = GGUFWriter(out, arch)
    try:
        writer.add_name("tiny")
        writer.add_context_length(context_length)
        writer.add_embedding_length(embedding_length)
        if file_type is not None:
            writer.add_file_type(int(file_type))
        if chat_template is not None:
            writer.add_chat_template(chat_template)
        for key, value in (extra or {}).items():
            if isinstance(value, tuple):
                writer.add_key_value(key, value[0], value[1])
            else:
                writer.add_key_value(key, value, GGUFValueType.get_type(value))
        if tensors is None:
            tensors = _default_tensors(embedding_length)
        for name, data in tensors.items():
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out


def write_corrupt_gguf(path: str | os.PathLike[str]) -> Path:
    """A file with the GGUF magic and version 3 followed by garbage counts and bytes."""
    out = Path(path)
    rng = np.random.default_rng(1234)
    garbage = rng.integers(0, 256, size=256, dtype=np.uint8).tobytes()
    out.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 16 + garbage)
    return out


def copy_with_keys(src: str | os.PathLike[str], dst: str | os.PathLike[str], **keys: Any) -> Path:
    """Copy a real GGUF with extra metadata. Keys are written with `{arch}` replaced by the
    model's architecture, values as `(value, GGUFValueType)` pairs; for example
    `copy_with_keys(smollm2, out, **{"{arch}.pooling_type": (1, GGUFValueType.UINT32)})` turns
    SmolLM2 into a (poor but real) mean-pooling embedding model."""
    reader = GGUFReader(src, "r")
    arch = str(reader.fields[Keys.General.ARCHITECTURE].contents())
    writer = GGUFWriter(dst, arch)
    for f in reader.fields.values():
        if f.name == Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        kind = f.types[0]
        sub = f.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, f.contents(), kind, sub_type=sub)
    for key, (value, kind) in keys.items():
        writer.add_key_value(key.format(arch=arch), value, kind)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    return Path(dst)
