from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from pytest_aiohttp import AiohttpClient

from bridge.http.cors import (
    ALLOW_HEADERS,
    DEFAULT_ORIGINS,
    MAX_AGE,
    IPAddress,
    allowed_origins,
    cors_middleware,
    host_allowed,
    host_guard_middleware,
    install_cors,
    is_local_ip,
    origin_allowed,
)

# ---- pure functions -------------------------------------------------------------------------


def test_default_origins() -> None:
    assert DEFAULT_ORIGINS == (
        "http://localhost",
        "https://localhost",
        "http://localhost:*",
        "https://localhost:*",
        "http://127.0.0.1",
        "https://127.0.0.1",
        "http://127.0.0.1:*",
        "https://127.0.0.1:*",
        "http://0.0.0.0",
        "https://0.0.0.0",
        "http://0.0.0.0:*",
        "https://0.0.0.0:*",
        "app://*",
        "file://*",
        "tauri://*",
        "vscode-webview://*",
        "vscode-file://*",
    )


def test_allowed_origins_puts_extra_first() -> None:
    assert allowed_origins([]) == DEFAULT_ORIGINS
    extra = ["https://example.com", "", "chrome-extension://*", "moz-extension://abc"]
    assert allowed_origins(extra) == (
        "https://example.com",
        "chrome-extension://*",
        "moz-extension://abc",
        *DEFAULT_ORIGINS,
    )
    assert allowed_origins(["*"])[0] == "*"


@pytest.mark.parametrize("bad", ["example.com", "null", "ftp://example.com", "http://*.a.*"])
def test_allowed_origins_rejects_what_ollama_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="bad origin"):
        allowed_origins([bad])


DEFAULTS_TABLE: list[tuple[str, bool]] = [
    ("http://localhost", True),
    ("https://localhost", True),
    ("http://localhost:3000", True),
    ("https://127.0.0.1:8443", True),
    ("http://0.0.0.0:8080", True),
    ("http://127.0.0.1", True),
    ("app://obsidian.md", True),
    ("file://", True),
    ("tauri://localhost", True),
    ("vscode-webview://abc123", True),
    ("vscode-file://vscode-app", True),
    ("http://example.com", False),
    ("https://localhost.evil.com", False),
    ("http://127.0.0.1.nip.io", False),
    ("null", False),
    ("http://LOCALHOST", False),  # patterns are lower-cased, the origin is not (as in Go)
    # browser extensions need an OLLAMA_ORIGINS pattern (Ollama's FAQ)
    ("chrome-extension://abcdefghijklmnop", False),
    ("moz-extension://0e4b2c9a-1234", False),
    ("safari-web-extension://ABCDEF", False),
]


@pytest.mark.parametrize(("origin", "allowed"), DEFAULTS_TABLE)
def test_origin_allowed_defaults(origin: str, allowed: bool) -> None:
    assert origin_allowed(origin, DEFAULT_ORIGINS) is allowed


EXTRA_TABLE: list[tuple[Sequence[str], str, bool]] = [
    (["*"], "http://anything.example", True),
    (["*"], "null", True),
    (["https://*.example.com"], "https://a.example.com", True),
    (["https://*.example.com"], "https://a.b.example.com", True),
    (["https://*.example.com"], "https://example.com", False),
    (["https://*.example.com"], "http://a.example.com", False),
    (["*.example.com"], "http://a.example.com", True),
    (["https://example.*"], "https://example.org", True),
    (["https://MyApp.com"], "https://myapp.com", True),
    (["https://MyApp.com"], "https://MyApp.com", False),
    (["https://example.com"], "https://example.com", True),
    (["https://example.com"], "https://example.com:8443", False),
    (["chrome-extension://*"], "chrome-extension://abcdefghijklmnop", True),
    (["moz-extension://*"], "moz-extension://0e4b2c9a-1234", True),
    (["safari-web-extension://*"], "safari-web-extension://ABCDEF", True),
    (["chrome-extension://abc"], "chrome-extension://abc", True),
    (["chrome-extension://abc"], "chrome-extension://abd", False),
]


@pytest.mark.parametrize(("extra", "origin", "allowed"), EXTRA_TABLE)
def test_origin_allowed_extra(extra: Sequence[str], origin: str, allowed: bool) -> None:
    assert origin_allowed(origin, allowed_origins(extra)) is allowed


def _never_local(ip: IPAddress) -> bool:
    return False


