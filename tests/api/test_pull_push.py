"""/api/pull and /api/push against a registry served by the test on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import orjson
import pytest
from aiohttp.test_utils import TestServer

from bridge.http.ollama.manage import Seams
from tests.conftest import settings_for
from tests.fake_registry import TOKEN, FakeRegistry, sha
from tests.ggufgen import write_tiny_gguf
from tests.managekit import (
    CHATML_JINJA,
    FAST,
    blob,
    blob_files,
    lines,
    make_starter,
    manifest_files,
    statuses,
    temp_files,
)
from tests.store import Store


@dataclass
class Env:
    http: httpx.AsyncClient
    root: Path
    registry: FakeRegistry
    host: str  # "127.0.0.1:<port>" of the registry

    def name(self, repo: str = "library/tiny", tag: str = "latest") -> str:
        return f"{self.host}/{repo}:{tag}"


@pytest.fixture
def weights(tmp_path: Path) -> bytes:
    """A GGUF of a few KB: several parts with the test policy (1-4 KB each)."""
    import numpy as np

    tensors = {"token_embd.weight": np.arange(8 * 256, dtype=np.float32).reshape(8, 256)}
    path = write_tiny_gguf(
        tmp_path / "w.gguf", chat_template=CHATML_JINJA, embedding_length=256, tensors=tensors
    )
    return path.read_bytes()


async def start_env(
    aiohttp_server: Any, tmp_path: Path, registry: FakeRegistry, seams: Seams | None = None
) -> AsyncIterator[Env]:
    reg_server: TestServer = await aiohttp_server(registry.app())
    registry.port = reg_server.port or 0
    store = Store(tmp_path / "models")
    server = await make_starter(aiohttp_server)(settings_for(store), seams)
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=60) as http:
        yield Env(http, store.root, registry, f"127.0.0.1:{registry.port}")


@pytest.fixture
async def env(aiohttp_server: Any, tmp_path: Path, weights: bytes) -> AsyncIterator[Env]:
    registry = FakeRegistry()
    registry.add_model("library/tiny", "latest", [("model", weights), ("license", b"MIT")])
    async for e in start_env(aiohttp_server, tmp_path, registry):
        yield e


async def pull(env: Env, name: str, **extra: Any) -> list[dict[str, Any]]:
    r = await env.http.post("/api/pull", json={"model": name, "insecure": True, **extra})
    assert r.status_code == 200, r.text
    return lines(r)


def expected_pull(digests: list[str]) -> list[str]:
    return [
        "pulling manifest",
        *[f"pulling {d[7:19]}" for d in digests],
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]


def store_manifest(root: Path, host: str, repo: str = "library/tiny", tag: str = "latest") -> bytes:
    return (root / "manifests" / host / repo / tag).read_bytes()


def partial_files(root: Path) -> list[str]:
    return sorted(n for n in blob_files(root) if "-partial" in n)


# --- pull -------------------------------------------------------------------------------------


async def test_pull_downloads_in_parts_and_keeps_the_manifest_bytes(
    env: Env, weights: bytes
) -> None:
    raw = env.registry.manifests[("library/tiny", "latest")]
    doc = orjson.loads(raw)
    digests = [x["digest"] for x in doc["layers"]] + [doc["config"]["digest"]]
    got = await pull(env, env.name())
    assert statuses(got) == expected_pull(digests)
    first = next(x for x in got if x.get("digest") == sha(weights))
    assert first["total"] == len(weights) and first["status"] == f"pulling {sha(weights)[7:19]}"
    assert store_manifest(env.root, env.host) == raw
    for d in digests:
        assert blob(env.root, d) == env.registry.blobs[d]
    ranges = [s.range for s in env.registry.blob_gets(sha(weights))]
    assert len(ranges) == -(-len(weights) // 4096) > 1
    assert partial_files(env.root) == [] and temp_files(env.root) == []
    tags = (await env.http.get("/api/tags")).json()["models"]
    assert [t["name"] for t in tags] == [env.name()]


async def test_a_second_pull_is_all_cache_hits(env: Env) -> None:
    await pull(env, env.name())
    env.registry.seen.clear()
    got = await pull(env, env.name())
    blobs = [x for x in got if x.get("digest")]
    assert blobs and all(x["completed"] == x["total"] for x in blobs)
    assert [s.method for s in env.registry.seen] == ["GET"]  # the manifest only


async def test_pull_stream_false_and_errors(env: Env) -> None:
    r = await env.http.post(
        "/api/pull", json={"model": env.name(), "insecure": True, "stream": False}
    )
    assert (r.status_code, r.json()) == (200, {"status": "success"})
    r = await env.http.post(
        "/api/pull", json={"model": env.name(tag="nope"), "insecure": True, "stream": False}
    )
    assert (r.status_code, r.json()) == (500, {"error": "pull model manifest: file does not exist"})
    # Written from Ollama's stream: its content type has no charset (c.JSON's would).
    assert r.headers["content-type"] == "application/json"
    got = await pull(env, env.name(tag="nope"))
    assert statuses(got) == ["pulling manifest", "error: pull model manifest: file does not exist"]
    r = await env.http.post("/api/pull", json={"model": "bad name!"})
    assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})
    assert r.headers["content-type"] == "application/json; charset=utf-8"  # gin's c.JSON
    r = await env.http.post("/api/pull", json={})
    assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})


async def test_plain_http_needs_insecure(env: Env) -> None:
    r = await env.http.post("/api/pull", json={"model": f"http://{env.name()}"})
    assert (r.status_code, r.json()) == (500, {"error": "insecure protocol http"})


async def test_a_registry_500_on_the_manifest(env: Env) -> None:
    env.registry.faults["manifest:library/tiny:latest"].append(("status", 500))
    got = await pull(env, env.name())
    assert statuses(got)[-1] == "error: pull model manifest: 500: registry trouble"
    assert manifest_files(env.root) == set()


async def test_token_auth(aiohttp_server: Any, tmp_path: Path, weights: bytes) -> None:
    registry = FakeRegistry(auth=True)
    registry.add_model("library/tiny", "latest", [("model", weights)])
    async for env in start_env(aiohttp_server, tmp_path, registry):
        got = await pull(env, env.name())
        assert statuses(got)[-1] == "success"
        assert registry.tokens_issued[0]["service"] == ["fake-registry"]
        assert registry.tokens_issued[0]["scope"] == ["repository:library/tiny:pull"]
        authed = [s for s in registry.seen if s.path.startswith("/v2/") and s.auth]
        assert authed and all(s.auth == f"Bearer {TOKEN}" for s in authed)


async def test_token_realm_on_another_host_is_refused(
    aiohttp_server: Any, tmp_path: Path, weights: bytes
) -> None:
    registry = FakeRegistry(auth=True, realm_host="evil.example:80")
    registry.add_model("library/tiny", "latest", [("model", weights)])
    async for env in start_env(aiohttp_server, tmp_path, registry):
        got = await pull(env, env.name())
        assert statuses(got)[-1] == (
            'error: pull model manifest: realm host "evil.example:80" does not match '
            f'original host "{env.host}"'
        )
        assert registry.tokens_issued == []


async def test_blobs_from_a_cdn_redirect_go_without_the_token(
    aiohttp_server: Any, tmp_path: Path, weights: bytes
) -> None:
    registry = FakeRegistry(auth=True, cdn=True)
    registry.add_model("library/tiny", "latest", [("model", weights)])
    async for env in start_env(aiohttp_server, tmp_path, registry):
        assert statuses(await pull(env, env.name()))[-1] == "success"
        cdn = registry.blob_gets(sha(weights))
        assert cdn and all(s.path.startswith("/cdn/") and s.auth is None for s in cdn)
        assert blob(env.root, sha(weights)) == weights


async def test_a_connection_reset_mid_part_resumes_where_it_stopped(
    env: Env, weights: bytes
) -> None:
    env.registry.faults[sha(weights)].append(("reset", 1000))
    got = await pull(env, env.name())
    assert statuses(got)[-1] == "success"
    assert blob(env.root, sha(weights)) == weights
    ranges = [s.range for s in env.registry.blob_gets(sha(weights))]
    # The dropped part is asked for again from byte 1000 of its range, not from its start.
    assert ranges.count("bytes=0-4095") == 1
    assert "bytes=1000-4095" in ranges


async def test_an_interrupted_pull_resumes_from_ollamas_part_files(
    aiohttp_server: Any, tmp_path: Path, weights: bytes
) -> None:
    registry = FakeRegistry()
    registry.add_model("library/tiny", "latest", [("model", weights)])
    once = Seams(policy=dataclasses.replace(FAST, max_retries=1))
    async for env in start_env(aiohttp_server, tmp_path, registry, once):
        registry.faults[sha(weights)].append(("reset", 1500))
        got = await pull(env, env.name())
        assert statuses(got)[-1].startswith("error: max retries exceeded")
        assert manifest_files(env.root) == set()
        name = "sha256-" + sha(weights)[7:]
        assert f"{name}-partial" in blob_files(env.root) and name not in blob_files(env.root)
        part0 = json.loads((env.root / "blobs" / f"{name}-partial-0").read_text())
        assert part0 == {"N": 0, "Offset": 0, "Size": 4096, "Completed": 1500}

        registry.seen.clear()
        assert statuses(await pull(env, env.name()))[-1] == "success"
        ranges = [s.range for s in registry.blob_gets(sha(weights))]
        assert "bytes=1500-4095" in ranges and "bytes=0-4095" not in ranges
        assert blob(env.root, sha(weights)) == weights
        assert partial_files(env.root) == []


async def test_a_digest_mismatch_fails_and_leaves_nothing(env: Env, weights: bytes) -> None:
    env.registry.faults[sha(weights)].append(("corrupt", 0))
    got = await pull(env, env.name())
    assert statuses(got)[-2] == "verifying sha256 digest"
    error = got[-1]["error"]
    assert error.startswith(
        f"digest mismatch, file must be downloaded again: want {sha(weights)}, got sha256:"
    )
    # No manifest and no blob under a final name; the bad download is gone, the good ones
    # stay as partial files for the next attempt.
    assert manifest_files(env.root) == set()
    assert all("-partial" in name for name in blob_files(env.root))
    assert not any(sha(weights)[7:] in name for name in blob_files(env.root))
    env.registry.seen.clear()
    assert statuses(await pull(env, env.name()))[-1] == "success"
    assert not env.registry.blob_gets(sha(b"MIT"))  # kept from the failed attempt
    assert partial_files(env.root) == []


async def test_identical_concurrent_pulls_share_one_download(env: Env, weights: bytes) -> None:
    env.registry.gate = asyncio.Event()
    target = f"pulling {sha(weights)[7:19]}"

    async def started(lines_iter: AsyncIterator[str]) -> None:
        async for line in lines_iter:
            if orjson.loads(line).get("status") == target:
                return

    async with (
        env.http.stream("POST", "/api/pull", json={"model": env.name(), "insecure": True}) as a,
        env.http.stream("POST", "/api/pull", json={"model": env.name(), "insecure": True}) as b,
    ):
        a_lines, b_lines = a.aiter_lines(), b.aiter_lines()
        await started(a_lines)
        await started(b_lines)  # both wait on the same (held) download
        env.registry.gate.set()
        rest_a = [orjson.loads(x) async for x in a_lines]
        rest_b = [orjson.loads(x) async for x in b_lines]
    assert rest_a[-1] == {"status": "success"} and rest_b[-1] == {"status": "success"}
    ranges = [s.range for s in env.registry.blob_gets(sha(weights))]
    assert len(ranges) == len(set(ranges)) == -(-len(weights) // 4096)
    assert blob(env.root, sha(weights)) == weights


async def test_pulling_a_new_version_removes_unused_layers(env: Env, weights: bytes) -> None:
    await pull(env, env.name())
    env.registry.add_model("library/tiny", "latest", [("model", weights), ("license", b"Apache")])
    got = await pull(env, env.name())
    assert "removing unused layers" in statuses(got)
    assert "sha256-" + sha(b"MIT")[7:] not in blob_files(env.root)
    assert "sha256-" + sha(b"Apache")[7:] in blob_files(env.root)


async def test_create_from_a_model_that_is_not_here_pulls_it(env: Env) -> None:
    r = await env.http.post(
        "/api/create",
        json={"model": "mine", "from": f"http://{env.name()}", "system": "Be brief."},
    )
    got = statuses(lines(r))
    assert got[0] == "pulling manifest" and got[-1] == "success"
    assert "writing manifest" in got
    assert len([f for f in manifest_files(env.root)]) == 2


# --- push -------------------------------------------------------------------------------------


async def test_push_round_trip(env: Env, weights: bytes) -> None:
    w = sha(weights)
    r = await env.http.post(f"/api/blobs/{w}", content=weights)
    assert r.status_code == 201
    r = await env.http.post("/api/create", json={"model": "local", "files": {"w.gguf": w}})
    assert statuses(lines(r))[-1] == "success"
    target = env.name("me/tiny", "v1")
    assert (
        await env.http.post("/api/copy", json={"source": "local", "destination": target})
    ).status_code == 200
    local_raw = store_manifest(env.root, env.host, "me/tiny", "v1")
    local_blobs = {d: blob(env.root, d) for d in _digests(local_raw)}

    r = await env.http.post("/api/push", json={"model": target, "insecure": True})
    got = lines(r)
    assert statuses(got) == [
        "retrieving manifest",
        *[f"pushing {d[7:19]}" for d in _digests(local_raw)],
        "pushing manifest",
        "success",
    ]
    assert env.registry.manifests[("me/tiny", "v1")] == local_raw
    patches = [s for s in env.registry.seen if s.method == "PATCH"]
    assert len(patches) >= 2  # the weights went up in several parts

    for name in (target, "local"):
        assert (
            await env.http.request("DELETE", "/api/delete", json={"model": name})
        ).status_code == 200
    assert blob_files(env.root) == set()

    assert statuses(await pull(env, target))[-1] == "success"
    assert store_manifest(env.root, env.host, "me/tiny", "v1") == local_raw
    assert {d: blob(env.root, d) for d in _digests(local_raw)} == local_blobs

    env.registry.seen.clear()
    r = await env.http.post("/api/push", json={"model": target, "insecure": True})
    pushed = [x for x in lines(r) if x.get("digest")]
    assert pushed and all(x["completed"] == x["total"] for x in pushed)
    assert not [s for s in env.registry.seen if s.method in ("PATCH", "POST")]


async def test_push_errors(env: Env) -> None:
    r = await env.http.post("/api/push", json={})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    r = await env.http.post("/api/push", json={"model": env.name("me/none"), "insecure": True})
    got = statuses(lines(r))
    assert got[:2] == ["retrieving manifest", "couldn't retrieve manifest"]
    assert got[-1].endswith("no such file or directory")


async def test_the_official_client_pulls_and_pushes(env: Env) -> None:
    async with ollama.AsyncClient(host=str(env.http.base_url)) as client:
        done = await client.pull(env.name(), insecure=True)
        assert done.status == "success"
        progress = [p async for p in await client.pull(env.name(), insecure=True, stream=True)]
        assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
        await client.copy(env.name(), env.name("me/copy"))
        done = await client.push(env.name("me/copy"), insecure=True)
        assert done.status == "success"
        with pytest.raises(ollama.ResponseError):
            await client.pull(env.name(tag="missing"), insecure=True)
    assert (
        env.registry.manifests[("me/copy", "latest")]
        == env.registry.manifests[("library/tiny", "latest")]
    )


def _digests(raw: bytes) -> list[str]:
    doc = orjson.loads(raw)
    return [x["digest"] for x in doc["layers"]] + [doc["config"]["digest"]]
