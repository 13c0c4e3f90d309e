"""Ollama model names: ``[scheme://][host/][namespace/]model[:tag]``.

The grammar is parsed from the right, the way Ollama's ``model.ParseName`` does it:

* the tag follows the last ``:`` that comes after the last ``/`` (so in
  ``localhost:5000/ns/m`` the ``:5000`` is a port and stays in the host);
* then the model follows the last ``/``, the namespace the ``/`` before it, and
  whatever remains is the host, optionally prefixed with ``http://`` or ``https://``;
* a separator with nothing on one side makes the name invalid;
* missing parts take the defaults ``registry.ollama.ai``, ``library`` and ``latest``.

Every part starts with ``[A-Za-z0-9_]``; case is preserved (matching against the
store ignores case, see :meth:`ModelName.key`). Digests (``model@sha256:...``) are
not supported: ``@`` is not a valid character in any part, so such names are invalid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SCHEME",
    "DEFAULT_TAG",
    "InvalidName",
    "ModelName",
    "sanitize_model_part",
]

DEFAULT_HOST: Final = "registry.ollama.ai"
DEFAULT_NAMESPACE: Final = "library"
DEFAULT_TAG: Final = "latest"
DEFAULT_SCHEME: Final = "https"

_SCHEMES: Final = frozenset({"http", "https"})

# ASCII only: str.isalnum() would accept non-ASCII letters and digits, which Ollama refuses.
_HOST_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG_RE: Final = _MODEL_RE

_PARSED: dict[str, ModelName] = {}
_PARSED_MAX: Final = 4096


class InvalidName(ValueError):
    """A model name that Ollama would refuse.

    ``str(e)`` is Ollama's error text, ``invalid model name``; ``raw`` is the
    offending input and ``reason`` a short explanation for logs.
    """

    def __init__(self, raw: str, reason: str = "") -> None:
        super().__init__("invalid model name")
        self.raw = raw
        self.reason = reason


def _check(raw: str, kind: str, value: str, pattern: re.Pattern[str]) -> None:
    if pattern.fullmatch(value) is None:
        raise InvalidName(raw, f"invalid {kind} {value!r}")


def _cut_last(s: str, sep: str) -> tuple[str, str] | None:
    i = s.rfind(sep)
    if i < 0:
        return None
    return s[:i], s[i + len(sep) :]


@dataclass(frozen=True, slots=True)
class ModelName:
    """A complete, validated model name (defaults filled in, case preserved).

    Direct construction validates every part too, so every instance is valid.
    """

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = DEFAULT_SCHEME

    def __post_init__(self) -> None:
        raw = f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        _check(raw, "host", self.host, _HOST_RE)
        _check(raw, "namespace", self.namespace, _NAMESPACE_RE)
        _check(raw, "model", self.model, _MODEL_RE)
        _check(raw, "tag", self.tag, _TAG_RE)
        if self.scheme not in _SCHEMES:
            raise InvalidName(raw, f"unsupported scheme {self.scheme!r}")

    @classmethod
    def parse(cls, raw: str) -> ModelName:
        """Parse ``raw`` exactly as Ollama does; raise :class:`InvalidName` if it is invalid.

        Surrounding whitespace is not stripped (it makes the name invalid, as in Ollama).
        The scheme, if given, must be ``http`` or ``https`` (any case); it is stored lower-case.
        """
        # Every request names a model, mostly the same few: parsed once each (names are
        # immutable), in a memo that a flood of distinct names only empties.
        name = _PARSED.get(raw)
        if name is None:
            name = cls._parse(raw)
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.clear()
            _PARSED[raw] = name
        return name

    @classmethod
    def _parse(cls, raw: str) -> ModelName:
        s = raw
        tag = DEFAULT_TAG
        namespace = DEFAULT_NAMESPACE
        host = DEFAULT_HOST
        scheme = DEFAULT_SCHEME

        # "/" is not a valid tag character, so a ":" before the last "/" belongs to the host.
        if s.rfind(":") > s.rfind("/"):
            s, tag = s.rsplit(":", 1)
            if not tag:
                raise InvalidName(raw, "empty tag")

        cut = _cut_last(s, "/")
        if cut is None:
            model = s
        else:
            s, model = cut
            if not model:
                raise InvalidName(raw, "empty model")
            cut = _cut_last(s, "/")
            if cut is None:
                namespace = s
            else:
                host, namespace = cut
                if not namespace:
                    raise InvalidName(raw, "empty namespace")
                scheme_cut = host.split("://", 1)
                if len(scheme_cut) == 2:
                    scheme, host = scheme_cut[0].lower(), scheme_cut[1]
                    if scheme not in _SCHEMES:
                        raise InvalidName(raw, f"unsupported scheme {scheme_cut[0]!r}")
        if not model:
            raise InvalidName(raw, "empty model")

        _check(raw, "host", host, _HOST_RE)
        _check(raw, "namespace", namespace, _NAMESPACE_RE)
        _check(raw, "model", model, _MODEL_RE)
        _check(raw, "tag", tag, _TAG_RE)
        return cls(host=host, namespace=namespace, model=model, tag=tag, scheme=scheme)

    @classmethod
    def from_manifest_path(cls, host: str, namespace: str, model: str, tag: str) -> ModelName:
        """Build a name from the four folders under ``manifests/``; raise InvalidName if bad."""
        return cls(host=host, namespace=namespace, model=model, tag=tag)

    @property
    def display(self) -> str:
        """Ollama's shortest display form (``/api/tags``, ``/api/ps``, ``/v1/models``).

        ``model:tag`` when host and namespace are the defaults, ``namespace/model:tag`` when
        only the host is, otherwise ``host/namespace/model:tag``. Defaults compare ignoring
        case; the tag is always shown.
        """
        if self.host.lower() != DEFAULT_HOST:
            return self.full
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def short(self) -> str:
        """The form used in texts such as ``model 'foo:latest' not found`` (same as display)."""
        return self.display

    @property
    def full(self) -> str:
        """``host/namespace/model:tag``, e.g. ``registry.ollama.ai/library/test:latest``."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def manifest_parts(self) -> tuple[str, str, str, str]:
        """``(host, namespace, model, tag)``: the path components under ``manifests/``."""
        return (self.host, self.namespace, self.model, self.tag)

    def key(self) -> tuple[str, str, str, str]:
        """Case-folded parts, for case-insensitive matching against the store."""
        return (
            self.host.casefold(),
            self.namespace.casefold(),
            self.model.casefold(),
            self.tag.casefold(),
        )


_NOT_MODEL_CHAR: Final = re.compile(r"[^a-z0-9_.-]")
_DASH_RUN: Final = re.compile(r"-{2,}")
_BAD_LEAD: Final = re.compile(r"^[^a-z0-9_]+")


def sanitize_model_part(text: str) -> str:
    """Turn an arbitrary file stem into a valid, lower-case ``model`` part.

    Lower-case; every character outside ``[a-z0-9_.-]`` becomes ``-``; runs of ``-``
    collapse to one; leading characters that are not ``[a-z0-9_]`` are dropped; the
    result is cut to 80 characters; an empty result becomes ``model``.
    """
    s = _NOT_MODEL_CHAR.sub("-", text.lower())
    s = _DASH_RUN.sub("-", s)
    s = _BAD_LEAD.sub("", s)
    return s[:80] or "model"
