"""Settings: command-line flags, then environment, then the config file, then defaults.

This is the only module that reads `os.environ`. `OLLAMA_*` variables mean what they mean to
Ollama; `BRIDGE_*` variables are bridge's own. Every setting is described once, in `SETTINGS`,
which feeds `--help`, `config/bridge.toml` and the test that keeps the two in step.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bridge.durations import (
    InvalidDuration,
    parse_env_keep_alive,
    parse_go_duration,
    parse_keep_alive,
)
from bridge.hostaddr import HostAddr, parse_host
from bridge.upstream.config import UpstreamConfig, UpstreamConfigError, parse_upstreams


class ConfigError(Exception):
    """A setting has a value bridge cannot use."""


@dataclass(frozen=True, slots=True)
class Setting:
    name: str  # key in the config file and attribute of Settings
    env: str | None
    default: Any
    help: str
    parse: Callable[[Any], Any]


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    return int(v)


def _workers(v: Any) -> int:
    n = _int(v)
    if n < 1:
        raise ValueError("expected 1 or more")
    return n


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    # Go's strconv.ParseBool, which Ollama uses for its boolean variables.
    s = str(v).strip()
    if s in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if s in ("0", "f", "F", "FALSE", "false", "False", ""):
        return False
    raise ValueError(f"invalid boolean {v!r}")


def _env_bool(v: Any) -> bool:
    # Ollama's envconfig.Bool: a value ParseBool refuses counts as true.
    try:
        return _bool(v)
    except ValueError:
        return True


def _paths(v: Any) -> tuple[str, ...]:
    items = v.split(os.pathsep) if isinstance(v, str) else list(v)
    return tuple(os.path.expanduser(str(p)) for p in items if str(p).strip())


def _origins(v: Any) -> tuple[str, ...]:
    items = v.split(",") if isinstance(v, str) else list(v)
    return tuple(s.strip() for s in (str(i) for i in items) if s.strip())


def _keep_alive(v: Any) -> float:
    if isinstance(v, str):
        return parse_env_keep_alive(v)
    parsed = parse_keep_alive(v)
    return 300.0 if parsed is None else parsed


_LOG_LEVELS = {
    "1": "debug",
    "true": "debug",
    "debug": "debug",
    "2": "debug",
    "trace": "debug",
    "": "info",
    "0": "info",
    "false": "info",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
}


def _log_level(v: Any) -> str:
    level = _LOG_LEVELS.get(str(v).strip().lower())
    if level is None:
        raise ValueError(f"unknown log level {v!r}")
    return level


def _demo(v: Any) -> str:
    s = str(v).strip().lower() if not isinstance(v, bool) else ("on" if v else "off")
    if s in ("auto", "on", "off"):
        return s
    if s in ("1", "true", "yes"):
        return "on"
    if s in ("0", "false", "no"):
        return "off"
    raise ValueError("expected auto, on or off")


def _str(v: Any) -> str:
    return str(v)


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_bytes(v: Any) -> int:
    """A size: bytes as a number, or a string such as "8GiB", "512 MB"; "auto" = 0."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return int(v)
    text = str(v).strip().lower().replace(" ", "")
    if text in ("auto", ""):
        return 0
    num = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(num) :]
    if unit not in _UNITS or not num:
        raise ValueError(f"invalid size {v!r} (use bytes or a unit such as 8GiB)")
    return int(float(num) * _UNITS[unit])


