"""`bridge serve --workers 2`: two real processes on one port, a fake upstream beside them."""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
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
    tmp: Path  # the processes' TMPDIR (the primary's private folder goes there)
    log: list[str] = field(default_factory=list)  # the log after start-up, as it comes
    logged: asyncio.Task[None] | None = None  # done when the log ends (every process exited)
    more: asyncio.Condition = field(default_factory=asyncio.Condition)  # notified per line

    async def logs(self, pattern: str) -> re.Match[str]:
        """The first line of the log after start-up that matches, once it has come."""
        async with self.more:
            while True:
                for line in self.log:
                    if m := re.search(pattern, line):
                        return m
                await self.more.wait()


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
            env=dict(os.environ, OLLAMA_MODELS=str(store.root), TMPDIR=str(tmp_path)),
            stderr=asyncio.subprocess.PIPE,
        )
        served: Served | None = None
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
            served = Served(proc, listening[1], [int(started[1])], up, tmp_path)
            # Keep reading the log (a full pipe would stall the server).
            served.logged = asyncio.create_task(_collect(proc, served))
            yield served
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
            if served is not None and served.logged is not None:
                served.logged.cancel()


async def _collect(proc: asyncio.subprocess.Process, served: Served) -> None:
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        async with served.more:
            served.log.append(line.decode())
            served.more.notify_all()


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


async def test_bodies_and_headers_pass_through_a_worker_as_sent(served: Served) -> None:
    show = gzip.compress(orjson.dumps({"model": SMOL}))
    for _ in range(6):
        # A compressed body: each process's server decodes it once.
        r = await fresh(
            served.url, "POST", "/api/show", content=show, headers={"Content-Encoding": "gzip"}
        )
        assert r.status_code == 200 and r.json()["details"]["family"] == "llama"
        # No Host header at all (HTTP/1.0, as load balancers' health checks send).
        host, port = served.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /api/version HTTP/1.0\r\n\r\n")
        status = await reader.readline()
        writer.close()
        assert status.startswith(b"HTTP/1.0 200") or status.startswith(b"HTTP/1.1 200"), status


async def test_a_second_server_cannot_take_a_share_of_the_port(served: Served) -> None:
    second = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bridge", "serve", "--workers", "2", "--host", served.url),
        cwd=REPO,
        env=dict(os.environ, OLLAMA_MODELS=str(served.tmp / "other")),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(second.communicate(), 60)
    finally:
        if second.returncode is None:  # it started after all: stop it, then fail
            second.kill()
            await second.wait()
    assert second.returncode == 1 and b"cannot listen" in err


async def test_a_stuck_worker_is_killed_when_the_primary_stops(served: Served) -> None:
    (worker,) = served.workers
    os.kill(worker, signal.SIGSTOP)  # it can no longer stop by itself
    served.proc.terminate()
    assert await asyncio.wait_for(served.proc.wait(), 60) == 0
    with pytest.raises(ProcessLookupError):  # killed and reaped by the primary
        os.kill(worker, 0)
    assert not list(served.tmp.glob("bridge-*"))  # its private folder is gone


async def test_signals_to_every_process_stop_them_cleanly(served: Served) -> None:
    """A service manager signals every process; the primary then signals its workers again,
    while they still pass on streams (six connections: some reach the worker)."""
    body = CHAT | {"model": SMOL, "stream": True, "options": {"num_predict": 64}}
    first = asyncio.get_running_loop().create_future()

    async def stream() -> None:
        async with (
            httpx.AsyncClient(base_url=served.url, timeout=120) as http,
            http.stream("POST", "/api/chat", json=body) as r,
        ):
            async for _ in r.aiter_lines():
                if not first.done():
                    first.set_result(None)

    streams = [asyncio.create_task(stream()) for _ in range(6)]
    await asyncio.wait_for(first, 120)
    for pid in (*served.workers, served.proc.pid):
        os.kill(pid, signal.SIGTERM)
    assert await asyncio.wait_for(served.proc.wait(), 60) == 0
    await asyncio.gather(*streams, return_exceptions=True)  # cut off, or finished in the grace
    assert served.logged is not None
    await asyncio.wait_for(served.logged, 60)  # every process has closed its end of the log
    assert not [line for line in served.log if "Traceback" in line or "ERROR" in line]


async def test_a_worker_that_dies_is_replaced(served: Served) -> None:
    (worker,) = served.workers
    os.kill(worker, signal.SIGKILL)
    exited = await asyncio.wait_for(served.logs(rf"worker process {worker} exited"), 60)
    assert "starting another" in exited.string
    new = int((await asyncio.wait_for(served.logs(r"worker (\d+) answering"), 60))[1])
    assert new != worker
    replies = [
        await fresh(served.url, "POST", "/api/chat", json=CHAT | {"model": "remote"})
        for _ in range(24)
    ]
    assert all(r.status_code == 200 for r in replies)
    assert len({r.headers["x-request-id"][:6] for r in replies}) == 2  # both processes again


async def test_what_a_worker_took_before_the_stop_still_reaches_the_primary(
    served: Served,
) -> None:
    """The primary keeps its private socket open until its workers have exited: a request
    that a worker accepted before the stop, and passes on after it, is answered (not 502)."""
    body = orjson.dumps({"model": SMOL})
    host, port = served.url.removeprefix("http://").split(":")
    head = (
        f"POST /api/show HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    conns = []
    for _ in range(16):  # the kernel picks the process per connection: some reach the worker
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head)
        # A process has taken the connection and is in the handler, waiting for the body.
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        conns.append((reader, writer))
    served.proc.terminate()
    await asyncio.wait_for(served.logs("stopping: the worker processes finish"), 60)
    for _, writer in conns:
        writer.write(body)
    for reader, writer in conns:
        status = await asyncio.wait_for(reader.readline(), 60)
        head_and_body = await asyncio.wait_for(reader.read(), 60)  # the server closes
        writer.close()
        assert status.startswith(b"HTTP/1.1 200"), status + head_and_body
        assert b'"family":"llama"' in head_and_body
    assert await asyncio.wait_for(served.proc.wait(), 60) == 0
