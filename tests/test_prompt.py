"""Chat rendering and Ollama's history truncation."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.domain import Message
from bridge.templates.prompt import PromptTemplate, fit_chat, render_chat


def render(msgs: Sequence[Message]) -> str:
    return " ".join(f"{m.role}:{m.content}" for m in msgs)


async def words(text: str) -> int:
    return len(text.split())


HISTORY = [
    Message("system", "be brief"),
    Message("user", "one"),
    Message("assistant", "two"),
    Message("system", "and kind"),
    Message("user", "three"),
    Message("assistant", "four"),
    Message("user", "five"),
]


async def test_everything_fits() -> None:
    assert await fit_chat(render, words, HISTORY, 100) == render(HISTORY)


async def test_oldest_dropped_systems_and_last_kept() -> None:
    # Six words fit: both system messages, then the newest turns that fit.
    out = await fit_chat(render, words, HISTORY, 6)
    assert out == "system:be brief system:and kind assistant:four user:five"


async def test_last_message_kept_even_when_too_long() -> None:
    out = await fit_chat(render, words, HISTORY, 1)
    assert out == "system:be brief system:and kind user:five"


def test_no_template_concatenates_without_system() -> None:
    msgs = [Message("system", "s"), Message("user", "a"), Message("assistant", "b")]
    assert render_chat(PromptTemplate(chat_template=None), msgs) == "ab"
