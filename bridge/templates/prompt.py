"""Turning a conversation into the prompt text a model continues, and reading its output back.

The renderer is chosen as Ollama chooses it: a request's `template`, else the model's Go
template layer, else the GGUF chat template (sandboxed Jinja), else `{{ .Prompt }}`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.domain import Message
from bridge.errors import InvalidRequest
from bridge.templates import jinja, ollama
from bridge.templates.gotemplate import TemplateError
from bridge.templates.thinking import DEFAULT_CLOSE, DEFAULT_OPEN
from bridge.templates.toolparse import tool_tag

FALLBACK = "{{ .Prompt }}"
_THINK_TAGS = re.compile(r"(<[^<>\s{}]+>)\s*\{\{-?\s*\.Thinking\s*-?\}\}\s*(</[^<>\s{}]+>)")


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """How a model's prompts are written: its Go template or GGUF chat template, and tokens."""

    go_template: str | None = None
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""

    @property
    def source(self) -> str:
        """The template text /api/show reports and capabilities are read from."""
        return self.go_template or self.chat_template or ""

    def uses(self, name: str) -> bool:
        """Whether the Go template uses `.Name` (Tools, Suffix, Thinking...)."""
        if self.go_template is None:
            return False
        try:
            return ollama.uses(self.go_template, name)
        except TemplateError:
            return False

    def tool_tag(self) -> str:
        if self.go_template is not None:
            return tool_tag(self.go_template)
        return "<tool_call>" if "<tool_call>" in (self.chat_template or "") else "{"

    def thinking_tags(self) -> tuple[str, str]:
        m = _THINK_TAGS.search(self.go_template or "")
        return (m.group(1), m.group(2)) if m else (DEFAULT_OPEN, DEFAULT_CLOSE)


def _go(call: Callable[[], str]) -> str:
    try:
        return call()
    except TemplateError as exc:
        raise InvalidRequest(f"template error: {exc}") from exc


def render_chat(
    template: PromptTemplate,
    messages: Sequence[Message],
    *,
    tools: Sequence[Mapping[str, Any]] = (),
    think: bool | str | None = None,
) -> str:
    if template.go_template is not None or not template.chat_template:
        src = template.go_template if template.go_template is not None else FALLBACK
        return _go(
            lambda: ollama.render_messages(
                src,
                messages=messages,
                tools=tools or None,
                think=think,
                is_think_set=think is not None,
            )
        )
    extra: dict[str, Any] = {}
    if think is not None:
        extra["enable_thinking"] = bool(think)
        if isinstance(think, str):
            extra["reasoning_effort"] = think
    return jinja.render(
        template.chat_template,
        [_jinja_message(m) for m in messages],
        bos_token=template.bos_token,
        eos_token=template.eos_token,
        tools=tools or None,
        extra=extra,
    )


def render_fim(template: PromptTemplate, prompt: str, suffix: str) -> str:
    """A fill-in-the-middle prompt (generate's `suffix`), for templates that use `.Suffix`."""
    src = template.go_template or FALLBACK
    return _go(lambda: ollama.render_generate(src, prompt=prompt, suffix=suffix))


def _jinja_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.thinking:
        out["reasoning_content"] = m.thinking
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
    fits = await count_tokens(prompt) + _images(messages) * image_tokens <= num_ctx
    if len(messages) <= 1 or fits:
        return prompt
    best = render(_with_systems(messages, len(messages) - 1))
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
