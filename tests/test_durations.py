from __future__ import annotations

import math

import pytest

from bridge.durations import (
    FOREVER,
    MAX_DURATION_NS,
    MIN_DURATION_NS,
    InvalidDuration,
    format_go_duration,
    parse_env_keep_alive,
    parse_go_duration,
    parse_go_duration_ns,
    parse_keep_alive,
)

S = 1_000_000_000


def test_forever_is_inf() -> None:
    assert math.isinf(FOREVER) and FOREVER > 0


# --- parse_go_duration ----------------------------------------------------------------------


# Cases from Go's own time package tests (parseDurationTests), in nanoseconds.
@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("-0", 0),
        ("+0", 0),
        ("5s", 5 * S),
        ("30s", 30 * S),
        ("1478s", 1478 * S),
        ("-5s", -5 * S),
        ("+5s", 5 * S),
        ("-0s", 0),
        ("+0s", 0),
        ("5.0s", 5 * S),
        ("5.6s", 5 * S + 600_000_000),
        ("5.s", 5 * S),
        ("1.s", S),
        (".5s", S // 2),
        ("1.0s", S),
        ("1.00s", S),
        ("1.004s", S + 4_000_000),
        ("1.0040s", S + 4_000_000),
        ("100.00100s", 100 * S + 1_000_000),
        ("10ns", 10),
        ("11us", 11_000),
        ("12\u00b5s", 12_000),  # U+00B5 micro sign
        ("12\u03bcs", 12_000),  # U+03BC Greek mu
        ("13ms", 13_000_000),
        ("14s", 14 * S),
        ("15m", 15 * 60 * S),
        ("16h", 16 * 3600 * S),
        ("3h30m", (3 * 3600 + 30 * 60) * S),
        ("1h30m", 5400 * S),
        ("10.5s4m", 4 * 60 * S + 10 * S + S // 2),
        ("-2m3.4s", -(2 * 60 * S + 3 * S + 400_000_000)),
        ("1h2m3s4ms5us6ns", 3600 * S + 2 * 60 * S + 3 * S + 4_000_000 + 5_000 + 6),
        ("39h9m14.425s", 39 * 3600 * S + 9 * 60 * S + 14 * S + 425_000_000),
        ("52763797000ns", 52_763_797_000),
        ("0.3333333333333333333h", 20 * 60 * S),
        ("1.5h", 5400 * S),
        ("-1m", -60 * S),
        ("300ms", 300_000_000),
        ("5m", 300 * S),
        ("9007199254740993ns", (1 << 53) + 1),
        ("9223372036854775807ns", MAX_DURATION_NS),
        ("9223372036854775.807us", MAX_DURATION_NS),
        ("9223372036s854ms775us807ns", MAX_DURATION_NS),
        ("-9223372036854775808ns", MIN_DURATION_NS),
        ("-9223372036s854ms775us808ns", MIN_DURATION_NS),
        ("-9223372036854775808ns", -(1 << 63)),
        ("-2562047h47m16.854775808s", MIN_DURATION_NS),
        ("2562047h47m16.854775807s", MAX_DURATION_NS),
        ("0.100000000000000000000h", 6 * 60 * S),
        ("0.830103483285477580700h", 49 * 60 * S + 48 * S + 372_539_827),
        ("0.9223372036854775807h", 3320 * S + 413_933_267),  # fraction beyond uint64 precision
        # Go's uint64 sum wraps at exactly 2**64 (a quirk, reproduced).
        ("9223372036854775808ns9223372036854775808ns", 0),
    ],
)
def test_parse_go_duration_valid(text: str, ns: int) -> None:
    assert parse_go_duration_ns(text) == ns
    assert parse_go_duration(text) == ns / S


