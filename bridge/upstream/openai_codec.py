"""Requests to and replies from an OpenAI-compatible upstream (vLLM, llama-server, LM Studio...).

Pure: domain requests -> /v1/* bodies, SSE events -> Chunks. What maps where:

- options: num_predict -> max_tokens, temperature, top_p, seed, stop, frequency_penalty and
  presence_penalty as OpenAI has them; top_k, min_p, typical_p, repeat_penalty (also as vLLM's
  repetition_penalty) and repeat_last_n only with `extensions`, since OpenAI itself refuses
  fields it does not know. Load-time options (num_ctx, num_gpu, ...) have no OpenAI form.
- format -> response_format (json_object, or json_schema named "schema").
- think -> reasoning_effort for a level; with `extensions`, chat_template_kwargs.enable_thinking.
- images -> image_url parts holding data URLs; tool calls -> arguments as JSON strings, and back.
- replies: reasoning_content or reasoning -> thinking; usage (and llama-server's timings) ->
  eval counts and durations; finish_reason -> done_reason.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

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

_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


def _sampling(body: dict[str, Any], o: Options, *, extensions: bool) -> None:
    if o.num_predict is not None and o.num_predict >= 0:
        body["max_tokens"] = o.num_predict
    if o.temperature is not None:
        body["temperature"] = o.temperature
    if o.top_p is not None:
        body["top_p"] = o.top_p
    if o.seed is not None and o.seed >= 0:  # Ollama's -1 means "random": no seed
        body["seed"] = o.seed
    if o.stop:
        body["stop"] = list(o.stop)
    if o.frequency_penalty is not None:
        body["frequency_penalty"] = o.frequency_penalty
    if o.presence_penalty is not None:
        body["presence_penalty"] = o.presence_penalty
    if not extensions:
        return
    if o.top_k is not None:
        body["top_k"] = o.top_k
    if o.min_p is not None:
        body["min_p"] = o.min_p
    if o.typical_p is not None:
        body["typical_p"] = o.typical_p
    if o.repeat_penalty is not None:
        body["repeat_penalty"] = o.repeat_penalty  # llama-server
        body["repetition_penalty"] = o.repeat_penalty  # vLLM
    if o.repeat_last_n is not None:
        body["repeat_last_n"] = o.repeat_last_n


def response_format(fmt: Format) -> dict[str, Any] | None:
    if fmt is None:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, Mapping):
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": dict(fmt)}}
    return None


def _think(body: dict[str, Any], think: bool | str | None, *, extensions: bool) -> None:
    if think is None:
        return
    if isinstance(think, str) and think in _EFFORT:
        body["reasoning_effort"] = _EFFORT[think]
    if extensions:
        body["chat_template_kwargs"] = {"enable_thinking": bool(think)}


def image_url(data: bytes) -> str:
    """A data URL with the image's own type (vLLM and llama-server check it)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    elif data.startswith(b"GIF8"):
        mime = "image/gif"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    else:
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _content(text: str, images: Sequence[bytes]) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": image_url(i)}} for i in images]
    return parts


