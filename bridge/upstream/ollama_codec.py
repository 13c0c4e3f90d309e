"""Requests to and replies from an Ollama-kind upstream (another Ollama, another bridge).

Pure: domain requests -> /api/* bodies, NDJSON records -> Chunks. Ollama to Ollama is nearly
lossless, so the fields pass through as they are; only `model` becomes the upstream's name.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bridge.domain import (
    ChatRequest,
    Chunk,
    Format,
    GenerateRequest,
    Message,
    Metrics,
    ModelDetails,
    Options,
    ToolCall,
)
from bridge.errors import UpstreamProtocolError
from bridge.upstream.catalog import Listed

# --- requests ------------------------------------------------------------------------------


def _common(
    body: dict[str, Any],
    options: Options,
    fmt: Format,
    keep_alive: float | None,
    think: bool | str | None,
) -> dict[str, Any]:
    opts = options.as_dict()
    if opts:
        body["options"] = opts
    if fmt is not None:
        body["format"] = fmt
    if keep_alive is not None:
        body["keep_alive"] = keep_alive_value(keep_alive)
    if think is not None:
        body["think"] = think
    return body


def keep_alive_value(seconds: float) -> float | int:
    """Seconds as Ollama reads a JSON number; forever is any negative number."""
    if math.isinf(seconds) or seconds < 0:
        return -1
    return int(seconds) if float(seconds).is_integer() else seconds


def _b64(images: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(i).decode("ascii") for i in images]


def _tool_call(c: ToolCall) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if c.id:
        out["id"] = c.id
    out["function"] = {"index": c.index, "name": c.name, "arguments": dict(c.arguments)}
    return out


def _message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.thinking:
        out["thinking"] = m.thinking
    if m.images:
        out["images"] = _b64(m.images)
    if m.tool_calls:
        out["tool_calls"] = [_tool_call(c) for c in m.tool_calls]
    if m.tool_name:
        out["tool_name"] = m.tool_name
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def chat_body(model: str, req: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(m) for m in req.messages],
        "stream": True,
    }
    if req.tools:
        body["tools"] = [dict(t) for t in req.tools]
    if not req.truncate:
        body["truncate"] = False
    if not req.shift:
        body["shift"] = False
    return _common(body, req.options, req.format, req.keep_alive, req.think)


def generate_body(model: str, req: GenerateRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": req.prompt, "stream": True}
    if req.suffix:
        body["suffix"] = req.suffix
    if req.system is not None:
        body["system"] = req.system
    if req.template:
        body["template"] = req.template
    if req.context is not None:
        body["context"] = list(req.context)
    if req.raw:
        body["raw"] = True
    if req.images:
        body["images"] = _b64(req.images)
    if not req.shift:
        body["shift"] = False
    if not req.truncate:
        body["truncate"] = False
    return _common(body, req.options, req.format, req.keep_alive, req.think)


def embed_body(
    model: str,
    inputs: Sequence[str],
    *,
    truncate: bool,
    dimensions: int | None,
    options: Options,
    keep_alive: float | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": list(inputs)}
    if not truncate:
        body["truncate"] = False
    if dimensions:
        body["dimensions"] = dimensions
    return _common(body, options, None, keep_alive, None)


# --- replies -------------------------------------------------------------------------------


def _int(obj: Mapping[str, Any], key: str) -> int:
    v = obj.get(key)
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0


def _text(obj: Mapping[str, Any], key: str) -> str:
    v = obj.get(key)
    return v if isinstance(v, str) else ""


def metrics(obj: Mapping[str, Any], *, total_ns: int | None = None) -> Metrics:
    """The six timing fields; `total_ns` (measured here) replaces the upstream's total."""
    return Metrics(
        total_duration=_int(obj, "total_duration") if total_ns is None else total_ns,
        load_duration=_int(obj, "load_duration"),
        prompt_eval_count=_int(obj, "prompt_eval_count"),
        prompt_eval_duration=_int(obj, "prompt_eval_duration"),
        eval_count=_int(obj, "eval_count"),
        eval_duration=_int(obj, "eval_duration"),
    )


