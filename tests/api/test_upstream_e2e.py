"""The same client code against a local model, an Ollama upstream and an OpenAI upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import ollama
import openai
import pytest

from bridge.config import load_settings
from tests.conftest import SMOL, Start
from tests.fake_upstreams import Fake, fakes
from tests.store import Store


@pytest.fixture
async def base(start: Start, store: Store, tmp_path: Path) -> AsyncIterator[str]:
    async with fakes(
        Fake("ollama", models=("remote-ollama:latest",)), Fake("openai", models=("remote-openai",))
    ) as (ol, oa):
        cfg = tmp_path / "bridge.toml"
        cfg.write_text(
            f'[[upstream]]\nname = "box"\nurl = "{ol.base}"\nkind = "ollama"\n\n'
            f'[[upstream]]\nname = "vllm"\nurl = "{oa.base}"\nkind = "openai"\n'
        )
        settings = load_settings(
            {"host": "127.0.0.1:0", "models": str(store.root), "demo_model": "off"},
            environ={},
            config_path=str(cfg),
        )
        server = await start(settings)
        yield str(server.make_url(""))


@pytest.mark.parametrize("model", [SMOL, "remote-ollama", "remote-openai"])
async def test_same_client_code_everywhere(base: str, model: str) -> None:
    msgs = [{"role": "user", "content": "Hello"}]
    async with ollama.AsyncClient(host=base) as client:
        names = {m.model for m in (await client.list()).models}
        assert {SMOL, "remote-ollama:latest"} <= names
        assert "completion" in ((await client.show(model)).capabilities or [])
        resp = await client.chat(model, messages=msgs, options={"num_predict": 4})
        assert resp.done and resp.message.role == "assistant" and resp.message.content
        assert resp.eval_count
        parts = [
            p
            async for p in await client.chat(
                model, messages=msgs, options={"num_predict": 4}, stream=True
            )
        ]
        assert parts[-1].done and "".join(p.message.content for p in parts)
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0) as oai:
        r = await oai.chat.completions.create(model=model, messages=msgs, max_tokens=4)  # type: ignore[arg-type]
        assert r.choices[0].message.content and r.usage is not None
        chunks = [
            c
            async for c in await oai.chat.completions.create(
                model=model, messages=msgs, max_tokens=4, stream=True
            )
        ]  # type: ignore[arg-type]
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert (await oai.models.retrieve(model)).id == model