HOST_TABLE: list[tuple[str, bool]] = [
    ("", True),
    ("localhost", True),
    ("localhost:11434", True),
    ("LOCALHOST:11434", True),
    ("myhost", True),
    ("MyHost:11434", True),
    ("foo.localhost", True),
    ("foo.localhost:8080", True),
    ("myhost.local", True),
    ("printer.LOCAL", True),
    ("metadata.google.internal", True),
    ("127.0.0.1", True),
    ("127.0.0.1:11434", True),
    ("127.5.6.7:1", True),
    ("[::1]:11434", True),
    ("[::1]", True),  # Go gives 403 here (brackets kept); allowed on purpose
    ("::1", True),
    ("0.0.0.0:11434", True),
    ("[::]:11434", True),
    ("10.1.2.3", True),
    ("172.16.0.1:80", True),
    ("172.31.255.255", True),
    ("192.168.1.10:11434", True),
    ("[fd00::1]:11434", True),
    ("[::ffff:127.0.0.1]:11434", True),
    ("[::ffff:192.168.0.1]:80", True),
    ("evil.com", False),
    ("evil.com:11434", False),
    ("localhost.evil.com", False),
    ("evil-localhost", False),
    ("notmyhost", False),
    ("local", False),
    ("8.8.8.8", False),
    ("8.8.8.8:11434", False),
    ("172.32.0.1", False),
    ("[2001:db8::1]:11434", False),
    ("[fe80::1]:11434", False),  # link-local is not "private" in Go
]


@pytest.mark.parametrize(("host", "allowed"), HOST_TABLE)
def test_host_allowed(host: str, allowed: bool) -> None:
    assert host_allowed(host, hostname="MyHost", is_local=_never_local) is allowed


def test_host_allowed_local_interface() -> None:
    seen: list[IPAddress] = []

    def local(ip: IPAddress) -> bool:
        seen.append(ip)
        return ip == ipaddress.ip_address("203.0.113.7")

    assert host_allowed("203.0.113.7:11434", hostname="h", is_local=local)
    assert not host_allowed("203.0.113.8:11434", hostname="h", is_local=local)
    assert seen == [ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("203.0.113.8")]


@pytest.mark.parametrize(
    ("ip", "local"),
    [
        ("127.0.0.1", True),
        ("192.0.2.123", False),  # TEST-NET-1: never configured
        ("8.8.8.8", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
    ],
)
def test_is_local_ip(ip: str, local: bool) -> None:
    assert is_local_ip(ipaddress.ip_address(ip)) is local


# ---- real server ----------------------------------------------------------------------------

ORIGIN = "http://localhost:3000"


async def _plain(request: web.Request) -> web.Response:
    return web.Response(text="plain")


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for i in range(3):
        await response.write(b'{"i":%d}\n' % i)
    await response.write_eof()
    return response


async def _missing(request: web.Request) -> web.Response:
    raise web.HTTPNotFound(text="nope")


def _app(extra: Sequence[str] = (), *, guard: bool = False, signal: bool = True) -> web.Application:
    app = web.Application()
    patterns = allowed_origins(extra)
    if signal:
        install_cors(app, patterns)
    else:
        app.middlewares.append(cors_middleware(patterns))
    if guard:
        app.middlewares.append(host_guard_middleware(hostname="myhost"))
    app.router.add_get("/plain", _plain)
    app.router.add_get("/stream", _stream)
    app.router.add_get("/missing", _missing)
    app.router.add_post("/plain", _plain)
    return app


def _assert_no_cors(headers: CIMultiDictProxy[str]) -> None:
    assert "Access-Control-Allow-Origin" not in headers
    assert "Vary" not in headers


async def test_allowed_origin_plain(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app())
    resp = await client.get("/plain", headers={"Origin": ORIGIN})
    assert resp.status == 200
    assert await resp.text() == "plain"
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert resp.headers.getall("Vary") == ["Origin"]
    assert "Access-Control-Allow-Methods" not in resp.headers


@pytest.mark.parametrize("signal", [True, False])
async def test_allowed_origin_raised_error(aiohttp_client: AiohttpClient, signal: bool) -> None:
    client = await aiohttp_client(_app(signal=signal))
    for path in ("/missing", "/no-such-route"):
        resp = await client.get(path, headers={"Origin": ORIGIN})
        assert resp.status == 404
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert resp.headers.getall("Vary") == ["Origin"]


async def test_allowed_origin_stream(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app())
    resp = await client.get("/stream", headers={"Origin": ORIGIN})
    assert resp.status == 200
    assert await resp.read() == b'{"i":0}\n{"i":1}\n{"i":2}\n'
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert resp.headers.getall("Vary") == ["Origin"]


async def test_middleware_alone_misses_stream_headers(aiohttp_client: AiohttpClient) -> None:
    # Why install_cors adds the signal handler: the middleware sees the stream too late.
    client = await aiohttp_client(_app(signal=False))
    resp = await client.get("/stream", headers={"Origin": ORIGIN})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.get("/plain", headers={"Origin": ORIGIN})
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN


@pytest.mark.parametrize("path", ["/plain", "/stream", "/no-such-route"])
async def test_disallowed_origin(aiohttp_client: AiohttpClient, path: str) -> None:
    client = await aiohttp_client(_app())
    resp = await client.get(path, headers={"Origin": "http://evil.com"})
    assert resp.status == 403
    assert await resp.read() == b""
    assert "Content-Type" not in resp.headers  # as gin's AbortWithStatus sends it
    _assert_no_cors(resp.headers)
    resp = await client.post("/plain", headers={"Origin": "http://evil.com"}, data=b"x")
    assert resp.status == 403


async def test_preflight(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app())
    resp = await client.options(
        "/plain",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-stainless-os",
        },
    )
    assert resp.status == 204
    assert await resp.read() == b""
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == ORIGIN
    assert h["Access-Control-Allow-Methods"] == "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
    assert h["Access-Control-Max-Age"] == str(MAX_AGE) == "43200"
    allow_headers = h["Access-Control-Allow-Headers"].split(",")
    assert [a.lower() for a in allow_headers] == [a.lower() for a in ALLOW_HEADERS]
    assert allow_headers[:6] == [
        "Authorization",
        "Content-Type",
        "User-Agent",
        "Accept",
        "X-Requested-With",
        "Openai-Beta",
    ]
    assert "X-Stainless-Retry-Count" in allow_headers
    assert h.getall("Vary") == [
        "Origin",
        "Access-Control-Request-Method",
        "Access-Control-Request-Headers",
    ]
    assert "Access-Control-Allow-Credentials" not in h


