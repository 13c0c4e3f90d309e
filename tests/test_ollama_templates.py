"""Ollama's template layer: the whole template corpus byte for byte, and Ollama's own cases.

The corpus (`$BRIDGE_OLLAMA_TEMPLATES`, default /work/shared/ollama-templates) holds Ollama's
bundled templates with the prompts Ollama renders from them; the other cases follow Ollama's
template tests (legacy turns, FIM, Vars, collation, tool values).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.domain import Message, ToolCall
from bridge.templates.gotemplate import TemplateExecError, TemplateSyntaxError
from bridge.templates.ollama import (
    parse,
    render_generate,
    render_messages,
    template_vars,
    uses,
)

CORPUS = Path(os.environ.get("BRIDGE_OLLAMA_TEMPLATES", "/work/shared/ollama-templates"))
# Ollama's own test trims one trailing space from these renderings before comparing.
TRIMMED = {"chatqa", "llama2-chat", "mistral-instruct", "openchat", "vicuna"}


def _expected_cases() -> list[tuple[str, str]]:
    root = CORPUS / "expected"
    if not root.is_dir():
        return []
    return [(d.name, f.name) for d in sorted(root.glob("*.gotmpl")) for f in sorted(d.iterdir())]


def _tool_cases() -> list[str]:
    root = CORPUS / "tools"
    return [p.name for p in sorted(root.glob("*.gotmpl"))] if root.is_dir() else []


def _need_corpus() -> None:
    if not (CORPUS / "expected" / "cases.json").is_file():
        pytest.skip(f"template corpus not found at {CORPUS} (set BRIDGE_OLLAMA_TEMPLATES)")


@pytest.mark.parametrize(("template", "case"), _expected_cases())
def test_bundled_template_renders_as_ollama(template: str, case: str) -> None:
    _need_corpus()
    cases = json.loads((CORPUS / "expected" / "cases.json").read_text())
    src = (CORPUS / "bundled" / template).read_text()
    got = render_messages(src, messages=cases[case])
    if template.removesuffix(".gotmpl") in TRIMMED and got.endswith(" "):
        got = got[:-1]
    assert got == (CORPUS / "expected" / template / case).read_text()


@pytest.mark.parametrize("template", _tool_cases())
def test_tool_template_renders_as_ollama(template: str) -> None:
    _need_corpus()
    tools_dir = CORPUS / "tools"
    messages = json.loads((tools_dir / "messages.json").read_text())
    tools = json.loads((tools_dir / "tools.json").read_text())
    got = render_messages((tools_dir / template).read_text(), messages=messages, tools=tools)
    assert got == (tools_dir / template).with_suffix(".out").read_text()


def test_the_corpus_is_all_there() -> None:
    _need_corpus()
    assert len(_expected_cases()) == 60
    assert len(_tool_cases()) == 6


def test_bundled_templates_render_fast() -> None:
    _need_corpus()
    messages = json.loads((CORPUS / "expected" / "cases.json").read_text())[
        "system-user-assistant-user"
    ]
    sources = [p.read_text() for p in sorted((CORPUS / "bundled").glob("*.gotmpl"))]
    for src in sources:
        render_messages(src, messages=messages)  # parse once (cached)
    start = time.perf_counter()
    for _ in range(20):
        for src in sources:
            render_messages(src, messages=messages)
    mean = (time.perf_counter() - start) / (20 * len(sources))
    assert mean < 0.002  # about 50 µs here; a loose bound that still catches a blow-up


# -- Ollama's template tests --------------------------------------------------------------------

CHAT = [
    {"role": "user", "content": "Hello friend!"},
    {"role": "assistant", "content": "Hello human!"},
    {"role": "user", "content": "What is your name?"},
]
SYSTEM = {"role": "system", "content": "You are a helpful assistant!"}

MISTRAL_LEGACY = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
MISTRAL_MESSAGES = (
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}'
    "{{ .Content }}[INST] {{ end }}\n{{- end }}"
)


@pytest.mark.parametrize(
    "src", [MISTRAL_LEGACY, MISTRAL_LEGACY + "{{ .Response }}", MISTRAL_MESSAGES]
)
def test_legacy_and_messages_templates_agree(src: str) -> None:
    want = "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
    assert render_messages(src, messages=CHAT) == want
    with_system = render_messages(src, messages=[SYSTEM, *CHAT])
    assert with_system == want.replace("[INST] ", "[INST] You are a helpful assistant!\n\n", 1)


def test_legacy_continues_a_started_assistant_reply() -> None:
    chat = [*CHAT, {"role": "assistant", "content": "My name is Ollama and I"}]
    want = "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I"
    for src in ("[INST] {{ .Prompt }}[/INST] ", "[INST] {{ .Prompt }}[/INST] {{ .Response }}"):
        assert render_messages(src, messages=chat) == want


def test_legacy_cuts_the_last_turn_after_response() -> None:
    src = (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
    )
    assert render_messages(src, messages=[SYSTEM, *CHAT]) == (
        "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n"
        "<|im_start|>user\nHello friend!<|im_end|>\n"
        "<|im_start|>assistant\nHello human!<|im_end|>\n"
        "<|im_start|>user\nWhat is your name?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_legacy_runs_its_last_turn_as_a_bare_go_template() -> None:
    # Ollama executes the cut tree with template.New("").AddParseTree: no extra functions.
    assert render_messages("{{ .Prompt }}{{ .Response }}", messages=CHAT) == (
        "Hello friend!Hello human!What is your name?"
    )
    with pytest.raises(TemplateExecError, match='"json" is not a defined function'):
        render_messages("{{ json .Prompt }}{{ .Response }}", messages=CHAT)


def test_a_response_inside_a_branch_with_else_fails_as_in_ollama() -> None:
    with pytest.raises(TemplateExecError):
        render_messages(
            "{{ if .Prompt }}{{ .Prompt }}{{ .Response }}{{ else }}x{{ end }}", messages=CHAT
        )


def test_fim_gets_prompt_and_suffix() -> None:
    src = (
        "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n"
        "{{- else }}{{ .Prompt }}\n{{- end }}"
    )
    assert render_messages(src, messages=[{"role": "user", "content": "hello"}]) == "hello"
    assert render_generate(src, prompt="def add(", suffix="return x") == (
        "<PRE> def add( <SUF>return x <MID>"
    )
    assert uses(src, "Suffix")


@pytest.mark.parametrize(
    ("src", "want"),
    [
        ("{{ .Prompt }}", ["prompt", "response"]),
        ("{{ .System }} {{ .Prompt }}", ["prompt", "response", "system"]),
        (
            "{{ with .Tools }}{{ . }}{{ end }} {{ .System }} {{ .Prompt }}",
            ["prompt", "response", "system", "tools"],
        ),
        (
            "{{ range .Messages }}{{ .Role }} {{ .Content }}{{ end }}",
            ["content", "messages", "role"],
        ),
        (
            '{{ range .Messages }}{{ if eq .Role "tool" }}{{ .ToolName }}{{ end }}{{ end }}',
            ["messages", "role", "toolname"],
        ),
        ("{{ range $.Messages }}{{ end }}", ["$", "messages"]),
    ],
)
def test_vars_as_ollama_lists_them(src: str, want: list[str]) -> None:
    assert sorted(template_vars(src)) == want


def test_uses_names_capabilities() -> None:
    src = "{{ range .Messages }}{{ if .ToolCalls }}x{{ end }}{{ end }}{{ if .Tools }}{{ .Tools }}{{ end }}"
    assert uses(src, "Tools") and uses(src, "Messages") and uses(src, "toolcalls")
    assert not uses(src, "Suffix") and not uses(src, "Response")
    assert uses("{{ .Prompt }}", "Response")  # appended by Ollama


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("{{ .Prompt ", "unclosed action"),
        ('{{define "x"}}{{template "x"}}{{end}}{{template "x"}}', "undefined template specified"),
        ("{{ .Prompt }", 'unexpected "}" in operand'),
    ],
)
def test_parse_errors(src: str, message: str) -> None:
    with pytest.raises(TemplateSyntaxError, match=message):
        parse(src)


def test_date_functions() -> None:
    today = datetime.date.today()
    src = "{{- range .Messages }}{{ .Content }}{{ end }} {{ currentDate }} {{ yesterdayDate }}"
    out = render_messages(src, messages=[{"role": "user", "content": "Hello"}])
    assert out == f"Hello {today.isoformat()} {(today - datetime.timedelta(days=1)).isoformat()}"


def test_collation_merges_same_roles_but_not_tools() -> None:
    src = "{{ .System }}|{{ range .Messages }}{{ .Role }}:{{ .Content }}:{{ .ToolName }};{{ end }}"
    messages = [
        {"role": "system", "content": "a"},
        {"role": "system", "content": "b"},
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": "How are you?"},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "tool", "content": "72F", "tool_name": "get_temperature"},
    ]
    assert render_messages(src, messages=messages) == (
        "a\n\nb|system:a\n\nb:;user:Hello\n\nHow are you?:;"
        "tool:sunny:get_weather;tool:72F:get_temperature;"
    )


def test_system_argument_becomes_the_first_message() -> None:
    src = "{{ .System }}|{{ range .Messages }}{{ .Role }};{{ end }}"
    assert render_messages(src, system="Be brief.", messages=CHAT) == (
        "Be brief.|system;user;assistant;user;"
    )


ASSISTANT_CALL = {
    "role": "assistant",
    "tool_calls": [
        {
            "id": "call_1",
            "function": {
                "index": 2,
                "name": "get_weather",
                "arguments": {"unit": "celsius", "city": "<Tokyo>", "days": 3, "x": None},
            },
        }
    ],
}


def test_tool_call_values() -> None:
    src = (
        "{{ range .Messages }}{{ range .ToolCalls }}{{ .ID }}|{{ .Function.Index }}|"
        "{{ .Function.Name }}|{{ .Function.Arguments }}|{{ json .Function.Arguments }}|"
        "{{ range $k, $v := .Function.Arguments }}{{ $k }}={{ $v }};{{ end }}|"
        "{{ .Function.Arguments.city }}{{ end }}{{ end }}"
    )
    args = '{"city":"\\u003cTokyo\\u003e","days":3,"unit":"celsius","x":null}'
    assert render_messages(src, messages=[ASSISTANT_CALL]) == (
        f"call_1|2|get_weather|{args}|{args}|city=<Tokyo>;days=3;unit=celsius;x=<no value>;|<Tokyo>"
    )


def test_messages_without_tool_calls_or_images_hold_nil_slices() -> None:
    src = "{{ range .Messages }}{{ .ToolCalls }}{{ .Images }}{{ if .ToolCalls }}x{{ end }}{{ json . }}{{ end }}"
    assert render_messages(src, messages=[{"role": "user", "content": "hi"}]) == (
        '[][]{"Role":"user","Content":"hi","Thinking":"","Images":null,'
        '"ToolCalls":null,"ToolName":"","ToolCallID":""}'
    )


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather <now>",
        "strict": True,  # not a field of Ollama's api.Tool: dropped
        "parameters": {
            "type": "object",
            "required": ["location"],
            "properties": {
                "unit": {"type": "string", "enum": ["c", "f"], "description": "Unit"},
                "location": {"type": "string", "description": "City", "minLength": 1},
                "days": {"type": ["integer", "null"]},
                "opts": {"type": "object", "properties": {"z": {"type": "boolean"}, "a": {}}},
            },
        },
    },
}


def test_tools_values_print_and_marshal_as_ollama() -> None:
    src = "{{ range .Messages }}{{ end }}{{ .Tools }}"
    want = (
        '[{"type":"function","function":{"name":"get_weather","description":"Weather \\u003cnow\\u003e",'
        '"parameters":{"type":"object","required":["location"],"properties":{'
        '"days":{"type":["integer","null"]},'
        '"location":{"type":"string","description":"City"},'
        '"opts":{"type":"object","properties":{"z":{"type":"boolean"},"a":{}}},'
        '"unit":{"type":"string","description":"Unit","enum":["c","f"]}}}}}]'
    )
    assert render_messages(src, messages=CHAT, tools=[TOOL]) == want
    assert (
        render_messages(
            "{{ range .Messages }}{{ end }}{{ json .Tools }}", messages=CHAT, tools=[TOOL]
        )
        == want
    )


def test_tool_properties_range_sorted_with_types() -> None:
    src = (
        "{{ range .Messages }}{{ end }}{{ range .Tools }}{{ .Type }} {{ .Function.Name }}: "
        "{{ range $name, $p := .Function.Parameters.Properties }}"
        "{{ $name }}:{{ $p.Type }}:{{ toTypeScriptType $p }}:{{ $p.Enum }}:{{ $p.Description }}; "
        "{{ end }}{{ .Function.Parameters.Required }}{{ end }}"
    )
    assert render_messages(src, messages=CHAT, tools=[TOOL]) == (
        "function get_weather: days:[integer null]:number | null:[]:; location:string:string:[]:City; "
        "opts:object:Record<string, any>:[]:; unit:string:string:[c f]:Unit; [location]"
    )


def test_tools_absent_or_empty() -> None:
    src = "{{ range .Messages }}{{ end }}{{ .Tools }}|{{ if .Tools }}yes{{ else }}no{{ end }}"
    assert render_messages(src, messages=CHAT) == "null|no"
    assert render_messages(src, messages=CHAT, tools=[]) == "[]|no"
    # /api/generate renders with an empty (not absent) tool list, as Ollama does.
    assert render_generate(src, prompt="hi") == "[]|no"


def test_think_values() -> None:
    src = "{{ range .Messages }}{{ end }}{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}"
    assert render_messages(src, messages=CHAT) == "false||false"
    assert render_messages(src, messages=CHAT, think=True) == "true|medium|true"
    assert render_messages(src, messages=CHAT, think=False) == "false||true"
    assert render_messages(src, messages=CHAT, think="high") == "true|high|true"
    assert render_messages(src, messages=CHAT, think=True, think_level="low") == "true|low|true"


def test_thinking_and_images_fields() -> None:
    src = "{{ range .Messages }}{{ .Thinking }}|{{ len .Images }}|{{ if .Images }}img{{ end }};{{ end }}"
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "look", "images": ["aGk="]},
        {"role": "assistant", "content": "ok", "thinking": "hmm"},
    ]
    assert render_messages(src, messages=messages) == "|1|img;hmm|0|;"


def test_domain_messages_render_like_wire_messages() -> None:
    src = (
        "{{ range .Messages }}{{ .Role }}:{{ .Content }}:{{ .ToolName }}"
        "{{ range .ToolCalls }}{{ .Function.Name }}{{ .Function.Arguments }}{{ end }};{{ end }}"
    )
    domain = [
        Message("user", "hi"),
        Message("assistant", tool_calls=(ToolCall("f", {"a": 1}),)),
        Message("tool", "42", tool_name="f"),
    ]
    wire: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "42", "tool_name": "f"},
    ]
    assert render_messages(src, messages=domain) == render_messages(src, messages=wire)
    assert render_messages(src, messages=wire) == 'user:hi:;assistant::f{"a":1};tool:42:f;'


def test_generate_builds_the_chat_ollama_builds() -> None:
    src = "{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"
    assert render_generate(src, prompt="Why?", system="Sys") == "Sys|system=Sys;user=Why?;"
    legacy = "{{ if .System }}[{{ .System }}]{{ end }}{{ .Prompt }}>"
    assert render_generate(legacy, prompt="Why?", system="Sys", response="Because") == (
        "[Sys]Why?>Because"
    )
