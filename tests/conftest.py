"""Shared fixtures: real apps on loopback over real model files."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from bridge.app import create_app
from bridge.config import Settings, load_settings
from bridge.engine.llamacpp import gpus
from bridge.hardware import context_tier
from tests.store import Store, smollm2_path

SMOL = "smollm2:135m"
PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"]}

Start = Callable[..., Awaitable[TestServer]]


@functools.cache
def has_gpu() -> bool:
    """Whether this machine's llama.cpp offloads to a GPU (never on CI)."""
    return bool(gpus())


def default_smol_ctx() -> int:
    """The num_ctx SmolLM2 (trained on 8192) gets by default here: 4096 without a GPU, else
    Ollama's VRAM tier."""
    return min(8192, context_tier(gpus()))


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_path()


@pytest.fixture
def store(tmp_path: Path, smollm2: Path) -> Store:
    """An Ollama store holding SmolLM2 as `smollm2:135m`, as `ollama pull` would leave it."""
    s = Store(tmp_path / "models")
    s.add(SMOL, model=smollm2, params=PARAMS, license="Apache-2.0")
    return s


@pytest.fixture
def gguf_dir(tmp_path: Path, smollm2: Path) -> Path:
    """A folder of GGUF files: SmolLM2 linked in under its own file name."""
    d = tmp_path / "gguf"
    d.mkdir()
    (d / "SmolLM2-135M-Instruct.Q4_1.gguf").symlink_to(smollm2)
    return d


def settings_for(store: Store | None, *dirs: Path, **extra: Any) -> Settings:
    flags: dict[str, Any] = {
        "host": "127.0.0.1:0",
        "models": str(store.root) if store else "/nonexistent-bridge-store",
        "gguf_dirs": tuple(str(d) for d in dirs),
        "demo_model": "off",
        **extra,
    }
    return load_settings(flags, environ={})


@pytest.fixture
async def start(aiohttp_server: Any) -> Start:
    """Start the real app on loopback with the given settings."""

    async def go(settings: Settings, **kwargs: Any) -> TestServer:
        server: TestServer = await aiohttp_server(create_app(settings, **kwargs))
        return server

    return go


@pytest.fixture
async def server(start: Start, store: Store, gguf_dir: Path) -> TestServer:
    """The app over the SmolLM2 store and GGUF folder."""
    return await start(settings_for(store, gguf_dir))


@pytest.fixture
async def http(server: TestServer) -> Any:
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=300) as client:
        yield client