def _seconds(v: Any) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    text = str(v).strip()
    try:
        return float(text)
    except ValueError:
        return parse_go_duration(text)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "host",
        "OLLAMA_HOST",
        "127.0.0.1:11434",
        "Address to listen on, parsed as Ollama parses OLLAMA_HOST.",
        _str,
    ),
    Setting(
        "models",
        "OLLAMA_MODELS",
        "",
        "Ollama's model store. Empty: ~/.ollama/models, else /usr/share/ollama/.ollama/models.",
        _str,
    ),
    Setting(
        "gguf_dirs",
        "BRIDGE_GGUF_DIRS",
        (),
        "Folders scanned recursively for .gguf files, each file one model "
        "(environment: a path-separator list).",
        _paths,
    ),
    Setting(
        "keep_alive",
        "OLLAMA_KEEP_ALIVE",
        "5m",
        "How long an idle model stays loaded: a duration or seconds; negative = forever.",
        _keep_alive,
    ),
    Setting(
        "origins",
        "OLLAMA_ORIGINS",
        (),
        "Extra allowed CORS origins (comma-separated), on top of Ollama's defaults.",
        _origins,
    ),
    Setting(
        "num_parallel", "OLLAMA_NUM_PARALLEL", 1, "Requests each loaded model serves at once.", _int
    ),
    Setting(
        "max_loaded_models", "OLLAMA_MAX_LOADED_MODELS", 0, "Models loaded at once; 0 = 3.", _int
    ),
    Setting(
        "max_queue",
        "OLLAMA_MAX_QUEUE",
        512,
        "Requests that may wait for a model before new ones get 503.",
        _int,
    ),
    Setting(
        "context_length",
        "OLLAMA_CONTEXT_LENGTH",
        0,
        "Default num_ctx; 0 = by total VRAM as Ollama: 4096, 32768 from 23 GiB, 262144 from "
        "47 GiB (capped at the model's trained context).",
        _int,
    ),
    Setting(
        "memory_budget",
        "BRIDGE_MEMORY_BUDGET",
        "auto",
        'Memory loaded models may use together (e.g. "12GiB"); idle models are evicted to '
        "stay under it. auto = 90% of the memory available when bridge starts.",
        parse_bytes,
    ),
    Setting(
        "gpu_overhead",
        "OLLAMA_GPU_OVERHEAD",
        0,
        "Bytes of each GPU's memory to leave free for other programs.",
        parse_bytes,
    ),
    Setting(
        "load_cooldown",
        "BRIDGE_LOAD_COOLDOWN",
        "10s",
        "After a model fails to load, requests for it get the same error for this long before "
        "bridge tries again.",
        _seconds,
    ),
    Setting(
        "num_thread",
        "BRIDGE_NUM_THREAD",
        0,
        "Threads per model; 0 = the number of physical cores.",
        _int,
    ),
    Setting(
        "num_gpu",
        "BRIDGE_NUM_GPU",
        -1,
        "Layers to offload to the GPU by default; -1 = as many as fit in its free memory, "
        "0 = none.",
        _int,
    ),
    Setting(
        "workers",
        "BRIDGE_WORKERS",
        1,
        "Server processes sharing the port (Linux). Each serves requests for models an "
        "upstream serves; the first alone loads local models and manages the store, and the "
        "others pass it everything else. For gateways with more traffic than one core takes.",
        _workers,
    ),
    Setting(
        "demo_model",
        "BRIDGE_DEMO_MODEL",
        "auto",
        "Serve the bundled SmolLM2 demo model as smollm2: auto (only when no other model "
        "is found), on, or off.",
        _demo,
    ),
    Setting(
        "log_level",
        "OLLAMA_DEBUG",
        "info",
        "Log level: info, debug (OLLAMA_DEBUG=1), warning or error.",
        _log_level,
    ),
    Setting(
        "log_prompts", "BRIDGE_LOG_PROMPTS", False, "Log prompts and outputs at debug level.", _bool
    ),
    Setting(
        "no_cloud",
        "OLLAMA_NO_CLOUD",
        False,
        "Reported by /api/status as Ollama reports it (bridge itself never reaches ollama.com; "
        "an upstream may).",
        _env_bool,
    ),
)
SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
# Tables in the config file that are not plain settings.
TABLES = ("aliases", "model", "upstream")


