"""Generation runs off the event loop; requests beyond the slots wait, none interrupts another."""

from __future__ import annotations

import asyncio

import httpx
import orjson

from tests.conftest import SMOL

LONG = {"model": SMOL, "prompt": "Write an endless story.", "options": {"num_predict": -1}}


async def test_server_answers_while_a_model_generates(http: httpx.AsyncClient) -> None:
    async with http.stream("POST", "/api/generate", json=LONG) as r:
        it = r.aiter_lines()
        first = orjson.loads(await anext(it))
        assert first["done"] is False
        # The loop is free: other requests are answered while tokens are being produced.
        assert (await http.get("/api/version")).status_code == 200
        assert (await http.get("/api/tags")).status_code == 200
        ps = (await http.get("/api/ps")).json()["models"]
        assert [m["name"] for m in ps] == [SMOL]
        nxt = orjson.loads(await anext(it))
        assert nxt["done"] is False


async def test_requests_beyond_the_slots_wait_and_all_complete(http: httpx.AsyncClient) -> None:
    async def one(i: int) -> dict[str, object]:
        r = await http.post(
            "/api/generate",
            json={
                "model": SMOL,
                "prompt": f"Say the number {i}.",
                "stream": False,
                "options": {"num_predict": 6, "temperature": 0},
            },
        )
        assert r.status_code == 200
        body: dict[str, object] = r.json()
        return body

    results = await asyncio.gather(*(one(i) for i in range(4)))
    assert all(b["done"] is True and b["eval_count"] == 6 for b in results)
    assert all(b["done_reason"] == "length" for b in results)
