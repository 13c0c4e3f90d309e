"""Model management use-cases: pull, push, create, copy, delete and blob uploads.

The HTTP handlers in `bridge.http.ollama.manage` decode requests and call these; they hold the
store writer, the registry client, the shared downloads and the Hugging Face endpoint. Names are
respelled as the store already spells them (Ollama's case-insensitive matching) before use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import bridge.models.hf as hf
from bridge.domain import ModelSpec
from bridge.errors import BlobNotFound, InvalidModelName, InvalidRequest, ModelNotFound
from bridge.models.create import CreateRequest, Creator, Quantizer
from bridge.models.names import InvalidName, ModelName
from bridge.models.ollama_store import StoreError
from bridge.models.progress import Progress
from bridge.models.pull import Puller, TransferPolicy
from bridge.models.push import Pusher
from bridge.models.store_writer import DigestMismatch, StoreWriter, is_digest
from bridge.registry import RegistryClient

log = logging.getLogger(__name__)

FindFn = Callable[[str], Awaitable[ModelSpec | None]]
UnloadFn = Callable[[str], Awaitable[None]]


def parse(raw: str) -> ModelName:
    try:
        return ModelName.parse(raw)
    except InvalidName as exc:
        raise InvalidModelName() from exc


class ModelManager:
    """Everything that changes the store. One per app; safe for concurrent requests."""

    def __init__(
        self,
        store: StoreWriter,
        registry: RegistryClient,
        *,
        find_local: FindFn,
        unload: UnloadFn,
        quantizer: Quantizer | None,
        hf_endpoint: str = hf.DEFAULT_ENDPOINT,
        policy: TransferPolicy | None = None,
    ) -> None:
        self.store = store
        self._unload = unload
        self.puller = Puller(store, registry, policy=policy or TransferPolicy())
        self.pusher = Pusher(store, registry, policy=policy or TransferPolicy())
        self.hf = hf.HuggingFace(registry.http, self.puller, endpoint=hf_endpoint)
        self.creator = Creator(
            store, pull=self._pull_for_create, find_local=find_local, quantizer=quantizer
        )

    async def existing(self, name: ModelName) -> ModelName:
        return await asyncio.to_thread(self.store.existing_name, name)

    # --- pull and push -------------------------------------------------------------------

    async def pull(self, raw: str, *, insecure: bool = False) -> AsyncIterator[Progress]:
        """Validate `raw` (raises before streaming), then return the pull's progress stream."""
        name = await self.existing(parse(raw))
        return self._pull(name, insecure)

    def _pull(self, name: ModelName, insecure: bool) -> AsyncIterator[Progress]:
        if hf.is_hf(name):
            return self.hf.pull(name, insecure=insecure)
        return self.puller.pull(name, insecure=insecure)

    def _pull_for_create(self, name: ModelName) -> AsyncIterator[Progress]:
        # Ollama pulls a missing FROM model over https only; an explicit http:// name is taken
        # as the user's choice of plain http here.
        return self._pull(name, name.scheme == "http")

    async def push(self, raw: str, *, insecure: bool = False) -> AsyncIterator[Progress]:
        name = await self.existing(parse(raw))
        return self.pusher.push(name, insecure=insecure)

    # --- create --------------------------------------------------------------------------

    async def create(self, req: CreateRequest) -> AsyncIterator[Progress]:
        name = await self.existing(req.name)
        return self.creator.create(replace(req, name=name))

    # --- copy and delete -----------------------------------------------------------------

    async def copy(self, source: str, destination: str) -> None:
        try:
            src = ModelName.parse(source)
        except InvalidName as exc:
            raise InvalidRequest(f"source {_go_quote(source)} is invalid") from exc
        try:
            dst = ModelName.parse(destination)
        except InvalidName as exc:
            raise InvalidRequest(f"destination {_go_quote(destination)} is invalid") from exc
        src, dst = await self.existing(src), await self.existing(dst)
        try:
            await asyncio.to_thread(self.store.copy, src, dst)
        except FileNotFoundError as exc:
            raise ModelNotFound(f"model {_go_quote(source)} not found") from exc
        log.info("copied %s to %s", src.display, dst.display)

    async def delete(self, raw: str) -> None:
        try:
            parsed = ModelName.parse(raw)
        except InvalidName as exc:
            raise InvalidRequest(f"name {_go_quote(raw)} is invalid") from exc
        name = await self.existing(parsed)
        if not await asyncio.to_thread(self.store.manifest_path(name).is_file):
            raise ModelNotFound(f"model '{raw}' not found")
        await self._unload(name.full)
        try:
            removed = await asyncio.to_thread(self.store.delete, name)
        except FileNotFoundError as exc:
            raise ModelNotFound(f"model '{raw}' not found") from exc
        log.info("deleted %s (%d blob(s) removed)", name.display, len(removed))

    # --- blobs ---------------------------------------------------------------------------

    def _blob_path_checked(self, digest: str) -> None:
        if not is_digest(digest):
            raise InvalidRequest("invalid digest format")

    async def has_blob(self, digest: str) -> None:
        """Raises InvalidRequest for a malformed digest, BlobNotFound when it is absent."""
        self._blob_path_checked(digest)
        if not await asyncio.to_thread(self.store.has_blob, digest):
            raise BlobNotFound(f'blob "{digest}" not found')

    async def blob_exists(self, digest: str) -> bool:
        self._blob_path_checked(digest)
        return await asyncio.to_thread(self.store.has_blob, digest)

    async def put_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> None:
        """Store an uploaded blob under `digest`; a mismatch is a 400 and leaves nothing."""
        self._blob_path_checked(digest)
        sink = await asyncio.to_thread(self.store.sink)
        try:
            async for chunk in chunks:
                await asyncio.to_thread(sink.write, chunk)
            await asyncio.to_thread(sink.commit, digest)
        except DigestMismatch as exc:
            raise InvalidRequest(
                f"digest mismatch, expected {_go_quote(exc.expected)}, got {_go_quote(exc.got)}"
            ) from exc
        except StoreError as exc:
            raise InvalidRequest(str(exc)) from exc
        finally:
            await asyncio.to_thread(sink.abort)


def _go_quote(s: str) -> str:
    """Go's %q for the texts that appear in Ollama's messages."""
    import orjson

    return orjson.dumps(s).decode()
