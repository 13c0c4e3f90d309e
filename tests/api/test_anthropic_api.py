"""Anthropic's Messages API (/v1/messages) with the official anthropic client and raw HTTP:
real SmolLM2 for text, fake upstreams for the thinking and tool calls SmolLM2 cannot make."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.api.test_upstream_e2e import serve
from tests.conftest import SMOL, Start
from tests.fake_upstreams import Fake, Fault, Script, fakes
from tests.store import Store

MSGS = [{"role": "user", "content": "Name a colour."}]
WEATHER = {
    "name": "get_weather",
    "description": "Get the weather",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
# A 1x1 PNG, as Ollama's own tests use.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY42YAAAAASUVORK5CYII="


@pytest.fixture
async def claude(server: TestServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=str(server.make_url("")), api_key="unused", max_retries=0
    ) as client:
        yield client


def events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """SSE frames `event: <type>\\ndata: <json>\\n\\n` -> (type, data); the framing exact."""
    assert body.endswith(b"\n\n")
    out = []
    for frame in body[:-2].split(b"\n\n"):
        head, data = frame.split(b"\n")
        assert head.startswith(b"event: ") and data.startswith(b"data: ")
        out.append((head[7:].decode(), orjson.loads(data[6:])))
    return out


def shape(evs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Each event as `type[:block or delta type][:index]`, checking data.type == the event."""
    out = []
    for name, data in evs:
        assert data["type"] == name
        if name == "content_block_start":
            name += f":{data['content_block']['type']}:{data['index']}"
        elif name == "content_block_delta":
            name += f":{data['delta']['type']}:{data['index']}"
        elif name == "content_block_stop":
            name += f":{data['index']}"
        out.append(name)
    return out


def error_of(r: httpx.Response, status: int, kind: str = "invalid_request_error") -> str:
    assert r.status_code == status
    body = r.json()
    assert list(body) == ["type", "error", "request_id"] and body["type"] == "error"
    assert re.fullmatch(r"req_[0-9a-f]{24}", body["request_id"])
    assert list(body["error"]) == ["type", "message"] and body["error"]["type"] == kind
    return str(body["error"]["message"])


# --- SmolLM2 ----------------------------------------------------------------------------------


async def test_message(claude: anthropic.AsyncAnthropic, http: httpx.AsyncClient) -> None:
    # Newer SDKs have no `temperature` argument; the API still takes the field.
    msg = await claude.messages.create(
        model=SMOL,
        max_tokens=8,
        messages=MSGS,  # type: ignore[arg-type]
        extra_body={"temperature": 0},
    )
    assert re.fullmatch(r"msg_[0-9a-f]{24}", msg.id)
    assert msg.type == "message" and msg.role == "assistant" and msg.model == SMOL
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text  # type: ignore[union-attr]
    assert msg.stop_reason == "max_tokens" and msg.stop_sequence is None
    assert msg.usage.output_tokens == 8 and msg.usage.input_tokens > 4

    body = {"model": SMOL, "max_tokens": 8, "temperature": 0, "messages": MSGS}
    r = await http.post("/v1/messages", json=body)
    assert r.headers["content-type"] == "application/json" and r.content.endswith(b"}\n")
    body = r.json()
    # Go's field order; no stop_sequence, which Ollama never fills in.
    assert list(body) == ["id", "type", "role", "model", "content", "stop_reason", "usage"]
    assert list(body["content"][0]) == ["type", "text"]
    assert body["usage"] == {"input_tokens": msg.usage.input_tokens, "output_tokens": 8}


