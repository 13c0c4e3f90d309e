"""Writing Ollama's model store in exactly Ollama's format, atomically.

Every file appears whole or not at all: bytes go to a hidden temporary file in the target
folder, are fsynced, and are renamed into place (then the folder is fsynced). A model is its
manifest, and a manifest is only ever written after every blob it names is in place, so a
failed or interrupted operation never leaves a half-made model behind.

Ollama prunes unreferenced blobs when it starts, so a store it shares must only gain blobs that
a manifest is about to reference. Blob removals and manifest writes that depend on "is this blob
still referenced?" run under one lock (`StoreWriter.lock`), so a deletion never removes a blob a
concurrent create or pull has just decided to reuse.

JSON is written the way Go's `encoding/json` encoder writes it (struct fields in declaration
order, map keys sorted, `<`, `>` and `&` escaped, a trailing newline), so the digests of what
bridge writes equal those Ollama would write for the same input.

All methods block (file I/O): call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import decimal
import errno
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from bridge.models.names import InvalidName, ModelName
from bridge.models.ollama_store import MEDIA_PREFIX, StoreError, blob_name

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
TMP_PREFIX = ".tmp-"
_DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")


def media_type(kind: str) -> str:
    """`model` -> `application/vnd.ollama.image.model`."""
    return MEDIA_PREFIX + kind


def is_digest(value: str) -> bool:
    """Whether `value` is `sha256:<64 hex>` (or the `sha256-` file form), as Ollama accepts."""
    return _DIGEST_RE.match(value) is not None


def short_digest(digest: str) -> str:
    """The 12 hex digits progress lines show: `sha256:0123456789ab...` -> `0123456789ab`."""
    return digest[7:19]


# --- Go's encoding/json ---------------------------------------------------------------------

_GO_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_NEEDS_ESCAPE = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029]')


def _go_string(s: str) -> str:
    body = _GO_NEEDS_ESCAPE.sub(lambda m: _GO_ESCAPES.get(m[0]) or f"\\u{ord(m[0]):04x}", s)
    return '"' + body + '"'


def _go_float(f: float) -> str:
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError(f"json: unsupported value: {f}")
    if f == 0:
        return "0"
    a = abs(f)
    if 1e-6 <= a < 1e21:
        if f.is_integer():
            return str(int(f))
        return format(decimal.Decimal(repr(f)), "f")
    text = repr(f)  # shortest round-trip digits, e.g. 1e-07, 1.5e+21
    mantissa, _, exp = text.partition("e")
    sign = exp[0] if exp[:1] in "+-" else "+"
    digits = exp.lstrip("+-").lstrip("0") or "0"
    if sign == "+" and len(digits) < 2:
        digits = digits.rjust(2, "0")
    return f"{mantissa}e{sign}{digits}"


def _go_encode(value: Any, out: list[str], sort_keys: bool) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_go_string(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_go_float(value))
    elif isinstance(value, Mapping):
        out.append("{")
        keys = sorted(value, key=str) if sort_keys else list(value)
        for i, k in enumerate(keys):
            if i:
                out.append(",")
            out.append(_go_string(str(k)))
            out.append(":")
            _go_encode(value[k], out, sort_keys)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _go_encode(item, out, sort_keys)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def go_json(value: Any, *, sort_keys: bool = False, newline: bool = True) -> bytes:
    """`value` as Go's `json.NewEncoder(w).Encode` writes it.

    Dicts keep their order (Go structs) unless `sort_keys` (Go maps, sorted at every level).
    """
    out: list[str] = []
    _go_encode(value, out, sort_keys)
    if newline:
        out.append("\n")
    return "".join(out).encode("utf-8", "replace")


# --- manifests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One entry of a manifest: a layer or the config blob."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    from_: str = ""
    name: str = ""  # tensor layers only

    @property
    def kind(self) -> str:
        """`model`, `template`, ... (the part after `application/vnd.ollama.image.`)."""
        return self.media_type.removeprefix(MEDIA_PREFIX)

    def as_json(self) -> dict[str, Any]:
        """Go's manifest.Layer field order; `from` and `name` omitted when empty."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class ManifestDoc:
    """A parsed manifest and the exact bytes it was read from."""

    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    raw: bytes

    def descriptors(self) -> list[Descriptor]:
        """The layers, then the config (the order Ollama pulls and pushes them in)."""
        return [*self.layers, *([self.config] if self.config and self.config.digest else [])]

    def digests(self) -> set[str]:
        return {d.digest for d in self.descriptors()}


def manifest_bytes(config: Descriptor, layers: Sequence[Descriptor]) -> bytes:
    """A manifest as Ollama's `manifest.WriteManifest` encodes it."""
    return go_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.as_json(),
            "layers": [layer.as_json() for layer in layers],
        }
    )


