"""Splitting a model's output into thinking and content, as the text streams.

Thinking models wrap their reasoning in tags (`<think>`...`</think>` for most). When the
prompt already ends with the opening tag, the output starts inside the thinking part.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_OPEN = "<think>"
DEFAULT_CLOSE = "</think>"


@dataclass(slots=True)
class ThinkingSplitter:
    """Feed output text; get (thinking, content) that is safe to emit now."""

    open_tag: str = DEFAULT_OPEN
    close_tag: str = DEFAULT_CLOSE
    thinking: bool = False  # currently inside the thinking part
    _held: str = ""
    _done: bool = False  # thinking finished: everything else is content
    _trim: bool = False  # drop whitespace right after a tag, however it is split up

    def __post_init__(self) -> None:
        self._trim = self.thinking

    def feed(self, text: str) -> tuple[str, str]:
        buf = self._held + text
        self._held = ""
        thought: list[str] = []
        content: list[str] = []
        while buf:
            if self._trim:
                buf = buf.lstrip()
                if not buf:
                    break
                self._trim = False
            if self._done:
                content.append(buf)
                break
            if self.thinking:
                i = buf.find(self.close_tag)
                if i < 0:
                    keep = _partial(buf, self.close_tag)
                    thought.append(buf[: len(buf) - keep])
                    self._held = buf[len(buf) - keep :]
                    break
                thought.append(buf[:i])
                buf = buf[i + len(self.close_tag) :]
                self.thinking = False
                self._done = self._trim = True
                continue
            # Not thinking yet: the opening tag may only come first (after whitespace).
            stripped = buf.lstrip()
            if not stripped:
                self._held = buf
                break
            if stripped.startswith(self.open_tag):
                self.thinking = self._trim = True
                buf = stripped[len(self.open_tag) :]
                continue
            if self.open_tag.startswith(stripped):
                self._held = buf  # could still become the opening tag
                break
            self._done = True
        return "".join(thought), "".join(content)

    def flush(self) -> tuple[str, str]:
        """What is held back at the end of the output."""
        held, self._held = self._held, ""
        return (held, "") if self.thinking else ("", held)


def _partial(buf: str, tag: str) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(buf)), 0, -1):
        if buf.endswith(tag[:n]):
            return n
    return 0
