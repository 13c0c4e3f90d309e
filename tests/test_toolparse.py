"""Tool-call parsing on the Go-template path (bridge.templates.toolparse)."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest

from bridge.templates.toolparse import (
    ParsedCall,
    ToolParser,
    _JsonScan,
    new_call_id,
    parse_all,
    tool_tag,
)

CORPUS = Path(os.environ.get("BRIDGE_OLLAMA_TEMPLATES", "/work/shared/ollama-templates"))
TOOLS_DIR = CORPUS / "tools"

WEATHER = ["get_current_weather"]
TOOLS = ["get_temperature", "get_conditions", "say_hello", "say_hello_world", "get_address", "add"]


def _corpus() -> dict[str, Any]:
    path = TOOLS_DIR / "parse_cases.json"
    if not path.is_file():
        pytest.skip(f"template corpus not found at {CORPUS} (set BRIDGE_OLLAMA_TEMPLATES)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _corpus_cases() -> list[Any]:
    path = TOOLS_DIR / "parse_cases.json"
    if not path.is_file():
        return [pytest.param(None, id="corpus-missing")]
    cases = json.loads(path.read_text())["cases"]
    return [pytest.param(c, id=f"{i}-{c['model']}") for i, c in enumerate(cases)]


def _template_tag(model: str) -> str:
    return tool_tag((TOOLS_DIR / f"{model}.gotmpl").read_text())


def _shape(calls: list[ParsedCall]) -> list[tuple[str, list[tuple[str, Any]], int]]:
    """Calls with argument order made visible."""
    return [(c.name, list(c.arguments.items()), c.index) for c in calls]


def _stream(text: str, tag: str, names: list[str], cuts: list[int]) -> tuple[str, list[ParsedCall]]:
    parser = ToolParser(tag, names)
    content: list[str] = []
    calls: list[ParsedCall] = []
    start = 0
    for cut in [*cuts, len(text)]:
        piece, got = parser.feed(text[start:cut])
        content.append(piece)
        calls.extend(got)
        start = cut
    piece, got = parser.finish()
    return "".join(content) + piece, calls + got


def _random_cuts(rng: random.Random, n: int) -> list[int]:
    if n < 2:
        return []
    return sorted(rng.sample(range(1, n), rng.randint(0, min(n - 1, 40))))


def _assert_streams_like_one_shot(text: str, tag: str, names: list[str], seed: int = 0) -> None:
    expected = parse_all(text, tag, names)
    rng = random.Random(seed)
    splits = [list(range(1, len(text))), []] + [_random_cuts(rng, len(text)) for _ in range(60)]
    for cuts in splits:
        content, calls = _stream(text, tag, names, cuts)
        assert content == expected[0], cuts
        assert _shape(calls) == _shape(expected[1]), cuts


# ---------------------------------------------------------------------------------------------
# The tag
# ---------------------------------------------------------------------------------------------

CORPUS_TAGS = {
    "command-r-plus": "Action: ```json\n[",
    "firefunction": "functools[",
    "llama3-groq-tool-use": "<tool_call>",
    "mistral": "[TOOL_CALLS] [",
    "nemotron": "<toolcall>",
    "xlam": "### Response:",
}


@pytest.mark.parametrize(("model", "tag"), sorted(CORPUS_TAGS.items()))
def test_tool_tag_of_corpus_templates(model: str, tag: str) -> None:
    _corpus()
    assert _template_tag(model) == tag


def test_tool_tag_of_bundled_templates() -> None:
    _corpus()
    for path in sorted((CORPUS / "bundled").glob("*.gotmpl")):
        want = "Action: ```json\n[" if path.stem == "command-r" else "{"
        assert tool_tag(path.read_text()) == want, path.name


# Ollama's own TestParseTag table (tools/template_test.go), plus cases for its quirks.
PARSE_TAG_CASES = [
    ("", "{"),
    ("{{if .ToolCalls}}{{end}}", "{"),
    ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}{{end}}", "{"),
    ("{{if .ToolCalls}}```json\n{{end}}", "```json"),
    ("{{if .ToolCalls}}[{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
    ("{{if .ToolCalls}}\n [ {{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
    ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "{"),
    ("{{if .ToolCalls}} {{range .ToolCalls}}{{ . }}{{end}}{{end}}", "{"),
    ("{{if .ToolCalls}}{{range .ToolCalls}}\n{{ . }}\n{{end}}{{end}}", "{"),
    (
        '{{if .ToolCalls}}{{range .ToolCalls}}{"name": "{{ .Function.Name }}", '
        '"arguments": {{ .Function.Arguments }}}{{end}}{{end}}',
        "{",
    ),
    (
        '{{if .ToolCalls}}{{range .ToolCalls}}\r\n{"name": "{{ .Function.Name }}", '
        '"arguments": {{ .Function.Arguments }}}{{end}}{{end}}',
        "{",
    ),
    (
        '{{if .ToolCalls}}\n{{range .ToolCalls}}\n{"name": "{{ .Function.Name }}", '
        '"arguments": {{ .Function.Arguments }}}\r\n{{end}}\r\n{{end}}',
        "{",
    ),
    (
        "{{if .ToolCalls}}<|tool▁calls▁begin|>{{range .ToolCalls}}<|tool▁call▁begin|>function"
        '\n```json\n{"location": "Tokyo"}\n```<|tool▁call▁end|>\n{{end}}<|tool▁calls▁end|>{{end}}',
        "<|tool▁calls▁begin|>",
    ),
    (
        '{{if .ToolCalls}}{{range .ToolCalls}}<tool_call>{"name": "{{ .Function.Name }}"}'
        "</tool_call>{{end}}{{end}}",
        "<tool_call>",
    ),
    (
        '{{if .ToolCalls}}\n{{range .ToolCalls}}<tool_call>{"name": "{{ .Function.Name }}"}'
        "</tool_call>{{end}}{{end}}",
        "<tool_call>",
    ),
    ("{{if .ToolCalls}}First text{{if .Something}}inner{{end}}Second text{{end}}", "First text"),
    ("{{if .ToolCalls}}Action: ```json{{end}}", "Action: ```json"),
    ("{{if .ToolCalls}}functools[{{end}}", "functools["),
    ("{{if .ToolCalls}}[TOOL_CALL] [{{end}}", "[TOOL_CALL] ["),
    ("{{if .ToolCalls}}[TOOL_CALL][{{end}}", "[TOOL_CALL]["),
    # Trim markers, nesting and `else if`.
    ("{{- range .Messages }}{{- if .ToolCalls -}}\n  <tc>\n{{ end }}{{ end }}", "<tc>"),
    ("{{ if .X }}{{ else if .ToolCalls }}{{/* note */}} <b>{{ end }}", "<b>"),
    ("{{ with .X }}{{ if and .ToolCalls .Y }}<a>{{ end }}{{ end }}", "<a>"),
    ("{{ if .Message.ToolCalls }}<a>{{ end }}", "<a>"),
    ("{{ if not .ToolCalls }}<a>{{ end }}", "<a>"),  # Ollama only looks for the field
    # What Ollama does not count as `.ToolCalls`.
    ("{{ if $.ToolCalls }}<a>{{ end }}", "{"),
    ("{{ if gt (len .ToolCalls) 0 }}<a>{{ end }}", "{"),
    ("{{ range .ToolCalls }}<a>{{ end }}", "{"),
    (
        '{{ define "x" }}{{ if .ToolCalls }}<a>{{ end }}{{ end }}{{ if .ToolCalls }}<c>{{ end }}',
        "<c>",
    ),
    # The search stops at an action or at a block without text, but not at `continue`.
    ("{{ if .ToolCalls }}{{ $x := 1 }}<a>{{ end }}", "{"),
    ("{{ if .ToolCalls }}{{ if .A }}{{ end }}<a>{{ end }}", "{"),
    ("{{ if .ToolCalls }}{{ continue }}<a>{{ end }}", "<a>"),
    # `}}` inside a string does not end an action.
    ('{{ "}}" }}{{ if .ToolCalls }}<a>{{ end }}', "<a>"),
]


@pytest.mark.parametrize(("template", "tag"), PARSE_TAG_CASES)
def test_tool_tag(template: str, tag: str) -> None:
    assert tool_tag(template) == tag


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _corpus_cases())
def test_corpus_case_one_shot(case: dict[str, Any] | None) -> None:
    corpus = _corpus()
    assert case is not None
    content, calls = parse_all(case["output"], _template_tag(case["model"]), WEATHER)
    assert bool(calls) == case["parses"], content
    if case["parses"]:
        want = [
            (c["function"]["name"], list(c["function"]["arguments"].items()), i)
            for i, c in enumerate(corpus["expected_calls_when_parses"])
        ]
        assert _shape(calls) == want
    else:
        assert content == case["output"]  # nothing is lost when nothing parses


@pytest.mark.parametrize("case", _corpus_cases())
def test_corpus_case_streaming(case: dict[str, Any] | None) -> None:
    _corpus()
    assert case is not None
    _assert_streams_like_one_shot(case["output"], _template_tag(case["model"]), WEATHER)


def test_corpus_content_around_calls() -> None:
    _corpus()
    cases = _corpus()["cases"]
    mistral_prose = next(c for c in cases if c["output"].startswith("I'm not aware"))
    content, calls = parse_all(mistral_prose["output"], _template_tag("mistral"), WEATHER)
    assert len(calls) == 2
    assert content == mistral_prose["output"][: mistral_prose["output"].index("[{")]
    # Text after the calls in the tag's region is dropped, as Ollama drops it.
    trailing = next(c for c in cases if "The temperature in" in c["output"])
    assert parse_all(trailing["output"], _template_tag("mistral"), WEATHER)[0] == ""


def test_corpus_case_refused_with_a_brace_tag_when_text_comes_first() -> None:
    """The newer rule: with `{` as the tag, the mistral reply with prose first is content."""
    cases = _corpus()["cases"]
    prose_first = next(c for c in cases if c["output"].startswith("I'm not aware"))
    assert parse_all(prose_first["output"], "{", WEATHER) == (prose_first["output"], [])
    assert parse_all(prose_first["output"], "[", WEATHER) == (prose_first["output"], [])


# ---------------------------------------------------------------------------------------------
# Brace tags
# ---------------------------------------------------------------------------------------------

CALL = '{"name": "get_temperature", "arguments": {"city": "Tokyo", "format": "celsius"}}'
TOKYO = ("get_temperature", [("city", "Tokyo"), ("format", "celsius")], 0)


@pytest.mark.parametrize("tag", ["{", "["])
@pytest.mark.parametrize(
    "text",
    [
        f"Sure! {CALL}",
        f"Let me check. [{CALL}]",
        f"```json\n{CALL}\n```",
        f"<tool_call>{CALL}</tool_call>",
    ],
)
def test_content_before_brace_tag_disables_parsing(tag: str, text: str) -> None:
    assert parse_all(text, tag, TOOLS) == (text, [])
    _assert_streams_like_one_shot(text, tag, TOOLS)


@pytest.mark.parametrize("tag", ["{", "["])
@pytest.mark.parametrize("text", [CALL, f"  \n{CALL}", f"[{CALL}]", f"{CALL}\n\nDone."])
def test_brace_tag_calls(tag: str, text: str) -> None:
    content, calls = parse_all(text, tag, TOOLS)
    assert _shape(calls) == [TOKYO]
    assert content == text[: len(text) - len(text.lstrip())]  # leading whitespace only
    _assert_streams_like_one_shot(text, tag, TOOLS)


def test_brace_tag_several_calls() -> None:
    second = '{"name": "get_conditions", "parameters": {"location": "Paris"}}'
    for text in (f"{CALL}\n{second}", f"[{CALL}, {second}]", f"{CALL}{second}"):
        content, calls = parse_all(text, "{", TOOLS)
        assert content == ""
        assert _shape(calls) == [TOKYO, ("get_conditions", [("location", "Paris")], 1)]
        _assert_streams_like_one_shot(text, "{", TOOLS)


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "jeff"}' + CALL,  # the first value is not a call: the reply is content
        '{"name": "search", "arguments": {"query": "capital of Canada"}}',
        'for { fmt.Println("hello") }',
        "[special delivery]",
        '{"a": 1} and more',
    ],
)
def test_brace_tag_non_calls_are_content(text: str) -> None:
    assert parse_all(text, "{", TOOLS) == (text, [])
    _assert_streams_like_one_shot(text, "{", TOOLS)


def test_brace_tag_releases_non_json_at_once() -> None:
    parser = ToolParser("{", TOOLS)
    assert parser.feed("  ") == ("  ", [])
    assert parser.feed("{") == ("", [])  # might be a call
    assert parser.feed("x") == ("{x", [])  # cannot be JSON: parsing is off
    assert parser.feed(CALL) == (CALL, [])
    assert parser.finish() == ("", [])


# ---------------------------------------------------------------------------------------------
# Named tags
# ---------------------------------------------------------------------------------------------

QWEN = "<tool_call>"


def test_named_tag_text_before_and_calls() -> None:
    text = (
        "Okay, both! <tool_call>"
        '{"name": "get_temperature", "arguments": {"city": "London", "format": "fahrenheit"}}'
        '</tool_call><tool_call>{"name": "get_conditions", "arguments": {"location": "Tokyo"}}'
        "</tool_call>"
    )
    content, calls = parse_all(text, QWEN, TOOLS)
    assert content == "Okay, both! "
    assert _shape(calls) == [
        ("get_temperature", [("city", "London"), ("format", "fahrenheit")], 0),
        ("get_conditions", [("location", "Tokyo")], 1),
    ]
    _assert_streams_like_one_shot(text, QWEN, TOOLS)


def test_named_tag_whitespace_is_flexible() -> None:
    for text in (f"[TOOL_CALLS][{CALL}]", f"[TOOL_CALLS]\n  [{CALL}]", f"[TOOL_CALLS] [{CALL}]"):
        assert parse_all(text, "[TOOL_CALLS] [", TOOLS) == ("", parse_all(CALL, "{", TOOLS)[1])


def test_named_tag_array_is_one_unit() -> None:
    """Calls inside an array count only once the array is complete and valid (corpus case)."""
    text = f'[TOOL_CALLS] [{CALL}, {{"name": "get_conditions", "arguments": {{"location": "To'
    assert parse_all(text, "[TOOL_CALLS] [", TOOLS) == (text, [])
    _assert_streams_like_one_shot(text, "[TOOL_CALLS] [", TOOLS)


def test_named_tag_region_without_calls_is_content() -> None:
    for text in (
        "I will use the <tool_call> tag later, maybe.",
        '<tool_call>{"name": "search", "arguments": {}}</tool_call> then text',
        "<tool_call> not json at all",
    ):
        assert parse_all(text, QWEN, TOOLS) == (text, [])
        _assert_streams_like_one_shot(text, QWEN, TOOLS)


def test_named_tag_partial_tag_is_held_then_released() -> None:
    parser = ToolParser(QWEN, TOOLS)
    assert parser.feed("Hello <tool") == ("Hello ", [])
    assert parser.feed("box> world") == ("<toolbox> world", [])
    assert parser.feed(" <tool_") == (" ", [])
    assert parser.finish() == ("<tool_", [])


def test_named_tag_prose_with_brackets_is_released_early() -> None:
    parser = ToolParser(QWEN, TOOLS)
    assert parser.feed("See [the docs](http://x) and {curly} or [1, 2") == (
        "See [the docs](http://x) and {curly} or ",
        [],
    )
    assert parser.feed("] ok") == ("[1, 2] ok", [])  # valid JSON, but no call
    assert parser.finish() == ("", [])


def test_named_tag_bare_json_calls_count_before_the_tag() -> None:
    """Models drop the tag, or the prompt already ends with it (xlam's `### Response:`)."""
    text = f"Calling now: {CALL}"
    content, calls = parse_all(text, QWEN, TOOLS)
    assert content == "Calling now: "
    assert _shape(calls) == [TOKYO]
    text = f'{{"tool_calls": [{CALL}]}}'
    assert _shape(parse_all(text, "### Response:", TOOLS)[1]) == [TOKYO]


def test_named_tag_name_outside_the_json() -> None:
    """Ollama reads `<|tool▁sep|>NAME ```json {args}```` as a call to NAME."""
    tag = "<|tool▁calls▁begin|>"
    text = (
        "<think>Wait</think><|tool▁calls▁begin|><|tool▁call▁begin|>function<|tool▁sep|>"
        'say_hello_world\n```json\n{"city": "Tokyo"}\n```<|tool▁call▁end|>'
        "<|tool▁call▁begin|>function<|tool▁sep|>say_hello\n```json\n{}\n```<|tool▁call▁end|>"
        "<|tool▁calls▁end|>"
    )
    content, calls = parse_all(text, tag, TOOLS)
    assert content == "<think>Wait</think>"
    assert _shape(calls) == [("say_hello_world", [("city", "Tokyo")], 0), ("say_hello", [], 1)]
    _assert_streams_like_one_shot(text, tag, TOOLS)


# ---------------------------------------------------------------------------------------------
# Call shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        '{"name": "add", "arguments": {"b": 2, "a": 1}}',
        '{"arguments": {"b": 2, "a": 1}, "name": "add"}',
        '{"name": "add", "parameters": {"b": 2, "a": 1}}',
        '{"tool_name": "add", "parameters": {"b": 2, "a": 1}}',
        '{"name": "add", "arguments": "{\\"b\\": 2, \\"a\\": 1}"}',
        '{"type": "function", "function": {"name": "add", "arguments": {"b": 2, "a": 1}}}',
        '{"add": {"b": 2, "a": 1}}',
        '{"tool_calls": [{"id": "x", "function": {"name": "add", "arguments": {"b": 2, "a": 1}}}]}',
    ],
)
def test_call_shapes(value: str) -> None:
    assert _shape(parse_all(value, "{", TOOLS)[1]) == [("add", [("b", 2), ("a", 1)], 0)]


