"""`/api/create` with `quantize`: an F16 GGUF written by the test, quantized by llama.cpp's own
quantizer, then loaded and run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bridge.engine.quantize import QuantizeError, canonical_type
from bridge.models.gguf_info import read_gguf
from tests.conftest import settings_for
from tests.managekit import blob_files, file_sha, lines, make_starter, read_manifest, temp_files
from tests.store import Store
from tests.tinyllama import write_tiny_llama


@pytest.fixture
def f16(tmp_path: Path) -> Path:
    return write_tiny_llama(tmp_path / "tiny-f16.gguf")


@pytest.fixture
async def env(
    aiohttp_server: Any, tmp_path: Path, f16: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Path, str]]:
    store = Store(tmp_path / "models")
    server = await make_starter(aiohttp_server)(settings_for(store))
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=120) as http:
        digest = file_sha(f16)
        data = await asyncio.to_thread(f16.read_bytes)
        r = await http.post(f"/api/blobs/{digest}", content=data)
        assert r.status_code == 201
        yield http, store.root, digest


def test_type_names() -> None:
    assert canonical_type("q4_k_m") == "Q4_K_M"
    assert canonical_type("Q4_K") == "Q4_K_M"
    with pytest.raises(QuantizeError) as info:
        canonical_type("q9_z")
    assert str(info.value).startswith(
        "unsupported quantization type q9_z - supported types are F32, F16"
    )


async def test_quantize_then_load_and_run(env: tuple[httpx.AsyncClient, Path, str]) -> None:
    http, root, f16_digest = env
    r = await http.post(
        "/api/create",
        json={"model": "tiny-q", "files": {"tiny.gguf": f16_digest}, "quantize": "q4_K_M"},
    )
    got = lines(r)
    quant = [x for x in got if x.get("digest") == "0000000000000000000"]
    assert quant and all(x["status"] == "quantizing F16 model to Q4_K_M" for x in quant)
    assert quant[-1]["completed"] == quant[-1]["total"] > 0
    m = read_manifest(root, "registry.ollama.ai/library/tiny-q/latest")
    model = m["layers"][0]
    statuses = [x["status"] for x in got if "digest" not in x]
    assert statuses == [
        "parsing GGUF",
        "verifying conversion",
        f"creating new layer {model['digest']}",
        "writing manifest",
        "success",
    ]
    path = root / "blobs" / model["digest"].replace(":", "-")
    assert read_gguf(path).file_type == "Q4_K_M"
    assert (
        model["size"]
        == path.stat().st_size
        < (root / "blobs" / f16_digest.replace(":", "-")).stat().st_size
    )
    assert "from" not in model
    config = orjson.loads((root / "blobs" / m["config"]["digest"].replace(":", "-")).read_bytes())
    assert config["file_type"] == "Q4_K_M"
    assert temp_files(root) == []

    r = await http.post(
        "/api/generate",
        json={
            "model": "tiny-q",
            "prompt": "hello",
            "raw": True,
            "stream": False,
            "options": {"num_predict": 3, "temperature": 0},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True


async def test_quantize_to_the_same_type_keeps_the_file(
    env: tuple[httpx.AsyncClient, Path, str],
) -> None:
    http, root, f16_digest = env
    r = await http.post(
        "/api/create",
        json={"model": "same", "files": {"t.gguf": f16_digest}, "quantize": "F16", "stream": False},
    )
    assert r.json() == {"status": "success"}
    assert (
        read_manifest(root, "registry.ollama.ai/library/same/latest")["layers"][0]["digest"]
        == f16_digest
    )


async def test_quantize_errors_leave_nothing(env: tuple[httpx.AsyncClient, Path, str]) -> None:
    http, root, f16_digest = env
    before = blob_files(root)
    r = await http.post(
        "/api/create",
        json={"model": "x", "files": {"t.gguf": f16_digest}, "quantize": "Q9_Z", "stream": False},
    )
    assert r.status_code == 400
    assert r.json()["error"].startswith("unsupported quantization type Q9_Z - supported types are")
    assert blob_files(root) == before
    assert not (root / "manifests/registry.ollama.ai/library/x").exists()
