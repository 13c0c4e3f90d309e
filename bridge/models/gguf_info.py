"""Fast GGUF header reader: metadata and tensor infos without touching the weights.

``gguf.GGUFReader`` memory-maps the file and turns every metadata array into numpy
objects (the token list of a 49k vocabulary alone takes about two seconds). Listing
hundreds of models needs something much cheaper, so this module streams the header
through a chunked buffer and only keeps the values it needs:

* arrays of at most ``MAX_KEPT_ARRAY`` items are kept as Python lists;
* longer arrays are skipped (fixed-size items by seeking, strings by walking their
  lengths) and stored as an :class:`ArrayInfo` placeholder, unless
  ``read_gguf(path, full_arrays=True)`` asks for everything.

Layout (little-endian, versions 2 and 3)::

    "GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv_count x (string key | u32 value type | value)
    tensor_count x (string name | u32 n_dims | n_dims x u64 | u32 ggml type | u64 offset)

where a string is ``u64 length + UTF-8 bytes`` and an array value is
``u32 item type | u64 count | items``.
"""

from __future__ import annotations

import math
import os
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGMLQuantizationType,
    GGUFValueType,
    LlamaFileType,
)

__all__ = [
    "MAX_KEPT_ARRAY",
    "ArrayInfo",
    "GGUFError",
    "GGUFInfo",
    "TensorInfo",
    "model_info",
    "parameter_size_label",
    "read_gguf",
]

MAX_KEPT_ARRAY: Final = 64
"""Arrays with more items than this are not kept unless ``full_arrays=True``."""

_MAGIC: Final = b"GGUF"
_SUPPORTED_VERSIONS: Final = (2, 3)
_CHUNK: Final = 256 * 1024
_MAX_KV: Final = 1_000_000
_MAX_TENSORS: Final = 10_000_000
_MAX_DIMS: Final = 4  # GGML_MAX_DIMS; llama.cpp and Ollama reject more
# Smallest possible encodings, used to reject absurd counts before looping over them.
_MIN_KV_BYTES: Final = 8 + 4 + 1  # empty key, value type, 1-byte value
_MIN_TENSOR_BYTES: Final = 8 + 4 + 4 + 8  # empty name, n_dims=0, type, offset
# Keys that Ollama's /api/show leaves out of model_info.
_HIDDEN_KEYS: Final = frozenset({"general.name", "tokenizer.chat_template"})
_TOKENS_KEY: Final = "tokenizer.ggml.tokens"

_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_ARRAY_HEADER: Final = struct.Struct("<IQ")
_TENSOR_TAIL: Final = struct.Struct("<IQ")

# value type -> (struct format character, numpy dtype) for the fixed-size types
_FIXED: Final[dict[GGUFValueType, tuple[str, str]]] = {
    GGUFValueType.UINT8: ("B", "<u1"),
    GGUFValueType.INT8: ("b", "<i1"),
    GGUFValueType.UINT16: ("H", "<u2"),
    GGUFValueType.INT16: ("h", "<i2"),
    GGUFValueType.UINT32: ("I", "<u4"),
    GGUFValueType.INT32: ("i", "<i4"),
    GGUFValueType.FLOAT32: ("f", "<f4"),
    GGUFValueType.BOOL: ("?", "<u1"),
    GGUFValueType.UINT64: ("Q", "<u8"),
    GGUFValueType.INT64: ("q", "<i8"),
    GGUFValueType.FLOAT64: ("d", "<f8"),
}
_SCALAR: Final[dict[GGUFValueType, struct.Struct]] = {
    t: struct.Struct("<" + c) for t, (c, _) in _FIXED.items()
}
_VALUE_TYPES: Final[dict[int, GGUFValueType]] = {int(t): t for t in GGUFValueType}

# general.file_type -> the quantization label Ollama shows ("Q4_K_M", "F16", ...)
_FILE_TYPE_NAMES: Final[dict[int, str]] = {
    int(ft): ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    for ft in LlamaFileType
    if ft is not LlamaFileType.GUESSED
}
_GGML_TYPES: Final[dict[int, GGMLQuantizationType]] = {int(t): t for t in GGMLQuantizationType}

