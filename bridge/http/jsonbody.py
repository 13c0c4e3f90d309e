"""Decoding request bodies the way Go's encoding/json does, down to its error texts.

Unknown fields are ignored; a field of the wrong JSON type is a 400 naming the field, as Ollama
(and the clients that show its messages) expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from bridge.errors import InvalidRequest

_GO_TYPES = {
    str: "string",
    bool: "bool",
    int: "int",
    float: "float64",
    dict: "map[string]interface {}",
    list: "[]interface {}",
}


def json_type(value: Any) -> str:
    """The JSON kind Go names in its errors: string, number, bool, array, object."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def decode_object(body: bytes, struct: str) -> dict[str, Any]:
    """Body bytes -> JSON object; empty, malformed or non-object bodies are 400s."""
    if not body.strip():
        raise InvalidRequest("missing request body")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(_syntax_error(body, exc)) from exc
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"json: cannot unmarshal {json_type(value)} into Go value of type {struct}"
        )
    return value


def _syntax_error(body: bytes, exc: orjson.JSONDecodeError) -> str:
    pos = exc.pos
    text = body.decode("utf-8", "replace")
    stripped = text.rstrip()
    if pos >= len(stripped):
        return "unexpected EOF"
    ch = text[pos]
    where = (
        "looking for beginning of value"
        if not text[:pos].strip()
        else ("after top-level value" if _complete(text[:pos]) else "in JSON value")
    )
    return f"invalid character {ch!r} {where}"


def _complete(prefix: str) -> bool:
    try:
        orjson.loads(prefix)
    except orjson.JSONDecodeError:
        return False
    return True


class Fields:
    """Typed access to a decoded object, with Go's unmarshal errors for wrong types."""

    def __init__(self, data: Mapping[str, Any], struct: str) -> None:
        self.data = data
        self.struct = struct

    def _bad(self, name: str, value: Any, go_type: str) -> InvalidRequest:
        return InvalidRequest(
            f"json: cannot unmarshal {json_type(value)} into Go struct field "
            f"{self.struct}.{name} of type {go_type}",
            param=name,
        )

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def raw(self, name: str) -> Any:
        return self.data.get(name)

    def string(self, name: str, default: str = "") -> str:
        v = self.data.get(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self._bad(name, v, "string")
        return v

    def opt_string(self, name: str) -> str | None:
        return self.string(name) if self.has(name) else None

    def boolean(self, name: str, default: bool) -> bool:
        v = self.data.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._bad(name, v, "bool")
        return v

    def integer(self, name: str) -> int | None:
        v = self.data.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self._bad(name, v, "int")
        if isinstance(v, float) and not v.is_integer():
            raise self._bad(name, v, "int")
        return int(v)

    def number(self, name: str) -> float | None:
        v = self.data.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self._bad(name, v, "float64")
        return float(v)

    def object(self, name: str, go_type: str = "map[string]interface {}") -> dict[str, Any] | None:
        v = self.data.get(name)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise self._bad(name, v, go_type)
        return v

    def array(self, name: str, go_type: str = "[]interface {}") -> list[Any] | None:
        v = self.data.get(name)
        if v is None:
            return None
        if not isinstance(v, list):
            raise self._bad(name, v, go_type)
        return v

    def int_array(self, name: str) -> list[int] | None:
        items = self.array(name, "[]int")
        if items is None:
            return None
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int):
                raise self._bad(name, item, "int")
        return items

    def str_array(self, name: str, go_type: str = "[]string") -> list[str] | None:
        items = self.array(name, go_type)
        if items is None:
            return None
        for item in items:
            if not isinstance(item, str):
                raise self._bad(name, item, "string")
        return items