def messages(msgs: Sequence[Message]) -> list[dict[str, Any]]:
    """Ollama messages -> OpenAI's. Tool results need the id of the call they answer; Ollama
    clients often send only `tool_name`, so the id is found from the calls made before it."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (name, id) of calls not answered yet
    for m in msgs:
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for c in m.tool_calls:
                cid = c.id or f"call_{len(out)}_{c.index}"
                pending.append((c.name, cid))
                calls.append(
                    {
                        "id": cid,
                        "type": "function",
                        "function": {
                            "name": c.name,
                            "arguments": orjson.dumps(dict(c.arguments)).decode(),
                        },
                    }
                )
            out.append({"role": "assistant", "content": m.content or None, "tool_calls": calls})
        elif m.role == "tool":
            cid = m.tool_call_id or _answered(pending, m.tool_name)
            out.append({"role": "tool", "content": m.content, "tool_call_id": cid})
        else:
            out.append({"role": m.role, "content": _content(m.content, m.images)})
    return out


def _answered(pending: list[tuple[str, str]], name: str | None) -> str:
    for i, (n, cid) in enumerate(pending):
        if name is None or n == name:
            del pending[i]
            return cid
    return "call_0"


def chat_body(model: str, req: ChatRequest, *, extensions: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages(req.messages),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    _sampling(body, req.options, extensions=extensions)
    rf = response_format(req.format)
    if rf:
        body["response_format"] = rf
    if req.tools:
        body["tools"] = [dict(t) for t in req.tools]
    _think(body, req.think, extensions=extensions)
    return body


def generate_body(
    model: str, req: GenerateRequest, *, extensions: bool
) -> tuple[str, dict[str, Any]]:
    """-> (path, body). Raw prompts and fill-in-the-middle go to /completions; anything else
    is one user turn (and the request's system prompt) on /chat/completions, as Ollama
    renders a generate request through the chat template."""
    if req.raw or req.suffix:
        body: dict[str, Any] = {
            "model": model,
            "prompt": req.prompt,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if req.suffix:
            body["suffix"] = req.suffix
        _sampling(body, req.options, extensions=extensions)
        rf = response_format(req.format)
        if rf:
            body["response_format"] = rf
        return "completions", body
    msgs = []
    if req.system:
        msgs.append(Message(role="system", content=req.system))
    msgs.append(Message(role="user", content=req.prompt, images=req.images))
    chat = ChatRequest(
        model=req.model,
        messages=tuple(msgs),
        options=req.options,
        format=req.format,
        think=req.think,
    )
    return "chat/completions", chat_body(model, chat, extensions=extensions)


def embed_body(model: str, inputs: Sequence[str], dimensions: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": list(inputs), "encoding_format": "float"}
    if dimensions:
        body["dimensions"] = dimensions
    return body


# --- replies -------------------------------------------------------------------------------

_DONE_REASON = {"length": "length"}  # stop, tool_calls, function_call, content_filter: "stop"


def done_reason(finish: str | None) -> str:
    return _DONE_REASON.get(finish or "", "stop")


def _int(obj: Any, key: str) -> int:
    v = obj.get(key) if isinstance(obj, dict) else None
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0


@dataclass(slots=True)
class _PartialCall:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StreamDecoder:
    """The state of one streamed reply: tool-call fragments, usage, and token times.

    `feed` takes each event's JSON and returns the chunks it holds; `final` makes the last
    chunk, with the metrics. Durations come from llama-server's `timings` when it sends them,
    else from when the first and last tokens arrived here.
    """

    who: str
    chat: bool
    started_ns: int = field(default_factory=time.perf_counter_ns)  # the call: total_duration
    sent_ns: int = field(default_factory=time.perf_counter_ns)  # this attempt's request
    first_ns: int = 0
    last_ns: int = 0
    pieces: int = 0
    finish: str | None = None
    usage: Mapping[str, Any] | None = None
    timings: Mapping[str, Any] | None = None
    calls: dict[int, _PartialCall] = field(default_factory=dict)

    def feed(self, obj: Any) -> list[Chunk]:
        if not isinstance(obj, dict):
            raise UpstreamProtocolError(f"{self.who} sent an event that is not an object")
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        if isinstance(obj.get("timings"), dict):
            self.timings = obj["timings"]
        choices = obj.get("choices")
        if not choices:
            return []
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise UpstreamProtocolError(f"{self.who} sent malformed choices")
        choice = choices[0]
        out: list[Chunk] = []
        if self.chat:
            # A whole reply (from a server that does not stream) has `message` instead.
            delta = choice.get("delta") or choice.get("message") or {}
            if not isinstance(delta, dict):
                raise UpstreamProtocolError(f"{self.who} sent a delta that is not an object")
            text = delta.get("content") or ""
            thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
            if delta.get("tool_calls"):
                self._tool_deltas(delta["tool_calls"])
                self._token()
        else:
            text, thinking = choice.get("text") or "", ""
        if not isinstance(text, str) or not isinstance(thinking, str):
            raise UpstreamProtocolError(f"{self.who} sent content that is not text")
        if text or thinking:
            self._token()
            out.append(Chunk(text=text, thinking=thinking))
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            self.finish = finish
            calls = self._complete_calls()
            if calls:
                out.append(Chunk(tool_calls=calls))
        return out

    def _token(self) -> None:
        now = time.perf_counter_ns()
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now
        self.pieces += 1

    def _tool_deltas(self, deltas: Any) -> None:
        if not isinstance(deltas, list):
            raise UpstreamProtocolError(f"{self.who} sent tool_calls that are not a list")
        for n, d in enumerate(deltas):
            if not isinstance(d, dict):
                raise UpstreamProtocolError(f"{self.who} sent a malformed tool call")
            index = d.get("index")
            index = index if isinstance(index, int) else n
            call = self.calls.setdefault(index, _PartialCall())
            if isinstance(d.get("id"), str) and d["id"]:
                call.id = d["id"]
            fn = d.get("function") or {}
            if isinstance(fn.get("name"), str) and fn["name"]:
                call.name = fn["name"]
            args = fn.get("arguments")
            if isinstance(args, str):
                call.arguments.append(args)
            elif isinstance(args, dict):  # some servers send the object itself
                call.arguments.append(orjson.dumps(args).decode())

    def _complete_calls(self) -> tuple[ToolCall, ...]:
        out: list[ToolCall] = []
        for index, call in sorted(self.calls.items()):
            text = "".join(call.arguments).strip() or "{}"
            try:
                args = orjson.loads(text)
            except orjson.JSONDecodeError:
                args = None
            if not isinstance(args, dict):
                raise UpstreamProtocolError(
                    f"{self.who} sent tool call arguments that are not a JSON object: {text[:200]}"
                )
            out.append(ToolCall(name=call.name, arguments=args, index=index, id=call.id))
        self.calls.clear()
        return tuple(out)

    def final(self) -> Chunk:
        """The done chunk (with any tool calls the stream left open)."""
        calls = self._complete_calls()
        return Chunk(
            tool_calls=calls,
            done=True,
            done_reason=done_reason(self.finish),
            metrics=self.metrics(),
        )

    def metrics(self) -> Metrics:
        u, t = self.usage or {}, self.timings or {}
        prompt = _int(u, "prompt_tokens") or _int(t, "prompt_n") + _int(t, "cache_n")
        completion = _int(u, "completion_tokens") or _int(t, "predicted_n") or self.pieces
        if t:
            prompt_ns = int(float(t.get("prompt_ms") or 0) * 1e6)
            eval_ns = int(float(t.get("predicted_ms") or 0) * 1e6)
        else:
            end = self.last_ns or time.perf_counter_ns()
            prompt_ns = (self.first_ns or end) - self.sent_ns
            eval_ns = end - (self.first_ns or end)
        return Metrics(
            total_duration=time.perf_counter_ns() - self.started_ns,
            prompt_eval_count=prompt,
            prompt_eval_duration=max(prompt_ns, 0),
            eval_count=completion,
            eval_duration=max(eval_ns, 0),
        )


def embeddings(obj: Any, who: str) -> tuple[list[list[float]], Metrics]:
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise UpstreamProtocolError(f"{who} sent an embeddings reply without data")
    ordered = sorted(
        data, key=lambda d: d.get("index", 0) if isinstance(d.get("index"), int) else 0
    )
    vectors: list[list[float]] = []
    for d in ordered:
        v = d.get("embedding")
        if not isinstance(v, list):
            raise UpstreamProtocolError(f"{who} sent embeddings that are not lists of numbers")
        vectors.append(v)
    return vectors, Metrics(prompt_eval_count=_int(obj.get("usage"), "prompt_tokens"))


def listed(obj: Any, who: str) -> list[Listed]:
    """The models of a /v1/models reply, with what vLLM and llama-server add to them."""
    data = obj.get("data") if isinstance(obj, dict) else None
    if data is None:
        data = []  # Ollama's /v1/models says null when it has none
    if not isinstance(data, list):
        raise UpstreamProtocolError(f"{who} sent a model list that is not a list")
    out: list[Listed] = []
    for m in data:
        if not isinstance(m, dict) or not isinstance(m.get("id"), str) or not m["id"]:
            continue
        meta = m.get("meta") if isinstance(m.get("meta"), dict) else {}
        ctx = _int(m, "max_model_len") or _int(meta, "n_ctx_train")
        out.append(
            Listed(
                remote=m["id"],
                size=_int(meta, "size"),
                digest=hashlib.sha256(m["id"].encode()).hexdigest(),
                modified_at=float(_int(m, "created")),
                details=ModelDetails(format="", context_length=ctx or None),
            )
        )
    return out
