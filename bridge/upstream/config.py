"""`[[upstream]]` tables from the config file: other servers that serve models for bridge.

Parsed into frozen dataclasses here; `bridge.config` calls `parse_upstreams` and turns its
`ValueError`s into `ConfigError`s naming the file. Environment variables (`api_key_env`) are
looked up in the mapping `bridge.config` passes in, never in `os.environ` directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from bridge.durations import InvalidDuration, parse_go_duration
from bridge.models.names import InvalidName, ModelName

Kind = Literal["ollama", "openai"]
Naming = Literal["auto", "prefixed"]

# An upstream's name is also the prefix of its models' names (`gpu1/llama3`), so it must be a
# valid Ollama namespace.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_KEYS: Final = frozenset(
    {
        "name",
        "url",
        "kind",
        "api_key",
        "api_key_env",
        "headers",
        "models",
        "discover",
        "refresh",
        "names",
        "connect_timeout",
        "read_timeout",
        "max_connections",
        "health_interval",
        "max_failures",
        "eject_for",
        "fallback",
        "extensions",
    }
)


class UpstreamConfigError(ValueError):
    """An `[[upstream]]` table bridge cannot use."""


@dataclass(frozen=True, slots=True)
class ModelMapping:
    """One model an upstream serves: `name` here, `remote` on the upstream."""

    name: str
    remote: str


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One `[[upstream]]` table, validated, with every default filled in."""

    name: str
    url: str  # ollama: http://host:11434; openai: the base URL with its /v1
    kind: Kind
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    models: tuple[ModelMapping, ...] = ()
    discover: bool = True  # read the upstream's model list (and keep re-reading it)
    refresh: float = 60.0  # seconds between model-list reads; 0 = read once
    names: Naming = "auto"
    connect_timeout: float = 10.0
    read_timeout: float = 300.0  # longest silence: waiting for the first token or the next one
    max_connections: int = 100
    health_interval: float = 10.0  # 0 = no health checks (ejections then simply expire)
    max_failures: int = 3  # consecutive failures that eject the upstream
    eject_for: float = 30.0
    fallback: bool | tuple[str, ...] = False  # local models that fail to load are served here
    extensions: bool = True  # send fields vLLM and llama-server read beyond OpenAI's own

    def serves_fallback(self, name: str) -> bool:
        """Whether a local model called `name` that fails to load may be sent here."""
        if self.fallback is True:
            return True
        if not self.fallback:
            return False
        key = _key(name)
        return any(_key(n) == key for n in self.fallback)


def _key(name: str) -> tuple[str, str, str, str] | str:
    try:
        return ModelName.parse(name).key()
    except InvalidName:
        return name


