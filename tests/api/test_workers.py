"""`bridge serve --workers 2`: two real processes on one port, a fake upstream beside them."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bridge.workers import SUPPORTED
from tests.conftest import SMOL
from tests.fake_upstreams import Fake, fakes
from tests.store import Store

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="workers need Linux (SO_REUSEPORT)")

REPO = Path(__file__).resolve().parents[2]
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "stream": False}
CHAT |= {"options": {"temperature": 0, "num_predict": 2}}


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    url: str
    workers: list[int]
    upstream: Fake


async def _lines_until(proc: asyncio.subprocess.Process, *patterns: str) -> list[re.Match[str]]:
    """Read the server's log until each pattern has matched a line (in any order)."""
    assert proc.stderr is not None
    found: dict[str, re.Match[str]] = {}
    while len(found) < len(patterns):
        line = (await proc.stderr.readline()).decode()
        assert line, "bridge serve exited during start-up"
        for p in patterns:
            if p not in found and (m := re.search(p, line)):
                found[p] = m
    return [found[p] for p in patterns]


@pytest.fixture
async def served(store: Store, tmp_path: Path) -> AsyncIterator[Served]:
    async with fakes(Fake("ollama", models=("remote:latest",))) as (up,):
        cfg = tmp_path / "bridge.toml"
        cfg.write_text(f'[[upstream]]\nname = "box"\nurl = "{up.base}"\nkind = "ollama"\n')
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bridge", "serve", "--config", str(cfg), "--workers", "2"),
            *("--host", "127.0.0.1:0", "--demo-model", "off"),
            cwd=REPO,
            env=dict(os.environ, OLLAMA_MODELS=str(store.root)),
            stderr=asyncio.subprocess.PIPE,
        )
        drain: asyncio.Task[None] | None = None
        try:
            started, listening, _ = await asyncio.wait_for(
                _lines_until(
                    proc,
                    r"started 1 worker process\(es\): \[(\d+)\]",
                    r"listening on (http://127\.0\.0\.1:\d+) \(2 processes\)",
                    r"worker \d+ answering",
                ),
                60,
            )
            # The log is no longer read: let it flow out (a full pipe would stall the server).
            drain = asyncio.create_task(_drain(proc))
            yield Served(proc, listening[1], [int(started[1])], up)
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
            if drain is not None:
                drain.cancel()


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr is not None
    while await proc.stderr.readline():
        pass


async def fresh(url: str, method: str, path: str, **kw: object) -> httpx.Response:
    """One request on a connection of its own (the kernel picks the process per connection)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        return await http.request(method, path, **kw)  # type: ignore[arg-type]


async def test_both_processes_answer_and_local_models_stay_in_the_primary(served: Served) -> None:
    remote = [
        await fresh(served.url, "POST", "/api/chat", json=CHAT | {"model": "remote"})
        for _ in range(24)
    ]
    assert all(r.status_code == 200 and r.json()["message"]["content"] for r in remote)
    assert len(served.upstream.generations()) == 24
    # Request ids start with a per-process prefix: both processes served the upstream's model.
    assert len({r.headers["x-request-id"][:6] for r in remote}) == 2

    for _ in range(6):
        local = await fresh(served.url, "POST", "/api/chat", json=CHAT | {"model": SMOL})
        assert local.status_code == 200 and local.json()["model"] == SMOL
        assert local.json()["eval_count"] == 2
        # Whichever process took the connection, the one that loaded SmolLM2 answers /api/ps.
        ps = (await fresh(served.url, "GET", "/api/ps")).json()
        assert [m["name"] for m in ps["models"]] == [SMOL]
    assert len(served.upstream.generations()) == 24  # no local request went upstream

    for _ in range(6):
        bad = await fresh(served.url, "POST", "/api/chat", content=b"{nope")
        assert bad.status_code == 400 and "invalid character" in bad.json()["error"]
        missing = await fresh(
            served.url, "POST", "/v1/chat/completions", json={"model": "nosuch", "messages": []}
        )
        assert missing.status_code in (400, 404) and missing.json()["error"]["message"]
        unknown = await fresh(served.url, "POST", "/api/chat", json=CHAT | {"model": "nosuch"})
        assert unknown.status_code == 404 and "not found" in unknown.json()["error"]
        tags = (await fresh(served.url, "GET", "/api/tags")).json()
        assert {m["name"] for m in tags["models"]} == {SMOL, "remote:latest"}


async def test_a_store_change_reaches_every_process_at_once(served: Served) -> None:
    copied = await fresh(
        served.url, "POST", "/api/copy", json={"source": SMOL, "destination": "remote"}
    )
    assert copied.status_code == 200
    for _ in range(12):
        r = await fresh(served.url, "POST", "/api/chat", json=CHAT | {"model": "remote"})
        assert r.status_code == 200 and r.json()["model"] == "remote"
    assert served.upstream.generations() == []  # the local copy won the name everywhere


async def test_workers_stop_with_the_primary(served: Served) -> None:
    (worker,) = served.workers
    watch = os.pidfd_open(worker)
    try:
        served.proc.kill()  # no chance to stop them: the worker sees its stdin close
        await served.proc.wait()
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        loop.add_reader(watch, gone.set_result, None)
        try:
            await asyncio.wait_for(gone, 30)  # readable once the worker has exited
        finally:
            loop.remove_reader(watch)
    finally:
        os.close(watch)
