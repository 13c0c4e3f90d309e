"""The /v1/* protocol with the official openai client and raw HTTP, against real SmolLM2."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import SMOL

MSGS = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture
async def oai(server: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0
    ) as client:
        yield client


def sse_events(body: bytes) -> list[bytes]:
    assert body.endswith(b"data: [DONE]\n\n")
    events = body.split(b"\n\n")[:-2]  # the last two: "data: [DONE]" and ""
    assert all(e.startswith(b"data: ") for e in events)
    return [e[len(b"data: ") :] for e in events]


async def test_models(oai: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    listed = await oai.models.list()
    ids = {m.id for m in listed.data}
    assert SMOL in ids
    entry = next(m for m in listed.data if m.id == SMOL)
    assert entry.owned_by == "library" and entry.object == "model" and entry.created > 0
    one = await oai.models.retrieve(SMOL)
    assert one.id == SMOL
    with pytest.raises(openai.NotFoundError) as err:
        await oai.models.retrieve("ghost")
    assert err.value.status_code == 404
    r = await http.get("/v1/models/ghost")
    assert r.json() == {
        "error": {
            "message": "model 'ghost:latest' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }


async def test_chat_completion(oai: openai.AsyncOpenAI) -> None:
    resp = await oai.chat.completions.create(
        model=SMOL, messages=MSGS, max_tokens=8, seed=1, temperature=0
    )
    assert resp.object == "chat.completion" and resp.model == SMOL
    assert resp.id.startswith("chatcmpl-") and resp.system_fingerprint == "fp_ollama"
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 8


async def test_chat_stream_with_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model=SMOL,
        messages=MSGS,
        max_completion_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    *content, finish, usage = chunks
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].finish_reason is None for c in content)
    assert finish.choices[0].finish_reason == "length"
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1


async def test_chat_stream_framing(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/chat/completions",
        json={
            "model": SMOL,
            "messages": MSGS,
            "max_tokens": 4,
            "stream": True,
            "temperature": 0,
        },
    )
    assert r.headers["content-type"] == "text/event-stream"
    events = [orjson.loads(e) for e in sse_events(r.content)]
    assert events[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert all("usage" not in e for e in events)
    assert all(e["object"] == "chat.completion.chunk" for e in events)


async def test_json_response_format(oai: openai.AsyncOpenAI) -> None:
    resp = await oai.chat.completions.create(
        model=SMOL,
        temperature=0,
        max_tokens=400,
        messages=[{"role": "user", "content": "Describe a dog as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "dog",
                "schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                },
            },
        },
    )
    content = resp.choices[0].message.content
    assert content is not None
    assert isinstance(orjson.loads(content)["name"], str)


async def test_stop_and_seed(oai: openai.AsyncOpenAI) -> None:
    async def run(seed: int) -> str:
        r = await oai.chat.completions.create(
            model=SMOL,
            messages=MSGS,
            max_tokens=16,
            seed=seed,
            temperature=1.0,
        )
        return r.choices[0].message.content or ""

    await run(0)  # same cache state for the compared runs
    assert await run(3) == await run(3)
    base = await run(5)
    stopped = await oai.chat.completions.create(
        model=SMOL,
        messages=MSGS,
        max_tokens=16,
        seed=5,
        temperature=1.0,
        stop=[base[4:7]],
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == base[: base.index(base[4:7])]


async def test_completions(oai: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    # Greedy: at temperature 1 the tiny model may end (EOS) before 5 tokens.
    resp = await oai.completions.create(
        model=SMOL, prompt="Once upon a time", max_tokens=5, temperature=0
    )
    assert resp.object == "text_completion" and resp.choices[0].text
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    stream = await oai.completions.create(
        model=SMOL,
        prompt="Once upon a time",
        max_tokens=5,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "length"
    r = await http.post("/v1/completions", json={"model": SMOL, "prompt": "x", "stop": [1]})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "invalid type for 'stop' field: float64"


async def test_errors_in_openai_shape(oai: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        await oai.chat.completions.create(model="ghost", messages=MSGS)
    assert nf.value.status_code == 404
    r = await http.post("/v1/chat/completions", json={"model": "ghost", "messages": MSGS})
    assert r.json() == {
        "error": {
            "message": "model 'ghost' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }
    r = await http.post("/v1/chat/completions", content=b"{")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["message"] == "unexpected EOF"  # Go's words, as Ollama's OpenAI routes give them
    assert err["type"] == "invalid_request_error" and set(err) == {
        "message",
        "type",
        "param",
        "code",
    }
    r = await http.post("/v1/chat/completions", json={"model": SMOL, "messages": []})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "[] is too short - 'messages'"
    r = await http.post(
        "/v1/chat/completions",
        json={
            "model": SMOL,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                },
            ],
        },
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("image URLs are not currently supported")
    r = await http.post("/v1/chat/completions", json={"model": "bad name!", "messages": MSGS})
    assert r.status_code == 400 and r.json()["error"]["message"] == "invalid model name"


async def test_requests_are_read_as_ollamas_openai_layer_reads_them(
    http: httpx.AsyncClient,
) -> None:
    """Ollama's own texts and choices, down to what it ignores (openai/openai.go)."""

    async def chat(**body: object) -> httpx.Response:
        return await http.post(
            "/v1/chat/completions",
            json={"model": SMOL, "messages": MSGS, "max_tokens": 2, **body},
        )

    def error(r: httpx.Response, status: int = 400) -> str:
        assert r.status_code == status
        err = r.json()["error"]
        assert err["param"] is None and err["code"] is None
        return str(err["message"])

    assert error(await chat(reasoning_effort="bogus")) == (
        'invalid reasoning value: "bogus" (must be "minimal", "low", "medium", "high", '
        '"xhigh", "ultra", "max", or "none")'
    )
    assert (await chat(reasoning_effort="")).status_code == 200  # the model's default
    # A `reasoning` object wins over `reasoning_effort` (here: no thinking, which is fine).
    assert (await chat(reasoning={"effort": "none"}, reasoning_effort="high")).status_code == 200
    assert (await chat(response_format={"type": " JSON_OBJECT "})).status_code == 200
    assert (await chat(response_format={"type": "json_schema"})).status_code == 200  # ignored

    def with_call(arguments: object) -> list[dict[str, object]]:
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
        return [*MSGS, {"role": "assistant", "content": None, "tool_calls": [call]}]

    assert error(await chat(messages=with_call(""))) == "invalid tool call arguments"
    assert error(await chat(messages=with_call("[1]"))) == "invalid tool call arguments"
    assert (await chat(messages=with_call("null"))).status_code == 200

    def parts(*p: object) -> list[dict[str, object]]:
        return [{"role": "user", "content": list(p)}]

    assert error(await chat(messages=parts({"type": "text", "text": 5}))) == (
        "invalid message format"
    )
    assert error(await chat(messages=parts({"type": "image_url", "image_url": {"url": 5}}))) == (
        "invalid message format"
    )
    audio = {"type": "input_audio", "input_audio": {"format": "wav"}}
    assert error(await chat(messages=parts(audio))) == "invalid input_audio format: missing data"
    audio = {"type": "input_audio", "input_audio": {"data": "@@@"}}
    assert error(await chat(messages=parts(audio))).startswith("invalid input_audio base64 data")
    assert error(await chat(messages=[{"role": "user", "content": 5}])) == (
        "invalid message content type: float64"
    )
    r = await http.post("/v1/chat/completions", content=b"")
    assert error(r) == "EOF"  # the Decoder's word: the layer has no "missing request body"

    async def complete(**body: object) -> httpx.Response:
        return await http.post("/v1/completions", json={"max_tokens": 2, **body})

    r = await complete(prompt="x")  # no model: the native handler's 404
    assert error(r, 404) == "model '' not found"
    assert error(await complete(model=SMOL, prompt=5)) == (
        "json: cannot unmarshal number into Go struct field CompletionRequest.prompt of type string"
    )
    assert error(await complete(model=SMOL, prompt="x", stop=["a", None])) == (
        "invalid type for 'stop' field: <nil>"
    )
    assert (await complete(model=SMOL, prompt="x", stop=5, logprobs=-1)).status_code == 200
    r = await complete(model=SMOL, prompt="")  # loads the model, as /api/generate does
    assert r.json()["choices"][0]["finish_reason"] == "load"

    r = await http.post("/v1/embeddings", json={"input": "x"})
    assert error(r, 404) == "model '' not found"
    assert (await http.head("/v1/models")).status_code == 405
    assert (await http.head(f"/v1/models/{SMOL}")).status_code == 405
