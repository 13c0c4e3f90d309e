"""Choosing Ollama's bundled Go template for a GGUF chat template, as `ollama create` does.

Ollama (`template.Named`) compares the GGUF `tokenizer.chat_template` with the Jinja template of
each entry of its `index.json` by Levenshtein distance (over code points) and takes the first
entry with the smallest distance, if that distance is below 100. The chosen template's `.gotmpl`
text becomes the model's template layer and its `.json` (a `stop` list) its params layer.

The distance uses Myers' bit-parallel algorithm on Python integers (one pass over the longer
string), and entries whose length alone puts them out of reach are skipped, so detection stays
in the milliseconds even for templates several kilobytes long.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

__all__ = ["NamedTemplate", "detect", "levenshtein"]

MAX_DISTANCE = 100  # Ollama accepts a match only below this


@dataclass(frozen=True, slots=True)
class NamedTemplate:
    """One of Ollama's bundled templates."""

    name: str
    jinja: str  # the representative GGUF template from index.json
    template: str  # the Go template text (.gotmpl), line endings normalised
    stop: tuple[str, ...] | None  # from NAME.json; None when there is no such file


def levenshtein(a: str, b: str) -> int:
    """Edit distance between `a` and `b` (insertions, deletions, substitutions of code points)."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << m) - 1
    high = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


@functools.cache
def _templates() -> tuple[NamedTemplate, ...]:
    root = resources.files("bridge.templates") / "bundled"
    index = json.loads((root / "index.json").read_text(encoding="utf-8"))
    out: list[NamedTemplate] = []
    for entry in index:
        name = entry["name"]
        text = (root / f"{name}.gotmpl").read_bytes().replace(b"\r\n", b"\n").decode("utf-8")
        params = root / f"{name}.json"
        stop: tuple[str, ...] | None = None
        if params.is_file():
            stop = tuple(json.loads(params.read_text(encoding="utf-8")).get("stop") or ())
        out.append(NamedTemplate(name=name, jinja=entry["template"], template=text, stop=stop))
    return tuple(out)


def detect(chat_template: str) -> NamedTemplate | None:
    """The bundled template Ollama picks for this GGUF chat template, or None."""
    best: NamedTemplate | None = None
    score = MAX_DISTANCE  # only strictly smaller distances can win, as in Ollama
    for t in _templates():
        if abs(len(chat_template) - len(t.jinja)) >= score:
            continue  # the distance is at least the length difference
        d = levenshtein(chat_template, t.jinja)
        if d < score:
            score, best = d, t
    return best
