"""Decoding request bodies the way Go's encoding/json does, down to its error texts.

Unknown fields are ignored; a field of the wrong JSON type is a 400 naming the field, as Ollama
(and the clients that show its messages) expect.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from bridge.errors import InvalidRequest
from bridge.http.goscan import GoSyntaxError, first_value_end

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


# Go's scanner runs in Python, about a microsecond a byte: a malformed body larger than this
# is scanned on a thread, so that a bad 100 MB body never stalls the event loop.
_SCAN_ON_LOOP = 1 << 16


async def read_object(
    request: web.Request, struct: str, *, empty: str = "missing request body"
) -> dict[str, Any]:
    """The request's body, decoded as `decode_object` does."""
    body = await request.read()
    if len(body) <= _SCAN_ON_LOOP:
        return decode_object(body, struct, empty=empty)
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        stop = threading.Event()  # a client gone, or the server stopping: the scan ends
        try:
            value = await asyncio.to_thread(_decode_like_go, body, empty, stop)
        except asyncio.CancelledError:
            stop.set()
            raise
    return _as_object(value, struct)


def decode_object(
    body: bytes, struct: str, *, empty: str = "missing request body"
) -> dict[str, Any]:
    """Body bytes -> JSON object; empty, malformed or non-object bodies are 400s. As Go's
    Decoder, only the first JSON value counts: whatever follows it is ignored. `empty`: the
    message for a body of nothing but white space (Ollama's native handlers say "missing
    request body"; its OpenAI layer passes on the Decoder's "EOF")."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = _decode_like_go(body, empty)
    return _as_object(value, struct)


def _as_object(value: Any, struct: str) -> dict[str, Any]:
    if value is None:  # null decodes into a Go struct as nothing at all
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"json: cannot unmarshal {json_type(value)} into Go value of type {struct}"
        )
    return value


def _decode_like_go(body: bytes, empty: str, stop: threading.Event | None = None) -> Any:
    try:
        end = first_value_end(body, stop)
    except GoSyntaxError as exc:
        raise InvalidRequest(empty if str(exc) == "EOF" else str(exc)) from None
    return decode_valid(body[:end])


def decode_valid(text: bytes) -> Any:
    """A JSON value Go's scanner accepts. Where orjson refuses it (bytes that are not UTF-8
    and lone surrogate escapes, which Go decodes as U+FFFD; numbers past 64 bits or a
    double's range; nesting past 1024 levels), the standard library decodes it."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        value = json.loads(
            text.decode("utf-8", "replace"), parse_float=_go_float, parse_int=_go_int
        )
    except RecursionError:
        raise InvalidRequest("exceeded max depth") from None
    return _without_surrogates(value)


def _go_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise InvalidRequest(
            f"json: cannot unmarshal number {literal} into Go value of type float64"
        )
    return value


def _go_int(literal: str) -> int | float:
    # As orjson reads them: past 64 bits an integer is a double (and never a digit string
    # too long for Python's int()).
    if len(literal.lstrip("-")) <= 19:
        value = int(literal)
        if -(2**63) <= value < 2**64:
            return value
    return _go_float(literal)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


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