@dataclass(frozen=True, slots=True)
class ModelOverride:
    """Per-model settings from `[model."<name>"]` tables in the config file."""

    num_parallel: int | None = None
    pinned: bool = False  # never unloaded, whatever keep_alive says


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, resolved. Built once by the CLI and passed down; never read from globals."""

    host: str = "127.0.0.1:11434"
    models: str = ""
    gguf_dirs: tuple[str, ...] = ()
    keep_alive: float = 300.0
    origins: tuple[str, ...] = ()
    num_parallel: int = 1
    max_loaded_models: int = 0
    max_queue: int = 512
    context_length: int = 0
    num_thread: int = 0
    num_gpu: int = -1
    demo_model: str = "auto"
    log_level: str = "info"
    log_prompts: bool = False
    no_cloud: bool = False
    memory_budget: int = 0
    gpu_overhead: int = 0
    load_cooldown: float = 10.0
    workers: int = 1
    aliases: Mapping[str, str] = field(default_factory=dict)
    model_overrides: Mapping[str, ModelOverride] = field(default_factory=dict)
    upstreams: tuple[UpstreamConfig, ...] = ()
    config_path: str | None = None

    @property
    def address(self) -> HostAddr:
        return parse_host(self.host)

    def cloud_status(self) -> tuple[bool, str]:
        """/api/status: whether Ollama's cloud is off, and who says so ("none", "env",
        "config" for ~/.ollama/server.json, or "both"). Reads a file: call it off the loop."""
        try:
            data = orjson.loads((Path.home() / ".ollama" / "server.json").read_bytes())
            config = isinstance(data, dict) and data.get("disable_ollama_cloud") is True
        except (OSError, orjson.JSONDecodeError):
            config = False
        env = self.no_cloud
        source = {(True, True): "both", (True, False): "env", (False, True): "config"}
        return env or config, source.get((env, config), "none")

    def models_dir(self) -> Path:
        """OLLAMA_MODELS, else ~/.ollama/models, else the Linux service's store."""
        if self.models:
            return Path(os.path.expanduser(self.models))
        home = Path.home() / ".ollama" / "models"
        service = Path("/usr/share/ollama/.ollama/models")
        if not home.exists() and service.is_dir():
            return service
        return home


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> Settings:
    """Resolve every setting: flags > environment > config file > defaults."""
    env = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != ()}
    path = config_path or env.get("BRIDGE_CONFIG") or None
    file_values = _read_config_file(path) if path else {}

    values: dict[str, Any] = {}
    for s in SETTINGS:
        if s.name in flags:
            raw, origin = flags[s.name], f"--{s.name.replace('_', '-')}"
        elif s.env and env.get(s.env, "").strip() != "":
            raw, origin = _strip_quotes(env[s.env]), s.env
        elif s.name in file_values:
            raw, origin = file_values[s.name], f"{s.name} in {path}"
        else:
            raw, origin = s.default, None
        try:
            values[s.name] = s.parse(raw)
        except (ValueError, TypeError, InvalidDuration) as exc:
            if origin is None:
                raise
            raise ConfigError(f"{origin}: {exc}") from exc

    aliases = file_values.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise ConfigError(f"[aliases] in {path} must map names to model names")
    overrides = _model_overrides(file_values.get("model", {}), path)
    try:
        upstreams = parse_upstreams(file_values.get("upstream", []), environ=env)
    except UpstreamConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return Settings(
        **values,
        aliases=dict(aliases),
        model_overrides=overrides,
        upstreams=upstreams,
        config_path=path,
    )


def _model_overrides(table: Any, path: str | None) -> dict[str, ModelOverride]:
    if not isinstance(table, dict):
        raise ConfigError(f"[model] in {path} must be tables of per-model settings")
    out: dict[str, ModelOverride] = {}
    for name, values in table.items():
        if not isinstance(values, dict):
            raise ConfigError(f'[model."{name}"] in {path} must be a table')
        unknown = sorted(set(values) - {"num_parallel", "pinned"})
        if unknown:
            raise ConfigError(
                f'[model."{name}"] in {path}: unknown setting(s) {", ".join(unknown)}'
            )
        try:
            parallel = values.get("num_parallel")
            out[name] = ModelOverride(
                num_parallel=None if parallel is None else _int(parallel),
                pinned=_bool(values.get("pinned", False)),
            )
        except ValueError as exc:
            raise ConfigError(f'[model."{name}"] in {path}: {exc}') from exc
    return out