def test_unknown_tool_names_are_not_calls() -> None:
    for tag in ("{", QWEN):
        text = '{"name": "rm_rf", "arguments": {"path": "/"}}'
        assert parse_all(text, tag, TOOLS) == (text, [])
        mixed = f'[{{"name": "rm_rf", "arguments": {{}}}}, {CALL}]'
        assert _shape(parse_all(mixed, tag, TOOLS)[1]) == [TOKYO]
    # A call-shaped object naming an unknown tool is not searched for nested calls.
    nested = '{"name": "wrapper", "arguments": {"inner": ' + CALL + "}}"
    assert parse_all(nested, "{", TOOLS) == (nested, [])


def test_without_arguments_it_is_not_a_call() -> None:
    text = '{"name": "say_hello"}'
    assert parse_all(text, "{", TOOLS) == (text, [])


def test_no_tools_means_no_parsing() -> None:
    assert parse_all(CALL, "{", []) == (CALL, [])
    assert ToolParser("{", []).feed(CALL[:5]) == (CALL[:5], [])


def test_argument_values() -> None:
    text = (
        '{"name": "add", "arguments": {"i": 7, "f": 7.0, "e": 1e3, "x": 1.5, "big": 1e300, '
        '"n": null, "t": true, "s": "\\u00e9\\n", "l": [1, {"k": []}], "neg": -0.25}}'
    )
    (call,) = parse_all(text, "{", TOOLS)[1]
    assert call.arguments == {
        "i": 7,
        "f": 7,
        "e": 1000,
        "x": 1.5,
        "big": 1e300,
        "n": None,
        "t": True,
        "s": "é\n",
        "l": [1, {"k": []}],
        "neg": -0.25,
    }
    assert type(call.arguments["f"]) is int  # Go writes 7.0 back as 7


