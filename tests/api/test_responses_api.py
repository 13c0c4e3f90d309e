"""/v1/responses (OpenAI's Responses API, stateless, as Ollama serves it) with the official
openai client and raw HTTP, against real SmolLM2 and a fake upstream for what it cannot say."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.api.test_upstream_e2e import serve
from tests.conftest import SMOL, Start
from tests.fake_upstreams import Fake, Script, fakes
from tests.store import Store


@pytest.fixture
async def oai(server: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0
    ) as client:
        yield client


def frames(body: bytes) -> list[tuple[str, dict[str, object]]]:
    """`event: <type>\\ndata: <json>\\n\\n` frames, checked for Go's sorted keys."""
    out = []
    for frame in body.split(b"\n\n")[:-1]:
        event, data = frame.split(b"\n")
        assert event.startswith(b"event: ") and data.startswith(b"data: ")
        obj = orjson.loads(data[6:])
        assert data[6:] == orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        assert obj["type"] == event[7:].decode()
        out.append((event[7:].decode(), obj))
    return out


async def test_a_response_with_the_official_client(oai: openai.AsyncOpenAI) -> None:
    r = await oai.responses.create(
        model=SMOL,
        input="Name a colour.",
        max_output_tokens=4,
        temperature=0,
        instructions="Be brief.",
    )
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.model == SMOL and r.instructions == "Be brief." and r.max_output_tokens == 4
    (item,) = r.output
    assert item.type == "message" and item.id.startswith("msg_") and item.role == "assistant"
    assert r.output_text and r.usage is not None
    assert 0 < r.usage.output_tokens <= 4 and r.usage.input_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


async def test_a_streamed_response_sends_ollamas_events(
    oai: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    body = {"model": SMOL, "input": "Name a colour.", "max_output_tokens": 4, "stream": True}
    r = await http.post("/v1/responses", json={**body, "temperature": 0})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = frames(r.content)
    kinds = [k for k, _ in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 1 and kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    text = "".join(str(e["delta"]) for k, e in events if k == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert isinstance(final, dict) and final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == text
    # The official client reads the same stream.
    stream = await oai.responses.create(model=SMOL, input="Hi", max_output_tokens=3, stream=True)
    seen = [e.type async for e in stream]
    assert seen[0] == "response.created" and seen[-1] == "response.completed"


async def test_bad_requests_get_ollamas_words(http: httpx.AsyncClient) -> None:
    async def error(body: dict[str, object]) -> tuple[int, str]:
        r = await http.post("/v1/responses", json={"model": SMOL, **body})
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] is None
        return r.status_code, err["message"]

    assert await error({"input": [{"type": "nope"}]}) == (
        400,
        'input[0]: unknown input item type: "nope"',
    )
    assert await error({"input": [{"content": "x"}]}) == (
        400,
        "input[0]: input item missing required 'type' field",
    )
    bad_part = [{"role": "user", "content": [{"type": "input_pdf"}]}]
    assert await error({"input": bad_part}) == (
        400,
        "input[0]: content[0]: unknown content type: input_pdf",
    )
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":'}
    assert await error({"input": [call]}) == (
        400,
        "failed to parse function call arguments: unexpected end of JSON input",
    )
    file = [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]
    assert await error({"input": file}) == (400, "file inputs are not currently supported")
    r = await http.post("/v1/responses", json={"input": "x"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "model is required"


async def test_reasoning_and_function_calls_round_trip(
    start: Start, store: Store, tmp_path: Path
) -> None:
    script = Script(
        text=(),
        thinking=("let me look",),
        tool_calls=({"name": "get_weather", "arguments": {"city": "Paris"}},),
    )
    tool = {"type": "function", "name": "get_weather", "description": "Weather", "strict": None}
    tool |= {"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    async with fakes(Fake("ollama", models=("t:latest",), script=script)) as (up,):
        base = await serve(start, store, tmp_path, up)
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            body = {"model": "t", "input": "Weather in Paris?", "tools": [tool]}
            whole = (await http.post("/v1/responses", json=body)).json()
            streamed = await http.post("/v1/responses", json={**body, "stream": True})
            # The client sends the turn back with the result: one assistant turn, one tool.
            history = [
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "reasoning", "id": "rs_1", "encrypted_content": "let me look"},
                {"type": "function_call", "call_id": "c1", "name": "get_weather"}
                | {"arguments": '{"city":"Paris"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ]
            again = await http.post("/v1/responses", json={"model": "t", "input": history})
        sent = up.generations()[-1].body["messages"]
        native_tools = up.generations()[0].body["tools"]
    rid = whole["id"]
    reasoning, call = whole["output"]
    assert reasoning == {
        "id": f"rs_{rid}",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "let me look"}],
        "encrypted_content": "let me look",
    }
    assert call["id"] == f"fc_{rid}_0" and call["type"] == "function_call"
    assert (call["name"], orjson.loads(call["arguments"])) == ("get_weather", {"city": "Paris"})
    assert whole["tools"] == [tool]
    assert native_tools[0]["function"]["name"] == "get_weather"

    kinds = [k for k, _ in frames(streamed.content)]
    assert "response.reasoning_summary_text.delta" in kinds
    assert kinds.index("response.reasoning_summary_text.done") < kinds.index(
        "response.function_call_arguments.done"
    )
    assert "response.output_text.delta" not in kinds  # a reply with calls has no message item

    assert again.status_code == 200
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["thinking"] == "let me look"
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert sent[2]["content"] == "sunny"


async def test_review_edges(http: httpx.AsyncClient) -> None:
    """Go accepts a lone surrogate in function arguments; a mistyped tool is Go's 400; the
    response object writes numbers as Go does; /v1 chat answers _debug_render_only."""
    history = [
        {"role": "user", "content": "Hi"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":"\\ud800"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ]
    r = await http.post(
        "/v1/responses", json={"model": SMOL, "input": history, "max_output_tokens": 2}
    )
    assert r.status_code == 200, r.text
    assert b'"top_p":1,' in r.content and b'"temperature":1,' in r.content  # not 1.0
    bad = {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": 5}]}
    r = await http.post("/v1/responses", json={"model": SMOL, "input": "x", "tools": [bad]})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        "json: cannot unmarshal number into Go struct field "
        "ResponsesRequest.tools.tools.name of type string"
    )
    body = {"model": SMOL, "messages": [{"role": "user", "content": "Hi"}]}
    r = await http.post("/v1/chat/completions", json={**body, "_debug_render_only": True})
    out = r.json()
    assert out["choices"][0]["message"] == {"role": "", "content": ""}
    assert "user\nHi" in out["_debug_info"]["rendered_template"]
    assert out["usage"]["completion_tokens"] == 0
    shouted = {"model": SMOL, "messages": [{"role": "USER", "content": "Hi"}]}
    r = await http.post("/v1/chat/completions", json={**shouted, "_debug_render_only": True})
    # Lower-cased, as Ollama's api.Message decoding does after its OpenAI layer.
    assert "<|im_start|>user\nHi" in r.json()["_debug_info"]["rendered_template"]
