"""Reading Ollama's model store in place: manifests and content-addressed blobs.

Layout (exactly Ollama's): `manifests/<host>/<namespace>/<model>/<tag>` holds a JSON manifest;
`blobs/sha256-<hex>` holds each layer. Nothing here writes to the store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bridge.domain import Message, ModelDetails, ModelSpec
from bridge.models.gguf_info import GGUFError, GGUFInfo
from bridge.models.names import InvalidName, ModelName

log = logging.getLogger(__name__)

MEDIA_PREFIX = "application/vnd.ollama.image."
_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")


class StoreError(Exception):
    """A manifest or blob that cannot be read."""


@dataclass(frozen=True, slots=True)
class Layer:
    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    from_: str | None = None

    @property
    def kind(self) -> str:
        """The part after `application/vnd.ollama.image.`, e.g. "model" or "template"."""
        return self.media_type.removeprefix(MEDIA_PREFIX)


@dataclass(frozen=True, slots=True)
class Manifest:
    name: ModelName
    path: Path
    digest: str  # hex sha256 of the manifest file's bytes, as /api/tags shows it
    mtime: float
    config: Layer | None
    layers: tuple[Layer, ...]

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers) + (self.config.size if self.config else 0)


def blob_name(digest: str) -> str:
    """`sha256:<hex>` (or `sha256-<hex>`) -> `sha256-<hex>`; anything else is refused."""
    m = _DIGEST.match(digest)
    if not m:
        raise StoreError(f"invalid digest format: {digest!r}")
    return f"sha256-{m.group(1).lower()}"


class OllamaStore:
    """The manifests and blobs under one OLLAMA_MODELS folder, re-read only when files change."""

    def __init__(self, root: Path, *, read_gguf: Callable[[str], GGUFInfo]) -> None:
        self.root = root
        self._read_gguf = read_gguf
        self._manifests: dict[Path, tuple[tuple[int, int], Manifest | None]] = {}
        self._specs: dict[str, ModelSpec] = {}  # manifest digest + mtime -> spec
        self._layer_cache: dict[
            str, Any
        ] = {}  # blob digest -> parsed content (blobs are immutable)

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / blob_name(digest)

    def scan(self) -> list[ModelSpec]:
        """Every model in the store. Unreadable manifests are logged and skipped."""
        specs: list[ModelSpec] = []
        seen: set[Path] = set()
        for path, parts in self._manifest_files():
            seen.add(path)
            manifest = self._manifest(path, parts)
            if manifest is not None:
                specs.append(self._spec(manifest))
        for stale in self._manifests.keys() - seen:
            del self._manifests[stale]
        return specs

    def _manifest_files(self) -> list[tuple[Path, tuple[str, str, str, str]]]:
        # Only files exactly four folders below manifests/ are models, as in Ollama.
        base = self.root / "manifests"
        found: list[tuple[Path, tuple[str, str, str, str]]] = []
        for host in _subdirs(base):
            for ns in _subdirs(host):
                for model in _subdirs(ns):
                    try:
                        entries = list(os.scandir(model))
                    except OSError:
                        continue
                    for e in entries:
                        if e.is_file() and not e.name.startswith("."):
                            found.append((Path(e.path), (host.name, ns.name, model.name, e.name)))
        return found

    def _manifest(self, path: Path, parts: tuple[str, str, str, str]) -> Manifest | None:
        try:
            st = path.stat()
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._manifests.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        manifest: Manifest | None
        try:
            manifest = _parse_manifest(path, parts, st.st_mtime)
        except (StoreError, InvalidName) as exc:
            log.warning("skipping manifest %s: %s", path, exc)
            manifest = None
        self._manifests[path] = (stamp, manifest)
        return manifest

    def _spec(self, m: Manifest) -> ModelSpec:
        key = f"{m.path}\0{m.digest}\0{m.mtime}"
        spec = self._specs.get(key)
        if spec is None:
            spec = self._build_spec(m)
            # Keep only specs that are fully known; a missing blob may still arrive (a pull).
            if spec.problem is None:
                self._specs[key] = spec
        return spec

    def _build_spec(self, m: Manifest) -> ModelSpec:
        problems: list[str] = []
        config: Mapping[str, Any] = {}
        if m.config is not None:
            cfg = self._layer_json(m.config, problems)
            if isinstance(cfg, dict):
                config = cfg

        model_path = ""
        parent = ""
        projectors: list[str] = []
        adapters: list[str] = []
        template: str | None = None
        system: str | None = None
        params: dict[str, Any] = {}
        messages: tuple[Message, ...] = ()
        licenses: list[str] = []
        for layer in m.layers:
            kind = layer.kind
            if kind == "model":
                model_path = str(self.blob_path(layer.digest))
                parent = layer.from_ or ""
                if not os.path.exists(model_path):
                    problems.append(
                        f"model blob is missing: {model_path}; pull {m.name.display} again"
                    )
            elif kind == "projector":
                projectors.append(str(self.blob_path(layer.digest)))
            elif kind == "adapter":
                adapters.append(str(self.blob_path(layer.digest)))
            elif kind in ("template", "prompt"):
                template = self._layer_text(layer, problems)
            elif kind == "system":
                system = self._layer_text(layer, problems)
            elif kind == "license":
                text = self._layer_text(layer, problems)
                if text is not None:
                    licenses.append(text)
            elif kind == "params":
                value = self._layer_json(layer, problems)
                if isinstance(value, dict):
                    params = value
            elif kind == "messages":
                value = self._layer_json(layer, problems)
                if isinstance(value, list):
                    messages = tuple(
                        Message(role=str(x.get("role", "")), content=str(x.get("content", "")))
                        for x in value
                        if isinstance(x, dict)
                    )
        if not model_path:
            problems.append(f"{m.name.display} has no model layer")

        details = self._details(config, parent, model_path if not problems else "")
        return ModelSpec(
            name=m.name.display,
            full_name=m.name.full,
            namespace=m.name.namespace,
            source="ollama",
            model_path=model_path,
            digest=m.digest,
            size=m.size,
            modified_at=m.mtime,
            source_path=str(m.path),
            details=details,
            projectors=tuple(projectors),
            adapters=tuple(adapters),
            template=template,
            system=system,
            params=params,
            messages=messages,
            license=tuple(licenses),
            problem="; ".join(problems) or None,
            renderer=_config_text(config, "renderer"),
            parser=_config_text(config, "parser"),
            requires=_config_text(config, "requires"),
        )

    def _details(self, config: Mapping[str, Any], parent: str, model_path: str) -> ModelDetails:
        families = config.get("model_families")
        ctx = config.get("context_length")
        emb = config.get("embedding_length")
        quant = str(config.get("file_type") or "")
        family = str(config.get("model_family") or "")
        psize = str(config.get("model_type") or "")
        if model_path and (ctx is None or emb is None or not quant or not family):
            try:
                info = self._read_gguf(model_path)
            except (GGUFError, OSError) as exc:
                log.warning("cannot read GGUF header of %s: %s", model_path, exc)
            else:
                ctx = ctx if ctx is not None else info.context_length
                emb = emb if emb is not None else info.embedding_length
                quant = quant or info.file_type
                family = family or info.architecture
                psize = psize or info.parameter_size
        return ModelDetails(
            parent_model=parent,
            format=str(config.get("model_format") or "gguf"),
            family=family,
            families=tuple(str(f) for f in families) if isinstance(families, list) else None,
            parameter_size=psize,
            quantization_level=quant,
            context_length=ctx if isinstance(ctx, int) else None,
            embedding_length=emb if isinstance(emb, int) else None,
        )

    def _layer_bytes(self, layer: Layer, problems: list[str]) -> bytes | None:
        try:
            return self.blob_path(layer.digest).read_bytes()
        except (OSError, StoreError) as exc:
            problems.append(f"cannot read {layer.kind} layer {layer.digest}: {exc}")
            return None

    def _layer_text(self, layer: Layer, problems: list[str]) -> str | None:
        if layer.digest in self._layer_cache:
            return str(self._layer_cache[layer.digest])
        data = self._layer_bytes(layer, problems)
        if data is None:
            return None
        text = data.decode("utf-8", errors="replace")
        self._layer_cache[layer.digest] = text
        return text

    def _layer_json(self, layer: Layer, problems: list[str]) -> Any:
        if layer.digest in self._layer_cache:
            return self._layer_cache[layer.digest]
        data = self._layer_bytes(layer, problems)
        if data is None:
            return None
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            problems.append(f"{layer.kind} layer {layer.digest} is not valid JSON: {exc}")
            return None
        self._layer_cache[layer.digest] = value
        return value


def _subdirs(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []


def _parse_manifest(path: Path, parts: tuple[str, str, str, str], mtime: float) -> Manifest:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StoreError(str(exc)) from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise StoreError("not a manifest (no layers)")
    name = ModelName.from_manifest_path(*parts)
    config = _layer(data["config"]) if isinstance(data.get("config"), dict) else None
    layers = tuple(_layer(x) for x in data["layers"])
    return Manifest(
        name=name,
        path=path,
        digest=hashlib.sha256(raw).hexdigest(),
        mtime=mtime,
        config=config,
        layers=layers,
    )


def _layer(obj: Any) -> Layer:
    if not isinstance(obj, dict):
        raise StoreError("layer is not an object")
    digest = obj.get("digest")
    if not isinstance(digest, str):
        raise StoreError("layer without a digest")
    blob_name(digest)  # validates: no path can escape blobs/
    size = obj.get("size", 0)
    return Layer(
        media_type=str(obj.get("mediaType", "")),
        digest=digest,
        size=size if isinstance(size, int) else 0,
        from_=obj.get("from") if isinstance(obj.get("from"), str) else None,
    )


def _config_text(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key)
    return value if isinstance(value, str) else ""
