"""Reading a model's output back: thinking split from content, tool calls parsed out."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bridge.domain import Chunk, ToolCall
from bridge.templates.thinking import ThinkingSplitter
from bridge.templates.toolparse import ParsedCall, ToolParser, new_call_id


@dataclass(frozen=True, slots=True)
class OutputShape:
    """What to look for in the output: tool calls after `tool_tag`, thinking between tags."""

    tool_tag: str | None = None
    tool_names: tuple[str, ...] = ()
    thinking_tags: tuple[str, str] | None = None

    @property
    def active(self) -> bool:
        return self.tool_tag is not None or self.thinking_tags is not None


async def shape_output(
    stream: AsyncIterator[Chunk], shape: OutputShape, *, started_thinking: bool = False
) -> AsyncIterator[Chunk]:
    """The chunks of `stream` with `thinking` and `tool_calls` filled in from the text."""
    splitter = (
        ThinkingSplitter(*shape.thinking_tags, thinking=started_thinking)
        if shape.thinking_tags
        else None
    )
    tools = ToolParser(shape.tool_tag, shape.tool_names) if shape.tool_tag is not None else None
    try:
        async for chunk in stream:
            text, thinking = chunk.text, ""
            if splitter is not None:
                thinking, text = splitter.feed(text)
                if chunk.done:
                    t, c = splitter.flush()
                    thinking, text = thinking + t, text + c
            parsed: list[ParsedCall] = []
            if tools is not None and (text or chunk.done):
                text, parsed = tools.feed(text)
                if chunk.done:
                    rest, more = tools.finish()
                    text, parsed = text + rest, parsed + more
            calls = tuple(
                ToolCall(name=p.name, arguments=p.arguments, index=p.index, id=new_call_id())
                for p in parsed
            )
            if chunk.done or text or thinking or calls or chunk.logprobs:
                yield dataclasses.replace(chunk, text=text, thinking=thinking, tool_calls=calls)
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
