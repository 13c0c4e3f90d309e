"""`/api/create`: a new model from uploaded GGUF blobs or from an existing model.

The steps and status lines follow Ollama's `server/create.go`: `parsing GGUF` per file, the
auto-detected template, quantization progress, then one line per layer (`creating new layer
sha256:…` / `using existing layer sha256:…` / `using autodetected template <name>`), `writing
manifest` and `success`. Every layer Ollama would write is written byte for byte the same (Go
JSON for params, messages and config), so the same input gives the same digests.

Nothing is written until the end: small layers stay in memory and a quantized file stays a
hidden temporary file, then `StoreWriter.commit_model` puts the blobs in place and writes the
manifest in one step. A failed or abandoned create leaves no model and no stray blobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from bridge.domain import ModelSpec
from bridge.errors import CreateFailed, InvalidModelName, InvalidRequest
from bridge.models.gguf_info import GGUFError, GGUFInfo, parameter_size_label, read_gguf
from bridge.models.names import InvalidName, ModelName
from bridge.models.ollama_store import StoreError
from bridge.models.progress import Progress
from bridge.models.store_writer import (
    CONFIG_MEDIA_TYPE,
    TMP_PREFIX,
    Descriptor,
    StoreWriter,
    go_json,
    media_type,
)
from bridge.templates import ollama as ollama_template
from bridge.templates.detect import detect
from bridge.templates.gotemplate import TemplateError

log = logging.getLogger(__name__)

MODEL = media_type("model")
ADAPTER = media_type("adapter")
PROJECTOR = media_type("projector")
TEMPLATE = media_type("template")
SYSTEM = media_type("system")
LICENSE = media_type("license")
PARAMS = media_type("params")
MESSAGES = media_type("messages")
_GGUF_KINDS = (MODEL, PROJECTOR, ADAPTER, media_type("draft"))
_QUANTIZABLE = ("F16", "BF16", "F32")
QUANTIZE_DIGEST = "0000000000000000000"  # what Ollama puts in quantization progress lines


class Quantizer(Protocol):
    """llama.cpp's quantizer, injected so that this module never imports the engine."""

    def canonical_type(self, name: str) -> str:
        """The canonical type name; raises ValueError (Ollama's text) for unknown types."""
        ...

    def quantize(self, src: str, dst: str, type_name: str) -> None:
        """Blocking; raises on failure."""
        ...


PullFn = Callable[[ModelName], AsyncIterator[Progress]]
FindFn = Callable[[str], Awaitable[ModelSpec | None]]


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """A decoded /api/create request (see `bridge.http.ollama.manage`)."""

    name: ModelName
    from_: str = ""
    files: Mapping[str, str] | None = None
    adapters: Mapping[str, str] | None = None
    template: str = ""
    system: str = ""
    license: tuple[str, ...] = ()
    parameters: Mapping[str, Any] | None = None
    messages: tuple[Mapping[str, Any], ...] = ()
    quantize: str = ""
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    info: Mapping[str, Any] | None = None


@dataclass(slots=True)
class _Layer:
    desc: Descriptor
    info: GGUFInfo | None = None
    status: str = ""
    content: bytes | Path | None = None  # not yet in the store: put in place at commit


@dataclass(slots=True)
class _Config:
    """Ollama's model.ConfigV2, in its JSON field order."""

    model_format: str = ""
    model_family: str = ""
    model_families: list[str] | None = None
    model_type: str = ""
    file_type: str = ""
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    capabilities: list[str] = field(default_factory=list)
    context_length: int = 0
    embedding_length: int = 0
    base_name: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model_format": self.model_format,
            "model_family": self.model_family,
            "model_families": self.model_families,
            "model_type": self.model_type,
            "file_type": self.file_type,
        }
        optional = (
            ("renderer", self.renderer),
            ("parser", self.parser),
            ("requires", self.requires),
            ("capabilities", self.capabilities),
            ("context_length", self.context_length),
            ("embedding_length", self.embedding_length),
            ("base_name", self.base_name),
        )
        out.update((k, v) for k, v in optional if v)
        out["architecture"] = "amd64"
        out["os"] = "linux"
        return out


