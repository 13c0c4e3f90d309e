"""Finding models: Ollama's store, GGUF folders (splits, projectors, clashes), aliases, demo."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from bridge.errors import InvalidModelName
from bridge.models.gguf_info import GGUFInfo, read_gguf
from bridge.models.resolver import Resolver
from tests.ggufgen import write_tiny_gguf
from tests.store import Store


def names(specs: list) -> set[str]:  # type: ignore[type-arg]
    return {s.name for s in specs}


async def test_gguf_folder_naming_splits_and_projectors(tmp_path: Path) -> None:
    d = tmp_path / "g"
    (d / "sub").mkdir(parents=True)
    write_tiny_gguf(d / "Llama-3.2-1B-Instruct-Q4_K_M.gguf")
    for i in (1, 2, 3):
        write_tiny_gguf(d / "sub" / f"Big-Model-0000{i}-of-00003.gguf")
    write_tiny_gguf(d / "sub" / "mmproj-Big-Model-f16.gguf", arch="clip")
    r = Resolver(store_dir=tmp_path / "none", gguf_dirs=(str(d),), demo="off")
    specs = {s.name: s for s in await r.list()}
    assert set(specs) == {"llama-3.2-1b-instruct-q4_k_m:latest", "big-model:latest"}
    big = specs["big-model:latest"]
    assert big.model_path.endswith("Big-Model-00001-of-00003.gguf")
    assert [Path(p).name for p in big.projectors] == ["mmproj-Big-Model-f16.gguf"]
    assert big.details.families == ("llama", "clip")
    one = specs["llama-3.2-1b-instruct-q4_k_m:latest"]
    # Each tiny part holds 8x64 + 64 parameters; the split model counts all three parts.
    assert (one.details.parameter_size, big.details.parameter_size) == ("576", "2K")
    assert (await r.find("Big-Model")) is big


async def test_name_clashes_resolve_the_same_way_every_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_tiny_gguf(a / "model.gguf")
    write_tiny_gguf(b / "Model.gguf")
    store = Store(tmp_path / "store")
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    store.add("model:latest", model=tiny)
    with caplog.at_level(logging.WARNING):
        r = Resolver(store_dir=store.root, gguf_dirs=(str(a), str(b)), demo="off")
        first = {s.name: s.source + ":" + s.model_path for s in await r.list()}
        second = {s.name: s.source + ":" + s.model_path for s in await r.list()}
    assert first == second
    assert first["model:latest"].startswith("ollama:")  # the store wins
    assert first["model-2:latest"].endswith("a/model.gguf")
    assert first["model-3:latest"].endswith("b/Model.gguf")
    assert sum("is taken" in rec.message for rec in caplog.records) == 2  # logged once each


async def test_store_matching_aliases_and_invalid_names(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    store.add("Llama3:8B", model=tiny)
    store.add("hf-model:q4", model=tiny, host="hf.co", namespace="someone")
    (store.root / "manifests/registry.ollama.ai/library/too-deep/x").mkdir(parents=True)
    (store.root / "manifests/registry.ollama.ai/library/too-deep/x/latest").write_text("{}")
    (store.root / "manifests/registry.ollama.ai/library/junk").mkdir(parents=True)
    (store.root / "manifests/registry.ollama.ai/library/junk/latest").write_text("not json")
    r = Resolver(store_dir=store.root, aliases={"gpt-4o": "llama3:8b"}, demo="off")
    assert names(await r.list()) == {"Llama3:8B", "hf.co/someone/hf-model:q4"}
    spec = await r.find("llama3:8b")
    assert spec is not None and spec.name == "Llama3:8B"
    assert await r.find("gpt-4o") is spec
    assert await r.find("registry.ollama.ai/library/LLAMA3:8b") is spec
    assert await r.find("llama3") is None  # :latest is another model; never fall back
    assert (await r.find("hf.co/someone/hf-model:q4")) is not None
    with pytest.raises(InvalidModelName):
        await r.find("bad name")


async def test_demo_model_only_when_nothing_else(tmp_path: Path) -> None:
    r = Resolver(store_dir=tmp_path / "empty", demo="auto")
    assert names(await r.list()) == {"smollm2:latest"}
    store = Store(tmp_path / "store")
    store.add("mine:latest", model=write_tiny_gguf(tmp_path / "t.gguf"))
    r = Resolver(store_dir=store.root, demo="auto")
    assert names(await r.list()) == {"mine:latest"}
    r = Resolver(store_dir=store.root, demo="on")
    assert names(await r.list()) == {"mine:latest", "smollm2:latest"}
    r = Resolver(store_dir=tmp_path / "empty", demo="off")
    assert await r.list() == []


async def test_changed_manifest_is_reread(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    store.add("m:latest", model=tiny)
    r = Resolver(store_dir=store.root, demo="off")
    before = (await r.list())[0]
    store.add("m:latest", model=tiny, system="You are terse.")
    after = (await r.list())[0]
    assert after.digest != before.digest and after.system == "You are terse."


async def test_upstream_served_names_never_wait_for_an_aged_scan(tmp_path: Path) -> None:
    """`rescan=False` (a name an upstream serves): an aged scan still answers, and a new one
    runs in the background; a change made through bridge is seen by the very next lookup."""
    store = Store(tmp_path / "store")
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    store.add("a:latest", model=tiny)
    r = Resolver(store_dir=store.root, demo="off", max_scan_age=0)
    assert names(await r.list()) == {"a:latest"}
    store.add("b:latest", model=tiny)  # appears on disk behind bridge's back
    assert await r.find("b", rescan=False) is None  # answered from the aged scan
    await r.close()  # the background rescan it started has finished
    found = await r.find("b", rescan=False)
    assert found is not None and found.name == "b:latest"

    fresh = Resolver(store_dir=store.root, demo="off")  # scans stay fresh for long
    await fresh.list()
    store.add("c:latest", model=tiny)
    assert await fresh.find("c", rescan=False) is None  # a fresh scan is trusted
    fresh.changed()  # what the store writer calls after writing a manifest
    found = await fresh.find("c", rescan=False)
    assert found is not None and found.name == "c:latest"
    await fresh.close()


async def test_lookups_that_wait_for_a_scan_share_it(tmp_path: Path) -> None:
    """After a change, the 50 requests that arrive together share scans of the disk."""
    folder = tmp_path / "g"
    folder.mkdir()
    tiny = write_tiny_gguf(folder / "a.gguf")
    reads: list[str] = []

    def read(path: str) -> GGUFInfo:
        # The real reader, counted; it also moves the file's mtime, so that the next scan
        # finds a new version and reads it again: one read per scan.
        reads.append(path)
        info = read_gguf(path)
        os.utime(tiny, ns=(len(reads) * 10**9, len(reads) * 10**9))
        return info

    r = Resolver(
        store_dir=tmp_path / "none", gguf_dirs=(str(folder),), demo="off", read_header=read
    )
    await r.list()
    assert len(reads) == 1
    r.changed()
    # A name served elsewhere (an upstream): after a change, lookups wait for a new scan.
    found = await asyncio.gather(*(r.find("b", rescan=False) for _ in range(50)))
    assert found == [None] * 50
    # Two scans, not 50: the first lookup's, and one more that began after the other 49 asked
    # (the first began before them), shared by all of them.
    assert len(reads) == 3
    await r.list()  # a listing asked for afterwards still reads the disk again
    assert len(reads) == 4


async def test_a_scan_whose_client_went_away_is_not_taken_for_a_newer_one(tmp_path: Path) -> None:
    """A lookup that waited behind a scan that was cancelled (its client disconnected) still
    gets a scan that began after it asked, not the one before."""
    folder = tmp_path / "g"
    folder.mkdir()
    write_tiny_gguf(folder / "a.gguf")
    gates = {"b.gguf": threading.Event(), "new.gguf": threading.Event()}
    entered = {name: threading.Event() for name in gates}

    def read(path: str) -> GGUFInfo:  # the real reader, held at the gate of a gated file
        name = Path(path).name
        if name in gates:
            entered[name].set()
            gates[name].wait(30)
        return read_gguf(path)

    r = Resolver(
        store_dir=tmp_path / "none", gguf_dirs=(str(folder),), demo="off", read_header=read
    )
    await r.list()
    write_tiny_gguf(folder / "b.gguf")
    first = asyncio.create_task(r.list())  # a scan that lists a and b, then waits at b
    await asyncio.to_thread(entered["b.gguf"].wait, 30)
    write_tiny_gguf(folder / "new.gguf")  # dropped in while that scan runs
    gone = asyncio.create_task(r.list())  # queued; its client will go away mid-scan
    lookup = asyncio.create_task(r.find("new"))  # queued; asked after new.gguf was there
    gates["b.gguf"].set()
    await first
    await asyncio.to_thread(entered["new.gguf"].wait, 30)  # `gone` is scanning now
    gone.cancel()
    gates["new.gguf"].set()
    found = await lookup
    assert found is not None and found.name == "new:latest"
    await r.close()
