"""Request bodies decoded as Go's json.Decoder does (the error texts are tested over HTTP in
tests/api/test_ollama_api.py)."""

from __future__ import annotations

import threading

import pytest

from bridge.errors import InvalidRequest
from bridge.http.goscan import ScanStopped, first_value_end
from bridge.http.jsonbody import decode_object


def test_what_go_decodes_as_u_fffd_and_what_follows_the_value() -> None:
    for name in (b"gh\xffst", b"gh\\ud800st"):
        body = b'{"model": "' + name + b'", "n": 123456789012345678901234567890} ['
        value = decode_object(body, "api.ShowRequest")
        assert value == {"model": "gh\ufffdst", "n": 1.2345678901234568e29}


def test_a_number_past_a_double_is_an_error_not_infinity() -> None:
    with pytest.raises(InvalidRequest, match="cannot unmarshal number 1e400 into Go value"):
        decode_object(b'{"options": {"temperature": 1e400}}', "api.ChatRequest")


def test_a_syntax_error_deep_in_a_large_body_is_found() -> None:
    image = b"A" * 20_000_000  # base64 images make bodies this large
    body = b'{"model": "m", "images": ["' + image + b'"], "stream": flase}'
    with pytest.raises(InvalidRequest, match=r"^invalid character 'l' in literal false"):
        decode_object(body, "api.GenerateRequest")


def test_integers_past_64_bits_read_as_orjson_reads_them() -> None:
    # Here orjson refuses the body for its byte 0xff, so the standard library decodes it.
    body = b'{"model": "m\xff", "n": 100000000000000000000, "k": 12}'
    assert decode_object(body, "api.ShowRequest") == {"model": "m\ufffd", "n": 1e20, "k": 12}
    huge = b'{"x": 1' + b"0" * 5000 + b"}"  # past Python's own limit for int()
    with pytest.raises(InvalidRequest, match="cannot unmarshal number 10000"):
        decode_object(huge, "api.ChatRequest")


def test_a_scan_nobody_waits_for_stops() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(ScanStopped):
        first_value_end(b"[" + b"0," * 200_000, stop)
    assert first_value_end(b"[" + b"0," * 200_000 + b"0]", threading.Event()) == 400_003