def _strip_quotes(value: str) -> str:
    return value.strip().strip("\"'")


def _read_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    unknown = sorted(k for k in data if k not in SETTINGS_BY_NAME and k not in TABLES)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    return data


def render_config_file() -> str:
    """The commented config file (config/bridge.toml): every setting with its default."""
    out = [
        "# bridge configuration. Every setting is shown with its default, commented out.",
        "# Precedence: command-line flags > environment > this file > defaults.",
        "# Use it with `bridge serve --config PATH` or BRIDGE_CONFIG=PATH.",
        "",
    ]
    for s in SETTINGS:
        out.append(f"# {s.help}")
        if s.env:
            out.append(f"# Environment: {s.env}.")
        out.append(f"# {s.name} = {_toml(s.default)}")
        out.append("")
    out += [
        "# Other names for models: a request for the alias is served by the target model.",
        "[aliases]",
        '# "gpt-4o-mini" = "llama3.2:latest"',
        "",
        "# Per-model settings: parallel slots (instead of num_parallel) and pinning (never",
        "# unloaded, never evicted).",
        '# [model."llama3.2:latest"]',
        "# num_parallel = 4",
        "# pinned = true",
        "",
        "# Upstream servers: other Ollama or OpenAI-compatible servers (vLLM, llama-server,",
        "# LM Studio, another bridge) whose models bridge serves too, one [[upstream]] table each.",
        "# Their models are listed beside the local ones, under their own names, or as",
        "# <upstream>/<model> when a local model has the name (always, with names = prefixed).",
        "# The same name on several upstreams is one model with replicas: each request goes to",
        "# the replica with the fewest requests in flight, and one that fails before replying",
        "# is retried on another.",
        "# [[upstream]]",
        '# name = "vllm-a"                    # letters, digits, _ or -; prefixes its model names',
        '# url = "http://10.0.0.5:8000/v1"    # ollama: http://host:11434; openai: base URL with /v1',
        '# kind = "openai"                    # "ollama" or "openai"',
        '# api_key = "..."                    # sent as "Authorization: Bearer ..."',
        '# api_key_env = "VLLM_API_KEY"       # or read the key from this environment variable',
        '# headers = { "X-Team" = "search" }  # more headers to send',
        "# Which models: a list of names, or renames (local name = name on the upstream). With",
        "# neither, the upstream's own list (/api/tags or /v1/models) is read and kept current.",
        '# models = ["meta-llama/Llama-3.1-8B-Instruct"]',
        '# models = { "llama3.1:8b" = "meta-llama/Llama-3.1-8B-Instruct" }',
        "# discover = true                    # default: true when models is not given",
        '# refresh = "1m"                     # how often the model list is read again',
        '# names = "auto"                     # or "prefixed": always <upstream>/<model>',
        '# connect_timeout = "10s"            # also the limit for model lists and health checks',
        '# read_timeout = "5m"                # longest silence: first token (or a load), next token',
        "# max_connections = 100",
        '# health_interval = "10s"            # 0 = no health checks',
        "# max_failures = 3                   # failures in a row that take it out of rotation,",
        '# eject_for = "30s"                  # for this long, or until a health check passes',
        "# extensions = true                  # send top_k, min_p, repetition penalties and",
        "#                                    # chat_template_kwargs (vLLM, llama-server); false",
        "#                                    # for servers that refuse unknown fields",
        "# Ollama upstreams only: serve local models that fail to load (unsupported",
        "# architecture, corrupt file) from here instead: true for all, or a list of names.",
        '# fallback = ["deepseek-v3:latest"]',
        "",
    ]
    return "\n".join(out)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)
