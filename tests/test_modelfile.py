"""Modelfiles parsed as Ollama's parser package parses them; the create request they become."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.client.formats import human_bytes, human_time, parse_time, table
from bridge.client.modelfile import Command, ModelfileError, create_request, parse


def test_every_command() -> None:
    text = '''# a comment
FROM llama3.2
ADAPTER ./lora.gguf
TEMPLATE """{{ if .System }}<|system|>
{{ .System }}{{ end }}"""
SYSTEM "You are Mario."
PARAMETER temperature 0.7
PARAMETER stop <|im_start|>
PARAMETER stop "<|im_end|>"
message user Is it a me?
MESSAGE assistant Yes!
LICENSE """MIT
line two"""
'''
    assert parse(text) == [
        Command("model", "llama3.2"),
        Command("adapter", "./lora.gguf"),
        Command("template", "{{ if .System }}<|system|>\n{{ .System }}{{ end }}"),
        Command("system", "You are Mario."),
        Command("temperature", "0.7"),
        Command("stop", "<|im_start|>"),
        Command("stop", "<|im_end|>"),
        Command("message", "user: Is it a me?"),
        Command("message", "assistant: Yes!"),
        Command("license", "MIT\nline two"),
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("SYSTEM hi\n", "no FROM line"),
        (
            "FROM x\nBOGUS y\n",
            '(line 2): command must be one of "from", "license", "template", '
            '"system", "adapter", "draft", "renderer", "parser", "parameter", "message", or "requires"',
        ),
        (
            "FROM x\nMESSAGE robot hi\n",
            '(line 2): message role must be one of "system", "user", or "assistant"',
        ),
        ('FROM x\nSYSTEM """never closed\n', 'unexpected EOF: """never closed\n'),
        ("FROM x\nPARAMETER top-k 1\n", "unexpected EOF: top"),
    ],
)
def test_errors_use_ollamas_words(text: str, error: str) -> None:
    with pytest.raises(ModelfileError) as info:
        parse(text)
    assert str(info.value) == error


def test_create_request_uploads_local_files(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF weights")
    (tmp_path / "lora.gguf").write_bytes(b"GGUF lora")
    commands = parse(
        "FROM ./m.gguf\nADAPTER lora.gguf\nPARAMETER num_ctx 4096\nPARAMETER temperature 0.1\n"
        "PARAMETER stop a\nPARAMETER stop b\nPARAMETER use_mmap false\nPARAMETER mirostat 1\n"
        "MESSAGE user hi\nLICENSE one\nLICENSE two\n"
    )
    warnings: list[str] = []
    plan = create_request(commands, tmp_path, warn=warnings.append)
    req = plan.request
    assert set(req["files"]) == {"m.gguf"} and req["files"]["m.gguf"].startswith("sha256:")
    assert set(req["adapters"]) == {"lora.gguf"}
    assert req["parameters"] == {
        "num_ctx": 4096,
        "temperature": 0.1,
        "stop": ["a", "b"],
        "use_mmap": False,
    }
    assert req["messages"] == [{"role": "user", "content": "hi"}]
    assert req["license"] == ["one", "two"]
    assert warnings == ["warning: parameter mirostat is deprecated"]
    assert {p.name for p in plan.uploads} == {"m.gguf", "lora.gguf"}


def test_a_from_that_is_not_a_path_is_a_model_name(tmp_path: Path) -> None:
    plan = create_request(parse("FROM llama3.2:1b\n"), tmp_path)
    assert plan.request == {"from": "llama3.2:1b"} and plan.uploads == {}


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("PARAMETER nonsense 1", "unknown parameter 'nonsense'"),
        ("PARAMETER num_ctx big", "invalid int value [big]"),
        ("PARAMETER temperature hot", "invalid float value [hot]"),
        ("PARAMETER use_mmap maybe", "invalid bool value [maybe]"),
    ],
)
def test_parameter_types(tmp_path: Path, line: str, error: str) -> None:
    with pytest.raises(ModelfileError) as info:
        create_request(parse(f"FROM x\n{line}\n"), tmp_path)
    assert str(info.value) == error


# --- output formats -------------------------------------------------------------------------


def test_human_bytes_as_go_formats_them() -> None:
    assert [human_bytes(n) for n in (512, 1000, 1500, 98_362_432, 2_000_000_000, 12_300_000)] == [
        "512 B",
        "1 KB",
        "1.5 KB",
        "98 MB",
        "2 GB",
        "12 MB",
    ]


def test_human_time_and_go_timestamps() -> None:
    now = parse_time("2026-01-10T12:00:00.123456789Z")
    assert now is not None
    for text, want in [
        ("2026-01-10T11:59:59.5Z", "Less than a second ago"),
        ("2026-01-10T11:59:30Z", "30 seconds ago"),
        ("2026-01-10T11:00:00+00:00", "About an hour ago"),
        ("2025-12-20T12:00:00Z", "3 weeks ago"),
        ("2026-01-10T12:04:30Z", "4 minutes from now"),
        ("2318-01-01T00:00:00Z", "Forever"),
    ]:
        assert human_time(parse_time(text), now=now) == want, text
    assert parse_time("0001-01-01T00:00:00Z") is None


def test_tables_are_laid_out_like_ollamas() -> None:
    out = table([["a:latest", "0123456789ab", "98 MB"]], ["NAME", "ID", "SIZE"])
    assert out == ("NAME        ID              SIZE  \na:latest    0123456789ab    98 MB    \n")
