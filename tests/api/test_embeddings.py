"""Embeddings on both protocols over a real embedding model: SmolLM2 whose header gains a
pooling type (written by the tests with the `gguf` package), served from an Ollama store."""

from __future__ import annotations

import asyncio
import base64
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import openai
import pytest
from aiohttp.test_utils import TestServer
from gguf import GGUFValueType

from tests.conftest import SMOL, Start, settings_for
from tests.ggufgen import copy_with_keys
from tests.store import Store

EMBED = "smol-embed"
TEXTS = ["the cat sat on the mat", "a kitten rested on the rug", "markets fell sharply today"]


@pytest.fixture(scope="module")
def embedding_gguf(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Path:
    out = tmp_path_factory.mktemp("embed") / "smollm2-mean.gguf"
    return copy_with_keys(smollm2, out, **{"{arch}.pooling_type": (1, GGUFValueType.UINT32)})


@pytest.fixture
async def server(start: Start, store: Store, embedding_gguf: Path) -> TestServer:
    store.add(EMBED, model=embedding_gguf, template=None)
    return await start(settings_for(store))


@pytest.fixture
async def http(server: TestServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=300) as client:
        yield client


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


async def embed(http: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await http.post("/api/embed", json={"model": EMBED, **body})


async def test_official_client_embeds_a_batch(server: TestServer) -> None:
    async with ollama.AsyncClient(host=str(server.make_url(""))) as client:
        reply = await client.embed(model=EMBED, input=TEXTS)
    vectors = reply.embeddings
    assert len(vectors) == 3 and {len(v) for v in vectors} == {576}
    assert all(abs(norm(v) - 1.0) < 1e-5 for v in vectors)
    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])
    assert reply.model == EMBED
    assert reply.prompt_eval_count and reply.prompt_eval_count >= 3 * 5
    assert reply.total_duration and reply.load_duration


async def test_a_string_and_a_one_item_list_agree(http: httpx.AsyncClient) -> None:
    one = (await embed(http, input=TEXTS[1])).json()
    listed = (await embed(http, input=[TEXTS[0], TEXTS[1]])).json()
    assert list(one) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    assert (
        max(abs(x - y) for x, y in zip(one["embeddings"][0], listed["embeddings"][1], strict=True))
        < 1e-4
    )


async def test_vectors_are_sent_as_float32(http: httpx.AsyncClient) -> None:
    text = (await embed(http, input="hello")).text
    numbers = re.findall(r"-?\d[\d.]*(?:e-?\d+)?", text.split('"embeddings":')[1].split("]]")[0])
    assert len(numbers) == 576
    # Go writes float32 in its shortest form: at most 9 significant digits.
    assert (
        max(len(n.split("e")[0].replace("-", "").replace(".", "").lstrip("0")) for n in numbers)
        <= 9
    )


async def test_dimensions_cut_and_normalise_again(http: httpx.AsyncClient) -> None:
    full = (await embed(http, input="hello")).json()["embeddings"][0]
    cut = (await embed(http, input="hello", dimensions=8)).json()["embeddings"][0]
    assert len(cut) == 8 and abs(norm(cut) - 1.0) < 1e-5
    scale = norm(full[:8])
    assert max(abs(c - f / scale) for c, f in zip(cut, full[:8], strict=True)) < 1e-4


async def test_truncation(http: httpx.AsyncClient) -> None:
    long = "word " * 200
    r = await embed(http, input=long, truncate=False, options={"num_ctx": 64})
    assert r.status_code == 400
    assert r.json() == {"error": "the input length exceeds the context length"}
    r = await embed(http, input=long, options={"num_ctx": 64})
    assert r.status_code == 200
    assert r.json()["prompt_eval_count"] == 64


@pytest.mark.parametrize("value", ["", None, []], ids=["empty-string", "null", "empty-list"])
async def test_no_input_loads_the_model_and_answers_nothing(
    http: httpx.AsyncClient, value: Any
) -> None:
    r = await embed(http, input=value)
    assert r.status_code == 200 and r.json() == {"model": EMBED, "embeddings": []}
    assert [m["name"] for m in (await http.get("/api/ps")).json()["models"]] == [f"{EMBED}:latest"]
    r = await embed(http, input=value, keep_alive=0)
    assert r.json() == {"model": EMBED, "embeddings": []}
    assert (await http.get("/api/ps")).json()["models"] == []


