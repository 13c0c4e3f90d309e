"""/api/blobs, /api/create, /api/copy and /api/delete against the real app on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import SMOL, settings_for
from tests.ggufgen import write_tiny_gguf
from tests.managekit import (
    CHATML_JINJA,
    CHATML_PARAMS,
    StartManaged,
    blob,
    blob_files,
    file_sha,
    lines,
    make_starter,
    manifest_files,
    read_manifest,
    sha,
    statuses,
    temp_files,
)
from tests.store import Store


@pytest.fixture
def mstart(aiohttp_server: Any) -> StartManaged:
    return make_starter(aiohttp_server)


@pytest.fixture
async def empty(
    tmp_path: Path, mstart: StartManaged
) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    """The app over an empty store."""
    store = Store(tmp_path / "empty")
    server = await mstart(settings_for(store))
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=60) as http:
        yield http, store.root


@pytest.fixture
async def smol(
    store: Store, mstart: StartManaged
) -> AsyncIterator[tuple[httpx.AsyncClient, Path, TestServer]]:
    """The app over the SmolLM2 store (smollm2:135m)."""
    server = await mstart(settings_for(store))
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=120) as http:
        yield http, store.root, server


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A small Q8_0 GGUF with a ChatML chat template."""
    return write_tiny_gguf(tmp_path / "tiny.gguf", chat_template=CHATML_JINJA)


async def upload(http: httpx.AsyncClient, path: Path) -> str:
    digest = file_sha(path)
    data = await asyncio.to_thread(path.read_bytes)
    r = await http.post(f"/api/blobs/{digest}", content=data)
    assert r.status_code in (200, 201), r.text
    return digest


# --- blobs ------------------------------------------------------------------------------------


async def test_blob_upload_and_head(empty: tuple[httpx.AsyncClient, Path]) -> None:
    http, root = empty
    data = b"some layer bytes"
    d = sha(data)
    assert (await http.head(f"/api/blobs/{d}")).status_code == 404
    r = await http.post(f"/api/blobs/{d}", content=data)
    assert (r.status_code, r.content) == (201, b"")
    assert blob(root, d) == data
    r = await http.post(f"/api/blobs/{d}", content=b"not even read")
    assert r.status_code == 200
    assert (await http.head(f"/api/blobs/{d}")).status_code == 200
    assert temp_files(root) == []


async def test_an_upload_of_a_blob_that_is_there_is_not_asked_for(
    empty: tuple[httpx.AsyncClient, Path],
) -> None:
    """With `Expect: 100-continue` (curl's way for large bodies) the body is asked for only
    where it is needed, as Go's server does: a blob that exists is answered at once."""
    http, root = empty
    data = b"layer bytes sent with Expect"
    d = sha(data)
    host, port = str(http.base_url).removeprefix("http://").rstrip("/").split(":")

    async def post() -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /api/blobs/{d} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        return await asyncio.wait_for(reader.readline(), 30), reader, writer

    first, reader, writer = await post()
    assert first == b"HTTP/1.1 100 Continue\r\n"  # new: send it
    writer.write(data)
    assert await asyncio.wait_for(reader.readline(), 30) == b"\r\n"  # the 100's end
    assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"HTTP/1.1 201")
    writer.close()
    assert blob(root, d) == data
    first, _, writer = await post()
    assert first.startswith(b"HTTP/1.1 200")  # there already: no 100, the body never sent
    writer.close()


async def test_blob_digest_mismatch_and_bad_digests(empty: tuple[httpx.AsyncClient, Path]) -> None:
    http, root = empty
    wrong = sha(b"other")
    r = await http.post(f"/api/blobs/{wrong}", content=b"payload")
    assert r.status_code == 400
    assert r.json() == {"error": f'digest mismatch, expected "{wrong}", got "{sha(b"payload")}"'}
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "z" * 64, "..%2F..%2Fetc"):
        r = await http.post(f"/api/blobs/{bad}", content=b"x")
        assert r.status_code in (400, 404), bad
        if r.status_code == 400:
            assert r.json() == {"error": "invalid digest format"}
        assert (await http.head(f"/api/blobs/{bad}")).status_code in (400, 404)
    assert blob_files(root) == set()


# --- create from files ------------------------------------------------------------------------


