"""Ollama's Go template layer end to end: tools, thinking, insert, template errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import orjson
import pytest

from tests.conftest import PARAMS, Start, settings_for
from tests.store import Store

TOOLS_TEMPLATE = (
    "{{- if .Tools }}<|im_start|>system\nYou can call these tools: {{ json .Tools }}<|im_end|>\n"
    "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{- if .ToolCalls }}\n<tool_call>{{ range .ToolCalls }}"
    '{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}'
    "{{ end }}</tool_call>{{ else }}\n{{ .Content }}{{ end }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
THINK_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n{{ if .Think }}<think>\n{{ end }}"
)
FIM_TEMPLATE = (
    "{{ if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"
    "{{ else }}{{ .Prompt }}{{ end }}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
# A grammar that makes the tiny model answer with exactly one call, so the test is exact.
CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
        },
    },
    "required": ["name", "arguments"],
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
async def base(start: Start, tmp_path: Path, smollm2: Path) -> AsyncIterator[str]:
    store = Store(tmp_path / "models")
    store.add("tooly:latest", model=smollm2, template=TOOLS_TEMPLATE, params=PARAMS)
    store.add("thinker:latest", model=smollm2, template=THINK_TEMPLATE, params=PARAMS)
    store.add("coder:latest", model=smollm2, template=FIM_TEMPLATE)
    store.add("broken-template:latest", model=smollm2, template="{{ .Messages ")
    store.add("plain:latest", model=smollm2, params=PARAMS)
    server = await start(settings_for(store))
    yield str(server.make_url(""))


async def test_capabilities_from_the_template(base: str) -> None:
    async with ollama.AsyncClient(host=base) as client:
        assert (await client.show("tooly")).capabilities == ["completion", "tools"]
        assert (await client.show("thinker")).capabilities == ["completion", "thinking"]
        assert (await client.show("coder")).capabilities == ["completion", "insert"]
        assert (await client.show("plain")).capabilities == ["completion"]


async def test_native_tool_calls(base: str) -> None:
    async with ollama.AsyncClient(host=base) as client:
        resp = await client.chat(
            "tooly",
            messages=ASK,
            tools=[WEATHER],
            format=CALL_SCHEMA,
            options={"temperature": 0, "num_predict": 60},
        )
    calls = resp.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments["city"], str)
    assert resp.message.content == ""
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        r = await http.post(
            "/api/chat",
            json={
                "model": "tooly",
                "messages": ASK,
                "tools": [WEATHER],
                "format": CALL_SCHEMA,
                "stream": False,
                "options": {"temperature": 0, "num_predict": 60},
            },
        )
    call = r.json()["message"]["tool_calls"][0]
    assert call["function"]["index"] == 0
    assert call["id"].startswith("call_") and len(call["id"]) == 13


async def test_openai_tool_calls_streamed_and_not(base: str) -> None:
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0) as oai:
        kw: dict[str, Any] = {
            "model": "tooly",
            "messages": ASK,
            "tools": [WEATHER],
            "temperature": 0,
            "max_tokens": 60,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "call", "schema": CALL_SCHEMA},
            },
        }
        resp = await oai.chat.completions.create(**kw)
        choice = resp.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None
        fn = choice.message.tool_calls[0].function  # type: ignore[union-attr]
        assert fn.name == "get_weather" and "city" in orjson.loads(fn.arguments)
        chunks = [c async for c in await oai.chat.completions.create(**kw, stream=True)]
        streamed = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert streamed and streamed[0].function is not None
        assert streamed[0].function.name == "get_weather"
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_tool_results_are_rendered_back(base: str) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"},
    ]
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        r = await http.post(
            "/api/chat",
            json={
                "model": "tooly",
                "messages": history,
                "tools": [WEATHER],
                "stream": False,
                "options": {"temperature": 0, "num_predict": 8},
            },
        )
        assert r.status_code == 200, r.text
        r = await http.post(
            "/api/chat",
            json={
                "model": "plain",
                "messages": ASK,
                "tools": [WEATHER],
            },
        )
        assert r.status_code == 400
        assert r.json() == {
            "error": "registry.ollama.ai/library/plain:latest does not support tools"
        }


async def test_thinking_is_split_out(base: str) -> None:
    async with ollama.AsyncClient(host=base) as client:
        # Thinking models think by default: the prompt ends inside <think>.
        resp = await client.chat(
            "thinker", messages=ASK, options={"temperature": 0, "num_predict": 12}
        )
        assert resp.message.thinking and resp.message.content == ""
        off = await client.chat(
            "thinker", messages=ASK, think=False, options={"temperature": 0, "num_predict": 12}
        )
        assert not off.message.thinking and off.message.content
        with pytest.raises(ollama.ResponseError) as err:
            await client.chat("plain", messages=ASK, think=True)
        assert err.value.status_code == 400
        assert err.value.error == '"plain" does not support thinking'
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0) as oai:
        r = await oai.chat.completions.create(model="thinker", messages=ASK, max_tokens=12)
        assert r.choices[0].message.model_extra is not None
        assert r.choices[0].message.model_extra.get("reasoning")


async def test_insert_and_request_templates(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        opts = {"temperature": 0, "num_predict": 6}
        r = await http.post(
            "/api/generate",
            json={
                "model": "coder",
                "prompt": "def add(a, b):\n",
                "suffix": "\n    return c\n",
                "stream": False,
                "options": opts,
            },
        )
        assert r.status_code == 200 and r.json()["done"] is True
        r = await http.post(
            "/api/generate",
            json={
                "model": "plain",
                "prompt": "x",
                "suffix": "y",
            },
        )
        assert r.status_code == 400
        assert r.json() == {
            "error": "registry.ollama.ai/library/plain:latest does not support insert"
        }
        r = await http.post(
            "/api/generate",
            json={
                "model": "plain",
                "prompt": "Hi",
                "template": "Q: {{ .Prompt }}\nA:",
                "stream": False,
                "options": opts,
            },
        )
        assert r.status_code == 200 and r.json()["eval_count"] == 6


async def test_a_template_that_does_not_parse_is_a_400(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        r = await http.post("/api/chat", json={"model": "broken-template", "messages": ASK})
        assert r.status_code == 400
        assert r.json()["error"].startswith("template error: ")
        r = await http.post(
            "/api/generate",
            json={
                "model": "plain",
                "prompt": "x",
                "template": "{{ if }}",
            },
        )
        assert r.status_code == 400


async def test_earlier_thinking_is_dropped_for_qwen3_and_deepseek_r1(
    start: Start, tmp_path: Path, smollm2: Path
) -> None:
    store = Store(tmp_path / "models")
    qwen3 = {"model_format": "gguf", "model_family": "qwen3", "model_families": ["qwen3"]}
    store.add("qwen3-like:latest", model=smollm2, params=PARAMS, config=qwen3)
    store.add("deepseek-r1:tiny", model=smollm2, params=PARAMS)
    store.add("plain:latest", model=smollm2, params=PARAMS)
    server = await start(settings_for(store))
    thought = "<think>" + "Let me think about this very carefully. " * 10 + "</think>"
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": thought + "\n\nHello!"},
        {"role": "user", "content": "How are you?"},
    ]
    counts = {}
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=120) as http:
        for model in ("plain", "qwen3-like", "deepseek-r1:tiny"):
            r = await http.post(
                "/api/chat",
                json={
                    "model": model,
                    "messages": messages,
                    "stream": False,
                    "options": {"num_predict": 1},
                },
            )
            counts[model] = r.json()["prompt_eval_count"]
        without = [messages[0], {"role": "assistant", "content": "Hello!"}, messages[2]]
        r = await http.post(
            "/api/chat",
            json={
                "model": "plain",
                "messages": without,
                "stream": False,
                "options": {"num_predict": 1},
            },
        )
    assert counts["qwen3-like"] == counts["deepseek-r1:tiny"] == r.json()["prompt_eval_count"]
    assert counts["plain"] > counts["qwen3-like"] + 50