def parse_manifest(raw: bytes) -> ManifestDoc:
    """Parse manifest bytes; every digest is validated (no path can escape `blobs/`)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"invalid manifest: {exc}") from exc
    if not isinstance(data, dict):
        raise StoreError("invalid manifest: not an object")
    layers = data.get("layers")
    if not isinstance(layers, list):
        layers = []
    config = data.get("config")
    return ManifestDoc(
        config=_descriptor(config) if isinstance(config, dict) and config.get("digest") else None,
        layers=tuple(_descriptor(x) for x in layers),
        raw=raw,
    )


def _descriptor(obj: Any) -> Descriptor:
    if not isinstance(obj, dict):
        raise StoreError("invalid manifest: a layer is not an object")
    digest = obj.get("digest")
    if not isinstance(digest, str) or not is_digest(digest):
        raise StoreError(f"invalid digest format: {digest!r}")
    size = obj.get("size", 0)
    return Descriptor(
        media_type=str(obj.get("mediaType", "")),
        digest=digest,
        size=size if isinstance(size, int) and not isinstance(size, bool) else 0,
        from_=str(obj.get("from") or ""),
        name=str(obj.get("name") or ""),
    )


# --- atomic files ---------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, tmp_dir: Path | None = None) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix.

    The temporary file goes in `tmp_dir` (same file system) or beside `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def sha256_file(path: Path | str, *, chunk: int = 1 << 20) -> str:
    """`sha256:<hex>` of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


