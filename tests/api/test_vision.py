"""Images on both protocols through a real projector: SmolLM2 with a tiny LLaVA-style mmproj
that the tests write (random weights: what it says about an image means nothing, but every
image goes through the projector into the model's context)."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import PARAMS, SMOL, Start, settings_for
from tests.mmproj import IMAGE_TOKENS, write_tiny_mmproj
from tests.store import Store

VLM = "smolvlm"
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 6}


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG, written by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


RED = base64.b64encode(png(40, 30, (255, 0, 0))).decode()
BLUE = base64.b64encode(png(12, 20, (0, 0, 255))).decode()


@pytest.fixture(scope="module")
def mmproj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mmproj(tmp_path_factory.mktemp("vision") / "mmproj-tiny.gguf")


@pytest.fixture
async def server(
    start: Start, store: Store, mmproj: Path, smollm2: Path, tmp_path: Path
) -> TestServer:
    store.add(f"{VLM}:latest", model=smollm2, params=PARAMS, projector=mmproj)
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "SmolVLM-like.gguf").symlink_to(smollm2)
    (folder / "mmproj-SmolVLM-like.gguf").symlink_to(mmproj)
    return await start(settings_for(store, folder, num_parallel=2))


@pytest.fixture
async def http(server: TestServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=300) as client:
        yield client


async def chat(
    http: httpx.AsyncClient, model: str, images: list[str], **extra: Any
) -> httpx.Response:
    message: dict[str, Any] = {"role": "user", "content": "What is in this picture?"}
    if images:
        message["images"] = images
    body = {"model": model, "messages": [message], "stream": False, "options": GREEDY, **extra}
    return await http.post("/api/chat", json=body)


async def test_vision_capability_from_a_projector_layer_or_file(http: httpx.AsyncClient) -> None:
    for name in (VLM, "SmolVLM-like"):
        shown = (await http.post("/api/show", json={"model": name})).json()
        assert shown["capabilities"] == ["completion", "vision"], name
    plain = (await http.post("/api/show", json={"model": SMOL})).json()
    assert "vision" not in plain["capabilities"]


@pytest.mark.parametrize("model", [VLM, "SmolVLM-like"])
async def test_each_image_takes_its_projector_tokens(http: httpx.AsyncClient, model: str) -> None:
    text = (await chat(http, model, [])).json()
    one = (await chat(http, model, [RED])).json()
    two = (await chat(http, model, [RED, BLUE])).json()
    assert one["done"] and one["eval_count"] == 6 and one["message"]["role"] == "assistant"
    assert one["prompt_eval_count"] == text["prompt_eval_count"] + IMAGE_TOKENS
    assert two["prompt_eval_count"] == text["prompt_eval_count"] + 2 * IMAGE_TOKENS
    again = (await chat(http, model, [RED])).json()  # the image's KV cells are reused
    assert again["message"]["content"] == one["message"]["content"]


async def test_clients_send_images(server: TestServer) -> None:
    base = str(server.make_url(""))
    async with ollama.AsyncClient(host=base) as client:
        reply = await client.chat(
            VLM,
            messages=[
                {"role": "user", "content": "Describe it.", "images": [png(8, 8, (0, 255, 0))]}
            ],
            options=GREEDY,
        )
        assert reply.done and reply.eval_count == 6
        gen = await client.generate(VLM, prompt="Describe it.", images=[RED], options=GREEDY)
        assert gen.done and gen.eval_count == 6
    oai = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x")
    r = await oai.chat.completions.create(
        model=VLM,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe it."},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{RED}"}},
                ],
            }
        ],
        max_tokens=6,
        temperature=0,
    )
    assert r.usage is not None and r.usage.completion_tokens == 6
    await oai.close()


async def test_images_and_text_share_the_batch(http: httpx.AsyncClient) -> None:
    replies = await asyncio.gather(
        chat(http, VLM, [RED]), chat(http, VLM, []), chat(http, VLM, [BLUE])
    )
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert all(r.json()["eval_count"] == 6 for r in replies)


async def test_image_errors(http: httpx.AsyncClient) -> None:
    r = await chat(http, SMOL, [RED])
    assert r.status_code == 400
    assert r.json() == {"error": "registry.ollama.ai/library/smollm2:135m does not support vision"}
    r = await http.post("/api/generate", json={"model": SMOL, "prompt": "hi", "images": [RED]})
    assert r.status_code == 400 and "does not support vision" in r.json()["error"]
    junk = base64.b64encode(b"this is not an image").decode()
    r = await chat(http, VLM, [junk])
    assert r.status_code == 400 and "failed to decode an image" in r.json()["error"]
    r = await chat(http, VLM, ["%%%"])
    assert r.status_code == 400 and r.json()["error"].startswith("illegal base64 data")
    # The model still serves after bad input.
    assert (await chat(http, VLM, [RED])).status_code == 200


async def test_an_image_in_a_truncated_message_is_left_out(http: httpx.AsyncClient) -> None:
    # Ollama counts 768 tokens an image when fitting a chat: at num_ctx 512 the first turn,
    # image and all, is dropped, and the image must not come back anywhere.
    turns = [
        {"role": "user", "content": "Look at this.", "images": [RED]},
        {"role": "assistant", "content": "A red picture."},
        {"role": "user", "content": "And now?"},
    ]
    opts = {**GREEDY, "num_ctx": 512}
    body = {"model": VLM, "stream": False, "options": opts}
    cut = (await http.post("/api/chat", json={**body, "messages": turns})).json()
    rest = (await http.post("/api/chat", json={**body, "messages": turns[1:]})).json()
    assert cut["prompt_eval_count"] == rest["prompt_eval_count"]
    assert cut["message"]["content"] == rest["message"]["content"]
