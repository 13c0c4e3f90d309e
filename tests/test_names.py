from __future__ import annotations

import dataclasses

import pytest

from bridge.models.names import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    DEFAULT_TAG,
    InvalidName,
    ModelName,
    sanitize_model_part,
)

R = "registry.ollama.ai"


@pytest.mark.parametrize(
    ("raw", "parts", "scheme"),
    [
        ("llama3", (R, "library", "llama3", "latest"), "https"),
        ("llama3:8b", (R, "library", "llama3", "8b"), "https"),
        ("llama3.2", (R, "library", "llama3.2", "latest"), "https"),
        ("library/llama3", (R, "library", "llama3", "latest"), "https"),
        ("jmorgan/llama3:v1.0-q4_K", (R, "jmorgan", "llama3", "v1.0-q4_K"), "https"),
        (
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
            ("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M"),
            "https",
        ),
        ("localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest"), "https"),
        ("localhost:5000/ns/m:v1", ("localhost:5000", "ns", "m", "v1"), "https"),
        ("http://localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest"), "http"),
        ("https://example.com/ns/m:t", ("example.com", "ns", "m", "t"), "https"),
        ("HTTP://example.com/ns/m", ("example.com", "ns", "m", "latest"), "http"),
        ("LLaMA3:Latest", (R, "library", "LLaMA3", "Latest"), "https"),
        ("_m", (R, "library", "_m", "latest"), "https"),
        ("0", (R, "library", "0", "latest"), "https"),
        ("m:_t", (R, "library", "m", "_t"), "https"),
        ("m:1.0", (R, "library", "m", "1.0"), "https"),
        ("a_b-c/m", (R, "a_b-c", "m", "latest"), "https"),
        ("h_o-s.t:1:2/n/m", ("h_o-s.t:1:2", "n", "m", "latest"), "https"),
        ("m" * 80, (R, "library", "m" * 80, "latest"), "https"),
        ("m:" + "t" * 80, (R, "library", "m", "t" * 80), "https"),
        ("n" * 80 + "/m", (R, "n" * 80, "m", "latest"), "https"),
        ("h" * 350 + "/n/m", ("h" * 350, "n", "m", "latest"), "https"),
    ],
)
def test_parse_valid(raw: str, parts: tuple[str, str, str, str], scheme: str) -> None:
    name = ModelName.parse(raw)
    assert name.manifest_parts() == parts
    assert (name.host, name.namespace, name.model, name.tag) == parts
    assert name.scheme == scheme


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ":",
        "/",
        ":tag",
        "model:",
        "/model",
        "ns/",
        "ns/:tag",
        "/ns/model",
        "host//model",
        "a/b/c/d",
        "a/b/c/d:t",
        "model@sha256:" + "a" * 64,
        "model:tag@sha256:" + "a" * 64,
        "ns/model@sha256-abc",
        "ns.with.dot/model",
        "-model",
        ".model",
        "model:-tag",
        "model:.tag",
        "-ns/model",
        "-host/ns/model",
        ".host/ns/model",
        "m" * 81,
        "m:" + "t" * 81,
        "n" * 81 + "/m",
        "h" * 351 + "/n/m",
        " llama3",
        "llama3 ",
        "llama3\n",
        "lla ma3",
        "llama3:8b:extra/x",  # ':' inside the model part
        "ns:x/model",  # ':' in a namespace
        "model+build",
        "mödel",
        "m:tåg",
        "\u0661",  # Arabic-Indic digit one: not ASCII
        "ftp://host/ns/m",
        "://host/ns/m",
        "https:///ns/m",
        "https://ns/m",
        "http://m",
        "https://m:tag",
    ],
)
def test_parse_invalid(raw: str) -> None:
    with pytest.raises(InvalidName) as info:
        ModelName.parse(raw)
    assert str(info.value) == "invalid model name"
    assert info.value.raw == raw
    assert isinstance(info.value, ValueError)


def test_tag_only_after_last_slash() -> None:
    # The ':' is before the last '/', so it is a port, not a tag.
    name = ModelName.parse("localhost:5000/ns/m")
    assert name.host == "localhost:5000"
    assert name.tag == "latest"
    # With a tag after the last '/', the last ':' wins.
    assert ModelName.parse("localhost:5000/ns/m:v1").tag == "v1"


