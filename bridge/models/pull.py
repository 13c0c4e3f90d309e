"""`/api/pull`: downloading a model from an Ollama-compatible registry, as Ollama does.

The manifest comes first, then every layer and the config blob. A blob already in the store is
a cache hit (one progress line, completed = total). Anything else is downloaded in ranged parts
(up to 16 at once, each 1/16 of the blob clamped to 100 MB-1 GB) into `blobs/<blob>-partial`,
with each part's progress in `blobs/<blob>-partial-<N>` as JSON `{"N","Offset","Size",
"Completed"}` — Ollama's own resume files, so either program resumes the other's download.

Pulls that need the same blob at the same time share one `Download`; it is cancelled (its part
files kept for a later resume) only when every pull holding it has gone. A part that fails is
retried (6 attempts, waits of 1, 2, 4 … s); a stalled read is retried without counting.

Unlike Ollama, a finished download keeps its `-partial` name until the pull commits: after
every blob is sha256-verified, the blobs are renamed into place and the manifest — the
registry's bytes, unchanged — is written in one step under the store lock. A pull that fails
or is abandoned therefore leaves no manifest and no unreferenced blob (only partial files,
which resume the next attempt and which Ollama's start-up pruning also clears).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from bridge.errors import TransferFailed
from bridge.models.names import ModelName
from bridge.models.ollama_store import StoreError
from bridge.models.progress import Progress
from bridge.models.store_writer import (
    Descriptor,
    StoreWriter,
    go_json,
    parse_manifest,
    sha256_file,
    short_digest,
)
from bridge.registry import RegistryClient, RegistryError, RegistrySession, Stalled, stream_range

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TransferPolicy:
    """How blobs are split, retried and reported (Ollama's values by default)."""

    parts: int = 16
    min_part: int = 100 * 1000**2
    max_part: int = 1000 * 1000**2
    max_retries: int = 6
    backoff: float = 1.0  # seconds before the 2nd attempt, doubling after
    tick: float = 0.06  # progress lines at most this often per blob
    flush: int = 1 << 20  # bytes buffered per part before they are written


@dataclass(frozen=True, slots=True)
class BlobSource:
    """Where one blob's bytes come from: its size and the URL to fetch ranges of."""

    http: httpx.AsyncClient
    size: Callable[[], Awaitable[int]]
    locate: Callable[[], Awaitable[tuple[str, dict[str, str]]]]


def registry_source(session: RegistrySession, digest: str) -> BlobSource:
    async def size() -> int:
        return await session.blob_size(digest)

    async def locate() -> tuple[str, dict[str, str]]:
        return await session.direct_url(digest)

    return BlobSource(session.http, size, locate)


@dataclass(slots=True)
class Part:
    n: int
    offset: int
    size: int
    completed: int = 0

    @property
    def start(self) -> int:
        return self.offset + self.completed

    @property
    def stop(self) -> int:
        return self.offset + self.size

    def encode(self) -> bytes:
        return go_json(
            {"N": self.n, "Offset": self.offset, "Size": self.size, "Completed": self.completed}
        )


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_small(path: Path, data: bytes) -> None:
    # Rewritten often, so no fsync: a kill loses nothing; a power cut costs a re-download.
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Download:
    """One blob being fetched into `<blob>-partial`, shared by every pull that needs it."""

    def __init__(
        self, store: StoreWriter, digest: str, source: BlobSource, policy: TransferPolicy
    ) -> None:
        self.store = store
        self.digest = digest
        self.final = store.blob_path(digest)
        self.partial = self.final.with_name(self.final.name + "-partial")
        self.source = source
        self.policy = policy
        self.total = 0
        self.parts: list[Part] = []
        self.prepared = False
        self.holders = 0
        self._verified: asyncio.Task[None] | None = None
        self.task = asyncio.create_task(self._run(), name=f"download {short_digest(digest)}")

    @property
    def completed(self) -> int:
        return sum(p.completed for p in self.parts)

    def part_path(self, n: int) -> Path:
        return self.partial.with_name(f"{self.partial.name}-{n}")

    def progress(self) -> Progress:
        return Progress(
            f"pulling {short_digest(self.digest)}",
            digest=self.digest,
            total=self.total,
            completed=self.completed,
        )

    # --- preparing and running -----------------------------------------------------------

    def _load_parts(self) -> list[Part]:
        parts: list[Part] = []
        for path in self.partial.parent.glob(self.partial.name + "-*"):
            if not path.name.removeprefix(self.partial.name + "-").isdigit():
                continue
            try:
                data = orjson.loads(path.read_bytes())
                parts.append(
                    Part(
                        int(data["N"]),
                        int(data["Offset"]),
                        int(data["Size"]),
                        int(data["Completed"]),
                    )
                )
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("discarding unreadable part file %s: %s", path, exc)
                self._remove_parts()
                return []
        parts.sort(key=lambda p: p.n)
        if parts and not self.partial.exists():
            for p in parts:
                p.completed = 0  # the data is gone: start the parts again
        return parts

    def _remove_parts(self) -> None:
        for path in self.partial.parent.glob(self.partial.name + "-*"):
            if path.name.removeprefix(self.partial.name + "-").isdigit():
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def remove_partial(self) -> None:
        self._remove_parts()
        with contextlib.suppress(OSError):
            os.unlink(self.partial)

    async def _prepare(self) -> None:
        parts = await asyncio.to_thread(self._load_parts)
        if parts:
            self.parts = parts
            self.total = sum(p.size for p in parts)
            log.info(
                "resuming %s at %d/%d bytes", short_digest(self.digest), self.completed, self.total
            )
        else:
            self.total = await self.source.size()
            size = min(
                max(self.total // self.policy.parts, self.policy.min_part), self.policy.max_part
            )
            offset = 0
            while offset < self.total:
                n = min(size, self.total - offset)
                self.parts.append(Part(len(self.parts), offset, n))
                offset += n
            await asyncio.to_thread(self._save_all)
        self.prepared = True

    def _save_all(self) -> None:
        self.store.blobs_dir.mkdir(parents=True, exist_ok=True)
        for p in self.parts:
            _write_small(self.part_path(p.n), p.encode())

    async def _run(self) -> None:
        await self._prepare()
        fd = await asyncio.to_thread(self._open)
        try:
            todo = [p for p in self.parts if p.completed < p.size]
            if not todo:
                return
            url, headers = await self.source.locate()
            limit = asyncio.Semaphore(self.policy.parts)
            tasks = [asyncio.create_task(self._part(p, fd, url, headers, limit)) for p in todo]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await asyncio.to_thread(os.close, fd)

    def _open(self) -> int:
        fd = os.open(self.partial, os.O_CREAT | os.O_RDWR, 0o644)
        if os.fstat(fd).st_size != self.total:
            os.ftruncate(fd, self.total)
        return fd

    async def _part(
        self,
        part: Part,
        fd: int,
        url: str,
        headers: dict[str, str],
        limit: asyncio.Semaphore,
    ) -> None:
        async with limit:
            attempt = 0
            while part.completed < part.size:
                try:
                    await self._fetch(part, fd, url, headers)
                except Stalled as exc:
                    log.info(
                        "%s part %d stalled; retrying: %s", short_digest(self.digest), part.n, exc
                    )
                except RegistryError as exc:
                    attempt += 1
                    if attempt >= self.policy.max_retries:
                        raise RegistryError(f"max retries exceeded: {exc}") from exc
                    wait = self.policy.backoff * 2 ** (attempt - 1)
                    log.info(
                        "%s part %d attempt %d failed: %s, retrying in %.1fs",
                        short_digest(self.digest),
                        part.n,
                        attempt,
                        exc,
                        wait,
                    )
                    await asyncio.sleep(wait)

    async def _fetch(self, part: Part, fd: int, url: str, headers: dict[str, str]) -> None:
        buf = bytearray()
        try:
            async for chunk in stream_range(self.source.http, url, headers, part.start, part.stop):
                buf += chunk
                if len(buf) >= self.policy.flush:
                    await self._flush(part, fd, buf)
        finally:
            # Keep what arrived, even when interrupted: the next attempt resumes after it.
            if buf:
                await self._flush(part, fd, buf)
            await asyncio.to_thread(_write_small, self.part_path(part.n), part.encode())

    async def _flush(self, part: Part, fd: int, buf: bytearray) -> None:
        data = bytes(buf)
        buf.clear()
        await asyncio.to_thread(_pwrite_all, fd, data, part.start)
        part.completed += len(data)

    # --- verification --------------------------------------------------------------------

    async def verify(self) -> None:
        """sha256 of the downloaded bytes (once, shared by every pull holding the blob)."""
        if self._verified is None:
            self._verified = asyncio.create_task(asyncio.to_thread(self._verify))
        await asyncio.shield(self._verified)

    def _verify(self) -> None:
        if not self.partial.exists() and self.final.exists():
            return  # another pull holding it already verified and committed it
        got = sha256_file(self.partial)
        if got != self.digest:
            self.remove_partial()
            raise TransferFailed(
                f"digest mismatch, file must be downloaded again: want {self.digest}, got {got}"
            )

    def place(self) -> None:
        """Give the verified file its blob name (caller holds the store lock)."""
        if self.partial.exists():
            self.store.place_file(self.partial, self.digest)
        elif not self.final.exists():
            raise StoreError(f"downloaded blob {self.digest} is missing")
        self._remove_parts()


def _translate(exc: BaseException) -> TransferFailed:
    if isinstance(exc, TransferFailed):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return TransferFailed("no space left on device")
    return TransferFailed(str(exc) or type(exc).__name__)


class Fetch:
    """The blobs one pull needs: downloads joined, verified and committed together."""

    def __init__(self, puller: Puller, blobs: list[Descriptor]) -> None:
        self._puller = puller
        self._store = puller.store
        self.blobs = blobs
        self.downloads: dict[str, Download] = {}

    async def download(self, source: Callable[[Descriptor], BlobSource]) -> AsyncIterator[Progress]:
        """Progress of every blob in order; cache hits get one line each."""
        for blob in self.blobs:
            if blob.digest in self.downloads:
                continue
            size = await asyncio.to_thread(self._store.blob_size, blob.digest)
            if size is not None:
                yield Progress(
                    f"pulling {short_digest(blob.digest)}", blob.digest, total=size, completed=size
                )
                continue
            dl = self._puller.join(blob.digest, source(blob))
            self.downloads[blob.digest] = dl
            async for p in self._watch(dl):
                yield p

    async def _watch(self, dl: Download) -> AsyncIterator[Progress]:
        tick = self._puller.policy.tick
        while True:
            done = dl.task.done()
            if dl.prepared:
                yield dl.progress()
            if done:
                break
            await asyncio.wait({dl.task}, timeout=tick)
        if dl.task.cancelled():
            raise TransferFailed("download canceled")
        exc = dl.task.exception()
        if exc is not None:
            raise _translate(exc) from exc

    async def verify(self) -> None:
        for dl in self.downloads.values():
            await dl.verify()

    def commit(self, name: ModelName, manifest: bytes, extra: Mapping[str, bytes]) -> None:
        """Blobs into place, then the manifest (blocking; run in a thread)."""
        store = self._store
        with store.lock:
            for dl in self.downloads.values():
                dl.place()
            for digest, data in extra.items():
                store.put_bytes(data)
                if not store.has_blob(digest):
                    raise StoreError(f"blob {digest} does not match its content")
            for blob in self.blobs:
                if not store.has_blob(blob.digest):
                    raise StoreError(f"blob {blob.digest} is missing")
            store.write_manifest(name, manifest)

    def release(self) -> None:
        for dl in self.downloads.values():
            self._puller.leave(dl)
        self.downloads.clear()


class Puller:
    """Pulls into one store; owns the table of downloads in progress."""

    def __init__(
        self, store: StoreWriter, registry: RegistryClient, *, policy: TransferPolicy
    ) -> None:
        self.store = store
        self.registry = registry
        self.policy = policy
        self._downloads: dict[str, Download] = {}

    def join(self, digest: str, source: BlobSource) -> Download:
        """The download of `digest` (started now, or already running for another pull)."""
        dl = self._downloads.get(digest)
        if dl is None:
            dl = Download(self.store, digest, source, self.policy)
            self._downloads[digest] = dl
        dl.holders += 1
        return dl

    def leave(self, dl: Download) -> None:
        dl.holders -= 1
        if dl.holders <= 0:
            if self._downloads.get(dl.digest) is dl:
                del self._downloads[dl.digest]
            if not dl.task.done():
                dl.task.cancel()
            elif not dl.task.cancelled():
                dl.task.exception()  # retrieved: no "never retrieved" warning

    @contextlib.asynccontextmanager
    async def fetch(self, blobs: list[Descriptor]) -> AsyncIterator[Fetch]:
        f = Fetch(self, blobs)
        try:
            yield f
        finally:
            f.release()

    async def pull(self, name: ModelName, *, insecure: bool = False) -> AsyncIterator[Progress]:
        """Ollama's PullModel, status for status."""
        old = await read_old_digests(self.store, name)
        if name.scheme == "http" and not insecure:
            raise TransferFailed("insecure protocol http")
        yield Progress("pulling manifest")
        session = self.registry.session(name, insecure=insecure)
        try:
            raw = await session.manifest(name.tag)
            doc = parse_manifest(raw)
        except (RegistryError, StoreError) as exc:
            raise TransferFailed(f"pull model manifest: {exc}") from exc
        blobs = doc.descriptors()
        async with self.fetch(blobs) as fetch:
            async for p in fetch.download(lambda b: registry_source(session, b.digest)):
                yield p
            yield Progress("verifying sha256 digest")
            await fetch.verify()
            yield Progress("writing manifest")
            await commit_fetch(fetch, name, raw, {})
        async for p in remove_unused(self.store, old, doc.digests()):
            yield p
        log.info("pulled %s", name.display)
        yield Progress("success")


async def commit_fetch(
    fetch: Fetch, name: ModelName, raw: bytes, extra: Mapping[str, bytes]
) -> None:
    try:
        await asyncio.to_thread(fetch.commit, name, raw, extra)
    except (OSError, StoreError) as exc:
        raise TransferFailed(str(exc)) from exc


async def read_old_digests(store: StoreWriter, name: ModelName) -> set[str]:
    try:
        doc = await asyncio.to_thread(store.read_manifest, name)
    except (OSError, StoreError) as exc:
        log.warning("pulling %s over an unreadable manifest: %s", name.display, exc)
        return set()
    return doc.digests() if doc is not None else set()


async def remove_unused(
    store: StoreWriter, old: set[str], new: set[str]
) -> AsyncIterator[Progress]:
    """`removing unused layers` when the name's previous manifest had layers now unused."""
    unused = old - new
    if unused:
        yield Progress("removing unused layers")
        await asyncio.to_thread(store.remove_unused, unused)