async def test_preflight_disallowed_and_unknown_route(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app())
    resp = await client.options(
        "/plain", headers={"Origin": "http://evil.com", "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 403
    # gin-contrib/cors answers any cross-origin OPTIONS, routed or not.
    resp = await client.options("/no-such-route", headers={"Origin": ORIGIN})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_no_origin_passes(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app())
    for path in ("/plain", "/stream"):
        resp = await client.get(path)
        assert resp.status == 200
        _assert_no_cors(resp.headers)
    resp = await client.options("/plain")  # not a preflight, no guard: the router says 405
    assert resp.status == 405


async def test_same_origin_passes(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app())
    host = f"{client.host}:{client.port}"
    for origin in (f"http://{host}", f"https://{host}"):
        resp = await client.get("/plain", headers={"Origin": origin})
        assert resp.status == 200
        _assert_no_cors(resp.headers)
    # the same origin is decided by the Host header, not by the address
    resp = await client.get("/plain", headers={"Origin": "http://evil.com", "Host": "evil.com"})
    assert resp.status == 200


async def test_extension_origin(aiohttp_client: AiohttpClient) -> None:
    ext = "chrome-extension://abcdefghijklmnop"
    client = await aiohttp_client(_app())
    assert (await client.get("/plain", headers={"Origin": ext})).status == 403
    client = await aiohttp_client(_app(["chrome-extension://*"]))
    resp = await client.get("/plain", headers={"Origin": ext})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ext


async def test_extra_wildcard_origin(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app(["https://*.example.com"]))
    resp = await client.get("/stream", headers={"Origin": "https://app.example.com"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    resp = await client.get("/plain", headers={"Origin": "https://example.com"})
    assert resp.status == 403
    resp = await client.get("/plain", headers={"Origin": "http://localhost:5173"})
    assert resp.status == 200


async def test_allow_all_origins(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app(["*"]))
    resp = await client.get("/stream", headers={"Origin": "http://evil.com"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in resp.headers
    resp = await client.options("/plain", headers={"Origin": "http://evil.com"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in resp.headers


@pytest.mark.parametrize(
    "host",
    ["localhost:11434", "127.0.0.1", "[::1]:11434", "foo.localhost", "myhost.local", "myhost"],
)
async def test_host_guard_accepts(aiohttp_client: AiohttpClient, host: str) -> None:
    client = await aiohttp_client(_app(guard=True))
    for _ in range(2):  # the second verdict comes from the guard's memo
        resp = await client.get("/stream", headers={"Host": host})
        assert resp.status == 200
        assert await resp.read() == b'{"i":0}\n{"i":1}\n{"i":2}\n'


@pytest.mark.parametrize("host", ["evil.com", "evil.com:11434", "8.8.8.8:11434"])
async def test_host_guard_rejects(aiohttp_client: AiohttpClient, host: str) -> None:
    client = await aiohttp_client(_app(guard=True))
    for method in ("GET", "OPTIONS"):
        resp = await client.request(method, "/plain", headers={"Host": host})
        assert resp.status == 403
        assert await resp.read() == b""


async def test_host_guard_options(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app(guard=True))
    # an allowed host name: the guard answers OPTIONS itself
    resp = await client.options("/plain", headers={"Host": "localhost:11434"})
    assert resp.status == 204
    resp = await client.options("/no-such-route", headers={"Host": "foo.localhost"})
    assert resp.status == 204
    # an allowed IP address: OPTIONS goes on to the router (as in Ollama)
    resp = await client.options("/plain", headers={"Host": "127.0.0.1:11434"})
    assert resp.status == 405


async def test_cors_runs_before_host_guard(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app(guard=True))
    # disallowed origin: CORS says 403 first
    resp = await client.get("/plain", headers={"Origin": "http://evil.com", "Host": "localhost"})
    assert resp.status == 403
    # allowed origin, bad Host: the guard's 403 still carries the CORS headers
    resp = await client.get("/plain", headers={"Origin": ORIGIN, "Host": "evil.com"})
    assert resp.status == 403
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    # a preflight never reaches the guard
    resp = await client.options("/plain", headers={"Origin": ORIGIN, "Host": "evil.com"})
    assert resp.status == 204
