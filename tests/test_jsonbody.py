"""Request bodies decoded as Go's json.Decoder does (the error texts are tested over HTTP in
tests/api/test_ollama_api.py)."""

from __future__ import annotations

import pytest

from bridge.errors import InvalidRequest
from bridge.http.jsonbody import decode_object


def test_what_go_decodes_as_u_fffd_and_what_follows_the_value() -> None:
    for name in (b"gh\xffst", b"gh\\ud800st"):
        body = b'{"model": "' + name + b'", "n": 123456789012345678901234567890} ['
        value = decode_object(body, "api.ShowRequest")
        assert value == {"model": "gh\ufffdst", "n": 123456789012345678901234567890}


def test_a_number_past_a_double_is_an_error_not_infinity() -> None:
    with pytest.raises(InvalidRequest, match="cannot unmarshal number 1e400 into Go value"):
        decode_object(b'{"options": {"temperature": 1e400}}', "api.ChatRequest")


def test_a_syntax_error_deep_in_a_large_body_is_found() -> None:
    image = b"A" * 20_000_000  # base64 images make bodies this large
    body = b'{"model": "m", "images": ["' + image + b'"], "stream": flase}'
    with pytest.raises(InvalidRequest, match=r"^invalid character 'l' in literal false"):
        decode_object(body, "api.GenerateRequest")
