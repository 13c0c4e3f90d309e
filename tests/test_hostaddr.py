from __future__ import annotations

import pytest

from bridge.hostaddr import HostAddr, parse_host

# Ollama's envconfig TestHost table (v0.33), plus a few more. The one difference: Go keeps an
# empty host for ":1234" ("http://:1234"); here it is spelled 0.0.0.0.
URL_CASES: list[tuple[str | None, str]] = [
    (None, "http://127.0.0.1:11434"),
    ("", "http://127.0.0.1:11434"),
    ("1.2.3.4", "http://1.2.3.4:11434"),
    (":1234", "http://0.0.0.0:1234"),
    ("1.2.3.4:1234", "http://1.2.3.4:1234"),
    ("example.com", "http://example.com:11434"),
    ("example.com:1234", "http://example.com:1234"),
    (":0", "http://0.0.0.0:0"),
    (":66000", "http://0.0.0.0:11434"),
    (":-1", "http://0.0.0.0:11434"),
    ("[::1]", "http://[::1]:11434"),
    ("[::]", "http://[::]:11434"),
    ("::1", "http://[::1]:11434"),
    ("[::1]:1337", "http://[::1]:1337"),
    (" 1.2.3.4 ", "http://1.2.3.4:11434"),
    ('"1.2.3.4"', "http://1.2.3.4:11434"),
    (' " 1.2.3.4 " ', "http://1.2.3.4:11434"),
    ("'1.2.3.4'", "http://1.2.3.4:11434"),
    ("http://1.2.3.4", "http://1.2.3.4:80"),
    ("http://1.2.3.4:4321", "http://1.2.3.4:4321"),
    ("https://1.2.3.4", "https://1.2.3.4:443"),
    ("https://1.2.3.4:4321", "https://1.2.3.4:4321"),
    ("https://example.com/ollama", "https://example.com:443/ollama"),
    ("ollama.com", "https://ollama.com:443"),
    # more
    ("ollama.com:443", "http://ollama.com:443"),  # only the bare value switches to https
    ("http://ollama.com", "http://ollama.com:80"),
    ("0.0.0.0", "http://0.0.0.0:11434"),
    ("0.0.0.0:8080", "http://0.0.0.0:8080"),
    ("localhost", "http://localhost:11434"),
    ("localhost:8080", "http://localhost:8080"),
    ("http://", "http://127.0.0.1:80"),
    ("https://:8443", "https://0.0.0.0:8443"),
    ("1.2.3.4:", "http://1.2.3.4:11434"),  # empty port
    ("1.2.3.4:abc", "http://1.2.3.4:11434"),
    ("1.2.3.4:1_0", "http://1.2.3.4:11434"),  # Go's ParseInt takes no underscores
    ("1.2.3.4:+80", "http://1.2.3.4:80"),  # ... but takes a sign
    ("1.2.3.4:65535", "http://1.2.3.4:65535"),
    ("1.2.3.4:65536", "http://1.2.3.4:11434"),
    ("https://1.2.3.4:99999", "https://1.2.3.4:443"),  # invalid port: the scheme's default
    ("::ffff:127.0.0.1", "http://127.0.0.1:11434"),  # Go prints a mapped address as IPv4
    ("[0:0:0:0:0:0:0:1]", "http://[::1]:11434"),
    ("[::1]:8080/", "http://[::1]:8080"),
    ("localhost:8080/a/b", "http://localhost:8080/a/b"),
    ("'http://localhost:8080'", "http://localhost:8080"),
]


@pytest.mark.parametrize(("value", "expected"), URL_CASES)
def test_url(value: str | None, expected: str) -> None:
    assert parse_host(value).url == expected


def test_fields() -> None:
    assert parse_host(None) == HostAddr("http", "127.0.0.1", 11434, "")
    assert parse_host("[::1]:8080") == HostAddr("http", "::1", 8080, "")
    assert parse_host("::1") == HostAddr("http", "::1", 11434, "")
    assert parse_host(":1234") == HostAddr("http", "0.0.0.0", 1234, "")
    assert parse_host("https://example.com/ollama") == HostAddr(
        "https", "example.com", 443, "/ollama"
    )
    assert parse_host("ollama.com") == HostAddr("https", "ollama.com", 443, "")


@pytest.mark.parametrize(
    ("value", "loopback"),
    [
        (None, True),
        ("127.0.0.1:1234", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LOCALHOST:8080", True),
        ("[::1]:8080", True),
        ("::1", True),
        ("[::ffff:127.0.0.1]:80", True),
        ("0.0.0.0", False),
        (":1234", False),
        ("[::]", False),
        ("192.168.1.5", False),
        ("example.com", False),
        ("ollama.com", False),
    ],
)
def test_is_loopback(value: str | None, loopback: bool) -> None:
    assert parse_host(value).is_loopback is loopback


def test_frozen() -> None:
    addr = parse_host(None)
    with pytest.raises(AttributeError):
        addr.port = 1  # type: ignore[misc]