@pytest.mark.parametrize("value", [3, {"a": "b"}, ["ok", 2], [[1, 2]]])
async def test_invalid_input_types(http: httpx.AsyncClient, value: Any) -> None:
    r = await embed(http, input=value)
    assert r.status_code == 400 and r.json() == {"error": "invalid input type"}


async def test_model_errors(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/embed", json={"input": "x"})
    assert r.status_code == 404 and r.json() == {"error": "model '' not found"}
    r = await http.post("/api/embed", json={"model": "nope", "input": "x"})
    assert r.status_code == 404
    assert r.json() == {"error": 'model "nope" not found, try pulling it first'}
    r = await http.post("/api/embed", json={"model": SMOL, "input": "x"})
    assert r.status_code == 400 and r.json() == {"error": "this model does not support embeddings"}
    r = await http.post(
        "/api/chat", json={"model": EMBED, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 400 and r.json() == {"error": f'"{EMBED}" does not support chat'}
    show = (await http.post("/api/show", json={"model": EMBED})).json()
    assert show["capabilities"] == ["embedding"]


async def test_legacy_embeddings_are_not_normalised(http: httpx.AsyncClient) -> None:
    legacy = await http.post("/api/embeddings", json={"model": EMBED, "prompt": TEXTS[0]})
    assert legacy.status_code == 200 and list(legacy.json()) == ["embedding"]
    raw = legacy.json()["embedding"]
    current = (await embed(http, input=TEXTS[0])).json()["embeddings"][0]
    assert len(raw) == 576 and abs(norm(raw) - 1.0) > 1e-3
    assert cos(raw, current) > 0.9999
    empty = await http.post("/api/embeddings", json={"model": EMBED, "prompt": ""})
    assert empty.json() == {"embedding": []}
    r = await http.post("/api/embeddings", json={"prompt": "x"})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    r = await http.post("/api/embeddings", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404


async def test_concurrent_requests_each_get_their_own_vectors(http: httpx.AsyncClient) -> None:
    alone = [(await embed(http, input=t)).json()["embeddings"][0] for t in TEXTS]
    replies = await asyncio.gather(*(embed(http, input=t) for t in TEXTS * 2))
    for i, r in enumerate(replies):
        got = r.json()["embeddings"][0]
        assert max(abs(x - y) for x, y in zip(got, alone[i % 3], strict=True)) < 1e-4


async def test_openai_client_floats_and_base64(server: TestServer) -> None:
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x")
    floats = await client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert floats.model == EMBED and floats.object == "list"
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    vec = floats.data[0].embedding
    assert len(vec) == 576 and abs(norm(vec) - 1.0) < 1e-5
    b64 = await client.embeddings.create(model=EMBED, input=TEXTS[0], dimensions=16)
    got = b64.data[0].embedding  # the client asked for base64 and decoded it
    assert len(got) == 16 and abs(norm(got) - 1.0) < 1e-5
    await client.close()


async def test_openai_raw_base64_and_errors(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/embeddings", json={"model": EMBED, "input": "hi", "encoding_format": "base64"}
    )
    item = r.json()["data"][0]
    vec = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    assert vec.shape == (576,) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5

    async def error(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        r = await http.post("/v1/embeddings", json={"model": EMBED, **body})
        return r.status_code, r.json()["error"]

    assert await error({"input": None}) == (
        400,
        {
            "message": "invalid input",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        },
    )
    status, err = await error({"input": []})
    assert (status, err["message"]) == (400, "invalid input")
    status, err = await error({"input": [1, 2, 3]})
    assert (status, err["message"]) == (400, "invalid input type")
    status, err = await error({"input": "x", "encoding_format": "int8"})
    assert status == 400
    assert err["message"] == (
        "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64']."
    )
    r = await http.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


async def test_an_embedding_model_is_not_loaded_for_generate_or_chat(
    http: httpx.AsyncClient,
) -> None:
    r = await http.post("/api/generate", json={"model": EMBED})
    assert r.status_code == 400 and r.json() == {"error": f'"{EMBED}" does not support generate'}
    r = await http.post("/api/chat", json={"model": EMBED})
    assert r.status_code == 400 and r.json() == {"error": f'"{EMBED}" does not support chat'}
    r = await http.post("/api/generate", json={"model": EMBED, "keep_alive": 0})
    assert r.status_code == 200 and r.json()["done_reason"] == "unload"  # as in Ollama
