"""Anthropic's Messages replies, written from domain chunks as Ollama's anthropic package does.

Pure: no I/O. Field order and omissions follow Ollama's Go structs: `stop_reason` is left out
when there is none and `stop_sequence` always (Ollama never fills it in), `content` is null
when the reply is empty, tool_use ids are the tool calls' own (`call_...`), and JSON is
escaped as Go escapes it. Streams open with message_start, send each block's start, deltas and
stop, and close with message_delta and message_stop; Ollama sends no ping.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from bridge.domain import Chunk, Metrics, ToolCall
from bridge.errors import BridgeError
from bridge.http import gojson
from bridge.http.errors import anthropic_error, status_of

_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_message_id() -> str:
    """`msg_` and 24 hex digits, as Ollama's generateID makes them."""
    return "msg_" + secrets.token_hex(12)


def _call_id(c: ToolCall) -> str:
    # Ollama's chat handler names every call it parses; one that arrives without (from an
    # upstream) gets a name of the same form.
    return c.id or "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))


def stop_reason(done_reason: str | None, tool_calls: bool) -> str:
    """Ollama's mapStopReason: "" means none (the field is left out)."""
    if tool_calls:
        return "tool_use"
    if done_reason == "stop":
        return "end_turn"
    if done_reason == "length":
        return "max_tokens"
    return "stop_sequence" if done_reason else ""


def usage(m: Metrics | None) -> dict[str, int]:
    return {
        "input_tokens": m.prompt_eval_count if m else 0,
        "output_tokens": m.eval_count if m else 0,
    }


def arguments_json(args: Mapping[str, Any]) -> bytes:
    """Tool arguments as Ollama writes them: its ordered map keeps the call's own key order,
    the nested objects (plain Go maps) come out sorted, and whole floats print as integers."""
    items = (
        gojson.dumps(str(k)) + b":" + gojson.dumps(_go_numbers(v), option=orjson.OPT_SORT_KEYS)
        for k, v in args.items()
    )
    return b"{" + b",".join(items) + b"}"


def _go_numbers(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return int(v)
    if isinstance(v, Mapping):
        return {k: _go_numbers(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_go_numbers(x) for x in v]
    return v


def _tool_use(c: ToolCall) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": _call_id(c),
        "name": c.name,
        "input": orjson.Fragment(arguments_json(c.arguments)),
    }


def message(mid: str, model: str, items: Sequence[Chunk], *, tools: bool) -> bytes:
    """The non-streamed reply (the body, with Go's trailing newline). Tool calls count only
    when the request offered tools, as in Ollama's chat handler."""
    final = items[-1] if items else Chunk(done=True)
    thinking = "".join(c.thinking for c in items)
    text = "".join(c.text for c in items)
    calls = [t for c in items for t in c.tool_calls] if tools else []
    content: list[dict[str, Any]] = []
    if thinking:
        content.append({"type": "thinking", "thinking": thinking})
    if text:
        content.append({"type": "text", "text": text})
    content.extend(_tool_use(c) for c in calls)
    out: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content or None,
    }
    if reason := stop_reason(final.done_reason, bool(calls)):
        out["stop_reason"] = reason
    out["usage"] = usage(final.metrics)
    return gojson.dumps(out) + b"\n"


def event(kind: str, data: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + gojson.dumps(data) + b"\n\n"


def sse_error(exc: BridgeError) -> bytes:
    """An error after the first event. Ollama's writer drops it (the stream just ends);
    Anthropic's API, and the SDKs that read it, send and expect an `error` event."""
    return event("error", {"type": "error", "error": anthropic_error(exc.message, status_of(exc))})


class StreamConverter:
    """Turns a reply's chunks into the stream's events, one chunk at a time (Ollama's
    StreamConverter: thinking that comes after the text has ended is dropped; a tool call is
    sent whole, once per id)."""

    def __init__(self, mid: str, model: str, estimated_input_tokens: int) -> None:
        self.mid = mid
        self.model = model
        self.estimated = estimated_input_tokens
        self.started = False
        self.index = 0
        self.thinking_started = False
        self.thinking_done = False
        self.text_started = False
        self.sent: set[str] = set()

    def process(self, c: Chunk) -> bytes:
        out: list[bytes] = []
        if not self.started:
            self.started = True
            n = c.metrics.prompt_eval_count if c.metrics else 0
            out.append(self._message_start(n or self.estimated))
        if c.thinking and not self.thinking_done:
            if self.text_started:
                out.append(self._stop())
                self.text_started = False
            if not self.thinking_started:
                self.thinking_started = True
                out.append(self._start({"type": "thinking", "thinking": ""}))
            out.append(self._delta({"type": "thinking_delta", "thinking": c.thinking}))
        if c.text:
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                out.append(self._stop())
            if not self.text_started:
                self.text_started = True
                out.append(self._start({"type": "text", "text": ""}))
            out.append(self._delta({"type": "text_delta", "text": c.text}))
        for call in c.tool_calls:
            cid = _call_id(call)
            if cid in self.sent:
                continue
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                out.append(self._stop())
            if self.text_started:
                out.append(self._stop())
                self.text_started = False
            out.append(self._start({"type": "tool_use", "id": cid, "name": call.name, "input": {}}))
            partial = arguments_json(call.arguments).decode()
            out.append(self._delta({"type": "input_json_delta", "partial_json": partial}))
            out.append(self._stop())
            self.sent.add(cid)
        if c.done:
            if self.text_started or (self.thinking_started and not self.thinking_done):
                out.append(event("content_block_stop", self._stop_data()))
            delta = {}
            if reason := stop_reason(c.done_reason, bool(self.sent)):
                delta["stop_reason"] = reason
            out.append(
                event(
                    "message_delta",
                    {"type": "message_delta", "delta": delta, "usage": usage(c.metrics)},
                )
            )
            out.append(event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def _message_start(self, input_tokens: int) -> bytes:
        msg = {
            "id": self.mid,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "usage": {"input_tokens": input_tokens, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": msg})

    def _stop_data(self) -> dict[str, Any]:
        return {"type": "content_block_stop", "index": self.index}

    def _start(self, block: dict[str, Any]) -> bytes:
        return event(
            "content_block_start",
            {"type": "content_block_start", "index": self.index, "content_block": block},
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def _stop(self) -> bytes:
        """Close the open block; the next one takes the next index."""
        stop = event("content_block_stop", self._stop_data())
        self.index += 1
        return stop