class DigestMismatch(Exception):
    """Uploaded bytes do not have the digest they were sent under."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"digest mismatch, expected {expected!r}, got {got!r}")
        self.expected = expected
        self.got = got


class BlobSink:
    """A blob being written: bytes go to a hidden temporary file and a running sha256.

    `commit` gives it its content address; `abort` (or leaving a `with` block early) removes it.
    """

    def __init__(self, store: StoreWriter) -> None:
        self._store = store
        store.blobs_dir.mkdir(parents=True, exist_ok=True)
        fd, self.tmp_path = tempfile.mkstemp(dir=store.blobs_dir, prefix=TMP_PREFIX)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._committed = False
        self.size = 0

    def __enter__(self) -> BlobSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write(self, data: bytes) -> None:
        assert self._file is not None, "blob already committed"
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"

    def commit(self, expected: str | None = None) -> tuple[str, bool]:
        """Name the blob by its digest; returns (digest, created). Raises DigestMismatch."""
        assert self._file is not None, "blob already committed"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        digest = self.digest
        if expected is not None and expected != digest:
            self.abort()
            raise DigestMismatch(expected, digest)
        created = self._store.place_file(Path(self.tmp_path), digest)
        self._committed = True
        return digest, created

    def abort(self) -> None:
        if self._committed:
            return  # the file has its blob name now (or was removed as a duplicate)
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            os.unlink(self.tmp_path)


# --- the store ------------------------------------------------------------------------------


class StoreWriter:
    """Writes under one OLLAMA_MODELS folder. Thread-safe; every method blocks."""

    def __init__(self, root: Path, on_change: Callable[[], None] | None = None) -> None:
        """`on_change` is called (on the writing thread) after a manifest is written or
        removed: the models the store holds have changed."""
        self.root = root
        self.blobs_dir = root / "blobs"
        self.manifests_dir = root / "manifests"
        # Held while deciding which blobs are referenced and acting on it (see module doc).
        self.lock = threading.RLock()
        self._on_change = on_change or (lambda: None)

    # paths

    def blob_path(self, digest: str) -> Path:
        """`blobs/sha256-<hex>`; a malformed digest raises StoreError (nothing escapes)."""
        return self.blobs_dir / blob_name(digest)

    def manifest_path(self, name: ModelName) -> Path:
        # ModelName parts are validated: no separators, no "..", nothing hidden.
        return self.manifests_dir.joinpath(*name.manifest_parts())

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int | None:
        try:
            return self.blob_path(digest).stat().st_size
        except OSError:
            return None

    # names and manifests

    def manifest_names(self) -> Iterator[tuple[ModelName, Path]]:
        """Every valid manifest name (files exactly four folders deep), as Ollama lists them."""
        for host in _dirs(self.manifests_dir):
            for ns in _dirs(host):
                for model in _dirs(ns):
                    try:
                        entries = list(os.scandir(model))
                    except OSError:
                        continue
                    for e in entries:
                        if not e.is_file() or e.name.startswith("."):
                            continue
                        try:
                            name = ModelName.from_manifest_path(
                                host.name, ns.name, model.name, e.name
                            )
                        except InvalidName:
                            continue
                        yield name, Path(e.path)

    def existing_name(self, name: ModelName) -> ModelName:
        """Each part of `name` respelled as an existing manifest spells it (case-insensitive).

        Ollama's `getExistingName`: parts are matched one by one, so creating `Llama3:Latest`
        next to `llama3:latest` reuses the stored spelling.
        """
        host, ns, model, tag = name.manifest_parts()
        for existing, _ in self.manifest_names():
            eh, ens, em, et = existing.manifest_parts()
            if eh.casefold() == host.casefold():
                host = eh
            if ens.casefold() == ns.casefold():
                ns = ens
            if em.casefold() == model.casefold():
                model = em
            if et.casefold() == tag.casefold():
                tag = et
        return ModelName(host=host, namespace=ns, model=model, tag=tag, scheme=name.scheme)

    def read_manifest(self, name: ModelName) -> ManifestDoc | None:
        """The manifest stored for `name`, or None when there is none."""
        try:
            raw = self.manifest_path(name).read_bytes()
        except FileNotFoundError:
            return None
        return parse_manifest(raw)

    def referenced(self) -> set[str]:
        """Every digest any readable manifest refers to (unreadable ones are skipped)."""
        digests: set[str] = set()
        for name, path in self.manifest_names():
            try:
                doc = parse_manifest(path.read_bytes())
            except (OSError, StoreError) as exc:
                log.warning("ignoring unreadable manifest %s: %s", name.display, exc)
                continue
            digests |= doc.digests()
        return digests

    def write_manifest(self, name: ModelName, raw: bytes) -> None:
        """Store manifest bytes as they are (a pull keeps the registry's bytes)."""
        # The temporary file sits at the top of manifests/, where no one looks for models: a
        # leftover inside a model's folder would make Ollama's start-up skip its pruning.
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.manifest_path(name), raw, tmp_dir=self.manifests_dir)
        self._on_change()

    # blobs

    def sink(self) -> BlobSink:
        return BlobSink(self)

    def place_file(self, src: Path, digest: str) -> bool:
        """Rename a finished file to its blob name; returns False if the blob already existed."""
        final = self.blob_path(digest)
        with self.lock:
            if final.exists():
                with contextlib.suppress(OSError):
                    os.unlink(src)
                return False
            os.chmod(src, 0o644)
            os.replace(src, final)
        _fsync_dir(self.blobs_dir)
        return True

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store a small blob; returns (digest, created)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.has_blob(digest):
            return digest, False
        with self.sink() as sink:
            sink.write(data)
            return sink.commit(digest)

    def import_file(self, path: Path | str) -> tuple[str, int]:
        """Copy a file into the store as a blob; returns (digest, size)."""
        with self.sink() as sink, open(path, "rb") as f:
            while block := f.read(1 << 20):
                sink.write(block)
            digest, _ = sink.commit()
            return digest, sink.size

    def remove_unused(self, digests: Iterable[str]) -> list[str]:
        """Remove the given blobs that no manifest refers to; returns the digests removed."""
        removed: list[str] = []
        with self.lock:
            candidates = set(digests) - self.referenced()
            for digest in sorted(candidates):
                try:
                    os.unlink(self.blob_path(digest))
                except FileNotFoundError:
                    continue
                except (OSError, StoreError) as exc:
                    log.warning("cannot remove blob %s: %s", digest, exc)
                    continue
                removed.append(digest)
        if removed:
            log.info("removed %d unused blob(s)", len(removed))
        return removed

    # model operations

    def copy(self, src: ModelName, dst: ModelName) -> None:
        """Copy a manifest (blobs are shared). Raises FileNotFoundError if `src` has none."""
        src_path, dst_path = self.manifest_path(src), self.manifest_path(dst)
        if src_path == dst_path:
            if not src_path.is_file():
                raise FileNotFoundError(src_path)
            return
        self.write_manifest(dst, src_path.read_bytes())

    def delete(self, name: ModelName) -> list[str]:
        """Remove a model's manifest, empty folders, and the blobs no other model uses.

        Returns the digests of the removed blobs. Raises FileNotFoundError if there is none.
        """
        path = self.manifest_path(name)
        with self.lock:
            raw = path.read_bytes()
            os.unlink(path)
            self._on_change()
            _fsync_dir(path.parent)
            self._prune_dirs(path.parent)
            try:
                doc = parse_manifest(raw)
            except StoreError as exc:
                log.warning("deleted an unreadable manifest %s: %s", name.display, exc)
                return []
            return self.remove_unused(doc.digests())

    def _prune_dirs(self, start: Path) -> None:
        d = start
        while d != self.manifests_dir and self.manifests_dir in d.parents:
            try:
                d.rmdir()
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    log.debug("cannot remove %s: %s", d, exc)
                if exc.errno != errno.ENOENT:
                    return
            d = d.parent

    def commit_model(
        self,
        name: ModelName,
        config: Descriptor,
        layers: Sequence[Descriptor],
        new_blobs: Mapping[str, bytes | Path],
    ) -> tuple[bytes, list[str]]:
        """Put `new_blobs` (digest -> bytes, or a finished file to rename) in place, then write
        the manifest; every referenced blob must exist by then.

        Returns the manifest bytes and the digests of blobs this call created (so a caller
        can undo them). Nothing is left behind when it fails.
        """
        created: list[str] = []
        with self.lock:
            try:
                for digest, content in new_blobs.items():
                    if isinstance(content, Path):
                        made = self.place_file(content, digest)
                    else:
                        got, made = self.put_bytes(content)
                        if got != digest:
                            raise StoreError(f"blob content does not match {digest}")
                    if made:
                        created.append(digest)
                for d in [*layers, config]:
                    if not self.has_blob(d.digest):
                        raise StoreError(f"blob {d.digest} is missing")
                raw = manifest_bytes(config, layers)
                self.write_manifest(name, raw)
            except BaseException:
                self.remove_unused(created)
                raise
        return raw, created


def _dirs(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []
