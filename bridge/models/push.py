"""`/api/push`: uploading a model to an Ollama-compatible registry, as Ollama does.

`retrieving manifest`; then for each layer and the config: `HEAD` the blob (present: one
`pushing <12hex>` line, completed = total), else `POST blobs/uploads/` (with `?mount=&from=`
when the layer came from another model; 201 means mounted), `PATCH` the parts in order (each
1/16 of the blob clamped to 100 MB-1 GB, `X-Redirect-Uploads: 1`; a 307 sends the part to the
redirect URL with a `PUT`) and `PUT …?digest=&etag=`; then `pushing manifest` and `success`.

The manifest is sent as stored, byte for byte, so the registry's tag digest equals the local ID
and a later pull writes back exactly the same file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator

from bridge.errors import TransferFailed
from bridge.models.names import InvalidName, ModelName
from bridge.models.ollama_store import StoreError
from bridge.models.progress import Progress
from bridge.models.pull import TransferPolicy
from bridge.models.store_writer import Descriptor, StoreWriter, short_digest
from bridge.registry import RegistryClient, RegistryError, RegistrySession

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class _Upload:
    """One blob's upload, run as a task so that its progress can be reported while it runs."""

    def __init__(
        self, store: StoreWriter, session: RegistrySession, blob: Descriptor, policy: TransferPolicy
    ) -> None:
        self.store = store
        self.session = session
        self.blob = blob
        self.policy = policy
        self.total = blob.size
        self.completed = 0

    def progress(self) -> Progress:
        return Progress(
            f"pushing {short_digest(self.blob.digest)}",
            digest=self.blob.digest,
            total=self.total,
            completed=self.completed,
        )

    async def run(self) -> None:
        digest = self.blob.digest
        path = self.store.blob_path(digest)
        self.total = (await asyncio.to_thread(path.stat)).st_size
        mounted, url = await self.session.start_upload(digest, _mount_from(self.blob.from_))
        if mounted:
            self.completed = self.total
            return
        if not url:
            raise RegistryError("the registry gave no upload location")
        size = min(max(self.total // self.policy.parts, self.policy.min_part), self.policy.max_part)
        parts = [(off, min(size, self.total - off)) for off in range(0, self.total, size)] or [
            (0, 0)
        ]
        sums = hashlib.md5(usedforsecurity=False)
        for offset, length in parts:
            url, md5 = await self._part(url, offset, length)
            sums.update(md5)
        etag = f"{sums.hexdigest()}-{len(parts)}"
        await self.session.finish_upload(url, digest, etag)
        self.completed = self.total

    async def _part(self, url: str, offset: int, length: int) -> tuple[str, bytes]:
        attempt = 0
        while True:
            start = self.completed
            md5 = hashlib.md5(usedforsecurity=False)
            try:
                next_url, redirect = await self.session.upload_part(
                    url, self._chunks(offset, length, md5), offset=offset, size=length
                )
                if redirect is not None:
                    self.completed = start
                    md5 = hashlib.md5(usedforsecurity=False)
                    await self.session.put_redirected(
                        redirect, self._chunks(offset, length, md5), length
                    )
                return next_url, md5.digest()
            except RegistryError as exc:
                self.completed = start
                attempt += 1
                if attempt >= self.policy.max_retries:
                    raise RegistryError(f"max retries exceeded: {exc}") from exc
                await asyncio.sleep(self.policy.backoff * 2 ** (attempt - 1))

    async def _chunks(self, offset: int, length: int, md5: hashlib._Hash) -> AsyncIterator[bytes]:
        path = self.store.blob_path(self.blob.digest)
        f = await asyncio.to_thread(open, path, "rb")
        try:
            await asyncio.to_thread(f.seek, offset)
            left = length
            while left > 0:
                data = await asyncio.to_thread(f.read, min(_CHUNK, left))
                if not data:
                    raise RegistryError(f"{path}: file shrank while uploading")
                left -= len(data)
                md5.update(data)
                self.completed += len(data)
                yield data
        finally:
            await asyncio.to_thread(f.close)


def _mount_from(from_: str) -> str | None:
    if not from_:
        return None
    try:
        n = ModelName.parse(from_)
    except InvalidName:
        return None
    return f"{n.namespace}/{n.model}"


class Pusher:
    """Pushes models from one store."""

    def __init__(
        self, store: StoreWriter, registry: RegistryClient, *, policy: TransferPolicy
    ) -> None:
        self.store = store
        self.registry = registry
        self.policy = policy

    async def push(self, name: ModelName, *, insecure: bool = False) -> AsyncIterator[Progress]:
        """Ollama's PushModel, status for status."""
        yield Progress("retrieving manifest")
        if name.scheme == "http" and not insecure:
            raise TransferFailed("insecure protocol http")
        try:
            doc = await asyncio.to_thread(self.store.read_manifest, name)
        except (OSError, StoreError) as exc:
            yield Progress("couldn't retrieve manifest")
            raise TransferFailed(str(exc)) from exc
        if doc is None:
            yield Progress("couldn't retrieve manifest")
            path = self.store.manifest_path(name)
            raise TransferFailed(f"open {path}: no such file or directory")
        session = self.registry.session(name, insecure=insecure)
        try:
            for blob in doc.descriptors():
                async for p in self._upload(session, blob):
                    yield p
            yield Progress("pushing manifest")
            await session.put_manifest(name.tag, doc.raw)
        except (RegistryError, OSError) as exc:
            raise TransferFailed(str(exc)) from exc
        log.info("pushed %s", name.display)
        yield Progress("success")

    async def _upload(self, session: RegistrySession, blob: Descriptor) -> AsyncIterator[Progress]:
        if await session.blob_exists(blob.digest):
            yield Progress(
                f"pushing {short_digest(blob.digest)}",
                digest=blob.digest,
                total=blob.size,
                completed=blob.size,
            )
            return
        up = _Upload(self.store, session, blob, self.policy)
        task = asyncio.create_task(up.run(), name=f"upload {short_digest(blob.digest)}")
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self.policy.tick)
                yield up.progress()
            task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