async def test_create_from_files_detects_the_template(
    empty: tuple[httpx.AsyncClient, Path], tiny: Path
) -> None:
    http, root = empty
    d = await upload(http, tiny)
    r = await http.post("/api/create", json={"model": "tiny", "files": {"tiny.gguf": d}})
    assert r.status_code == 200
    got = lines(r)
    assert statuses(got) == [
        "parsing GGUF",
        f"using existing layer {d}",
        "using autodetected template chatml",
        f"creating new layer {sha(CHATML_PARAMS)}",
        "writing manifest",
        "success",
    ]
    m = read_manifest(root, "registry.ollama.ai/library/tiny/latest")
    assert [(x["mediaType"].rsplit(".", 1)[1], x.get("from")) for x in m["layers"]] == [
        ("model", "tiny.gguf"),
        ("template", None),
        ("params", None),
    ]
    assert blob(root, m["layers"][2]["digest"]) == CHATML_PARAMS
    config = orjson.loads(blob(root, m["config"]["digest"]))
    assert config == {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "576",
        "file_type": "Q8_0",
        "architecture": "amd64",
        "os": "linux",
    }
    tags = (await http.get("/api/tags")).json()["models"]
    assert [t["name"] for t in tags] == ["tiny:latest"]
    show = (await http.post("/api/show", json={"model": "tiny"})).json()
    assert show["template"].startswith("{{- range .Messages }}<|im_start|>")
    assert "requires" not in show and "renderer" not in show
    assert temp_files(root) == []
    # What the config blob names comes back in /api/show, in Ollama's key order.
    body = {"model": "tiny2", "files": {"tiny.gguf": d}, "requires": "0.12.0"}
    r = await http.post("/api/create", json=body | {"renderer": "qwen3", "parser": "qwen3"})
    assert r.status_code == 200
    show = (await http.post("/api/show", json={"model": "tiny2"})).json()
    assert (show["requires"], show["renderer"], show["parser"]) == ("0.12.0", "qwen3", "qwen3")
    keys = list(show)
    assert keys.index("system" if "system" in show else "template") < keys.index("renderer")
    assert keys.index("parser") < keys.index("details") and keys[-1] == "requires"


async def test_create_stream_false_returns_the_last_status(
    empty: tuple[httpx.AsyncClient, Path], tiny: Path
) -> None:
    http, _ = empty
    d = await upload(http, tiny)
    r = await http.post(
        "/api/create", json={"model": "tiny", "files": {"tiny.gguf": d}, "stream": False}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"status": "success"}


async def test_create_reuses_the_stored_spelling(
    empty: tuple[httpx.AsyncClient, Path], tiny: Path
) -> None:
    http, root = empty
    d = await upload(http, tiny)
    for name in ("Tiny:V1", "tiny:v1"):
        r = await http.post("/api/create", json={"model": name, "files": {"t.gguf": d}})
        assert statuses(lines(r))[-1] == "success"
    assert manifest_files(root) == {"registry.ollama.ai/library/Tiny/V1"}


async def test_create_from_a_model_with_new_layers(
    smol: tuple[httpx.AsyncClient, Path, TestServer],
) -> None:
    http, root, _ = smol
    base = read_manifest(root, "registry.ollama.ai/library/smollm2/135m")
    weights, license_ = base["layers"][0]["digest"], base["layers"][2]["digest"]
    body = {
        "model": "pirate",
        "from": SMOL,
        "template": "{{ .Prompt }}",
        "system": "You are a pirate.",
        "parameters": {"temperature": 0.5, "num_ctx": 1024},
        "messages": [
            {"role": "user", "content": "Ahoy?"},
            {"role": "assistant", "content": "Arr."},
        ],
        "license": "MIT",
    }
    r = await http.post("/api/create", json=body)
    params = b'{"num_ctx":1024,"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"],"temperature":0.5}\n'
    messages = b'[{"role":"user","content":"Ahoy?"},{"role":"assistant","content":"Arr."}]\n'
    assert statuses(lines(r)) == [
        f"using existing layer {weights}",
        f"using existing layer {license_}",
        f"creating new layer {sha(b'{{ .Prompt }}')}",
        f"creating new layer {sha(b'You are a pirate.')}",
        f"creating new layer {sha(b'MIT')}",
        f"creating new layer {sha(params)}",
        f"creating new layer {sha(messages)}",
        "writing manifest",
        "success",
    ]
    m = read_manifest(root, "registry.ollama.ai/library/pirate/latest")
    assert [x["mediaType"].rsplit(".", 1)[1] for x in m["layers"]] == [
        "model",
        "license",
        "template",
        "system",
        "license",
        "params",
        "messages",
    ]
    assert m["layers"][0]["from"] == SMOL and m["layers"][1]["from"] == SMOL
    assert blob(root, m["layers"][5]["digest"]) == params
    assert blob(root, m["layers"][6]["digest"]) == messages
    show = (await http.post("/api/show", json={"model": "pirate"})).json()
    assert show["system"] == "You are a pirate."
    assert show["details"]["parent_model"] == SMOL
    assert show["messages"][1] == {"role": "assistant", "content": "Arr."}


