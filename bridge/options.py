"""Ollama's `options`: parsing with Ollama's type rules, layering, and the values a request runs with.

Precedence: built-in defaults < the model's params layer < the request. Each key is replaced
whole (a request's `stop` replaces the model's list). Unknown keys are ignored, as Ollama does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

from bridge.domain import LoadOptions, Options, Sampling
from bridge.errors import InvalidOption

log = logging.getLogger(__name__)

_INT = {
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "repeat_last_n",
}
_FLOAT = {
    "top_p",
    "min_p",
    "typical_p",
    "temperature",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
}
_BOOL = {"use_mmap"}
# Options Ollama removed: a Modelfile warns, the API ignores them like any unknown key.
_REMOVED = {
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "tfs_z",
    "numa",
    "num_gqa",
    "rope_frequency_base",
    "rope_frequency_scale",
    "num_gpu_layers",
    "embedding_only",
}

DEFAULT_NUM_CTX = 4096


def parse_options(raw: Mapping[str, Any] | None) -> Options:
    """Wire `options` -> Options. A value of the wrong type is InvalidOption (Ollama: HTTP 500)."""
    if not raw:
        return Options()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in _INT:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise InvalidOption(f'option "{key}" must be of type integer')
            values[key] = int(value)
        elif key in _FLOAT:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidOption(f'option "{key}" must be of type float32')
            values[key] = float(value)
        elif key in _BOOL:
            if not isinstance(value, bool):
                raise InvalidOption(f'option "{key}" must be of type boolean')
            values[key] = value
        elif key == "stop":
            if not isinstance(value, list):
                raise InvalidOption(f'option "{key}" must be of type array')
            if not all(isinstance(s, str) for s in value):
                raise InvalidOption(f'option "{key}" must be of an array of strings')
            values[key] = tuple(value)
        elif key not in _REMOVED:
            log.debug("ignoring unknown option %r", key)
    return Options(**values)


def model_defaults(params: Mapping[str, Any]) -> Options:
    """A model's params layer as Options; bad entries are logged and skipped, not fatal."""
    good: dict[str, Any] = {}
    for key, value in params.items():
        try:
            parsed = parse_options({key: value})
        except InvalidOption as exc:
            log.warning("ignoring model parameter %s: %s", key, exc)
            continue
        good.update({k: v for k, v in dataclasses.asdict(parsed).items() if v is not None})
    return Options(**good)


def sampling(opts: Options) -> Sampling:
    d = Sampling()
    return Sampling(
        temperature=_or(opts.temperature, d.temperature),
        top_k=_or(opts.top_k, d.top_k),
        top_p=_or(opts.top_p, d.top_p),
        min_p=_or(opts.min_p, d.min_p),
        typical_p=_or(opts.typical_p, d.typical_p),
        repeat_penalty=_or(opts.repeat_penalty, d.repeat_penalty),
        repeat_last_n=_or(opts.repeat_last_n, d.repeat_last_n),
        presence_penalty=_or(opts.presence_penalty, d.presence_penalty),
        frequency_penalty=_or(opts.frequency_penalty, d.frequency_penalty),
        seed=_or(opts.seed, d.seed),
    )


def load_options(
    opts: Options,
    *,
    trained_ctx: int | None,
    default_ctx: int,
    default_gpu: int,
    default_threads: int,
    parallel: int,
) -> LoadOptions:
    """The load-time values for a request; any difference from a loaded model's means a reload."""
    if opts.num_ctx is not None and opts.num_ctx > 0:
        num_ctx = max(4, opts.num_ctx)
    else:
        num_ctx = default_ctx if default_ctx > 0 else DEFAULT_NUM_CTX
        if trained_ctx:
            num_ctx = min(num_ctx, trained_ctx)
        num_ctx = max(4, num_ctx)
    num_batch = opts.num_batch if opts.num_batch and opts.num_batch > 0 else 512
    return LoadOptions(
        num_ctx=num_ctx,
        num_batch=min(num_batch, num_ctx),
        num_gpu=_or(opts.num_gpu, default_gpu),
        main_gpu=_or(opts.main_gpu, 0),
        use_mmap=opts.use_mmap,
        num_thread=opts.num_thread if opts.num_thread and opts.num_thread > 0 else default_threads,
        parallel=max(1, parallel),
    )


def num_predict(opts: Options, num_ctx: int) -> int:
    """Ollama: a negative value, or anything above 10 x num_ctx, becomes 10 x num_ctx."""
    n = _or(opts.num_predict, -1)
    return 10 * num_ctx if n < 0 or n > 10 * num_ctx else n


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value
