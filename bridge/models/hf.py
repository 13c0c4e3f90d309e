"""`ollama pull hf.co/<user>/<repo>[:<quant or file>]`: GGUF files from the Hugging Face hub.

Hugging Face serves these names through its own registry; bridge reads the hub's file API
instead, so that any mirror set with `HF_ENDPOINT` works too. The repository's file list gives
each GGUF file's size and sha256 (its LFS object id); the tag picks the file:

* `latest`: `Q4_K_M` when the repository has it, else the first of a list of common types,
  else the first GGUF file (what the hub's registry does);
* a quantization name (`Q8_0`, `iq4_xs`, …), matched case-insensitively in the file names;
* a file name, with or without `.gguf`.

A `mmproj` file beside it becomes the projector layer. The file is downloaded like any blob
(ranged parts, resumable, verified), then the template and params are chosen from its chat
template as `ollama create` chooses them, and the model is stored as
`manifests/hf.co/<user>/<repo>/<tag>`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import orjson

from bridge.errors import TransferFailed
from bridge.models.create import MODEL, PARAMS, PROJECTOR, TEMPLATE
from bridge.models.gguf_info import GGUFError, parameter_size_label, read_gguf
from bridge.models.names import ModelName
from bridge.models.progress import Progress
from bridge.models.pull import BlobSource, Puller, commit_fetch, read_old_digests, remove_unused
from bridge.models.store_writer import (
    CONFIG_MEDIA_TYPE,
    Descriptor,
    go_json,
    manifest_bytes,
    short_digest,
)
from bridge.templates.detect import detect

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
HOSTS = frozenset({"hf.co", "huggingface.co"})
# When the tag is `latest` and there is no Q4_K_M, the first of these present is taken.
PREFERRED = ("Q4_K_M", "Q4_K_S", "Q4_0", "Q5_K_M", "Q5_K_S", "Q5_0", "Q6_K", "Q8_0", "Q3_K_M")
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


def is_hf(name: ModelName) -> bool:
    return name.host.lower() in HOSTS


@dataclass(frozen=True, slots=True)
class RepoFile:
    path: str
    size: int
    sha256: str | None

    @property
    def stem(self) -> str:
        base = self.path.rsplit("/", 1)[-1]
        return base[:-5] if base.lower().endswith(".gguf") else base

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


def _has_token(stem: str, token: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(token)}(?![A-Za-z0-9_])", stem, re.I) is not None


def choose(files: list[RepoFile], tag: str) -> tuple[RepoFile, RepoFile | None]:
    """The model file for `tag`, and a projector if the repository has one."""
    ggufs = [f for f in files if f.path.lower().endswith(".gguf")]
    projectors = sorted((f for f in ggufs if "mmproj" in f.path.lower()), key=lambda f: f.path)
    models = sorted((f for f in ggufs if "mmproj" not in f.path.lower()), key=lambda f: f.path)
    if not models:
        raise TransferFailed("pull model manifest: the repository has no GGUF model file")
    picked: list[RepoFile] = []
    if tag.lower() == "latest":
        for quant in PREFERRED:
            picked = [f for f in models if _has_token(f.stem, quant)]
            if picked:
                break
        picked = picked or models
    else:
        picked = [
            f for f in models if f.stem.lower() == tag.lower() or f.path.lower() == tag.lower()
        ]
        picked = picked or [f for f in models if _has_token(f.stem, tag)]
    if not picked:
        available = ", ".join(f.stem for f in models)
        raise TransferFailed(
            f"pull model manifest: no GGUF file matches {tag!r} (files: {available})"
        )
    model = min(picked, key=lambda f: (f.path.count("/"), len(f.path), f.path))
    if _SPLIT.search(model.path):
        raise TransferFailed(f"{model.path}: split GGUF files are not supported yet")
    if model.sha256 is None:
        raise TransferFailed(f"{model.path}: the hub gives no sha256 for this file")
    projector = next((p for p in projectors if p.sha256), None)
    return model, projector


class HuggingFace:
    """Pulls from one hub endpoint (huggingface.co, or a mirror)."""

    def __init__(self, http: httpx.AsyncClient, puller: Puller, *, endpoint: str) -> None:
        self.http = http
        self.puller = puller
        self.endpoint = endpoint.rstrip("/")

    def _repo(self, name: ModelName) -> str:
        return f"{name.namespace}/{name.model}"

    async def files(self, name: ModelName) -> list[RepoFile]:
        url: str | None = f"{self.endpoint}/api/models/{self._repo(name)}/tree/main?recursive=true"
        out: list[RepoFile] = []
        while url:
            try:
                resp = await self.http.get(url, follow_redirects=True)
            except httpx.HTTPError as exc:
                raise TransferFailed(f'pull model manifest: Get "{url}": {exc}') from exc
            if resp.status_code == 404:
                raise TransferFailed("pull model manifest: file does not exist")
            if resp.status_code >= 400:
                raise TransferFailed(f"pull model manifest: {resp.status_code}: {resp.text}")
            try:
                entries = orjson.loads(resp.content)
            except orjson.JSONDecodeError as exc:
                raise TransferFailed(f"pull model manifest: {exc}") from exc
            for e in entries if isinstance(entries, list) else []:
                if not isinstance(e, dict) or e.get("type") != "file":
                    continue
                lfs = e.get("lfs")
                lfs = lfs if isinstance(lfs, dict) else {}
                oid = lfs.get("oid") if isinstance(lfs.get("oid"), str) else None
                size = lfs.get("size", e.get("size", 0))
                out.append(RepoFile(str(e.get("path", "")), int(size or 0), oid))
            nxt = resp.links.get("next", {}).get("url")
            url = str(nxt) if nxt else None
        return out

    def _source(self, name: ModelName, f: RepoFile) -> BlobSource:
        url = f"{self.endpoint}/{self._repo(name)}/resolve/main/{quote(f.path)}"

        async def size() -> int:
            return f.size

        async def locate() -> tuple[str, dict[str, str]]:
            return url, {}

        return BlobSource(self.http, size, locate)

    async def pull(self, name: ModelName, *, insecure: bool = False) -> AsyncIterator[Progress]:
        """Like a registry pull, with the manifest made here from the GGUF file."""
        store = self.puller.store
        old = await read_old_digests(store, name)
        yield Progress("pulling manifest")
        model, projector = choose(await self.files(name), name.tag)
        wanted = [(model, MODEL)] + ([(projector, PROJECTOR)] if projector else [])
        by_digest = {f.digest: f for f, _ in wanted}
        blobs = [Descriptor(kind, f.digest, f.size) for f, kind in wanted]
        async with self.puller.fetch(blobs) as fetch:
            async for p in fetch.download(lambda b: self._source(name, by_digest[b.digest])):
                yield p
            header_path = (
                fetch.downloads[model.digest].partial if model.digest in fetch.downloads else None
            )
            path = (
                header_path
                if header_path and header_path.exists()
                else store.blob_path(model.digest)
            )
            try:
                info = await asyncio.to_thread(read_gguf, path)
            except (GGUFError, OSError) as exc:
                await fetch.verify()  # damaged bytes are a digest mismatch first
                raise TransferFailed(f"{model.path}: {exc}") from exc
            extra: dict[str, bytes] = {}
            layers = list(blobs)
            named = detect(info.chat_template) if info.chat_template else None
            if named is not None:
                for data, kind in (
                    (named.template.encode(), TEMPLATE),
                    (
                        go_json({"stop": list(named.stop)}) if named.stop is not None else b"",
                        PARAMS,
                    ),
                ):
                    if data:
                        layers.append(_small(data, kind, extra))
            config = {
                "model_format": "gguf",
                "model_family": info.architecture,
                "model_families": [info.architecture],
                "model_type": parameter_size_label(info.parameter_count),
                "file_type": info.file_type,
                "architecture": "amd64",
                "os": "linux",
            }
            config_layer = _small(go_json(config), CONFIG_MEDIA_TYPE, extra)
            for layer in [*layers[len(blobs) :], config_layer]:
                yield Progress(
                    f"pulling {short_digest(layer.digest)}",
                    layer.digest,
                    total=layer.size,
                    completed=layer.size,
                )
            yield Progress("verifying sha256 digest")
            await fetch.verify()
            yield Progress("writing manifest")
            raw = manifest_bytes(config_layer, layers)
            await commit_fetch(fetch, name, raw, extra)
        async for p in remove_unused(store, old, {d.digest for d in [*layers, config_layer]}):
            yield p
        log.info("pulled %s (%s)", name.display, model.path)
        yield Progress("success")


def _small(data: bytes, media: str, extra: dict[str, bytes]) -> Descriptor:
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    extra[digest] = data
    return Descriptor(media, digest, len(data))