async def test_create_from_uploaded_gguf_then_chat(
    empty: tuple[httpx.AsyncClient, Path], smollm2: Path
) -> None:
    http, root = empty
    async with ollama.AsyncClient(host=str(http.base_url)) as client:
        digest = await client.create_blob(smollm2)
        done = await client.create(model="smol-copy", files={smollm2.name: digest})
    assert done.status == "success"
    assert digest == file_sha(smollm2)
    m = read_manifest(root, "registry.ollama.ai/library/smol-copy/latest")
    assert blob(root, m["layers"][2]["digest"]) == CHATML_PARAMS
    r = await http.post(
        "/api/chat",
        json={
            "model": "smol-copy",
            "messages": [{"role": "user", "content": "Say hi."}],
            "stream": False,
            "options": {"temperature": 0, "seed": 1, "num_predict": 4},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and r.json()["message"]["role"] == "assistant"


# --- create errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"model": "x"}, "neither 'from' or 'files' was specified"),
        ({"model": "bad name!", "from": SMOL}, "invalid model name"),
        ({"from": SMOL}, "invalid model name"),
        (
            {"model": "x", "files": {"../x.gguf": "sha256:" + "a" * 64}},
            "file path must be relative",
        ),
        (
            {"model": "x", "files": {"/abs.gguf": "sha256:" + "a" * 64}},
            "file path must be relative",
        ),
        ({"model": "x", "files": {"x.gguf": "sha256:nope"}}, "invalid digest format"),
        ({"model": "x", "files": {"x.gguf": ""}}, "invalid digest format"),
        ({"model": "x", "from": "not a name!"}, "invalid model name"),
        (
            {"model": "x", "from": SMOL, "quantize": "q8_0"},
            "quantization is only supported for F16, BF16 and F32 models",
        ),
        (
            {"model": "x", "from": SMOL, "template": "{{ .Prompt "},
            "template error: template: :1: unclosed action",
        ),
        (
            {"model": "x", "from": SMOL, "template": "{{ if .Prompt }}no end"},
            "template error: template: :1: unexpected EOF",
        ),
        (
            {"model": "x", "from": SMOL, "info": {"context_length": -1}},
            'info field "context_length" must be a non-negative integer',
        ),
    ],
)
async def test_create_errors_are_400s_and_leave_nothing(
    smol: tuple[httpx.AsyncClient, Path, TestServer], body: dict[str, Any], error: str
) -> None:
    http, root, _ = smol
    before = (blob_files(root), manifest_files(root))
    r = await http.post("/api/create", json={**body, "stream": False})
    assert (r.status_code, r.json()) == (400, {"error": error})
    assert (blob_files(root), manifest_files(root)) == before
    assert temp_files(root) == []


async def test_create_from_a_file_that_is_not_gguf(empty: tuple[httpx.AsyncClient, Path]) -> None:
    http, root = empty
    data = b"just text, no GGUF magic"
    r = await http.post(f"/api/blobs/{sha(data)}", content=data)
    assert r.status_code == 201
    files = {"model.gguf": sha(data)}
    r = await http.post("/api/create", json={"model": "x", "files": files})
    assert r.status_code == 200  # the stream had started: the error is in-band
    assert statuses(lines(r)) == ["parsing GGUF", "error: supplied file was not in GGUF format"]
    r = await http.post("/api/create", json={"model": "x", "files": files, "stream": False})
    assert (r.status_code, r.json()) == (400, {"error": "supplied file was not in GGUF format"})
    assert manifest_files(root) == set()


async def test_create_from_a_missing_blob_is_a_500(empty: tuple[httpx.AsyncClient, Path]) -> None:
    http, root = empty
    r = await http.post(
        "/api/create",
        json={"model": "x", "files": {"m.gguf": "sha256:" + "1" * 64}, "stream": False},
    )
    assert r.status_code == 500
    assert r.json()["error"].endswith("no such file or directory")
    assert manifest_files(root) == set()


# --- copy and delete --------------------------------------------------------------------------


