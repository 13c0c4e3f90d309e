"""The names upstream models are served under, and where each name is routed.

A model keeps its own name (`llama3:latest`); the same name on several upstreams is one model
with several replicas. Every model can also be named `<upstream>/<model>` (one replica), which
is how it is listed when a local model already has its name, and always for an upstream with
`names = "prefixed"`. Names an Ollama client could not send (llama-server's file paths) get a
tidied-up name, and the upstream's own spelling still routes to the model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from bridge.domain import ModelDetails, ModelSpec
from bridge.models.names import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    InvalidName,
    ModelName,
    sanitize_model_part,
)
from bridge.upstream.config import Kind, UpstreamConfig

Key = tuple[str, str, str, str]
NO_DETAILS: Final = ModelDetails(format="")  # what an OpenAI-compatible server tells
_MEMO: Final = 4096  # names remembered per catalog (clients send few distinct ones)


@dataclass(frozen=True, slots=True)
class Listed:
    """A model as an upstream lists it (/api/tags, /api/ps or /v1/models)."""

    remote: str
    size: int = 0
    digest: str = ""
    modified_at: float = 0.0
    details: ModelDetails = NO_DETAILS
    # /api/ps only:
    size_vram: int = 0
    context_length: int = 0
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Replica:
    """One place a model is served: an upstream and the name it knows the model by."""

    upstream: str
    url: str
    kind: Kind
    model: str


@dataclass(frozen=True, slots=True)
class Route:
    """A model served by upstreams: how it is listed, and the replicas a request may go to."""

    spec: ModelSpec
    replicas: tuple[Replica, ...]
    fallback: bool = False  # a local model that could not load, served by an upstream instead

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def where(self) -> str:
        """For humans (/api/show, logs): `upstream gpu1 (http://10.0.0.5:8000/v1) as llama3`."""
        return "; ".join(f"upstream {r.upstream} ({r.url}) as {r.model}" for r in self.replicas)


def own_name(remote: str) -> ModelName:
    """The name a remote model is served under when the config does not rename it."""
    try:
        return ModelName.parse(remote)
    except InvalidName:
        pass
    # llama-server lists its model by file path; vLLM may list a local folder.
    base = os.path.basename(remote.rstrip("/")) or remote
    if base.lower().endswith(".gguf"):
        base = base[:-5]
    return ModelName.parse(sanitize_model_part(base))


def prefixed(upstream: str, name: ModelName) -> ModelName:
    """`<upstream>/<model>`: `gpu1/llama3:latest`, `gpu1/meta-llama/Llama-3.1-8B:latest`."""
    if name.namespace.casefold() == DEFAULT_NAMESPACE:
        return ModelName(host=DEFAULT_HOST, namespace=upstream, model=name.model, tag=name.tag)
    return ModelName(host=upstream, namespace=name.namespace, model=name.model, tag=name.tag)


def _spec(name: ModelName, listed: Listed, url: str, now: float) -> ModelSpec:
    digest = listed.digest or hashlib.sha256(listed.remote.encode()).hexdigest()
    return ModelSpec(
        name=name.display,
        full_name=name.full,
        namespace=name.namespace,
        source="upstream",
        model_path=url,
        digest=digest,
        size=listed.size,
        modified_at=listed.modified_at or now,
        details=listed.details,
    )


def served(config: UpstreamConfig, listed: Sequence[Listed]) -> list[tuple[ModelName, Listed]]:
    """What an upstream serves, under which names: its explicit list (with what its model list
    says about each), then, when it is discovered, every other model it lists."""
    by_remote = {m.remote: m for m in listed}
    out = [
        (ModelName.parse(m.name), by_remote.get(m.remote, Listed(m.remote))) for m in config.models
    ]
    if config.discover:
        named = {m.remote for m in config.models}
        out += [(own_name(m.remote), m) for m in listed if m.remote not in named]
    return out


class Catalog:
    """Every upstream model by name; immutable, rebuilt whenever a model list changes."""

    def __init__(self) -> None:
        self._plain: dict[Key, Route] = {}
        self._prefixed: dict[Key, Route] = {}
        self._exact: dict[str, Route] = {}  # remote spellings that are not valid Ollama names
        # (upstream, remote) -> (its own name if it has one here, its prefixed name)
        self._names: dict[tuple[str, str], tuple[ModelName | None, ModelName]] = {}
        self._found: dict[str, Route | None] = {}  # lookups so far, by the name as sent

    @classmethod
    def build(
        cls, upstreams: Sequence[tuple[UpstreamConfig, Sequence[Listed]]], *, now: float
    ) -> Catalog:
        cat = cls()
        plain: dict[Key, list[tuple[ModelName, Listed, Replica]]] = {}
        for config, listed in upstreams:
            for name, model in served(config, listed):
                replica = Replica(config.name, config.url, config.kind, model.remote)
                pname = prefixed(config.name, name)
                route = Route(_spec(pname, model, config.url, now), (replica,))
                cat._prefixed.setdefault(pname.key(), route)
                cat._names[(config.name, model.remote)] = (None, pname)
                if config.names == "auto":
                    plain.setdefault(name.key(), []).append((name, model, replica))
        for key, entries in plain.items():
            name, model, first = entries[0]
            route = Route(_spec(name, model, first.url, now), tuple(r for _, _, r in entries))
            cat._plain[key] = route
            for _, m, r in entries:
                cat._exact.setdefault(m.remote, route)
                own = cat._names[(r.upstream, m.remote)][1]
                cat._names[(r.upstream, m.remote)] = (name, own)
        return cat

    def find(self, raw: str) -> Route | None:
        """The route for a name as a client sent it (case-insensitive, `:latest` implied)."""
        if raw in self._found:  # parsing a name costs more than the rest of a lookup
            return self._found[raw]
        try:
            key = ModelName.parse(raw).key()
        except InvalidName:
            route = self._exact.get(raw)
        else:
            route = self._plain.get(key) or self._prefixed.get(key) or self._exact.get(raw)
        if len(self._found) >= _MEMO:
            self._found.clear()
        self._found[raw] = route
        return route

    def listing(self, local: Iterable[str]) -> list[ModelSpec]:
        """Every model once: under its own name, or under `<upstream>/<model>` per replica when
        a local model (one of the names in `local`) has its name."""
        taken = {k for n in local if (k := _key(n)) is not None}
        out: list[ModelSpec] = []
        covered: set[Key] = set()  # `<upstream>/<model>` names of models listed plainly
        for key, route in self._plain.items():
            if key in taken:
                continue
            out.append(route.spec)
            name = ModelName.parse(route.spec.full_name)
            covered.update(prefixed(r.upstream, name).key() for r in route.replicas)
        out += [route.spec for key, route in self._prefixed.items() if key not in covered]
        return out

    def served_by(self, upstream: str) -> int:
        """How many models an upstream serves."""
        return sum(1 for u, _ in self._names if u == upstream)

    def name_of(self, upstream: str, remote: str, local: Iterable[str] = ()) -> str | None:
        """The name a remote model is listed under (for /api/ps), if it is served at all."""
        names = self._names.get((upstream, remote))
        if names is None:
            return None
        own, pname = names
        if own is None or own.key() in {_key(n) for n in local}:
            return pname.display
        return own.display


def _key(raw: str) -> Key | None:
    try:
        return ModelName.parse(raw).key()
    except InvalidName:
        return None