async def test_stream_with_the_sdk(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model=SMOL,
        max_tokens=6,
        messages=MSGS,  # type: ignore[arg-type]
        extra_body={"temperature": 0},
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 6
    assert final.usage.input_tokens > 4  # message_delta's count, not the estimate


async def test_stream_framing(http: httpx.AsyncClient) -> None:
    body = {"model": SMOL, "max_tokens": 4, "temperature": 0, "stream": True, "messages": MSGS}
    r = await http.post("/v1/messages", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache"
    evs = events(r.content)
    names = shape(evs)
    deltas = names.count("content_block_delta:text_delta:0")
    assert deltas >= 1
    assert names == [
        "message_start",
        "content_block_start:text:0",
        *["content_block_delta:text_delta:0"] * deltas,
        "content_block_stop:0",
        "message_delta",
        "message_stop",
    ]  # and no ping: Ollama sends none
    start = evs[0][1]["message"]
    assert list(start) == ["id", "type", "role", "model", "content", "usage"]
    assert start["content"] == [] and start["model"] == SMOL
    # Before the prompt is counted, Ollama's estimate: len("user" + "Name a colour.") // 4.
    assert start["usage"] == {"input_tokens": 4, "output_tokens": 0}
    assert evs[1][1]["content_block"] == {"type": "text", "text": ""}
    delta = evs[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens"}
    assert delta["usage"]["output_tokens"] == 4 and delta["usage"]["input_tokens"] > 4
    assert evs[-1][1] == {"type": "message_stop"}


async def test_system_and_stop_sequences(http: httpx.AsyncClient) -> None:
    async def text(**extra: Any) -> dict[str, Any]:
        body = {"model": SMOL, "max_tokens": 16, "temperature": 0, "messages": MSGS, **extra}
        r = await http.post("/v1/messages", json=body)
        assert r.status_code == 200
        return dict(r.json())

    base = await text(system=[{"type": "text", "text": "Be brief."}])
    full = base["content"][0]["text"]
    stop = full[4:7]
    # The same system prompt as a string; top_k, tool_choice and metadata are read and ignored.
    stopped = await text(
        system="Be brief.",
        stop_sequences=[stop],
        top_k=40,
        tool_choice={"type": "none"},
        metadata={"user_id": "u"},
    )
    assert stopped["content"][0]["text"] == full[: full.index(stop)]
    # A stop sequence ends the turn as Ollama reports it: end_turn, and no stop_sequence.
    assert stopped["stop_reason"] == "end_turn" and "stop_sequence" not in stopped


async def test_thinking_is_dropped_for_a_model_that_cannot_think(http: httpx.AsyncClient) -> None:
    think = {"type": "enabled", "budget_tokens": 1024}
    body = {"model": SMOL, "max_tokens": 2, "temperature": 0, "messages": MSGS}
    r = await http.post("/v1/messages", json={**body, "thinking": think})
    assert r.status_code == 200 and r.json()["content"][0]["type"] == "text"
    effort = await http.post("/v1/messages", json={**body, "output_config": {"effort": "xhigh"}})
    assert effort.status_code == 200
    # The native API refuses the same thing: the relaxing is the Anthropic layer's.
    native = await http.post(
        "/api/chat", json={"model": SMOL, "messages": MSGS, "think": True, "stream": False}
    )
    assert native.status_code == 400 and "does not support thinking" in native.json()["error"]


async def test_no_messages_left_loads_the_model(http: httpx.AsyncClient) -> None:
    """Blocks that convert to nothing leave no messages: Ollama's chat handler then loads the
    model and answers "load", which its layer reports as a stop_sequence with no content."""
    body = {"model": SMOL, "max_tokens": 8, "messages": [{"role": "user", "content": []}]}
    r = await http.post("/v1/messages", json=body)
    assert r.status_code == 200
    reply = r.json()
    assert reply["content"] is None and reply["stop_reason"] == "stop_sequence"
    assert reply["usage"] == {"input_tokens": 0, "output_tokens": 0}
    ps = (await http.get("/api/ps")).json()["models"]
    assert [m["name"] for m in ps] == [SMOL]


async def test_errors_before_the_handler(http: httpx.AsyncClient) -> None:
    """Refused by Ollama's middleware: gin's JSON (charset, no newline), always 400."""

    async def post(**body: Any) -> httpx.Response:
        return await http.post("/v1/messages", json=body)

    good = {"model": SMOL, "max_tokens": 8, "messages": MSGS}
    r = await post(max_tokens=8, messages=MSGS)
    assert error_of(r, 400) == "model is required"
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert not r.content.endswith(b"\n")
    assert error_of(await post(model=SMOL, messages=MSGS), 400) == (
        "max_tokens is required and must be positive"
    )
    assert error_of(await post(**{**good, "messages": []}), 400) == "messages is required"
    assert error_of(await post(**{**good, "max_tokens": "8"}), 400) == (
        "json: cannot unmarshal string into Go struct field MessagesRequest.max_tokens of type int"
    )
    assert error_of(await post(**{**good, "stop_sequences": ["a", 1]}), 400) == (
        "json: cannot unmarshal number into Go struct field MessagesRequest.stop_sequences "
        "of type string"
    )
    assert error_of(await http.post("/v1/messages", content=b"{"), 400) == "unexpected EOF"
    assert error_of(await http.post("/v1/messages", content=b""), 400) == "EOF"

    def blocks(*content: Any, role: str = "user") -> dict[str, Any]:
        return {**good, "messages": [{"role": role, "content": list(content)}]}

    assert error_of(
        await post(**blocks({"type": "tool_use", "name": "f"}, role="assistant")), 400
    ) == ("tool_use block missing required 'id' field")
    assert error_of(
        await post(**blocks({"type": "tool_use", "id": "x"}, role="assistant")), 400
    ) == ("tool_use block missing required 'name' field")
    url = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    assert error_of(await post(**blocks(url)), 400) == (
        "invalid image source type: url. Only base64 images are supported."
    )
    bad = {"type": "image", "source": {"type": "base64", "data": "iV@O"}}
    assert error_of(await post(**blocks(bad)), 400) == (
        "invalid base64 image data: illegal base64 data at input byte 2"
    )
    assert error_of(await post(**blocks({"type": "image"})), 400) == "invalid image source"
    result = {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}
    assert error_of(await post(**blocks(result)), 400) == "invalid tool_result image source"
    assert error_of(await post(**blocks({"type": "text", "text": 5})), 400) == (
        "json: cannot unmarshal number into Go struct field MessagesRequest.messages.text "
        "of type string"
    )
    assert error_of(await post(**{**good, "messages": [{"role": "user"}]}), 400) == (
        "unexpected end of JSON input"
    )
    tool = {**WEATHER, "input_schema": {"type": "object", "required": "city"}}
    assert error_of(await post(**{**good, "tools": [tool]}), 400) == (
        'invalid input_schema for tool "get_weather": json: cannot unmarshal string into Go '
        "struct field ToolFunctionParameters.required of type []string"
    )
    # Each error has its own id.
    ids = {(await post(max_tokens=1, messages=MSGS)).json()["request_id"] for _ in range(2)}
    assert len(ids) == 2


async def test_errors_from_the_handler(
    claude: anthropic.AsyncAnthropic, http: httpx.AsyncClient
) -> None:
    """Passed through Ollama's writer: plain application/json with a newline, the handler's
    status; before a stream's first byte too."""
    with pytest.raises(anthropic.NotFoundError) as nf:
        await claude.messages.create(model="ghost", max_tokens=8, messages=MSGS)  # type: ignore[arg-type]
    assert nf.value.status_code == 404
    for stream in (False, True):
        r = await http.post(
            "/v1/messages",
            json={"model": "ghost", "max_tokens": 8, "messages": MSGS, "stream": stream},
        )
        assert error_of(r, 404, "not_found_error") == "model 'ghost' not found"
        assert r.headers["content-type"] == "application/json" and r.content.endswith(b"}\n")
    # An image reaches the model (decoded), which cannot see.
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    r = await http.post(
        "/v1/messages",
        json={"model": SMOL, "max_tokens": 8, "messages": [{"role": "user", "content": [image]}]},
    )
    assert "does not support vision" in error_of(r, 400)
    # No count_tokens route in Ollama: gin's plain 404.
    r = await http.post("/v1/messages/count_tokens", json={"model": SMOL, "messages": MSGS})
    assert r.status_code == 404 and r.text == "404 page not found"


# --- fake upstreams: thinking, tool calls, errors mid-stream -----------------------------------


@pytest.fixture
async def thinker(start: Start, store: Store, tmp_path: Path) -> AsyncIterator[tuple[str, Fake]]:
    script = Script(thinking=("Let me", " think."), text=("Hi", " there"))
    async with fakes(Fake("ollama", models=("t:latest",), script=script)) as (up,):
        yield await serve(start, store, tmp_path, up), up


async def test_thinking_blocks(thinker: tuple[str, Fake]) -> None:
    base, _ = thinker
    body = {"model": "t", "max_tokens": 64, "messages": MSGS, "thinking": {"type": "enabled"}}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        whole = (await http.post("/v1/messages", json=body)).json()
        r = await http.post("/v1/messages", json={**body, "stream": True})
    assert whole["content"] == [
        {"type": "thinking", "thinking": "Let me think."},
        {"type": "text", "text": "Hi there"},
    ]
    assert whole["stop_reason"] == "end_turn"
    assert whole["usage"] == {"input_tokens": 11, "output_tokens": 2}  # the upstream's counts
    evs = events(r.content)
    assert shape(evs) == [
        "message_start",
        "content_block_start:thinking:0",
        "content_block_delta:thinking_delta:0",
        "content_block_delta:thinking_delta:0",
        "content_block_stop:0",
        "content_block_start:text:1",
        "content_block_delta:text_delta:1",
        "content_block_delta:text_delta:1",
        "content_block_stop:1",
        "message_delta",
        "message_stop",
    ]
    assert evs[1][1]["content_block"] == {"type": "thinking", "thinking": ""}
    assert evs[2][1]["delta"] == {"type": "thinking_delta", "thinking": "Let me"}
    assert evs[-2][1]["usage"] == {"input_tokens": 11, "output_tokens": 2}
    async with (
        anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0) as claude,
        claude.messages.stream(
            model="t",
            max_tokens=64,
            messages=MSGS,  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think."  # type: ignore[union-attr]


@pytest.fixture
async def caller(start: Start, store: Store, tmp_path: Path) -> AsyncIterator[tuple[str, Fake]]:
    script = Script(text=(), tool_calls=({"name": "get_weather", "arguments": {"city": "Oslo"}},))
    async with fakes(Fake("ollama", models=("c:latest",), script=script)) as (up,):
        yield await serve(start, store, tmp_path, up), up


async def test_tool_use(caller: tuple[str, Fake]) -> None:
    base, up = caller
    body = {"model": "c", "max_tokens": 64, "messages": MSGS, "tools": [WEATHER]}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        whole = (await http.post("/v1/messages", json=body)).json()
        r = await http.post("/v1/messages", json={**body, "stream": True})
    assert whole["content"] == [
        {"type": "tool_use", "id": "call_0", "name": "get_weather", "input": {"city": "Oslo"}}
    ]
    assert whole["stop_reason"] == "tool_use"
    evs = events(r.content)
    assert shape(evs) == [
        "message_start",
        "content_block_start:tool_use:0",
        "content_block_delta:input_json_delta:0",
        "content_block_stop:0",
        "message_delta",
        "message_stop",
    ]
    assert evs[1][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_0",
        "name": "get_weather",
        "input": {},
    }
    assert evs[2][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Oslo"}'}
    assert evs[-2][1]["delta"] == {"stop_reason": "tool_use"}
    # The tool as the native API takes it reached the upstream.
    assert up.generations()[-1].body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather",
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    async with (
        anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0) as claude,
        claude.messages.stream(
            model="c",
            max_tokens=64,
            messages=MSGS,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
        ) as stream,
    ):
        final = await stream.get_final_message()
    block = final.content[0]
    assert block.type == "tool_use" and block.input == {"city": "Oslo"} and block.id == "call_0"


async def test_a_conversation_reaches_the_model_as_ollama_converts_it(
    caller: tuple[str, Fake],
) -> None:
    """System blocks, an assistant's thinking and tool_use, then a tool_result (text and an
    image) before the user's words: the native request the upstream gets."""
    base, up = caller
    result = [
        {"type": "text", "text": "Sunny"},
        {"type": "image", "source": {"type": "base64", "data": PNG}},
    ]
    body = {
        "model": "c",
        "max_tokens": 32,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 20,
        "stop_sequences": ["END"],
        "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "kind."}],
        "thinking": {"type": "disabled"},
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Use the tool.", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "call_9",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_9", "content": result},
                    {"type": "text", "text": "Thanks!", "cache_control": {"type": "ephemeral"}},
                ],
            },
        ],
    }
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        r = await http.post("/v1/messages", json=body)
    assert r.status_code == 200
    sent = up.generations()[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "thinking": "Use the tool.",
            "tool_calls": [
                {
                    "id": "call_9",
                    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}},
                }
            ],
        },
        {"role": "tool", "content": "Sunny", "images": [PNG], "tool_call_id": "call_9"},
        {"role": "user", "content": "Thanks!"},
    ]
    assert sent["options"] == {
        "num_predict": 32,
        "top_k": 20,
        "top_p": 0.9,
        "temperature": 0.5,
        "stop": ["END"],
    }
    assert sent["think"] is False
    assert base64.b64decode(sent["messages"][3]["images"][0]) == base64.b64decode(PNG)