def parse_upstreams(tables: Any, *, environ: Mapping[str, str]) -> tuple[UpstreamConfig, ...]:
    """The `[[upstream]]` array of tables -> configs; raises UpstreamConfigError."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise UpstreamConfigError("[[upstream]] must be an array of tables")
    out: list[UpstreamConfig] = []
    for i, table in enumerate(tables):
        label = f'[[upstream]] "{table["name"]}"' if "name" in table else f"[[upstream]] #{i + 1}"
        try:
            out.append(_upstream(table, environ))
        except (UpstreamConfigError, ValueError, TypeError, InvalidDuration) as exc:
            raise UpstreamConfigError(f"{label}: {exc}") from exc
    names = [u.name for u in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UpstreamConfigError(f"[[upstream]] names must be unique: {', '.join(dupes)}")
    return tuple(out)


def _upstream(t: dict[str, Any], environ: Mapping[str, str]) -> UpstreamConfig:
    unknown = sorted(set(t) - _KEYS)
    if unknown:
        raise UpstreamConfigError(f"unknown setting(s) {', '.join(unknown)}")
    name = _required_str(t, "name")
    if not _NAME_RE.fullmatch(name):
        raise UpstreamConfigError(
            f"name {name!r} must be letters, digits, '_' or '-' (it prefixes model names)"
        )
    kind = _required_str(t, "kind")
    if kind not in ("ollama", "openai"):
        raise UpstreamConfigError(f"kind must be ollama or openai, not {kind!r}")
    url = _url(_required_str(t, "url"), kind)
    api_key = t.get("api_key")
    if "api_key_env" in t:
        var = str(t["api_key_env"])
        if var not in environ:
            raise UpstreamConfigError(f"api_key_env: {var} is not set")
        api_key = environ[var]
    if api_key is not None and not isinstance(api_key, str):
        raise UpstreamConfigError("api_key must be a string")
    headers = t.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise UpstreamConfigError("headers must be a table of strings")
    models = _models(t.get("models"))
    names = t.get("names", "auto")
    if names not in ("auto", "prefixed"):
        raise UpstreamConfigError(f"names must be auto or prefixed, not {names!r}")
    fallback = _fallback(t.get("fallback", False))
    if fallback and kind != "ollama":
        raise UpstreamConfigError("fallback needs an upstream of kind ollama")
    return UpstreamConfig(
        name=name,
        url=url,
        kind=kind,  # type: ignore[arg-type]  # checked above
        api_key=api_key or None,
        headers=dict(headers),
        models=models,
        discover=_bool(t.get("discover", not models)),
        refresh=_seconds(t.get("refresh", 60.0)),
        names=names,
        connect_timeout=_positive(t.get("connect_timeout", 10.0), "connect_timeout"),
        read_timeout=_positive(t.get("read_timeout", 300.0), "read_timeout"),
        max_connections=_count(t.get("max_connections", 100), "max_connections"),
        health_interval=_seconds(t.get("health_interval", 10.0)),
        max_failures=_count(t.get("max_failures", 3), "max_failures"),
        eject_for=_seconds(t.get("eject_for", 30.0)),
        fallback=fallback,
        extensions=_bool(t.get("extensions", True)),
    )


def _required_str(t: Mapping[str, Any], key: str) -> str:
    v = t.get(key)
    if not isinstance(v, str) or not v.strip():
        raise UpstreamConfigError(f"{key} is required (a string)")
    return v.strip()


def _url(raw: str, kind: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamConfigError(f"url {raw!r} must be http:// or https:// with a host")
    url = raw.rstrip("/")
    # OpenAI SDKs take the base URL with its /v1; a bare host almost always means that.
    if kind == "openai" and parts.path in ("", "/"):
        url += "/v1"
    return url


def _models(v: Any) -> tuple[ModelMapping, ...]:
    if v is None:
        return ()
    if isinstance(v, list):
        pairs = [(item, item) for item in v]
    elif isinstance(v, dict):
        pairs = list(v.items())
    else:
        raise UpstreamConfigError(
            'models must be a list of names or a table of renames ("local" = "remote")'
        )
    out: list[ModelMapping] = []
    for local, remote in pairs:
        if not isinstance(local, str) or not isinstance(remote, str) or not remote:
            raise UpstreamConfigError("models must name models with strings")
        try:
            ModelName.parse(local)
        except InvalidName as exc:
            raise UpstreamConfigError(f"models: {local!r} is not a valid model name") from exc
        out.append(ModelMapping(name=local, remote=remote))
    return tuple(out)


def _fallback(v: Any) -> bool | tuple[str, ...]:
    if isinstance(v, bool):
        return v
    if isinstance(v, list) and all(isinstance(n, str) for n in v):
        return tuple(v)
    raise UpstreamConfigError("fallback must be true, false or a list of model names")


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise UpstreamConfigError(f"expected true or false, not {v!r}")
    return v


def _seconds(v: Any) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        seconds = float(v)
    elif isinstance(v, str):
        seconds = parse_go_duration(v.strip())
    else:
        raise UpstreamConfigError(f"expected a duration, not {v!r}")
    if seconds < 0:
        raise UpstreamConfigError(f"durations cannot be negative: {v!r}")
    return seconds


def _positive(v: Any, key: str) -> float:
    seconds = _seconds(v)
    if seconds <= 0:
        raise UpstreamConfigError(f"{key} must be more than 0")
    return seconds


def _count(v: Any, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise UpstreamConfigError(f"{key} must be a whole number of at least 1")
    return v
