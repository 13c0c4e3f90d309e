"""Turning a conversation into the prompt text a model continues.

For now the GGUF chat template (Jinja) renders chats; Ollama's Go template layer is a later
step and will slot in here, choosing the renderer as Ollama does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
