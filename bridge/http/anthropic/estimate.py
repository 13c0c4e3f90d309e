"""Ollama's estimate of a Messages request's prompt tokens (anthropic.EstimateInputTokens).

A streamed reply's message_start reports it until the real count is known: the bytes of the
system prompt, the roles, the blocks' text and thinking, whole tool_use and tool_result blocks
as Go marshals them, and the tool definitions, over 4. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from bridge.errors import InvalidRequest
from bridge.http.anthropic.request import Block, Decoded, decode_block
from bridge.models.store_writer import go_json


def input_tokens(d: Decoded) -> int:
    """The estimate; at least 1 when there are messages or a system prompt."""
    total = _any_len(d.system)
    for p in d.params:
        total += len(p.role.encode()) + sum(_block_len(b) for b in p.content)
    for t in d.tools:
        total += len(t["name"].encode()) + len(t["description"].encode()) + t["schema_len"]
    tokens = total // 4
    if tokens == 0 and (d.params or d.system is not None):
        tokens = 1
    return tokens


def _any_len(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        total = 0
        for item in content:
            try:
                block = decode_block(item)
            except InvalidRequest:
                continue  # what does not decode as a block counts for nothing
            total += _block_len(block)
        return total
    return len(go_json(content, sort_keys=True, newline=False))


def _block_len(b: Block) -> int:
    n = len((b.text or "").encode()) + len((b.thinking or "").encode())
    if b.type in ("tool_use", "tool_result"):
        n += len(_block_json(b))
    return n


def _block_json(b: Block) -> bytes:
    """json.Marshal(ContentBlock): struct order, omitempty, `content` as Go marshals `any`."""
    parts = [b'"type":' + go_json(b.type, newline=False)]

    def add(key: str, value: Any, *, sort: bool = True) -> None:
        parts.append(
            go_json(key, newline=False) + b":" + go_json(value, sort_keys=sort, newline=False)
        )

    if b.text is not None:
        add("text", b.text)
    if b.citations:
        add("citations", b.citations, sort=False)
    if b.source is not None:
        src = {"type": b.source["type"]}
        src.update({k: v for k in ("media_type", "data", "url") if (v := b.source[k])})
        add("source", src, sort=False)
    if b.id:
        add("id", b.id)
    if b.name:
        add("name", b.name)
    if b.input is not None:
        parts.append(b'"input":' + (b"null" if b.input_null else _ordered_json(b.input)))
    if b.tool_use_id:
        add("tool_use_id", b.tool_use_id)
    if b.content is not None:
        add("content", b.content)
    if b.is_error:
        add("is_error", True)
    if b.thinking is not None:
        add("thinking", b.thinking)
    if b.signature:
        add("signature", b.signature)
    return b"{" + b",".join(parts) + b"}"


def _ordered_json(args: dict[str, Any]) -> bytes:
    """Tool arguments as Ollama's ordered map writes them: its own keys in order, nested
    objects (plain Go maps) sorted."""
    items = (
        go_json(str(k), newline=False) + b":" + go_json(v, sort_keys=True, newline=False)
        for k, v in args.items()
    )
    return b"{" + b",".join(items) + b"}"