def tool_calls(value: Any, who: str) -> tuple[ToolCall, ...]:
    if not value:
        return ()
    if not isinstance(value, list):
        raise UpstreamProtocolError(f"{who} sent tool_calls that are not a list")
    out: list[ToolCall] = []
    for n, c in enumerate(value):
        fn = c.get("function") if isinstance(c, dict) else None
        args = fn.get("arguments", {}) if isinstance(fn, dict) else None
        if not isinstance(fn, dict) or not isinstance(args, dict):
            raise UpstreamProtocolError(f"{who} sent a malformed tool call")
        index = fn.get("index")
        out.append(
            ToolCall(
                name=_text(fn, "name"),
                arguments=args,
                index=index if isinstance(index, int) else n,
                id=c["id"] if isinstance(c.get("id"), str) and c["id"] else None,
            )
        )
    return tuple(out)


def chunk(obj: Any, *, chat: bool, who: str, started_ns: int, raw: bytes | None = None) -> Chunk:
    """One NDJSON record of /api/chat (`chat`) or /api/generate -> a Chunk; the last one's
    total_duration runs from `started_ns` (perf_counter_ns) to now. `raw`: the record's bytes,
    kept on a chunk that is not the last (the last is bridge's own, with its durations)."""
    if not isinstance(obj, dict):
        raise UpstreamProtocolError(f"{who} sent a stream record that is not an object")
    if chat:
        msg = obj.get("message") or {}
        if not isinstance(msg, dict):
            raise UpstreamProtocolError(f"{who} sent a message that is not an object")
        text, thinking, calls = _text(msg, "content"), _text(msg, "thinking"), msg.get("tool_calls")
    else:
        text, thinking, calls = (
            _text(obj, "response"),
            _text(obj, "thinking"),
            obj.get("tool_calls"),
        )
    if obj.get("done") is not True:  # once per token: the short way
        return Chunk(text, thinking, tool_calls(calls, who) if calls else (), raw=raw)
    ctx = obj.get("context")
    return Chunk(
        text=text,
        thinking=thinking,
        tool_calls=tool_calls(calls, who),
        done=True,
        # Ollama before 0.1.3x sent no done_reason; "stop" is what it meant.
        done_reason=_text(obj, "done_reason") or "stop",
        metrics=metrics(obj, total_ns=time.perf_counter_ns() - started_ns),
        context=tuple(ctx) if isinstance(ctx, list) and not chat else None,
    )


def embeddings(obj: Any, who: str) -> tuple[list[list[float]], Metrics]:
    if not isinstance(obj, dict) or not isinstance(obj.get("embeddings"), list):
        raise UpstreamProtocolError(f"{who} sent an embed reply without embeddings")
    vectors = obj["embeddings"]
    if not all(isinstance(v, list) for v in vectors):
        raise UpstreamProtocolError(f"{who} sent embeddings that are not lists of numbers")
    return vectors, metrics(obj)


# --- model lists ---------------------------------------------------------------------------


def parse_time(value: Any) -> float | None:
    """An RFC 3339 time as Go writes it (nanoseconds, `Z` or an offset) -> epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    # Python 3.11 reads at most 6 fractional digits; Go writes up to 9.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _details(d: Any) -> ModelDetails:
    if not isinstance(d, dict):
        return ModelDetails(format="")
    fams = d.get("families")
    ctx, emb = d.get("context_length"), d.get("embedding_length")
    return ModelDetails(
        parent_model=_text(d, "parent_model"),
        format=_text(d, "format"),
        family=_text(d, "family"),
        families=tuple(f for f in fams if isinstance(f, str)) if isinstance(fams, list) else None,
        parameter_size=_text(d, "parameter_size"),
        quantization_level=_text(d, "quantization_level"),
        context_length=ctx if isinstance(ctx, int) and ctx > 0 else None,
        embedding_length=emb if isinstance(emb, int) and emb > 0 else None,
    )


def listed(obj: Any, who: str) -> list[Listed]:
    """The `models` of an /api/tags or /api/ps reply."""
    models = obj.get("models") if isinstance(obj, dict) else None
    if models is None:
        models = []
    if not isinstance(models, list):
        raise UpstreamProtocolError(f"{who} sent a model list that is not a list")
    out: list[Listed] = []
    for m in models:
        if not isinstance(m, dict):
            continue
        remote = _text(m, "model") or _text(m, "name")
        if not remote:
            continue
        out.append(
            Listed(
                remote=remote,
                size=_int(m, "size"),
                digest=_text(m, "digest"),
                modified_at=parse_time(m.get("modified_at")) or 0.0,
                details=_details(m.get("details")),
                size_vram=_int(m, "size_vram"),
                context_length=_int(m, "context_length"),
                expires_at=parse_time(m.get("expires_at")),
            )
        )
    return out