def test_parse_go_duration_returns_seconds() -> None:
    assert parse_go_duration("5m") == 300.0
    assert parse_go_duration("1.5h") == 5400.0
    assert parse_go_duration("300ms") == 0.3
    assert parse_go_duration("-1m") == -60.0
    assert parse_go_duration("0") == 0.0
    assert isinstance(parse_go_duration("0"), float)
    assert math.copysign(1.0, parse_go_duration("-0s")) == 1.0  # no negative zero


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("3", 'time: missing unit in duration "3"'),
        ("300", 'time: missing unit in duration "300"'),
        ("1", 'time: missing unit in duration "1"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("00", 'time: missing unit in duration "00"'),
        ("0.0", 'time: missing unit in duration "0.0"'),
        ("1.5", 'time: missing unit in duration "1.5"'),
        ("1h1", 'time: missing unit in duration "1h1"'),
        ("1..5s", 'time: missing unit in duration "1..5s"'),
        ("-", 'time: invalid duration "-"'),
        ("+", 'time: invalid duration "+"'),
        ("s", 'time: invalid duration "s"'),
        (".", 'time: invalid duration "."'),
        ("-.", 'time: invalid duration "-."'),
        (".s", 'time: invalid duration ".s"'),
        ("+.s", 'time: invalid duration "+.s"'),
        ("--1s", 'time: invalid duration "--1s"'),
        ("+-1s", 'time: invalid duration "+-1s"'),
        (" 1s", 'time: invalid duration " 1s"'),
        ("forever", 'time: invalid duration "forever"'),
        ("abc", 'time: invalid duration "abc"'),
        ("1s ", 'time: unknown unit "s " in duration "1s "'),
        ("1 s", 'time: unknown unit " s" in duration "1 s"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("1H", 'time: unknown unit "H" in duration "1H"'),
        ("1hh", 'time: unknown unit "hh" in duration "1hh"'),
        ("1e3s", 'time: unknown unit "e" in duration "1e3s"'),
        ("3000000h", 'time: invalid duration "3000000h"'),
        ("2562048h", 'time: invalid duration "2562048h"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("9223372036854775809ns", 'time: invalid duration "9223372036854775809ns"'),
        ("-9223372036854775809ns", 'time: invalid duration "-9223372036854775809ns"'),
        ("9223372036854775.808us", 'time: invalid duration "9223372036854775.808us"'),
        ("9223372036854ms775us808ns", 'time: invalid duration "9223372036854ms775us808ns"'),
        ("-9223372036854775808ns1ns", 'time: invalid duration "-9223372036854775808ns1ns"'),
        ("99999999999999999999s", 'time: invalid duration "99999999999999999999s"'),
        # Quoting: non-ASCII and control characters become \xNN bytes, '"' and '\' escaped.
        ("\u0663s", 'time: invalid duration "\\xd9\\xa3s"'),
        ("5\u00b5x", 'time: unknown unit "\\xc2\\xb5x" in duration "5\\xc2\\xb5x"'),
        ("5\u00b5", 'time: unknown unit "\\xc2\\xb5" in duration "5\\xc2\\xb5"'),
        ("1\ts", 'time: unknown unit "\\x09s" in duration "1\\x09s"'),
        ('1"s', 'time: unknown unit "\\"s" in duration "1\\"s"'),
        ("1\\s", 'time: unknown unit "\\\\s" in duration "1\\\\s"'),
        ("1\ufffds", 'time: unknown unit "\\xef\\xbf\\xbds" in duration "1\\xef\\xbf\\xbds"'),
        ("1\ud800s", 'time: unknown unit "\\xef\\xbf\\xbds" in duration "1\\xef\\xbf\\xbds"'),
    ],
)
def test_parse_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidDuration) as info:
        parse_go_duration(text)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


# --- parse_keep_alive -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (0, 0.0),
        (0.0, 0.0),
        (300, 300.0),
        (1.5, 1.5),
        (0.25, 0.25),
        (-1, FOREVER),
        (-0.5, FOREVER),
        (-1e300, FOREVER),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("0", 0.0),
        ("0s", 0.0),
        ("-0", 0.0),
        ("-1m", FOREVER),
        ("-1ns", FOREVER),
        ("-9223372036854775808ns", FOREVER),
        # Beyond Go's int64 nanoseconds: treated as forever.
        (10**12, FOREVER),
        (1e300, FOREVER),
        (math.inf, FOREVER),
        (-math.inf, FOREVER),
        (9_223_372_036, 9_223_372_036.0),
    ],
)
def test_parse_keep_alive(value: object, expected: float | None) -> None:
    assert parse_keep_alive(value) == expected


