"""Thinking text split from content, in one piece and streamed in fragments."""

from __future__ import annotations

import pytest

from bridge.templates.thinking import ThinkingSplitter

CASES = [
    ("<think>plan it</think>The answer.", False, ("plan it", "The answer.")),
    ("  <think>\nplan\n</think>\n\nAnswer", False, ("plan\n", "Answer")),
    ("\nplan it</think>Answer", True, ("plan it", "Answer")),  # prompt ended with <think>
    ("No thinking here <think>x</think>", False, ("", "No thinking here <think>x</think>")),
    ("<think>never closed", False, ("never closed", "")),
    ("<thi", False, ("", "<thi")),
]


def run(text: str, start_thinking: bool, sizes: int) -> tuple[str, str]:
    s = ThinkingSplitter(thinking=start_thinking)
    thought, content = "", ""
    for i in range(0, len(text), sizes):
        t, c = s.feed(text[i : i + sizes])
        thought, content = thought + t, content + c
    t, c = s.flush()
    return thought + t, content + c


@pytest.mark.parametrize(("text", "start", "expected"), CASES)
@pytest.mark.parametrize("size", [1, 2, 3, 1000])
def test_split(text: str, start: bool, expected: tuple[str, str], size: int) -> None:
    assert run(text, start, size) == expected