# ---------------------------------------------------------------------------------------------
# Incomplete and invalid text at the end
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "text"),
    [
        ("{", '{"name": "get_temperature", "arguments": {"city": "Tok'),
        ("{", "  " + CALL[:-1]),
        ("[", f"[{CALL}"),
        (QWEN, '<tool_call>{"name": "get_temperature", "arguments": {'),
        (QWEN, 'Look: {"name": "get_temperature", "arguments": {"city": '),
        ("functools[", f"functools[{CALL}, {CALL}"),
    ],
)
def test_incomplete_json_at_the_end_returns_as_content(tag: str, text: str) -> None:
    assert parse_all(text, tag, TOOLS) == (text, [])
    parser = ToolParser(tag, TOOLS)
    streamed = parser.feed(text)
    assert streamed[1] == []
    assert streamed[0] + parser.finish()[0] == text
    _assert_streams_like_one_shot(text, tag, TOOLS)


def test_invalid_json_after_calls_is_dropped() -> None:
    text = f"<tool_call>{CALL}</tool_call><tool_call>{{broken"
    assert _shape(parse_all(text, QWEN, TOOLS)[1]) == [TOKYO]
    assert parse_all(text, QWEN, TOOLS)[0] == ""


def test_calls_arrive_as_soon_as_complete() -> None:
    parser = ToolParser(QWEN, TOOLS)
    assert parser.feed("Hi <tool_call>") == ("Hi ", [])
    assert parser.feed(CALL[:-1]) == ("", [])
    content, calls = parser.feed(CALL[-1] + "</tool")
    assert (content, _shape(calls)) == ("", [TOKYO])
    assert parser.calls_found
    assert parser.feed("_call> bye") == ("", [])
    assert parser.finish() == ("", [])


