"""Log-probabilities of generated tokens on both protocols, from the real SmolLM2."""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import orjson
from aiohttp.test_utils import TestServer

from tests.conftest import SMOL

GREEDY = {"temperature": 0, "seed": 1, "num_predict": 8}
ASK = [{"role": "user", "content": "Name three colours."}]


def check_entries(entries: list[dict[str, Any]], top: int) -> None:
    for e in entries:
        assert isinstance(e["token"], str) and e["logprob"] <= 0.0
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
        alts = e.get("top_logprobs", [])
        assert len(alts) == top
        assert [a["logprob"] for a in alts] == sorted((a["logprob"] for a in alts), reverse=True)
        if top:
            # Greedy: the chosen token is the likeliest one.
            assert alts[0]["token"] == e["token"] and math.isclose(alts[0]["logprob"], e["logprob"])
        assert math.fsum(math.exp(a["logprob"]) for a in alts) <= 1.0 + 1e-6


async def test_generate_logprobs_cover_every_token(http: httpx.AsyncClient) -> None:
    body = {"model": SMOL, "prompt": "The sky is", "raw": True, "options": GREEDY}
    r = await http.post(
        "/api/generate", json={**body, "stream": False, "logprobs": True, "top_logprobs": 3}
    )
    out = r.json()
    entries = out["logprobs"]
    assert len(entries) == out["eval_count"] == 8
    check_entries(entries, 3)
    assert b"".join(bytes(e["bytes"]) for e in entries).decode() == out["response"]
    assert list(out)[-1] == "logprobs"  # after the metrics, as Ollama orders it

    streamed = await http.post("/api/generate", json={**body, "logprobs": True})
    lines = [orjson.loads(x) for x in streamed.text.splitlines()]
    parts = [e for line in lines for e in line.get("logprobs", [])]
    assert [e["token"] for e in parts] == [e["token"] for e in entries]
    assert all("top_logprobs" not in e for e in parts)  # none asked for: omitted, as Ollama
    for line in lines:
        if line.get("response"):
            assert "".join(e["token"] for e in line["logprobs"]) == line["response"]

    plain = (await http.post("/api/generate", json={**body, "stream": False})).json()
    assert "logprobs" not in plain and plain["response"] == out["response"]


async def test_chat_logprobs_and_bounds(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/chat",
        json={
            "model": SMOL,
            "messages": ASK,
            "stream": False,
            "options": GREEDY,
            "logprobs": True,
            "top_logprobs": 1,
        },
    )
    out = r.json()
    assert len(out["logprobs"]) == out["eval_count"]
    check_entries(out["logprobs"], 1)
    keys = list(out)  # api.ChatResponse: logprobs before the metrics (generate: after)
    assert keys.index("done_reason") < keys.index("logprobs") < keys.index("total_duration")
    for n in (21, -1):
        r = await http.post("/api/chat", json={"model": SMOL, "messages": ASK, "top_logprobs": n})
        assert r.status_code == 400
        assert r.json() == {"error": "top_logprobs must be between 0 and 20"}


async def test_openai_chat_logprobs(server: TestServer) -> None:
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x")
    reply = await client.chat.completions.create(
        model=SMOL,
        messages=ASK,
        max_tokens=8,
        temperature=0,
        seed=1,
        logprobs=True,
        top_logprobs=2,  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert reply.usage is not None and len(content) == reply.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.bytes is not None for t in content)
    assert "".join(t.token for t in content) == choice.message.content

    stream = await client.chat.completions.create(
        model=SMOL,
        messages=ASK,
        max_tokens=8,
        temperature=0,
        seed=1,
        logprobs=True,
        stream=True,  # type: ignore[arg-type]
    )
    tokens = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            tokens += [t.token for t in chunk.choices[0].logprobs.content]
    assert tokens == [t.token for t in content]
    await client.close()


async def test_openai_completions_logprobs(http: httpx.AsyncClient) -> None:
    body = {"model": SMOL, "prompt": "The sky is", "max_tokens": 6, "temperature": 0, "seed": 1}
    r = await http.post("/v1/completions", json={**body, "logprobs": 2})
    choice = r.json()["choices"][0]
    entries = choice["logprobs"]["content"]
    assert len(entries) == r.json()["usage"]["completion_tokens"]
    assert all(len(e["top_logprobs"]) == 2 for e in entries)
    assert "".join(e["token"] for e in entries) == choice["text"]
    r = await http.post("/v1/completions", json={**body, "logprobs": 30})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "top_logprobs must be between 0 and 20"
