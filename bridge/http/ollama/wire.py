"""Ollama's /api/* wire format: JSON bodies <-> domain types. Pure: no I/O, no registry."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np
import orjson

from bridge.domain import (
    ChatRequest,
    Chunk,
    Embeddings,
    EmbedRequest,
    GenerateRequest,
    Message,
    ModelDetails,
    ModelSpec,
    TokenLogprob,
    ToolCall,
)
from bridge.durations import InvalidDuration, parse_keep_alive
from bridge.errors import BridgeError, InvalidRequest
from bridge.http.jsonbody import Fields
from bridge.options import parse_options
from bridge.timefmt import local, utc_now
from bridge.upstream import RemoteRunner

_THINK_LEVELS = ("high", "medium", "low", "max")


# --- requests ------------------------------------------------------------------------------


def keep_alive(f: Fields) -> float | None:
    try:
        return parse_keep_alive(f.raw("keep_alive"))
    except InvalidDuration as exc:
        raise InvalidRequest(str(exc), param="keep_alive") from exc


def think(f: Fields) -> bool | str | None:
    v = f.raw("think")
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str) and v in _THINK_LEVELS:
        return v
    raw = orjson.dumps(v).decode()
    raise InvalidRequest(
        f'invalid think value: {raw} (must be "high", "medium", "low", "max", true, or false)'
    )


def top_logprobs(f: Fields) -> int:
    n = f.integer("top_logprobs") or 0
    if not 0 <= n <= 20:
        raise InvalidRequest("top_logprobs must be between 0 and 20", param="top_logprobs")
    return n


def fmt(f: Fields) -> str | dict[str, Any] | None:
    v = f.raw("format")
    if v is None or v == "" or v == "null":
        return None
    if v == "json":
        return "json"
    if isinstance(v, dict):
        return v
    raw = orjson.dumps(v).decode()
    # Ollama reports this one as a 500; a 400 tells the client it is their input.
    raise InvalidRequest(f'invalid format: {raw}; expected "json" or a valid JSON Schema object')


def images(values: list[Any] | None, field: str) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for v in values or ():
        if not isinstance(v, str):
            raise InvalidRequest(
                f"json: cannot unmarshal {type(v).__name__} into Go struct field {field} of type api.ImageData"
            )
        try:
            out.append(base64.b64decode(v, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"illegal base64 data at input byte {_bad_b64_index(v)}") from exc
    return tuple(out)


def _bad_b64_index(s: str) -> int:
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    for i, ch in enumerate(s):
        if ch not in alphabet:
            return i
    return len(s) - len(s) % 4


def model_field(f: Fields, *, required_msg: str | None = None) -> str:
    name = f.string("model") or f.string("name")
    if not name and required_msg:
        raise InvalidRequest(required_msg, param="model")
    return name


def decode_generate(data: dict[str, Any]) -> tuple[GenerateRequest, bool]:
    f = Fields(data, "GenerateRequest")
    req = GenerateRequest(
        model=f.string("model"),
        prompt=f.string("prompt"),
        suffix=f.string("suffix"),
        system=f.opt_string("system"),
        template=f.opt_string("template") or None,
        context=tuple(c) if (c := f.int_array("context")) is not None else None,
        raw=f.boolean("raw", False),
        images=images(f.array("images", "[]api.ImageData"), "GenerateRequest.images"),
        options=parse_options(f.object("options")),
        format=fmt(f),
        keep_alive=keep_alive(f),
        think=think(f),
        shift=f.boolean("shift", True),
        truncate=f.boolean("truncate", True),
        logprobs=f.boolean("logprobs", False),
        top_logprobs=top_logprobs(f),
        debug_render_only=f.boolean("_debug_render_only", False),
    )
    return req, f.boolean("stream", True)


def decode_chat(data: dict[str, Any]) -> tuple[ChatRequest, bool]:
    f = Fields(data, "ChatRequest")
    messages = tuple(
        _message(m, i) for i, m in enumerate(f.array("messages", "[]api.Message") or ())
    )
    tools = f.array("tools", "api.Tools") or []
    for t in tools:
        if not isinstance(t, dict):
            raise InvalidRequest(
                "json: cannot unmarshal into Go struct field ChatRequest.tools of type api.Tool"
            )
    req = ChatRequest(
        model=f.string("model"),
        messages=messages,
        options=parse_options(f.object("options")),
        format=fmt(f),
        tools=tuple(tools),
        keep_alive=keep_alive(f),
        think=think(f),
        truncate=f.boolean("truncate", True),
        shift=f.boolean("shift", True),
        logprobs=f.boolean("logprobs", False),
        top_logprobs=top_logprobs(f),
        debug_render_only=f.boolean("_debug_render_only", False),
    )
    return req, f.boolean("stream", True)


def decode_embed(data: dict[str, Any]) -> EmbedRequest:
    """/api/embed: `input` is a string, a list of strings, or null (an empty string is no
    input at all, as in Ollama)."""
    f = Fields(data, "EmbedRequest")
    raw = f.raw("input")
    if raw is None or raw == "":
        inputs: tuple[str, ...] = ()
    elif isinstance(raw, str):
        inputs = (raw,)
    elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        inputs = tuple(raw)
    else:
        raise InvalidRequest("invalid input type", param="input")
    return EmbedRequest(
        model=f.string("model"),
        inputs=inputs,
        truncate=f.boolean("truncate", True),
        dimensions=f.integer("dimensions"),
        options=parse_options(f.object("options")),
        keep_alive=keep_alive(f),
    )


def decode_embeddings(data: dict[str, Any]) -> EmbedRequest:
    """The legacy /api/embeddings: one `prompt`, the runner's vector as it is."""
    f = Fields(data, "EmbeddingRequest")
    prompt = f.string("prompt")
    return EmbedRequest(
        model=f.string("model"),
        inputs=(prompt,) if prompt else (),
        normalize=False,
        options=parse_options(f.object("options")),
        keep_alive=keep_alive(f),
    )