def test_feed_after_finish_raises() -> None:
    parser = ToolParser("{", TOOLS)
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


# ---------------------------------------------------------------------------------------------
# Streaming equals one-shot on generated replies
# ---------------------------------------------------------------------------------------------

_PIECES = [
    CALL,
    f"[{CALL}]",
    '{"name": "unknown", "arguments": {}}',
    '{"a": [1, 2.5e-3, "x}]"]}',
    "{broken",
    "[link](x)",
    "<tool_call>",
    "</tool_call>",
    "<tool",
    "[TOOL_CALLS]",
    " [",
    "{",
    "]",
    "}",
    '"',
    "\\",
    "plain words ",
    "\n",
    "  ",
    "say_hello",
    '{"city": "Oslo"}',
]


@pytest.mark.parametrize("tag", ["{", "[", QWEN, "[TOOL_CALLS] [", "Action: ```json\n["])
def test_streaming_equals_one_shot_on_random_replies(tag: str) -> None:
    rng = random.Random(f"{tag}-replies")
    for _ in range(150):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 8)))
        expected = parse_all(text, tag, TOOLS)
        for _ in range(8):
            content, calls = _stream(text, tag, TOOLS, _random_cuts(rng, len(text)))
            assert content == expected[0], text
            assert _shape(calls) == _shape(expected[1]), text
        if not expected[1]:
            assert expected[0] == text, text  # with no call, nothing is lost