async def test_copy_then_delete_keeps_shared_blobs(
    smol: tuple[httpx.AsyncClient, Path, TestServer],
) -> None:
    http, root, _ = smol
    r = await http.post("/api/copy", json={"source": SMOL, "destination": "me/smol:copy"})
    assert (r.status_code, r.content) == (200, b"")
    original = root / "manifests/registry.ollama.ai/library/smollm2/135m"
    copy = root / "manifests/registry.ollama.ai/me/smol/copy"
    assert copy.read_bytes() == original.read_bytes()
    blobs = blob_files(root)

    r = await http.request("DELETE", "/api/delete", json={"model": SMOL})
    assert (r.status_code, r.content) == (200, b"")
    assert not original.exists() and not original.parent.exists()
    assert blob_files(root) == blobs  # all still used by the copy
    tags = (await http.get("/api/tags")).json()["models"]
    assert [t["name"] for t in tags] == ["me/smol:copy"]

    r = await http.request("DELETE", "/api/delete", json={"name": "ME/Smol:Copy:local"})
    assert r.status_code == 200  # `:local` names the local model, as in Ollama
    assert blob_files(root) == set()
    assert manifest_files(root) == set()


async def test_copy_and_delete_errors(smol: tuple[httpx.AsyncClient, Path, TestServer]) -> None:
    http, _, _ = smol
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        (
            "POST",
            "/api/copy",
            {"source": "nope", "destination": "x"},
            404,
            'model "nope" not found',
        ),
        (
            "POST",
            "/api/copy",
            {"source": "bad name", "destination": "x"},
            400,
            'source "bad name" is invalid',
        ),
        (
            "POST",
            "/api/copy",
            {"source": SMOL, "destination": "a/b/c/d"},
            400,
            'destination "a/b/c/d" is invalid',
        ),
        ("DELETE", "/api/delete", {"model": "nope"}, 404, "model 'nope' not found"),
        ("DELETE", "/api/delete", {"model": "bad name"}, 400, 'name "bad name" is invalid'),
        ("DELETE", "/api/delete", {}, 400, "model is required"),
    ]
    for method, path, body, status, error in cases:
        r = await http.request(method, path, json=body)
        assert (r.status_code, r.json()) == (status, {"error": error}), (path, body)
    r = await http.request("DELETE", "/api/delete", content=b"")
    assert (r.status_code, r.json()) == (400, {"error": "missing request body"})


async def test_the_official_client_manages_models(
    smol: tuple[httpx.AsyncClient, Path, TestServer], tiny: Path
) -> None:
    http, root, _ = smol
    async with ollama.AsyncClient(host=str(http.base_url)) as client:
        await _manage_with(client, tiny)
    assert not any("t/latest" in m for m in manifest_files(root))


async def _manage_with(client: ollama.AsyncClient, tiny: Path) -> None:
    digest = await client.create_blob(tiny)
    progress = [
        p.status
        async for p in await client.create(model="t", files={"t.gguf": digest}, stream=True)
    ]
    assert progress[-1] == "success"
    assert (await client.copy("t", "t2")).status == "success"
    names = sorted(m.model or "" for m in (await client.list()).models)
    assert names == ["smollm2:135m", "t2:latest", "t:latest"]
    assert (await client.delete("t")).status == "success"
    assert (await client.delete("t2")).status == "success"
    with pytest.raises(ollama.ResponseError) as info:
        await client.delete("t2")
    assert info.value.status_code == 404


async def test_create_from_a_gguf_folder_model_copies_it_into_the_store(
    store: Store, gguf_dir: Path, mstart: StartManaged, smollm2: Path
) -> None:
    server = await mstart(settings_for(store, gguf_dir))
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=120) as http:
        names = [m["name"] for m in (await http.get("/api/tags")).json()["models"]]
        folder_model = next(n for n in names if n != SMOL)
        r = await http.post("/api/create", json={"model": "imported", "from": folder_model})
        got = statuses(lines(r))
        digest = file_sha(smollm2)
        assert got == [
            "parsing GGUF",
            f"using existing layer {digest}",
            "using autodetected template chatml",
            f"creating new layer {sha(CHATML_PARAMS)}",
            "writing manifest",
            "success",
        ]
        m = read_manifest(store.root, "registry.ollama.ai/library/imported/latest")
        size = (await asyncio.to_thread(smollm2.stat)).st_size
        assert m["layers"][0] == {
            "mediaType": "application/vnd.ollama.image.model",
            "digest": digest,
            "size": size,
            "from": folder_model,
        }
