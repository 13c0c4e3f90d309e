"""Pull error paths through httpx, injected with respx: a reset mid-blob, a 500, a stall, a
digest mismatch. The registry is mocked at the transport; the app is real."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx

from bridge.http.ollama.manage import Seams
from tests.conftest import settings_for
from tests.fake_registry import CONFIG_TYPE, MANIFEST_TYPE, sha
from tests.managekit import FAST, blob, blob_files, lines, make_starter, manifest_files, statuses
from tests.store import Store

REG = "https://registry.test"
NAME = "registry.test/library/tiny:latest"
WEIGHTS = bytes(range(256)) * 40  # 10 KB: three parts of 4 KB with the test policy
CONFIG = b'{"model_format":"gguf"}'
MANIFEST = orjson.dumps(
    {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": sha(CONFIG), "size": len(CONFIG)},
        "layers": [
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": sha(WEIGHTS),
                "size": len(WEIGHTS),
            }
        ],
    }
)


def ranged(data: bytes) -> Any:
    """A respx side effect answering Range requests from `data`."""

    def respond(request: httpx.Request) -> httpx.Response:
        spec = request.headers.get("range")
        if spec is None:
            return httpx.Response(200, content=data)
        start, stop = (int(x) for x in spec.removeprefix("bytes=").split("-"))
        return httpx.Response(206, content=data[start : stop + 1])

    return respond


@pytest.fixture
def router() -> respx.Router:
    r = respx.Router(assert_all_called=False)
    r.get(f"{REG}/v2/library/tiny/manifests/latest").mock(
        return_value=httpx.Response(200, content=MANIFEST)
    )
    for data in (WEIGHTS, CONFIG):
        url = f"{REG}/v2/library/tiny/blobs/{sha(data)}"
        r.head(url).mock(
            return_value=httpx.Response(200, headers={"Content-Length": str(len(data))})
        )
    r.get(f"{REG}/v2/library/tiny/blobs/{sha(CONFIG)}").mock(side_effect=ranged(CONFIG))
    return r


async def run(
    aiohttp_server: Any, tmp_path: Path, router: respx.Router, max_retries: int = 3
) -> AsyncIterator[tuple[list[dict[str, Any]], Path]]:
    store = Store(tmp_path / "models")
    seams = Seams(
        transport=httpx.MockTransport(router.async_handler),
        policy=dataclasses.replace(FAST, max_retries=max_retries),
    )
    server = await make_starter(aiohttp_server)(settings_for(store), seams)
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=60) as http:
        r = await http.post("/api/pull", json={"model": NAME})
        yield lines(r), store.root


def weights_route(router: respx.Router) -> respx.Route:
    return router.get(f"{REG}/v2/library/tiny/blobs/{sha(WEIGHTS)}")


class _Broken(httpx.AsyncByteStream):
    """A body that sends some bytes, then the connection resets."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.ReadError("[Errno 104] Connection reset by peer")


async def test_a_reset_mid_blob_resumes_the_part(
    aiohttp_server: Any, tmp_path: Path, router: respx.Router
) -> None:
    good = ranged(WEIGHTS)
    ranges: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        spec = request.headers.get("range")
        if spec:
            ranges.append(spec)
        if spec == "bytes=4096-8191":  # the second part dies after 1000 bytes
            return httpx.Response(206, stream=_Broken(WEIGHTS[4096 : 4096 + 1000]))
        return good(request)  # type: ignore[no-any-return]

    weights_route(router).mock(side_effect=flaky)
    async for got, root in run(aiohttp_server, tmp_path, router):
        assert statuses(got)[-1] == "success"
        assert blob(root, sha(WEIGHTS)) == WEIGHTS
        assert sorted(ranges) == [
            "bytes=0-4095",
            "bytes=4096-8191",
            "bytes=5096-8191",
            "bytes=8192-10239",
        ]


async def test_a_stall_is_retried_without_counting_an_attempt(
    aiohttp_server: Any, tmp_path: Path, router: respx.Router
) -> None:
    good = ranged(WEIGHTS)
    stalls = 0

    def stalling(request: httpx.Request) -> httpx.Response:
        nonlocal stalls
        if request.headers.get("range") and stalls < 3:
            stalls += 1
            raise httpx.ReadTimeout("no bytes for 30s")
        return good(request)  # type: ignore[no-any-return]

    weights_route(router).mock(side_effect=stalling)
    # One attempt per part allowed: three stalls still end in success.
    async for got, root in run(aiohttp_server, tmp_path, router, max_retries=1):
        assert statuses(got)[-1] == "success"
        assert stalls == 3
        assert blob(root, sha(WEIGHTS)) == WEIGHTS


async def test_a_500_on_every_try_fails_cleanly(
    aiohttp_server: Any, tmp_path: Path, router: respx.Router
) -> None:
    good = ranged(WEIGHTS)

    def failing(request: httpx.Request) -> httpx.Response:
        if request.headers.get("range"):
            return httpx.Response(500, text="internal error")
        return good(request)  # type: ignore[no-any-return]

    weights_route(router).mock(side_effect=failing)
    async for got, root in run(aiohttp_server, tmp_path, router, max_retries=2):
        assert got[-1] == {"error": "max retries exceeded: 500: internal error"}
        assert manifest_files(root) == set()
        assert not [n for n in blob_files(root) if "-partial" not in n]


async def test_bytes_that_do_not_match_the_digest(
    aiohttp_server: Any, tmp_path: Path, router: respx.Router
) -> None:
    weights_route(router).mock(side_effect=ranged(WEIGHTS[::-1]))
    async for got, root in run(aiohttp_server, tmp_path, router):
        assert statuses(got)[-2] == "verifying sha256 digest"
        assert got[-1]["error"] == (
            f"digest mismatch, file must be downloaded again: want {sha(WEIGHTS)}, "
            f"got {sha(WEIGHTS[::-1])}"
        )
        assert manifest_files(root) == set()
        assert not any(sha(WEIGHTS)[7:] in n for n in blob_files(root))


async def test_a_connection_refused_on_the_manifest(
    aiohttp_server: Any, tmp_path: Path, router: respx.Router
) -> None:
    router.get(f"{REG}/v2/library/tiny/manifests/latest").mock(
        side_effect=httpx.ConnectError("connection refused")
    )
    async for got, root in run(aiohttp_server, tmp_path, router):
        assert got[-1] == {
            "error": f'pull model manifest: Get "{REG}/v2/library/tiny/manifests/latest": '
            "connection refused"
        }
        assert blob_files(root) == set()
