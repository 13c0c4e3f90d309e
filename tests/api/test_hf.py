"""`ollama pull hf.co/<user>/<repo>[:<quant or file>]` against a fake hub (HF_ENDPOINT)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from bridge.http.ollama.manage import Seams
from tests.conftest import settings_for
from tests.fake_hf import FakeHub
from tests.ggufgen import write_tiny_gguf
from tests.managekit import (
    CHATML_JINJA,
    CHATML_PARAMS,
    FAST,
    blob,
    blob_files,
    lines,
    make_starter,
    manifest_files,
    read_manifest,
    sha,
    statuses,
)
from tests.store import Store


@dataclass
class Env:
    http: httpx.AsyncClient
    root: Path
    hub: FakeHub
    files: dict[str, bytes]


def gguf(tmp_path: Path, name: str, **kw: Any) -> bytes:
    return write_tiny_gguf(tmp_path / name, chat_template=CHATML_JINJA, **kw).read_bytes()


@pytest.fixture
def hub(tmp_path: Path) -> FakeHub:
    files = {
        "Tiny-Q8_0.gguf": gguf(tmp_path, "a.gguf"),
        "Tiny-Q4_K_M.gguf": gguf(tmp_path, "b.gguf", embedding_length=128),
        "mmproj-Tiny-f16.gguf": write_tiny_gguf(
            tmp_path / "p.gguf", arch="clip", extra={"general.type": "mmproj"}
        ).read_bytes(),
        "README.md": b"# tiny",
    }
    return FakeHub(repos={"someone/Tiny-GGUF": files})


async def start(
    aiohttp_server: Any, tmp_path: Path, hub: FakeHub, *, via_env: bool = False
) -> AsyncIterator[Env]:
    hub_server: TestServer = await aiohttp_server(hub.app())
    endpoint = str(hub_server.make_url("")).rstrip("/")
    store = Store(tmp_path / "models")
    seams = Seams(policy=FAST, hf_endpoint=None if via_env else endpoint)
    server = await make_starter(aiohttp_server)(settings_for(store), seams)
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=60) as http:
        yield Env(http, store.root, hub, hub.repos["someone/Tiny-GGUF"])


@pytest.fixture
async def env(aiohttp_server: Any, tmp_path: Path, hub: FakeHub) -> AsyncIterator[Env]:
    async for e in start(aiohttp_server, tmp_path, hub):
        yield e


async def pull(env: Env, name: str) -> list[dict[str, Any]]:
    r = await env.http.post("/api/pull", json={"model": name})
    assert r.status_code == 200, r.text
    return lines(r)


async def test_latest_is_q4_k_m_with_its_projector_template_and_params(env: Env) -> None:
    got = await pull(env, "hf.co/someone/Tiny-GGUF")
    assert statuses(got)[-1] == "success", got[-1]
    m = read_manifest(env.root, "hf.co/someone/Tiny-GGUF/latest")
    kinds = [(x["mediaType"].rsplit(".", 1)[1], x["digest"]) for x in m["layers"]]
    model, proj = env.files["Tiny-Q4_K_M.gguf"], env.files["mmproj-Tiny-f16.gguf"]
    assert [k for k, _ in kinds] == ["model", "projector", "template", "params"]
    assert kinds[0][1] == sha(model) and kinds[1][1] == sha(proj)
    assert blob(env.root, kinds[0][1]) == model
    assert blob(env.root, kinds[3][1]) == CHATML_PARAMS
    assert statuses(got) == [
        "pulling manifest",
        *[f"pulling {d[7:19]}" for _, d in kinds],
        f"pulling {m['config']['digest'][7:19]}",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    tags = (await env.http.get("/api/tags")).json()["models"]
    assert [t["name"] for t in tags] == ["hf.co/someone/Tiny-GGUF:latest"]
    show = (await env.http.post("/api/show", json={"model": "hf.co/someone/Tiny-GGUF"})).json()
    assert show["template"].startswith("{{- range .Messages }}<|im_start|>")
    assert "vision" in show["capabilities"]
    assert any(s.startswith("range Tiny-Q4_K_M.gguf") for s in env.hub.seen)


async def test_a_quant_tag_picks_its_file(env: Env) -> None:
    assert statuses(await pull(env, "hf.co/someone/Tiny-GGUF:q8_0"))[-1] == "success"
    m = read_manifest(env.root, "hf.co/someone/Tiny-GGUF/q8_0")
    assert m["layers"][0]["digest"] == sha(env.files["Tiny-Q8_0.gguf"])
    assert statuses(await pull(env, "hf.co/someone/Tiny-GGUF:Tiny-Q4_K_M.gguf"))[-1] == "success"


async def test_errors(env: Env) -> None:
    got = await pull(env, "hf.co/someone/Tiny-GGUF:Q2_K")
    assert got[-1]["error"].startswith("pull model manifest: no GGUF file matches 'Q2_K'")
    got = await pull(env, "hf.co/nobody/Nothing")
    assert got[-1] == {"error": "pull model manifest: file does not exist"}
    env.hub.corrupt.add("Tiny-Q8_0.gguf")
    got = await pull(env, "hf.co/someone/Tiny-GGUF:Q8_0")
    assert got[-1]["error"].startswith(
        f"digest mismatch, file must be downloaded again: want {sha(env.files['Tiny-Q8_0.gguf'])}"
    )
    assert manifest_files(env.root) == set()
    assert all("-partial" in n for n in blob_files(env.root))


async def test_hf_endpoint_from_the_environment(
    aiohttp_server: Any, tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_server: TestServer = await aiohttp_server(hub.app())
    monkeypatch.setenv("HF_ENDPOINT", str(hub_server.make_url("")).rstrip("/"))
    async for env in start(aiohttp_server, tmp_path, hub, via_env=True):
        assert statuses(await pull(env, "huggingface.co/someone/Tiny-GGUF:Q8_0"))[-1] == "success"
