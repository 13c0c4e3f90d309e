"""Helpers for the model-management tests (not a test module)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp.test_utils import TestServer

from bridge.app import create_app
from bridge.config import Settings
from bridge.http.ollama.manage import Seams, configure
from bridge.models.pull import TransferPolicy

# Parts of 4 KB, no waits: every code path of a transfer runs in milliseconds.
FAST = TransferPolicy(min_part=4096, max_part=8192, backoff=0.0, tick=0.01, flush=512)

CHATML_JINJA = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_PARAMS = b'{"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"]}\n'

StartManaged = Callable[..., Awaitable[TestServer]]


def make_starter(aiohttp_server: Any) -> StartManaged:
    async def go(settings: Settings, seams: Seams | None = None) -> TestServer:
        app = create_app(settings)
        configure(app, seams or Seams(policy=FAST))
        server: TestServer = await aiohttp_server(app)
        return server

    return go


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


def lines(resp: httpx.Response) -> list[dict[str, Any]]:
    """The NDJSON objects of a progress stream."""
    assert resp.headers["content-type"].startswith("application/x-ndjson"), resp.text
    return [orjson.loads(line) for line in resp.text.splitlines() if line]


def statuses(items: list[dict[str, Any]]) -> list[str]:
    """Each status once, in order (progress lines of one blob collapse to one)."""
    out: list[str] = []
    for item in items:
        s = item.get("status") or ("error: " + item.get("error", ""))
        if not out or out[-1] != s:
            out.append(s)
    return out


def blob_files(root: Path) -> set[str]:
    d = root / "blobs"
    return {p.name for p in d.iterdir()} if d.exists() else set()


def manifest_files(root: Path) -> set[str]:
    d = root / "manifests"
    if not d.exists():
        return set()
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def temp_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".tmp-*"))


def read_manifest(root: Path, name: str) -> dict[str, Any]:
    host, ns, model, tag = name.split("/")
    data: dict[str, Any] = orjson.loads((root / "manifests" / host / ns / model / tag).read_bytes())
    return data


def blob(root: Path, digest: str) -> bytes:
    return (root / "blobs" / digest.replace(":", "-")).read_bytes()