@pytest.mark.parametrize(
    ("raw", "display"),
    [
        ("llama3", "llama3:latest"),
        ("llama3:8b", "llama3:8b"),
        ("library/llama3", "llama3:latest"),
        ("registry.ollama.ai/library/llama3:8b", "llama3:8b"),
        ("REGISTRY.OLLAMA.AI/Library/llama3", "llama3:latest"),
        ("jmorgan/llama3", "jmorgan/llama3:latest"),
        ("registry.ollama.ai/jmorgan/llama3:x", "jmorgan/llama3:x"),
        ("hf.co/library/m", "hf.co/library/m:latest"),
        ("hf.co/bartowski/M-GGUF:Q4_K_M", "hf.co/bartowski/M-GGUF:Q4_K_M"),
        ("http://localhost:5000/ns/m", "localhost:5000/ns/m:latest"),
        ("LLaMA3:Latest", "LLaMA3:Latest"),
    ],
)
def test_display(raw: str, display: str) -> None:
    name = ModelName.parse(raw)
    assert name.display == display
    assert name.short == display


def test_full() -> None:
    assert ModelName.parse("test").full == "registry.ollama.ai/library/test:latest"
    assert ModelName.parse("http://h:1/n/M:T").full == "h:1/n/M:T"


def test_defaults() -> None:
    assert (DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG) == (R, "library", "latest")
    assert ModelName.parse("x").scheme == "https"


def test_key_is_case_insensitive() -> None:
    a = ModelName.parse("LLaMA3:Latest")
    b = ModelName.parse("llama3")
    assert a != b
    assert a.key() == b.key() == (R, "library", "llama3", "latest")
    assert ModelName.parse("HF.co/Bart/M:Q4").key() == ("hf.co", "bart", "m", "q4")


def test_from_manifest_path() -> None:
    name = ModelName.from_manifest_path(R, "library", "llama3.2", "latest")
    assert name == ModelName.parse("llama3.2")
    assert name.display == "llama3.2:latest"
    assert name.scheme == "https"
    assert ModelName.from_manifest_path("localhost:5000", "ns", "m", "v1").display == (
        "localhost:5000/ns/m:v1"
    )
    for parts in [
        ("", "library", "m", "latest"),
        (R, "ns.dot", "m", "latest"),
        (R, "library", "m", ""),
        (R, "library", "-m", "latest"),
        (R, "library", "m", "t/x"),
        (R, "library", ".DS_Store", "latest"),
    ]:
        with pytest.raises(InvalidName):
            ModelName.from_manifest_path(*parts)


def test_direct_construction_validates() -> None:
    with pytest.raises(InvalidName):
        ModelName(R, "library", "bad name", "latest")
    with pytest.raises(InvalidName):
        ModelName(R, "library", "m", "latest", scheme="ftp")


def test_frozen_and_hashable() -> None:
    name = ModelName.parse("llama3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        name.model = "other"  # type: ignore[misc]
    assert {name, ModelName.parse("library/llama3:latest")} == {name}


def test_round_trip_through_full() -> None:
    for raw in ["llama3", "ns/m:t", "hf.co/a/b:c", "localhost:5000/ns/m:v1"]:
        name = ModelName.parse(raw)
        assert ModelName.parse(name.full) == name
        assert ModelName.parse(name.display) == name


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("Llama-3.2-1B-Instruct-Q4_K_M", "llama-3.2-1b-instruct-q4_k_m"),
        ("model", "model"),
        ("My Model (copy)", "my-model-copy-"),
        ("a  b", "a-b"),
        ("a--b", "a-b"),
        ("--lead", "lead"),
        ("..hidden", "hidden"),
        ("-._x", "_x"),
        ("ünïcode", "n-code"),
        ("日本語", "model"),
        ("", "model"),
        ("---", "model"),
        ("x" * 100, "x" * 80),
    ],
)
def test_sanitize_model_part(stem: str, expected: str) -> None:
    out = sanitize_model_part(stem)
    assert out == expected
    ModelName(R, "library", out, "latest")  # always a valid model part


def test_sanitize_is_valid_for_many_inputs() -> None:
    samples = ["A" * 200, "-" * 90 + "b", "x.y.z", "tab\there", "é" * 5 + "z", "  ", "x/y:z@w"]
    for stem in samples:
        out = sanitize_model_part(stem)
        assert out == out.lower()
        assert 1 <= len(out) <= 80
        ModelName(R, "library", out, "latest")
