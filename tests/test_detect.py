"""Template detection: Ollama's choice for every GGUF chat template in its own test corpus."""

from __future__ import annotations

import os
import random
from pathlib import Path

import orjson
import pytest

from bridge.templates.detect import detect, levenshtein

CORPUS = (
    Path(os.environ.get("BRIDGE_OLLAMA_TEMPLATES", "/work/shared/ollama-templates"))
    / "detect"
    / "templates.jsonl"
)


def _cases() -> list[tuple[str, str]]:
    if not CORPUS.exists():
        return []
    out = []
    for line in CORPUS.read_text().splitlines():
        for name, template in orjson.loads(line).items():
            out.append((name, template))
    return out


def _reference(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


def test_levenshtein_matches_the_textbook_algorithm() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a = "".join(rng.choice("abcé") for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice("abcdé") for _ in range(rng.randint(0, 40)))
        assert levenshtein(a, b) == _reference(a, b)


@pytest.mark.skipif(not CORPUS.exists(), reason="template corpus not available")
@pytest.mark.parametrize(("name", "template"), _cases())
def test_detects_what_ollama_detects(name: str, template: str) -> None:
    found = detect(template)
    assert found is not None and found.name == name
    assert found.template.strip()


def test_unrelated_templates_match_nothing() -> None:
    assert detect("{{ messages | tojson }}" * 20) is None


def test_chatml_comes_with_its_stop_list() -> None:
    found = detect(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    assert found is not None and found.name == "chatml"
    assert found.stop == ("<|im_start|>", "<|im_end|>")
