"""Modelfiles, parsed exactly as Ollama's `parser` package parses them, and turned into the
/api/create request `ollama create` sends.

Commands (case-insensitive): FROM, ADAPTER, TEMPLATE, SYSTEM, PARAMETER, MESSAGE, LICENSE,
RENDERER, PARSER, REQUIRES, DRAFT; `#` comments; values may be `"quoted"` or `\"\"\"triple
quoted\"\"\"` (then they may span lines). PARAMETER values are typed by the option they set.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Command",
    "ModelfileError",
    "create_request",
    "file_digests",
    "parse",
]


class ModelfileError(Exception):
    """A Modelfile Ollama would refuse; `str()` is Ollama's message."""


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # "model" for FROM, the parameter name for PARAMETER, else the lower-case command
    args: str


_COMMANDS = frozenset(
    {
        "from",
        "license",
        "template",
        "system",
        "adapter",
        "draft",
        "renderer",
        "parser",
        "parameter",
        "message",
        "requires",
    }
)
_INVALID_COMMAND = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", '
    '"renderer", "parser", "parameter", "message", or "requires"'
)
_INVALID_ROLE = 'message role must be one of "system", "user", or "assistant"'

# parser states
_NIL, _NAME, _VALUE, _PARAMETER, _MESSAGE, _COMMENT = range(6)


class _Unexpected(Exception):
    pass


def _alpha(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def _space(c: str) -> bool:
    return c in " \t"


def _newline(c: str) -> bool:
    return c in "\r\n"


def _next(c: str, state: int) -> tuple[int, str]:
    """Go's parseRuneForState: the next state and the rune to keep ('' for none)."""
    if state == _NIL:
        if c == "#":
            return _COMMENT, ""
        if _space(c) or _newline(c):
            return _NIL, ""
        return _NAME, c
    if state == _NAME:
        if _alpha(c):
            return _NAME, c
        if _space(c):
            return _VALUE, ""
        raise ModelfileError(_INVALID_COMMAND)
    if state == _VALUE:
        if _newline(c) or _space(c):
            return _NIL, c
        return _VALUE, c
    if state == _PARAMETER:
        if _alpha(c) or c.isdigit() or c == "_":
            return _PARAMETER, c
        if _space(c):
            return _VALUE, ""
        raise _Unexpected()
    if state == _MESSAGE:
        if _alpha(c):
            return _MESSAGE, c
        if _space(c):
            return _VALUE, ""
        raise _Unexpected()
    if state == _COMMENT:
        return (_NIL, "") if _newline(c) else (_COMMENT, "")
    raise ModelfileError("")


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        if len(s) >= 6 and s.endswith('"""'):
            return s[3:-3], True
        return "", False
    if s.startswith('"'):
        if len(s) >= 2 and s.endswith('"'):
            return s[1:-1], True
        return "", False
    return s, True


def _printable(c: str) -> bool:
    # Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space.
    return c == " " or (c.isprintable() and not c.isspace())


def parse(text: str) -> list[Command]:
    """The commands of a Modelfile. Raises ModelfileError with Ollama's wording."""
    if text.startswith("\ufeff"):
        text = text[1:]
    commands: list[Command] = []
    state = _NIL
    line = 1
    buf: list[str] = []
    name = ""
    role = ""
    for c in text:
        if _newline(c):
            line += 1
        try:
            nxt, keep = _next(c, state)
        except _Unexpected:
            raise ModelfileError(f"unexpected EOF: {''.join(buf)}") from None
        except ModelfileError as exc:
            raise ModelfileError(f"(line {line}): {exc}") from None
        if nxt != state:
            if state == _NAME:
                word = "".join(buf)
                if word.lower() not in _COMMANDS:
                    raise ModelfileError(f"(line {line}): {_INVALID_COMMAND}")
                lower = word.lower()
                if lower == "from":
                    name = "model"
                elif lower == "parameter":
                    nxt = _PARAMETER
                elif lower == "message":
                    nxt = _MESSAGE
                    name = lower
                else:
                    name = lower
            elif state == _PARAMETER:
                name = "".join(buf)
            elif state == _MESSAGE:
                word = "".join(buf)
                if word not in ("system", "user", "assistant"):
                    raise ModelfileError(f"(line {line}): {_INVALID_ROLE}")
                role = word
            elif state == _VALUE:
                value, ok = _unquote("".join(buf).strip())
                if not ok or _space(c):
                    buf.append(c)
                    continue
                if role:
                    value = f"{role}: {value}"
                    role = ""
                commands.append(Command(name, value))
            buf = []
            state = nxt
        # Only printable runes are kept (newlines inside quotes were kept just above).
        if keep and _printable(keep):
            buf.append(keep)
    if state == _VALUE:
        value, ok = _unquote("".join(buf).strip())
        if not ok:
            raise ModelfileError(f"unexpected EOF: {''.join(buf)}")
        if role:
            value = f"{role}: {value}"
        commands.append(Command(name, value))
    elif state not in (_NIL, _COMMENT):
        raise ModelfileError(f"unexpected EOF: {''.join(buf)}")
    if not any(c.name == "model" for c in commands):
        raise ModelfileError("no FROM line")
    return commands


# --- parameters -----------------------------------------------------------------------------

_DEPRECATED = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)
_INT: tuple[str, ...] = (
    *("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict"),
    *("num_keep", "seed", "num_predict", "top_k", "repeat_last_n"),
)
_FLOAT: tuple[str, ...] = (
    *("top_p", "min_p", "typical_p", "temperature", "repeat_penalty"),
    *("presence_penalty", "frequency_penalty"),
)
_TYPES: dict[str, str] = {
    **dict.fromkeys(_INT, "int"),
    **dict.fromkeys(_FLOAT, "float"),
    "use_mmap": "bool",
    "stop": "list",
}
_GO_INT = re.compile(r"[+-]?\d+")