def valid_file_path(path: str) -> bool:
    """Go's `fs.ValidPath`: relative, slash-separated, no `.`/`..`/empty elements."""
    if path == ".":
        return True
    if not path or path.startswith("/") or path.endswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def check_template(text: str) -> None:
    """Parse the template as Ollama does at create time; raises Ollama's `template error: …`."""
    try:
        ollama_template.parse(text)
    except TemplateError as exc:
        raise InvalidRequest(f"template error: {exc}") from exc


class Creator:
    """Runs creates against one store."""

    def __init__(
        self,
        store: StoreWriter,
        *,
        pull: PullFn,
        find_local: FindFn,
        quantizer: Quantizer | None,
        progress_interval: float = 0.25,
    ) -> None:
        self._store = store
        self._pull = pull
        self._find_local = find_local
        self._quantizer = quantizer
        self._interval = progress_interval

    async def create(self, req: CreateRequest) -> AsyncIterator[Progress]:
        """Stream the create's progress; raises InvalidRequest/CreateFailed on failure."""
        store = self._store
        old = await _quietly(asyncio.to_thread(store.read_manifest, req.name))
        config = _Config(renderer=req.renderer, parser=req.parser, requires=req.requires)
        base: list[_Layer] = []
        temps: list[Path] = []
        try:
            if req.from_:
                async for p in self._from_model(req.from_, base, config):
                    yield p
            elif req.files is not None:
                async for p in self._from_files(req.files, base, adapter=False):
                    yield p
            else:
                raise InvalidRequest("neither 'from' or 'files' was specified")
            if req.adapters is not None:
                async for p in self._from_files(req.adapters, base, adapter=True):
                    yield p
            _apply_info(config, req.info)

            layers: list[_Layer] = []
            for layer in base:
                if layer.info is not None:
                    if layer.desc.media_type == MODEL and req.quantize:
                        async for p in self._quantize(layer, req.quantize, temps):
                            yield p
                    if layer.desc.media_type == MODEL and layer.info is not None:
                        _model_config(config, layer.info)
                layers.append(layer)

            await asyncio.to_thread(self._edit_layers, layers, req)
            config_bytes = go_json(config.as_json())
            config_layer = await asyncio.to_thread(self._new_layer, config_bytes, CONFIG_MEDIA_TYPE)

            for layer in layers:
                if layer.status:
                    yield Progress(layer.status)
            yield Progress("writing manifest")
            new_blobs = {
                x.desc.digest: x.content for x in [*layers, config_layer] if x.content is not None
            }
            try:
                await asyncio.to_thread(
                    store.commit_model,
                    req.name,
                    config_layer.desc,
                    [x.desc for x in layers],
                    new_blobs,
                )
            except (OSError, StoreError) as exc:
                raise CreateFailed(str(exc)) from exc
            if old is not None:
                await asyncio.to_thread(store.remove_unused, old.digests())
            log.info("created %s", req.name.display)
            yield Progress("success")
        finally:
            for tmp in temps:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    # --- sources -------------------------------------------------------------------------

    async def _from_model(
        self, raw: str, out: list[_Layer], config: _Config
    ) -> AsyncIterator[Progress]:
        store = self._store
        try:
            parsed = ModelName.parse(raw)
        except InvalidName as exc:
            raise InvalidModelName() from exc
        name = await asyncio.to_thread(store.existing_name, parsed)
        doc = await asyncio.to_thread(store.read_manifest, name)
        if doc is None:
            spec = await self._find_local(raw)
            if spec is not None and spec.source != "ollama" and spec.model_path:
                # A GGUF-folder (or demo) model: its file becomes the model layer.
                async for p in self._from_local_file(spec, out):
                    yield p
                return
            async for p in self._pull(name):
                yield p
            doc = await asyncio.to_thread(store.read_manifest, name)
            if doc is None:
                raise CreateFailed(f"pull model manifest: {name.display}: file does not exist")
        out.extend(await asyncio.to_thread(self._layers_of, doc.layers, name.display))
        if doc.config is not None:
            base = await asyncio.to_thread(_read_json, store.blob_path(doc.config.digest))
            if isinstance(base, dict):
                config.renderer = config.renderer or str(base.get("renderer") or "")
                config.parser = config.parser or str(base.get("parser") or "")
                config.requires = config.requires or str(base.get("requires") or "")
                config.model_format = config.model_format or str(base.get("model_format") or "")
                caps = base.get("capabilities")
                if not config.capabilities and isinstance(caps, list):
                    config.capabilities = [str(c) for c in caps]

    def _layers_of(self, layers: Sequence[Descriptor], parent: str) -> list[_Layer]:
        out: list[_Layer] = []
        for src in layers:
            path = self._store.blob_path(src.digest)
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise CreateFailed(f"stat {path}: no such file or directory") from exc
            desc = Descriptor(src.media_type, src.digest, size, from_=parent, name=src.name)
            info = _read_header(path) if src.media_type in _GGUF_KINDS else None
            out.append(_Layer(desc, info, status=f"using existing layer {src.digest}"))
        return out

    async def _from_local_file(self, spec: ModelSpec, out: list[_Layer]) -> AsyncIterator[Progress]:
        yield Progress("parsing GGUF")
        try:
            digest, size = await asyncio.to_thread(self._store.import_file, spec.model_path)
        except OSError as exc:
            raise CreateFailed(str(exc)) from exc
        info = await asyncio.to_thread(_read_header, self._store.blob_path(digest))
        desc = Descriptor(MODEL, digest, size, from_=spec.name)
        layers = [_Layer(desc, info, status=f"using existing layer {digest}")]
        out.extend(await asyncio.to_thread(self._detect_templates, layers))

    async def _from_files(
        self, files: Mapping[str, str], out: list[_Layer], *, adapter: bool
    ) -> AsyncIterator[Progress]:
        kind = await asyncio.to_thread(self._file_type, files)
        if kind == "safetensors":
            raise InvalidRequest(
                "safetensors models cannot be converted by this server; convert them to GGUF"
            )
        if kind != "gguf":
            raise InvalidRequest("unknown type")
        if not files:
            raise InvalidRequest("no files provided to convert")
        if adapter and len(files) > 1:
            raise InvalidRequest("only one adapter is currently supported")
        layers: list[_Layer] = []
        for path in sorted(files):
            yield Progress("parsing GGUF")
            layers.append(await asyncio.to_thread(self._gguf_layer, path, files[path]))
        out.extend(await asyncio.to_thread(self._detect_templates, layers))

    def _file_type(self, files: Mapping[str, str]) -> str:
        names = sorted(files)
        if any(n.endswith(".safetensors") for n in names):
            return "safetensors"
        if any(n.endswith(".gguf") for n in names):
            return "gguf"
        for n in names:
            try:
                with open(self._store.blob_path(files[n]), "rb") as f:
                    return "gguf" if f.read(4) in (b"GGUF", b"FUGG") else ""
            except (OSError, StoreError):
                return ""
        return ""

    def _gguf_layer(self, path: str, digest: str) -> _Layer:
        blob = self._store.blob_path(digest)
        try:
            with open(blob, "rb") as f:
                magic = f.read(4)
            size = blob.stat().st_size
        except FileNotFoundError as exc:
            raise CreateFailed(f"open {blob}: no such file or directory") from exc
        if magic != b"GGUF":
            raise InvalidRequest("supplied file was not in GGUF format")
        info = _read_header(blob)
        meta = info.metadata
        arch = info.architecture
        if int(meta.get("split.count") or 0) > 1:
            raise InvalidRequest(f"{path}: split GGUF files are not supported by this server")
        kind = meta.get("general.type")
        mtype = MODEL
        if kind == "adapter":
            mtype = ADAPTER
        elif (
            kind in ("projector", "mmproj")
            or (not meta.get(f"{arch}.block_count") and meta.get(f"{arch}.vision.block_count"))
            or (
                arch == "clip"
                and not meta.get("clip.block_count")
                and (meta.get("clip.has_vision_encoder") or meta.get("clip.has_audio_encoder"))
            )
        ):
            mtype = PROJECTOR
        desc = Descriptor(mtype, digest, size, from_=path)
        return _Layer(desc, info, status=f"using existing layer {digest}")

    def _detect_templates(self, layers: list[_Layer]) -> list[_Layer]:
        out = list(layers)
        for layer in layers:
            template = layer.info.chat_template if layer.info else None
            if not template:
                continue
            named = detect(template)
            if named is None:
                log.debug("no bundled template matches the GGUF chat template")
                continue
            t = self._new_layer(named.template.encode(), TEMPLATE)
            t.status = f"using autodetected template {named.name}"
            out.append(t)
            if named.stop is not None:
                out.append(self._new_layer(go_json({"stop": list(named.stop)}), PARAMS))
        return out

    # --- quantization --------------------------------------------------------------------

    async def _quantize(
        self, layer: _Layer, type_name: str, temps: list[Path]
    ) -> AsyncIterator[Progress]:
        assert layer.info is not None
        want = type_name.upper()
        quantizer = self._quantizer
        if quantizer is None:
            raise CreateFailed("quantization is not available on this server")
        try:
            canonical = quantizer.canonical_type(want)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        ft = layer.info.file_type
        if ft not in _QUANTIZABLE:
            raise InvalidRequest("quantization is only supported for F16, BF16 and F32 models")
        if ft == canonical:
            return
        src = self._store.blob_path(layer.desc.digest)
        fd, tmp_name = tempfile.mkstemp(dir=self._store.blobs_dir, prefix=TMP_PREFIX)
        os.close(fd)
        tmp = Path(tmp_name)
        temps.append(tmp)
        total = layer.desc.size
        status = f"quantizing {ft} model to {want}"
        expected = max(1, int(total * _bits(canonical) / _bits(ft)))
        yield Progress(status, digest=QUANTIZE_DIGEST, total=total)
        job = asyncio.ensure_future(
            asyncio.to_thread(quantizer.quantize, str(src), tmp_name, canonical)
        )
        try:
            while not job.done():
                await asyncio.wait({job}, timeout=self._interval)
                if not job.done():
                    written = await asyncio.to_thread(_size, tmp)
                    done = min(total - 1, total * written // expected)
                    yield Progress(status, digest=QUANTIZE_DIGEST, total=total, completed=done)
            job.result()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise CreateFailed(f"quantization failed: {exc}") from exc
        finally:
            if not job.done():
                # The quantizer cannot be interrupted; its output is removed when it ends.
                job.add_done_callback(lambda _: _unlink(tmp))
        yield Progress(status, digest=QUANTIZE_DIGEST, total=total, completed=total)
        yield Progress("verifying conversion")
        digest = await asyncio.to_thread(_sha256, tmp)
        info = await asyncio.to_thread(_read_header, tmp)
        size = await asyncio.to_thread(_size, tmp)
        exists = await asyncio.to_thread(self._store.has_blob, digest)
        verb = "using existing" if exists else "creating new"
        layer.desc = Descriptor(MODEL, digest, size)
        layer.info = info
        layer.content = tmp
        layer.status = f"{verb} layer {digest}"

    # --- the other layers ----------------------------------------------------------------

    def _new_layer(self, data: bytes, mtype: str) -> _Layer:
        """A layer for small content, written at commit; status as Ollama's NewLayer words it."""
        import hashlib

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        verb = "using existing" if self._store.has_blob(digest) else "creating new"
        return _Layer(
            Descriptor(mtype, digest, len(data)), status=f"{verb} layer {digest}", content=data
        )

    def _edit_layers(self, layers: list[_Layer], req: CreateRequest) -> None:
        if req.template:
            check_template(req.template)
            layers[:] = [x for x in layers if x.desc.media_type != TEMPLATE]
            layers.append(self._new_layer(req.template.encode(), TEMPLATE))
        if req.system:
            layers[:] = [x for x in layers if x.desc.media_type != SYSTEM]
            layers.append(self._new_layer(req.system.encode(), SYSTEM))
        for text in req.license:
            layers.append(self._new_layer(text.encode(), LICENSE))
        params = dict(req.parameters or {})
        for x in layers:
            if x.desc.media_type == PARAMS:
                existing = self._layer_json(x)
                if isinstance(existing, dict):
                    for k, v in existing.items():
                        params.setdefault(k, v)
        if params:
            layers[:] = [x for x in layers if x.desc.media_type != PARAMS]
            layers.append(self._new_layer(go_json(params, sort_keys=True), PARAMS))
        if req.messages:
            layers[:] = [x for x in layers if x.desc.media_type != MESSAGES]
            msgs = [_message(m) for m in req.messages]
            layers.append(self._new_layer(go_json(msgs), MESSAGES))

    def _layer_json(self, layer: _Layer) -> Any:
        if isinstance(layer.content, bytes):
            return orjson.loads(layer.content)
        return _read_json(self._store.blob_path(layer.desc.digest))


# --- helpers --------------------------------------------------------------------------------


async def _quietly(job: Awaitable[Any]) -> Any:
    try:
        return await job
    except (OSError, StoreError):
        return None


def _read_header(path: Path) -> GGUFInfo:
    try:
        return read_gguf(path)
    except GGUFError as exc:
        raise CreateFailed(str(exc)) from exc
    except OSError as exc:
        raise CreateFailed(f"open {path}: {exc.strerror or exc}") from exc


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CreateFailed(str(exc)) from exc


def _model_config(config: _Config, info: GGUFInfo) -> None:
    config.model_format = config.model_format or "gguf"
    config.model_family = config.model_family or info.architecture
    config.model_type = config.model_type or parameter_size_label(info.parameter_count)
    config.file_type = config.file_type or info.file_type
    config.model_families = [*(config.model_families or []), info.architecture]


def _apply_info(config: _Config, info: Mapping[str, Any] | None) -> None:
    if not info:
        return
    caps = info.get("capabilities")
    if isinstance(caps, list):
        config.capabilities += [c if isinstance(c, str) else "" for c in caps]

    def text(key: str) -> str:
        v = info.get(key)
        if v is None:
            return ""
        if not isinstance(v, str):
            raise InvalidRequest(f'info field "{key}" must be a string')
        return v

    def number(key: str) -> int:
        v = info.get(key)
        if v is None:
            return 0
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InvalidRequest(f'info field "{key}" must be a number')
        if v < 0 or math.trunc(v) != v:
            raise InvalidRequest(f'info field "{key}" must be a non-negative integer')
        return int(v)

    config.model_family = text("model_family")
    if config.model_family:
        config.model_families = [config.model_family]
    config.base_name = text("base_name")
    config.file_type = text("quantization_level")
    config.model_type = text("parameter_size")
    config.context_length = number("context_length")
    config.embedding_length = number("embedding_length")


_MESSAGE_FIELDS = ("thinking", "images", "tool_calls", "tool_name", "tool_call_id")


def _message(m: Mapping[str, Any]) -> dict[str, Any]:
    """An api.Message in Go's field order, empty optional fields left out."""
    out: dict[str, Any] = {"role": str(m.get("role") or ""), "content": str(m.get("content") or "")}
    for k in _MESSAGE_FIELDS:
        if m.get(k):
            out[k] = m[k]
    return out


_BITS = re.compile(r"^(?:IQ|Q)(\d)")


def _bits(type_name: str) -> float:
    """Rough bits per weight, only to turn the output file's growth into a progress bar."""
    if type_name in ("F32",):
        return 32.0
    if type_name in ("F16", "BF16"):
        return 16.0
    m = _BITS.match(type_name)
    return float(m.group(1)) + 0.5 if m else 8.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _sha256(path: Path) -> str:
    from bridge.models.store_writer import sha256_file

    return sha256_file(path)