# tokenizer.ggml.model values whose llama.cpp vocabulary adds BOS by default
_ADD_BOS_BY_DEFAULT: Final = frozenset({"llama", "gemma", "bert"})


class GGUFError(Exception):
    """The file is not a readable GGUF file (bad magic, truncated, corrupt, unsupported)."""


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """Placeholder for a metadata array whose values were not kept."""

    item_type: GGUFValueType
    count: int


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    type_name: str  # ggml type as Ollama shows it: "Q4_1", "F16", "Q6_K", ...
    shape: tuple[int, ...]  # GGUF order (ne0 first), as Ollama reports it
    n_elements: int


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    path: str
    version: int
    # every KV in file order: int/float/bool/str/list, or ArrayInfo for long arrays
    metadata: Mapping[str, Any] = field(hash=False)
    tensors: tuple[TensorInfo, ...]
    architecture: str
    parameter_count: int
    parameter_size: str
    file_type: str
    context_length: int | None
    embedding_length: int | None
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    add_bos_token: bool
    pooling: bool
    vision: bool
    is_projector: bool


class _Reader:
    """Sequential reader over a binary file with its own chunk buffer.

    Invariant: the file position is ``_base + len(_buf)``.
    """

    __slots__ = ("_base", "_buf", "_f", "_pos", "path", "size")

    def __init__(self, f: BinaryIO, size: int, path: str) -> None:
        self._f = f
        self._buf = b""
        self._pos = 0
        self._base = 0
        self.size = size
        self.path = path

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def truncated(self) -> GGUFError:
        return GGUFError(f"truncated GGUF header: {self.path}")

    def corrupt(self, what: str) -> GGUFError:
        return GGUFError(f"corrupt GGUF header ({what}): {self.path}")

    def _fill(self, n: int) -> None:
        """Make at least ``n`` bytes available from the current position."""
        avail = len(self._buf) - self._pos
        data = self._f.read(max(_CHUNK, n - avail))
        self._buf = self._buf[self._pos :] + data
        self._base += self._pos
        self._pos = 0
        if len(self._buf) < n:
            raise self.truncated()

    def _check_length(self, n: int, what: str) -> None:
        """Reject a length that cannot fit in what is left of the file."""
        if n > self.size - self.offset:
            if n > self.size:
                raise self.corrupt(f"{what} {n} at offset {self.offset} exceeds the file size")
            raise self.truncated()

    def read(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._buf):
            self._check_length(n, "length")
            self._fill(n)
            end = n
        data = self._buf[self._pos : end]
        self._pos = end
        return data

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        if self._pos + st.size > len(self._buf):
            self._fill(st.size)
        values = st.unpack_from(self._buf, self._pos)
        self._pos += st.size
        return values

    def u32(self) -> int:
        value: int = self.unpack(_U32)[0]
        return value

    def u64(self) -> int:
        value: int = self.unpack(_U64)[0]
        return value

    def skip(self, n: int) -> None:
        end = self._pos + n
        if end <= len(self._buf):
            self._pos = end
            return
        self._check_length(n, "length")
        self._seek(self._base + end)

    def _seek(self, target: int) -> None:
        self._f.seek(target)
        self._buf = b""
        self._base = target
        self._pos = 0

    def string(self) -> str:
        n = self.u64()
        self._check_length(n, "string length")
        return self.read(n).decode("utf-8", "replace")

    def skip_strings(self, count: int, offsets: list[int] | None) -> None:
        """Walk over ``count`` strings; record where each one starts in ``offsets``."""
        buf, pos, base, size = self._buf, self._pos, self._base, self.size
        blen = len(buf)
        unpack = _U64.unpack_from
        record = offsets.append if offsets is not None else None
        for _ in range(count):
            if pos + 8 > blen:
                self._pos = pos
                self._fill(8)
                buf, pos, base = self._buf, 0, self._base
                blen = len(buf)
            if record is not None:
                record(base + pos)
            n: int = unpack(buf, pos)[0]
            pos += 8 + n
            if pos > blen:  # the string runs past the buffer: seek over it
                target = base + pos
                if target > size:
                    if n > size:
                        raise self.corrupt(f"string length {n} exceeds the file size")
                    raise self.truncated()
                self._seek(target)
                buf, pos, base, blen = b"", 0, target, 0
        self._buf, self._pos = buf, pos

    def string_at(self, offset: int) -> str:
        """Read the string whose length prefix is at ``offset`` (moves the reader)."""
        self._seek(offset)
        return self.string()


