"""Turning a conversation into the prompt text a model continues.

For now the GGUF chat template (Jinja) renders chats; Ollama's Go template layer is a later
step and will slot in here, choosing the renderer as Ollama does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.domain import Message
from bridge.templates import jinja


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """What a model's files say about rendering: its GGUF chat template and special tokens."""

    chat_template: str | None
    bos_token: str = ""
    eos_token: str = ""


def render_chat(
    template: PromptTemplate,
    messages: Sequence[Message],
    *,
    tools: Sequence[Mapping[str, Any]] = (),
) -> str:
    if template.chat_template:
        return jinja.render(
            template.chat_template,
            [_jinja_message(m) for m in messages],
            bos_token=template.bos_token,
            eos_token=template.eos_token,
            tools=tools or None,
        )
    # No template at all: Ollama falls back to `{{ .Prompt }}{{ .Response }}` run per turn,
    # which drops system messages and concatenates the rest.
    return "".join(m.content for m in messages if m.role != "system")


def _jinja_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "type": "function",
                **({"id": c.id} if c.id else {}),
                "function": {"name": c.name, "arguments": dict(c.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.tool_name:
        out["name"] = m.tool_name
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


async def fit_chat(
    render: Callable[[Sequence[Message]], str],
    count_tokens: Callable[[str], Awaitable[int]],
    messages: Sequence[Message],
    num_ctx: int,
    *,
    image_tokens: int = 0,
) -> str:
    """The rendered chat, dropping the oldest messages until it fits in `num_ctx` (Ollama's
    truncation): system messages are never dropped and the last message is always kept, even
    when it alone does not fit (the engine then shortens the prompt itself)."""
    prompt = render(messages)
    if (
        len(messages) <= 1
        or await count_tokens(prompt) + _images(messages) * image_tokens <= num_ctx
    ):
        return prompt
    keep_from = len(messages) - 1
    best = render(_with_systems(messages, keep_from))
    for i in range(len(messages) - 2, -1, -1):
        candidate = _with_systems(messages, i)
        text = render(candidate)
        if await count_tokens(text) + _images(candidate) * image_tokens > num_ctx:
            break
        best = text
    return best


def _with_systems(messages: Sequence[Message], start: int) -> list[Message]:
    return [m for m in messages[:start] if m.role == "system"] + list(messages[start:])


def _images(messages: Sequence[Message]) -> int:
    return sum(len(m.images) for m in messages)