def _float32(text: str) -> float:
    import numpy as np

    value = float(text)
    # The shortest decimal that is the same float32, as Go marshals a float32.
    return float(str(np.float32(value)))


def _go_bool(text: str) -> bool:
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(text)


def typed_parameter(name: str, value: str) -> Any:
    """api.FormatParams for one value. Raises ModelfileError with Ollama's wording."""
    kind = _TYPES.get(name)
    if kind is None:
        raise ModelfileError(f"unknown parameter '{name}'")
    try:
        if kind == "int":
            if not _GO_INT.fullmatch(value):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return _float32(value)
        if kind == "bool":
            return _go_bool(value)
    except ValueError:
        raise ModelfileError(f"invalid {kind} value [{value}]") from None
    return [value]


# --- the create request ---------------------------------------------------------------------


def _expand(path: str, relative_dir: Path) -> Path:
    if path.startswith(("/", "\\")):
        return Path(os.path.abspath(path))
    if path.startswith("~"):
        return Path(os.path.abspath(os.path.expanduser(path)))
    return Path(os.path.abspath(relative_dir / path))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path.resolve(), "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def file_digests(path: Path) -> dict[Path, str]:
    """Ollama's fileDigestMap: a file, or the model files of a folder, with their digests."""
    if path.is_dir():
        files = sorted(path.glob("*.gguf")) or sorted(path.glob("*.bin"))
        if not files:
            raise ModelfileError("no Modelfile or safetensors files found")
    elif path.exists():
        files = [path]
    else:
        raise FileNotFoundError(path)
    return {f: _sha256(f) for f in files}


@dataclass(slots=True)
class CreatePlan:
    """What `create` sends: the request body, and the local files to upload first."""

    request: dict[str, Any] = field(default_factory=dict)
    uploads: dict[Path, str] = field(default_factory=dict)  # local file -> digest


def _names(files: dict[Path, str]) -> dict[Path, str]:
    """Names for the request's `files`: base names, or paths below a common folder."""
    if len(files) < 2:
        return {f: f.name for f in files}
    root = os.path.commonpath([str(f.parent) for f in files])
    return {f: os.path.relpath(f, root).replace(os.sep, "/") for f in files}


def create_request(
    commands: list[Command],
    relative_dir: Path,
    *,
    warn: Callable[[str], None] = lambda _: None,
) -> CreatePlan:
    """Ollama's Modelfile.CreateRequest: local FROM/ADAPTER paths become files to upload."""
    plan = CreatePlan()
    req = plan.request
    params: dict[str, Any] = {}
    messages: list[dict[str, str]] = []
    licenses: list[str] = []
    for c in commands:
        if c.name in ("model", "adapter"):
            path = _expand(c.args, relative_dir)
            try:
                digests = file_digests(path)
            except FileNotFoundError:
                if c.name == "adapter":
                    raise ModelfileError(f"stat {path}: no such file or directory") from None
                req["from"] = c.args
                continue
            plan.uploads.update(digests)
            key = "files" if c.name == "model" else "adapters"
            named = _names(digests)
            req.setdefault(key, {}).update({named[f]: d for f, d in digests.items()})
        elif c.name in ("template", "system", "renderer", "parser"):
            req[c.name] = c.args
        elif c.name == "license":
            licenses.append(c.args)
        elif c.name == "requires":
            req["requires"] = c.args.removeprefix("v")
        elif c.name == "draft":
            raise ModelfileError("DRAFT models are not supported by this server")
        elif c.name == "message":
            role, _, content = c.args.partition(": ")
            messages.append({"role": role, "content": content})
        elif c.name in _DEPRECATED:
            warn(f"warning: parameter {c.name} is deprecated")
        else:
            value = typed_parameter(c.name, c.args)
            if isinstance(value, list) and isinstance(params.get(c.name), list):
                params[c.name] = [*params[c.name], *value]
            else:
                params[c.name] = value
    if params:
        req["parameters"] = params
    if messages:
        req["messages"] = messages
    if licenses:
        req["license"] = licenses
    return plan


def read(path: Path) -> list[Command]:
    """Parse a Modelfile on disk (UTF-8, UTF-16 with a BOM)."""
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return parse(raw.decode("utf-16"))
    return parse(raw.decode("utf-8", "replace"))