def test_parse_keep_alive_number_truncates_to_nanoseconds() -> None:
    # Go: time.Duration(t * float64(time.Second)) truncates toward zero.
    assert parse_keep_alive(1e-10) == 0.0
    assert parse_keep_alive(1.9e-9) == 1e-9


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("", 'time: invalid duration ""'),
        ("forever", 'time: invalid duration "forever"'),
        ("5 m", 'time: unknown unit " m" in duration "5 m"'),
        (True, "Unsupported type: 'bool'"),
        (False, "Unsupported type: 'bool'"),
        ([], "Unsupported type: '[]interface {}'"),
        (["5m"], "Unsupported type: '[]interface {}'"),
        ({}, "Unsupported type: 'map[string]interface {}'"),
        ({"a": 1}, "Unsupported type: 'map[string]interface {}'"),
        (math.nan, 'time: invalid duration "NaN"'),
    ],
)
def test_parse_keep_alive_errors(value: object, message: str) -> None:
    with pytest.raises(InvalidDuration) as info:
        parse_keep_alive(value)
    assert str(info.value) == message


# --- parse_env_keep_alive -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 300.0),
        ("5m", 300.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("300ms", 0.3),
        ("0", 0.0),
        ("0s", 0.0),
        ("300", 300.0),
        ("+300", 300.0),
        ("007", 7.0),
        ("-1", FOREVER),
        ("-1m", FOREVER),
        ("-0", 0.0),
        ("  10m  ", 600.0),
        ('"10m"', 600.0),
        ("'30'", 30.0),
        ("forever", 300.0),
        ("1.5", 300.0),  # neither a duration nor an integer
        ("1_000", 300.0),
        ("\u0663", 300.0),  # not an ASCII digit
        ("1d", 300.0),
        ("99999999999999999999", 300.0),  # out of int64: ParseInt fails -> default
        ("10000000000", FOREVER),  # int64 seconds, but beyond a Go duration
        ("-99999999999999999999", 300.0),
    ],
)
def test_parse_env_keep_alive(text: str, expected: float) -> None:
    assert parse_env_keep_alive(text) == expected


# --- format_go_duration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0, "0s"),
        (-0.0, "0s"),
        (1e-9, "1ns"),
        (1.1e-6, "1.1\u00b5s"),
        (2.2e-3, "2.2ms"),
        (0.3, "300ms"),
        (3.3, "3.3s"),
        (1.5, "1.5s"),
        (1, "1s"),
        (4 * 60 + 5, "4m5s"),
        (4 * 60 + 5.001, "4m5.001s"),
        (5 * 3600 + 6 * 60 + 7.001, "5h6m7.001s"),
        (8 * 60 + 1e-9, "8m0.000000001s"),
        (300, "5m0s"),
        (60, "1m0s"),
        (3600, "1h0m0s"),
        (5400, "1h30m0s"),
        (86400, "24h0m0s"),
        (1.23456789, "1.23456789s"),
        (-2, "-2s"),
        (-1.5, "-1.5s"),
        (-0.001, "-1ms"),
        (35, "35s"),
        (1.5e-6, "1.5\u00b5s"),
        (42e-9, "42ns"),
        (FOREVER, "2562047h47m16.854775807s"),
        (-math.inf, "-2562047h47m16.854775808s"),
        (1e300, "2562047h47m16.854775807s"),
        (-1e300, "-2562047h47m16.854775808s"),
    ],
)
def test_format_go_duration(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


def test_format_go_duration_nan() -> None:
    with pytest.raises(ValueError):
        format_go_duration(math.nan)


@pytest.mark.parametrize("text", ["5m0s", "1h0m0s", "300ms", "0s", "1.5s", "1.1\u00b5s", "42ns"])
def test_format_round_trip(text: str) -> None:
    assert format_go_duration(parse_go_duration(text)) == text
