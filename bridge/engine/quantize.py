"""Quantizing GGUF files with llama.cpp's own quantizer (`llama_model_quantize`).

Besides `engine.llamacpp`, the only module that imports llama_cpp, and only when a quantization
actually runs. `quantize_file` blocks for as long as the quantization takes (seconds to many
minutes): callers run it in a worker thread, off the event loop. It touches no model context, so
it needs no owner thread of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["QUANT_TYPES", "QuantizeError", "canonical_type", "quantize_file"]

# Names as Ollama spells file types -> llama.cpp's llama_ftype. IQ1_*, IQ2_*, IQ3_XXS and Q2_K_S
# need an importance matrix, which a create request cannot supply, so they are left out.
QUANT_TYPES: Final[Mapping[str, int]] = {
    "F32": 0,
    "F16": 1,
    "BF16": 32,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q8_0": 7,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "IQ3_S": 26,
    "IQ3_M": 27,
    "IQ4_NL": 25,
    "IQ4_XS": 30,
}
_ALIASES: Final = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}


class QuantizeError(Exception):
    """The quantizer refused the type or failed on the file."""


def canonical_type(name: str) -> str:
    """`q4_k` -> `Q4_K_M`; an unknown type raises QuantizeError with Ollama's wording."""
    upper = name.upper()
    upper = _ALIASES.get(upper, upper)
    if upper not in QUANT_TYPES:
        supported = ", ".join(QUANT_TYPES)
        raise QuantizeError(
            f"unsupported quantization type {name} - supported types are {supported}"
        )
    return upper


def quantize_file(src: str, dst: str, type_name: str, *, nthread: int = 0) -> None:
    """Write `src` quantized to `type_name` into `dst` (blocking; run it in a thread)."""
    import llama_cpp

    ftype = QUANT_TYPES[canonical_type(type_name)]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    if nthread > 0:
        params.nthread = nthread
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        raise QuantizeError(f"llama.cpp could not quantize the model to {type_name} (code {rc})")