# ---------------------------------------------------------------------------------------------
# The JSON scanner agrees with a JSON decoder
# ---------------------------------------------------------------------------------------------


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 12, 3.25, -0.5e-7, 1e22, 10**20])
    if kind in (2, 3, 4, 5):
        return "".join(rng.choice('ab"\\/\n\t\u00e9}]{[ ') for _ in range(rng.randrange(5)))
    if kind == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(rng.randrange(100)): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _scan(text: str) -> tuple[int, int]:
    scanner = _JsonScan(text[0])
    return scanner.scan(text, 1)


def test_json_scanner_matches_decoder() -> None:
    rng = random.Random(7)
    for _ in range(400):
        value = _random_json(rng)
        if not isinstance(value, (list, dict)):
            value = [value]
        text = json.dumps(value, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5)
        assert _scan(text + " tail") == (1, len(text)), text
        for cut in range(1, len(text)):
            status, _ = _scan(text[:cut])
            assert status == 0, text[:cut]  # a prefix of valid JSON is never refused
        # Mutations: whatever the scanner accepts, the decoder accepts, and the other way round.
        for _ in range(5):
            i = rng.randrange(1, len(text))
            mutated = text[:i] + rng.choice('x,:"{}[]0-.e \\') + text[i + 1 :]
            status, end = _scan(mutated)
            try:
                _, decoded_end = json.JSONDecoder(strict=True).raw_decode(mutated)
            except (ValueError, RecursionError):
                decoded_end = -1
            if status == 1:
                assert decoded_end == end, mutated
            else:
                assert decoded_end == -1, mutated


@pytest.mark.parametrize(
    "text",
    ['{"a": NaN}', '{"a": 01}', '{"a": 1.}', '{"a": .5}', '{"a": "\x01"}', "{'a': 1}", "[1,]"],
)
def test_json_scanner_refuses_what_go_refuses(text: str) -> None:
    assert _scan(text)[0] == 2


# ---------------------------------------------------------------------------------------------
# Ids
# ---------------------------------------------------------------------------------------------


def test_new_call_id() -> None:
    ids = {new_call_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"call_[a-z0-9]{8}", i) for i in ids)