def _f32_values(data: bytes) -> list[float]:
    # Go through the shortest decimal text that round-trips through float32, so a stored
    # 1e-5 comes back as 1e-05 rather than 9.999999747378752e-06, like Ollama's JSON.
    return [float(s) for s in np.frombuffer(data, dtype="<f4").astype(str)]


def _value_type(r: _Reader, raw: int, key: str) -> GGUFValueType:
    vtype = _VALUE_TYPES.get(raw)
    if vtype is None:
        raise r.corrupt(f"unknown value type {raw} for key {key!r}")
    return vtype


def _read_scalar(r: _Reader, vtype: GGUFValueType) -> Any:
    if vtype is GGUFValueType.STRING:
        return r.string()
    st = _SCALAR[vtype]
    if vtype is GGUFValueType.FLOAT32:
        return _f32_values(r.read(st.size))[0]
    return r.unpack(st)[0]


def _read_array(
    r: _Reader, key: str, full: bool, token_offsets: list[int] | None
) -> list[Any] | ArrayInfo:
    raw_type, count = r.unpack(_ARRAY_HEADER)
    item_type = _value_type(r, raw_type, key)
    fixed = _FIXED.get(item_type)
    if fixed is not None:
        min_item = _SCALAR[item_type].size
    elif item_type is GGUFValueType.STRING:
        min_item = 8  # the length prefix
    else:
        min_item = _ARRAY_HEADER.size  # nested array header
    if count * min_item > r.size - r.offset:
        if count * min_item > r.size:
            raise r.corrupt(f"array of {count} items for key {key!r} exceeds the file size")
        raise r.truncated()
    keep = full or count <= MAX_KEPT_ARRAY

    if fixed is not None:
        nbytes = count * min_item
        if not keep:
            r.skip(nbytes)
            return ArrayInfo(item_type, count)
        data = r.read(nbytes)
        if item_type is GGUFValueType.FLOAT32:
            return _f32_values(data)
        arr = np.frombuffer(data, dtype=fixed[1])
        if item_type is GGUFValueType.BOOL:
            return [bool(v) for v in arr.tolist()]
        values: list[Any] = arr.tolist()
        return values

    if item_type is GGUFValueType.STRING:
        if not keep:
            r.skip_strings(count, token_offsets)
            return ArrayInfo(item_type, count)
        return [r.string() for _ in range(count)]

    # nested arrays: rare, read item by item
    items = [_read_array(r, key, full, None) for _ in range(count)]
    return items if keep else ArrayInfo(item_type, count)


def _read_header(
    r: _Reader, full_arrays: bool
) -> tuple[int, dict[str, Any], list[TensorInfo], list[int], list[int]]:
    """Parse the whole header; returns version, metadata, tensors, tensor data ends
    (relative to the data section) and the offsets of the token strings (if skipped)."""
    if r.size < 4:
        raise GGUFError(f"not a GGUF file: {r.path}")
    if r.read(4) != _MAGIC:
        raise GGUFError(f"not a GGUF file: {r.path}")
    version = r.u32()
    if version not in _SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in (1, 2, 3):
            raise GGUFError(f"big-endian GGUF files are not supported: {r.path}")
        raise GGUFError(f"unsupported GGUF version {version} (only versions 2 and 3 are): {r.path}")
    tensor_count = r.u64()
    kv_count = r.u64()
    if kv_count > _MAX_KV or kv_count * _MIN_KV_BYTES > r.size:
        raise r.corrupt(f"kv_count {kv_count}")
    if tensor_count > _MAX_TENSORS or tensor_count * _MIN_TENSOR_BYTES > r.size:
        raise r.corrupt(f"tensor_count {tensor_count}")

    metadata: dict[str, Any] = {}
    token_offsets: list[int] = []
    for _ in range(kv_count):
        key = r.string()
        vtype = _value_type(r, r.u32(), key)
        if vtype is GGUFValueType.ARRAY:
            offsets = token_offsets if key == _TOKENS_KEY else None
            metadata[key] = _read_array(r, key, full_arrays, offsets)
        else:
            metadata[key] = _read_scalar(r, vtype)

    tensors: list[TensorInfo] = []
    data_ends: list[int] = []
    for _ in range(tensor_count):
        name = r.string()
        n_dims = r.u32()
        if n_dims > _MAX_DIMS:
            raise r.corrupt(f"tensor {name!r} has {n_dims} dimensions")
        shape: tuple[int, ...] = r.unpack(struct.Struct(f"<{n_dims}Q")) if n_dims else ()
        raw_type, offset = r.unpack(_TENSOR_TAIL)
        n_elements = math.prod(shape)
        ggml_type = _GGML_TYPES.get(raw_type)
        tensors.append(
            TensorInfo(
                name=name,
                type_name=ggml_type.name if ggml_type is not None else "unknown",
                shape=shape,
                n_elements=n_elements,
            )
        )
        sizes = GGML_QUANT_SIZES.get(ggml_type) if ggml_type is not None else None
        if sizes is not None:
            block_size, type_size = sizes
            data_ends.append(offset + n_elements * type_size // block_size)
    return version, metadata, tensors, data_ends, token_offsets


def _token_text(
    r: _Reader, metadata: Mapping[str, Any], id_key: str, offsets: list[int]
) -> str | None:
    token_id = metadata.get(id_key)
    if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
        return None
    tokens = metadata.get(_TOKENS_KEY)
    if isinstance(tokens, list):
        text = tokens[token_id] if token_id < len(tokens) else None
        return text if isinstance(text, str) else None
    if token_id < len(offsets):
        return r.string_at(offsets[token_id])
    return None


def _int_value(metadata: Mapping[str, Any], key: str) -> int | None:
    value = metadata.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _file_type_name(metadata: Mapping[str, Any], tensors: tuple[TensorInfo, ...]) -> str:
    raw = _int_value(metadata, "general.file_type")
    if raw is not None and raw in _FILE_TYPE_NAMES:
        return _FILE_TYPE_NAMES[raw]
    # Missing or unknown: the type holding most weight elements among the matrices.
    if not tensors:
        return "unknown"
    candidates = [t for t in tensors if len(t.shape) >= 2] or list(tensors)
    weights: Counter[str] = Counter()
    for t in candidates:
        weights[t.type_name] += t.n_elements
    return weights.most_common(1)[0][0]


def _add_bos(metadata: Mapping[str, Any]) -> bool:
    value = metadata.get("tokenizer.ggml.add_bos_token")
    if isinstance(value, bool):
        return value
    return metadata.get("tokenizer.ggml.model") in _ADD_BOS_BY_DEFAULT


def read_gguf(path: str | os.PathLike[str], *, full_arrays: bool = False) -> GGUFInfo:
    """Read the GGUF header of ``path`` (metadata and tensor infos, never the weights).

    Raises :class:`GGUFError` for files that are not valid GGUF v2/v3 files and
    ``OSError`` when the file cannot be opened or read.
    """
    spath = os.fspath(path)
    with open(spath, "rb") as f:
        r = _Reader(f, os.fstat(f.fileno()).st_size, spath)
        try:
            version, metadata, tensor_list, data_ends, offsets = _read_header(r, full_arrays)
            header_end = r.offset
            alignment = _int_value(metadata, "general.alignment") or GGUF_DEFAULT_ALIGNMENT
            if alignment <= 0 or alignment & (alignment - 1):
                raise r.corrupt(f"general.alignment {alignment} is not a power of two")
            data_start = -(-header_end // alignment) * alignment
            if data_ends and data_start + max(data_ends) > r.size:
                raise GGUFError(f"truncated GGUF file (tensor data is incomplete): {spath}")
            bos = _token_text(r, metadata, "tokenizer.ggml.bos_token_id", offsets)
            eos = _token_text(r, metadata, "tokenizer.ggml.eos_token_id", offsets)
        except (struct.error, ValueError, OverflowError, MemoryError) as exc:
            # Defensive: every expected failure is already a GGUFError (a subclass of
            # Exception only), but a corrupt file must never surface as anything else.
            raise GGUFError(f"corrupt GGUF header ({exc}): {spath}") from exc

    tensors = tuple(tensor_list)
    arch = metadata.get("general.architecture")
    arch = arch if isinstance(arch, str) else ""
    parameter_count = sum(t.n_elements for t in tensors)
    template = metadata.get("tokenizer.chat_template")
    return GGUFInfo(
        path=spath,
        version=version,
        metadata=metadata,
        tensors=tensors,
        architecture=arch,
        parameter_count=parameter_count,
        parameter_size=parameter_size_label(parameter_count),
        file_type=_file_type_name(metadata, tensors),
        context_length=_int_value(metadata, f"{arch}.context_length"),
        embedding_length=_int_value(metadata, f"{arch}.embedding_length"),
        chat_template=template if isinstance(template, str) else None,
        bos_token=bos,
        eos_token=eos,
        add_bos_token=_add_bos(metadata),
        pooling=f"{arch}.pooling_type" in metadata,
        vision=f"{arch}.vision.block_count" in metadata
        or metadata.get("clip.has_vision_encoder") is True,
        is_projector=arch == "clip",
    )


def parameter_size_label(n: int) -> str:
    """Ollama's parameter size label (Go ``format.HumanNumber``): 8B, 8.0B, 134.52M, 1K."""
    if n >= 1_000_000_000:
        value = float(n) / 1e9
        return f"{value:.0f}B" if value == math.floor(value) else f"{value:.1f}B"
    if n >= 1_000_000:
        value = float(n) / 1e6
        return f"{value:.0f}M" if value == math.floor(value) else f"{value:.2f}M"
    if n >= 1_000:
        return f"{float(n) / 1e3:.0f}K"
    return str(n)


def _has_placeholder(value: Any) -> bool:
    if isinstance(value, ArrayInfo):
        return True
    return isinstance(value, list) and any(_has_placeholder(v) for v in value)


def _copy_value(value: Any, verbose: bool) -> Any:
    if not verbose and isinstance(value, ArrayInfo | list):
        # Ollama reads the file for a plain /api/show with arrays capped at 0 items: a
        # non-empty one keeps no values and is written as null.
        return None if (value.count if isinstance(value, ArrayInfo) else len(value)) else []
    if isinstance(value, ArrayInfo):
        return []
    if isinstance(value, list):
        return [_copy_value(v, verbose) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)  # Go writes 100000, not 100000.0
    return value


def model_info(info: GGUFInfo, *, verbose: bool) -> dict[str, Any]:
    """The ``model_info`` object of Ollama's ``/api/show``: a Go map, so keys sorted.

    Every KV except ``general.name`` and ``tokenizer.chat_template``, with Ollama's
    ``general.parameter_count`` (the tensors' elements) added; without ``verbose``,
    non-empty arrays are null. With ``verbose`` the file is read again with
    ``full_arrays=True`` when ``info`` lacks array values.
    """
    if verbose and any(_has_placeholder(v) for v in info.metadata.values()):
        info = read_gguf(info.path, full_arrays=True)
    out = {
        key: _copy_value(value, verbose)
        for key, value in info.metadata.items()
        if key not in _HIDDEN_KEYS
    }
    out["general.parameter_count"] = info.parameter_count
    return dict(sorted(out.items()))
