"""Folders of `.gguf` files, each file one model named after its stem.

Split models (`name-00001-of-00003.gguf`) are one model, loaded from the first part; `mmproj`
files attach to a model beside them rather than being listed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bridge.domain import ModelDetails, ModelSpec
from bridge.models.gguf_info import GGUFError, GGUFInfo, parameter_size_label
from bridge.models.names import ModelName, sanitize_model_part

log = logging.getLogger(__name__)

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class GGUFFile:
    """One model found in a folder: its weights (all parts) and any projector beside it."""

    stem: str
    path: Path  # the file llama.cpp opens (the first part of a split)
    parts: tuple[Path, ...]
    projectors: tuple[Path, ...]


def find_gguf_files(dirs: Iterable[str]) -> list[GGUFFile]:
    """Every model in `dirs`, in a stable order: folder order, then path."""
    found: list[GGUFFile] = []
    for root in dirs:
        by_folder: dict[str, list[Path]] = {}
        for folder, subdirs, files in os.walk(root):
            subdirs.sort()
            ggufs = sorted(Path(folder, f) for f in files if f.lower().endswith(".gguf"))
            if ggufs:
                by_folder[folder] = ggufs
        for folder in sorted(by_folder):
            found.extend(_group_folder(by_folder[folder]))
    return found


def _group_folder(paths: list[Path]) -> list[GGUFFile]:
    projectors = [p for p in paths if "mmproj" in p.name.lower()]
    splits: dict[str, list[Path]] = {}
    singles: list[tuple[str, Path]] = []
    for p in paths:
        if p in projectors:
            continue
        stem = p.name[: -len(".gguf")]
        m = _SPLIT.match(stem)
        if m:
            splits.setdefault(m.group("stem"), []).append(p)
        else:
            singles.append((stem, p))
    models: list[tuple[str, tuple[Path, ...]]] = [(stem, (p,)) for stem, p in singles]
    models += [(stem, tuple(sorted(ps))) for stem, ps in splits.items()]
    models.sort(key=lambda m: m[1][0])

    attached: dict[str, list[Path]] = {stem: [] for stem, _ in models}
    for proj in projectors:
        owner = _projector_owner(proj, [stem for stem, _ in models])
        if owner is None:
            log.warning("projector %s has no model beside it; ignored", proj)
        else:
            attached[owner].append(proj)
    return [
        GGUFFile(stem=stem, path=parts[0], parts=parts, projectors=tuple(attached[stem]))
        for stem, parts in models
    ]


def _projector_owner(proj: Path, stems: list[str]) -> str | None:
    """The model an mmproj file belongs to: the only one in its folder, else the longest
    common name prefix (ties go to the first in path order)."""
    if len(stems) == 1:
        return stems[0]
    name = proj.name.lower().replace("mmproj", "")
    best, best_len = None, 0
    for stem in stems:
        # A character prefix of the file names, not a path prefix.
        n = len(os.path.commonprefix([name.strip("-_."), stem.lower()]))  # noqa: RUF071
        if n > best_len:
            best, best_len = stem, n
    return best


class GGUFFolders:
    """Models from folders of GGUF files, with header metadata cached by size and mtime."""

    def __init__(self, dirs: Iterable[str], *, read_gguf: Callable[[str], GGUFInfo]) -> None:
        self.dirs = tuple(dirs)
        self._read_gguf = read_gguf
        self._cache: dict[tuple[str, ...], tuple[tuple[object, ...], ModelSpec]] = {}

    def scan(self) -> list[tuple[str, ModelSpec]]:
        """(preferred model part of the name, spec) for every file; the resolver names them."""
        out: list[tuple[str, ModelSpec]] = []
        for f in find_gguf_files(self.dirs):
            files = (*f.parts, *f.projectors)
            try:
                stats = tuple((st.st_size, st.st_mtime_ns) for st in (p.stat() for p in files))
            except OSError:
                continue
            key = tuple(str(p) for p in files)
            cached = self._cache.get(key)
            if cached is None or cached[0] != stats:
                cached = (stats, self._build(f, stats))
                self._cache[key] = cached
            out.append((sanitize_model_part(f.stem), cached[1]))
        return out

    def _build(self, f: GGUFFile, stats: tuple[tuple[int, int], ...]) -> ModelSpec:
        identity = "\0".join(f"{p}:{s}:{m}" for p, (s, m) in zip(f.parts, stats, strict=False))
        problem = None
        details = ModelDetails(format="gguf")
        try:
            info = self._read_gguf(str(f.path))
            params = info.parameter_count
            for part in f.parts[1:]:  # a split model's tensors are spread over its parts
                params += self._read_gguf(str(part)).parameter_count
        except (GGUFError, OSError) as exc:
            problem = f"cannot read {f.path}: {exc}"
            log.warning("%s", problem)
        else:
            families = (info.architecture, "clip") if f.projectors else (info.architecture,)
            details = ModelDetails(
                format="gguf",
                family=info.architecture,
                families=families,
                parameter_size=parameter_size_label(params),
                quantization_level=info.file_type,
                context_length=info.context_length,
                embedding_length=info.embedding_length,
            )
        name = ModelName.parse(sanitize_model_part(f.stem))
        return ModelSpec(
            name=name.display,
            full_name=name.full,
            namespace=name.namespace,
            source="gguf",
            model_path=str(f.path),
            digest=hashlib.sha256(identity.encode()).hexdigest(),
            size=sum(s for s, _ in stats),
            modified_at=f.path.stat().st_mtime,
            source_path=str(f.path),
            details=details,
            projectors=tuple(str(p) for p in f.projectors),
            problem=problem,
        )