def _message(m: Any, i: int) -> Message:
    if not isinstance(m, dict):
        raise InvalidRequest(
            f"json: cannot unmarshal {type(m).__name__} into Go struct field ChatRequest.messages of type api.Message"
        )
    f = Fields(m, "ChatRequest.messages")
    calls = []
    for n, c in enumerate(f.array("tool_calls", "[]api.ToolCall") or ()):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict):
            raise InvalidRequest("invalid tool call: missing function")
        args = fn.get("arguments") or {}
        if not isinstance(args, dict):
            raise InvalidRequest(
                "json: cannot unmarshal into Go struct field ToolCallFunction.function.arguments of type api.ToolCallFunctionArguments"
            )
        calls.append(
            ToolCall(
                name=str(fn.get("name", "")),
                arguments=args,
                index=int(fn.get("index", n)) if isinstance(fn.get("index", n), int) else n,
                id=c.get("id") if isinstance(c.get("id"), str) else None,
            )
        )
    return Message(
        role=f.string("role").lower(),
        content=f.string("content"),
        images=images(f.array("images", "[]api.ImageData"), "ChatRequest.messages.images"),
        thinking=f.opt_string("thinking"),
        tool_calls=tuple(calls),
        tool_name=f.opt_string("tool_name"),
        tool_call_id=f.opt_string("tool_call_id"),
    )


# --- responses -----------------------------------------------------------------------------


def _metrics(out: dict[str, Any], chunk: Chunk) -> None:
    m = chunk.metrics
    if m is None:
        return
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        value = getattr(m, key)
        if value:  # Go omitempty
            out[key] = value


def generate_chunk(
    model: str, chunk: Chunk, *, text: str | None = None, thinking: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": model,
        "created_at": utc_now(),
        "response": chunk.text if text is None else text,
    }
    th = chunk.thinking if thinking is None else thinking
    if th:
        out["thinking"] = th
    out["done"] = chunk.done
    if chunk.done_reason:
        out["done_reason"] = chunk.done_reason
    if chunk.context:
        out["context"] = list(chunk.context)
    _metrics(out, chunk)
    if chunk.debug is not None:
        out["_debug_info"] = debug_info(chunk.debug)
    if chunk.logprobs:
        out["logprobs"] = logprobs(chunk.logprobs)
    return out


def debug_info(debug: tuple[str, int]) -> dict[str, Any]:
    rendered, images = debug
    out: dict[str, Any] = {"rendered_template": rendered}
    if images:
        out["image_count"] = images
    return out


def chat_chunk(
    model: str,
    chunk: Chunk,
    *,
    text: str | None = None,
    thinking: str | None = None,
    tool_calls: tuple[ToolCall, ...] | None = None,
) -> dict[str, Any]:
    # A `_debug_render_only` answer carries Go's zero message: no role.
    role = "" if chunk.debug is not None else "assistant"
    message: dict[str, Any] = {"role": role, "content": chunk.text if text is None else text}
    th = chunk.thinking if thinking is None else thinking
    if th:
        message["thinking"] = th
    calls = chunk.tool_calls if tool_calls is None else tool_calls
    if calls:
        message["tool_calls"] = [tool_call(c) for c in calls]
    out: dict[str, Any] = {
        "model": model,
        "created_at": utc_now(),
        "message": message,
        "done": chunk.done,
    }
    if chunk.done_reason:
        out["done_reason"] = chunk.done_reason
    if chunk.debug is not None:
        out["_debug_info"] = debug_info(chunk.debug)
    if chunk.logprobs:  # before the metrics here (api.ChatResponse), after them for generate
        out["logprobs"] = logprobs(chunk.logprobs)
    _metrics(out, chunk)
    return out


def logprobs(items: tuple[TokenLogprob, ...], *, full: bool = False) -> list[dict[str, Any]]:
    """Ollama's `[{token, logprob, bytes?, top_logprobs?}]`. `full` always writes `bytes` and
    `top_logprobs`, as OpenAI's schema has them (for /v1)."""
    out = []
    for lp in items:
        d = _token_logprob(lp, full=full)
        if lp.top or full:
            d["top_logprobs"] = [_token_logprob(t, full=full) for t in lp.top]
        out.append(d)
    return out


def _token_logprob(lp: TokenLogprob, *, full: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"token": lp.token, "logprob": lp.logprob}
    if lp.bytes or full:
        d["bytes"] = list(lp.bytes)
    return d


def embed_reply(model: str, e: Embeddings) -> bytes:
    """/api/embed's body. Go encodes the vectors as float32: shortest float32 digits."""
    out: dict[str, Any] = {
        "model": model,
        "embeddings": np.asarray(e.vectors, dtype=np.float32) if e.vectors else [],
    }
    if e.vectors:
        for key in ("total_duration", "load_duration", "prompt_eval_count"):
            if value := getattr(e, key):  # Go omitempty
                out[key] = value
    return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)


def embeddings_reply(e: Embeddings) -> bytes:
    """The legacy /api/embeddings body: one vector as float64, as Ollama sends it."""
    return orjson.dumps({"embedding": e.vectors[0] if e.vectors else []})


def tool_call(c: ToolCall) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if c.id:
        out["id"] = c.id
    out["function"] = {"index": c.index, "name": c.name, "arguments": dict(c.arguments)}
    return out


def ndjson(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def error_line(exc: BridgeError) -> bytes:
    return orjson.dumps({"error": exc.message}) + b"\n"


def details(d: ModelDetails, *, lengths: bool = True) -> dict[str, Any]:
    """`lengths`: the context and embedding lengths, which Ollama's listing fills in and
    its /api/show and /api/ps leave out."""
    out: dict[str, Any] = {
        "parent_model": d.parent_model,
        "format": d.format,
        "family": d.family,
        "families": list(d.families) if d.families else None,
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    }
    if lengths and d.context_length:
        out["context_length"] = d.context_length
    if lengths and d.embedding_length:
        out["embedding_length"] = d.embedding_length
    return out


def tags_entry(spec: ModelSpec, capabilities: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": spec.name,
        "model": spec.name,
        "modified_at": local(spec.modified_at),
        "size": spec.size,
        "digest": spec.digest,
        "details": details(spec.details),
    }
    if capabilities:
        out["capabilities"] = list(capabilities)
    return out


def ps_entry(
    spec: ModelSpec, *, size: int, size_vram: int, context_length: int, expires_at: float | None
) -> dict[str, Any]:
    d = details(spec.details, lengths=False)
    d["parent_model"] = ""
    return {
        "name": spec.name,
        "model": spec.name,
        "size": size,
        "digest": spec.digest,
        "details": d,
        "expires_at": local(math.inf if expires_at is None else expires_at),
        "size_vram": size_vram,
        "context_length": context_length,
    }


def remote_ps_entry(r: RemoteRunner) -> dict[str, Any]:
    """A model an upstream has loaded: /api/ps's keys, then where it runs (`remote_model`,
    `remote_host`, as Ollama marks remote models in its listings)."""
    d = details(r.details)
    d["parent_model"] = ""
    return {
        "name": r.name,
        "model": r.name,
        "size": r.size,
        "digest": r.digest,
        "details": d,
        "expires_at": local(math.inf if r.expires_at is None else r.expires_at),
        "size_vram": r.size_vram,
        "context_length": r.context_length,
        "remote_model": r.model,
        "remote_host": r.url,
    }