async def test_message_start_estimates_the_prompt_as_ollama_does(
    caller: tuple[str, Fake],
) -> None:
    """Until the prompt is counted: bytes of the system prompt, roles, texts, whole tool blocks
    as Go marshals them (struct order, HTML-safe escapes) and tool definitions, over 4."""
    base, _ = caller
    use = {"type": "tool_use", "id": "call_9", "name": "f", "input": {"b": 1, "a": "<"}}
    result = {"type": "tool_result", "tool_use_id": "call_9", "content": "ok", "is_error": True}
    body = {
        "model": "c",
        "max_tokens": 8,
        "stream": True,
        "system": "Be kind.",
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}, use]},
            {"role": "user", "content": [result, {"type": "text", "text": "Thanks"}]},
        ],
    }
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        r = await http.post("/v1/messages", json=body)
    go_use = '{"type":"tool_use","id":"call_9","name":"f","input":{"b":1,"a":"\\u003c"}}'
    go_result = '{"type":"tool_result","tool_use_id":"call_9","content":"ok","is_error":true}'
    schema = orjson.dumps(WEATHER["input_schema"])
    total = (
        len("Be kind.")
        + len("userWeather?")
        + len("assistanthm")
        + len(go_use)
        + len("user")
        + len(go_result)
        + len("Thanks")
        + len("get_weatherGet the weather")
        + len(schema)
    )
    start = events(r.content)[0][1]["message"]
    assert start["usage"] == {"input_tokens": total // 4, "output_tokens": 0}


async def test_an_error_mid_stream_is_an_error_event(
    start: Start, store: Store, tmp_path: Path
) -> None:
    async with fakes(
        Fake(
            "ollama",
            models=("e:latest",),
            faults=[Fault(error="model crashed", after=2)],
            script=Script(),
        )
    ) as (up,):
        base = await serve(start, store, tmp_path, up)
        body = {"model": "e", "max_tokens": 8, "messages": MSGS, "stream": True}
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            r = await http.post("/v1/messages", json=body)
        up.faults.append(Fault(error="model crashed", after=2))
        async with anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0) as claude:
            with pytest.raises(anthropic.APIStatusError, match="model crashed"):
                async with claude.messages.stream(
                    model="e",
                    max_tokens=8,
                    messages=MSGS,  # type: ignore[arg-type]
                ) as stream:
                    async for _ in stream:
                        pass
    assert r.status_code == 200
    evs = events(r.content)
    assert shape(evs)[:2] == ["message_start", "content_block_start:text:0"]
    assert "message_stop" not in shape(evs)
    assert evs[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "model crashed"}},
    )
