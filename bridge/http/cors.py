"""CORS and the Host-header (DNS-rebinding) guard, as ``ollama serve`` does them.

Ollama (server/routes.go, v0.33) puts two gin middlewares in front of every route, 404s and 405s
included, in this order:

1. ``gin-contrib/cors`` v1.7.2 with ``DefaultConfig()`` (methods GET, POST, PUT, PATCH, DELETE,
   HEAD, OPTIONS; max age 12h; no credentials), ``AllowWildcard``, ``AllowBrowserExtensions``,
   its own list of allowed request headers, and ``AllowOrigins = envconfig.AllowedOrigins()``
   (``OLLAMA_ORIGINS`` entries followed by :data:`DEFAULT_ORIGINS`). For a request with an
   ``Origin`` header that is not ``http://<Host>`` or ``https://<Host>``:

   - an origin that matches no pattern gets 403 with an empty body;
   - *any* OPTIONS request (gin-contrib/cors does not look for Access-Control-Request-Method)
     is a preflight: 204 with Allow-Origin, Allow-Methods, Allow-Headers, Max-Age and Vary;
   - any other request goes on, and its response carries ``Access-Control-Allow-Origin: <origin>``
     and ``Vary: Origin``.

   With a ``*`` pattern every origin is allowed and the headers say ``*`` (no Vary) instead.

2. ``allowedHostsMiddleware``, only when the server listens on a loopback address: see
   :func:`host_allowed`. A rejected Host gets 403 with an empty body; an allowed host *name*
   answers OPTIONS itself with 204 (an allowed IP address does not: OPTIONS goes on to the
   router, like any other method).

Use::

    install_cors(app, allowed_origins(extra_origins))           # first: the outer middleware
    if listen_addr.is_loopback:
        app.middlewares.append(host_guard_middleware(hostname=socket.gethostname()))

:func:`install_cors` adds :func:`cors_middleware` (rejections and preflights) and an
``on_response_prepare`` signal handler that puts the Allow-Origin and Vary headers on every
response to an allowed cross-origin request, including streamed responses a handler prepares
itself and error responses aiohttp makes; so call it before the app starts. The middleware on its
own also adds the headers, but only to responses it gets back unprepared (or raised as
``HTTPException``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

__all__ = [
    "ALLOW_HEADERS",
    "ALLOW_METHODS",
    "DEFAULT_ORIGINS",
    "MAX_AGE",
    "allowed_origins",
    "cors_middleware",
    "host_allowed",
    "host_guard_middleware",
    "install_cors",
    "is_local_ip",
    "origin_allowed",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _default_origins() -> tuple[str, ...]:
    # envconfig.AllowedOrigins(), after the OLLAMA_ORIGINS entries.
    origins: list[str] = []
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    origins += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
    return tuple(origins)


DEFAULT_ORIGINS: tuple[str, ...] = _default_origins()

ALLOW_METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

ALLOW_HEADERS: tuple[str, ...] = (
    "Authorization",
    "Content-Type",
    "User-Agent",
    "Accept",
    "X-Requested-With",
    # OpenAI compatibility headers
    "OpenAI-Beta",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-custom-poll-interval",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
)

MAX_AGE = 12 * 60 * 60  # seconds

# Schemes a pattern without "*" may start with: gin-contrib/cors DefaultSchemas plus, with
# AllowBrowserExtensions, ExtensionSchemas. This only validates the configured patterns; an
# extension's origin is allowed only when a pattern matches it (Ollama's FAQ: set
# OLLAMA_ORIGINS=chrome-extension://*,moz-extension://*,safari-web-extension://*).
_PATTERN_SCHEMES: tuple[str, ...] = (
    "http://",
    "https://",
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)


def _canonical_header_key(name: str) -> str:
    # Go's http.CanonicalHeaderKey: "openai-beta" -> "Openai-Beta".
    return "-".join(part[:1].upper() + part[1:] for part in name.lower().split("-"))


def _distinct_lower(values: Sequence[str]) -> list[str]:
    # gin-contrib/cors normalize(): trim, lower-case, drop repeats (first wins).
    out: list[str] = []
    for value in values:
        v = value.strip().lower()
        if v not in out:
            out.append(v)
    return out


_ALLOW_METHODS_VALUE = ",".join(m.upper() for m in _distinct_lower(ALLOW_METHODS))
_ALLOW_HEADERS_VALUE = ",".join(_canonical_header_key(h) for h in _distinct_lower(ALLOW_HEADERS))


def allowed_origins(extra: Sequence[str]) -> tuple[str, ...]:
    """The CORS origin patterns: ``OLLAMA_ORIGINS`` entries, then :data:`DEFAULT_ORIGINS`.

    ``extra`` is ``OLLAMA_ORIGINS`` already split on commas and stripped; empty entries are
    dropped. Raises ``ValueError`` for a pattern Ollama refuses at startup (gin-contrib/cors
    panics): one with more than one ``*``, or one with no ``*`` that starts with none of
    http://, https://, chrome-extension://, safari-extension://, moz-extension://,
    ms-browser-extension://.
    """
    patterns = tuple(e for e in extra if e)
    for pattern in patterns:
        if pattern.count("*") > 1:
            raise ValueError(f"bad origin {pattern!r}: only one * is allowed")
        if "*" not in pattern and not pattern.startswith(_PATTERN_SCHEMES):
            raise ValueError(
                f"bad origin {pattern!r}: origins must contain '*' or include "
                + ",".join(_PATTERN_SCHEMES)
            )
    return patterns + DEFAULT_ORIGINS


@dataclass(frozen=True, slots=True)
class _OriginPolicy:
    allow_all: bool
    exact: frozenset[str]
    wildcards: tuple[tuple[str, str], ...]  # (prefix, suffix); "*" for "anything"

    @classmethod
    def build(cls, patterns: Sequence[str]) -> _OriginPolicy:
        wildcards: list[tuple[str, str]] = []
        for p in patterns:  # parseWildcardRules: the raw patterns, not normalised
            i = p.find("*")
            if i < 0:
                continue
            if i == 0:
                wildcards.append(("*", p[1:]))
            elif i == len(p) - 1:
                wildcards.append((p[:i], "*"))
            else:
                wildcards.append((p[:i], p[i + 1 :]))
        return cls(
            allow_all="*" in patterns,
            exact=frozenset(_distinct_lower(patterns)),
            wildcards=tuple(wildcards),
        )

    def allows(self, origin: str) -> bool:
        if self.allow_all or origin in self.exact:
            return True
        for prefix, suffix in self.wildcards:
            if prefix == "*" and origin.endswith(suffix):
                return True
            if suffix == "*" and origin.startswith(prefix):
                return True
            if origin.startswith(prefix) and origin.endswith(suffix):
                return True
        return False


def origin_allowed(origin: str, patterns: Sequence[str]) -> bool:
    """Whether ``origin`` matches one of ``patterns``, as gin-contrib/cors matches them.

    A ``*`` pattern allows anything. Otherwise the origin must equal a pattern (patterns are
    trimmed and lower-cased for this; the origin is not), or match a pattern with one ``*``
    by prefix and suffix (``http://localhost:*``, ``app://*``, ``*.example.com``,
    ``chrome-extension://*``). Browser-extension origins need such a pattern too.
    """
    return _OriginPolicy.build(patterns).allows(origin)


@dataclass(frozen=True, slots=True)
class _CorsGrant:
    allow_origin: str  # the request's origin, or "*" when every origin is allowed
    vary: bool


_CORS_GRANT = web.RequestKey("bridge.http.cors.grant", _CorsGrant)


def _forbidden() -> web.Response:
    return web.Response(status=403)  # empty, and no Content-Type (gin's AbortWithStatus)


def _no_content() -> web.Response:
    return web.Response(status=204)


def _add_normal_headers(response: web.StreamResponse, grant: _CorsGrant) -> None:
    headers = response.headers
    headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = grant.allow_origin
    if not grant.vary:
        return
    tokens = {
        t.strip().lower() for value in headers.getall(hdrs.VARY, ()) for t in value.split(",")
    }
    if "origin" not in tokens and "*" not in tokens:
        headers.add(hdrs.VARY, "Origin")


def _preflight_response(grant: _CorsGrant) -> web.Response:
    response = _no_content()
    headers = response.headers
    headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = _ALLOW_METHODS_VALUE
    headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = _ALLOW_HEADERS_VALUE
    headers[hdrs.ACCESS_CONTROL_MAX_AGE] = str(MAX_AGE)
    if grant.vary:
        headers.add(hdrs.VARY, "Origin")
        headers.add(hdrs.VARY, "Access-Control-Request-Method")
        headers.add(hdrs.VARY, "Access-Control-Request-Headers")
    headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = grant.allow_origin
    return response


def cors_middleware(patterns: Sequence[str]) -> Middleware:
    """The CORS middleware for ``patterns`` (normally :func:`allowed_origins`'s result).

    Rejects disallowed origins (403) and answers preflights (204). Prefer
    :func:`install_cors`, which also covers responses that handlers prepare themselves.
    """
    policy = _OriginPolicy.build(patterns)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN, "")
        if not origin:
            return await handler(request)  # not a CORS request
        host = request.headers.get(hdrs.HOST, "")
        if origin in (f"http://{host}", f"https://{host}"):
            return await handler(request)  # same origin (e.g. fetch() from a page we served)
        if not policy.allows(origin):
            return _forbidden()

        if policy.allow_all:
            grant = _CorsGrant(allow_origin="*", vary=False)
        else:
            grant = _CorsGrant(allow_origin=origin, vary=True)
        if request.method == hdrs.METH_OPTIONS:
            return _preflight_response(grant)

        request[_CORS_GRANT] = grant
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _add_normal_headers(exc, grant)
            raise
        if not response.prepared:
            _add_normal_headers(response, grant)
        return response

    return cors


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    grant = request.get(_CORS_GRANT)
    if grant is not None:
        _add_normal_headers(response, grant)


def install_cors(app: web.Application, patterns: Sequence[str]) -> None:
    """Add CORS to ``app``: :func:`cors_middleware` and an ``on_response_prepare`` handler.

    The middleware rejects disallowed origins and answers preflights; the signal handler puts
    ``Access-Control-Allow-Origin`` and ``Vary: Origin`` on every response to an allowed
    cross-origin request, streamed ones included. Call it before the app starts, and before
    adding the host guard so that CORS is the outer middleware, as in Ollama.
    """
    app.middlewares.append(cors_middleware(patterns))
    app.on_response_prepare.append(_on_response_prepare)


# ---- Host-header guard ----------------------------------------------------------------------

_PRIVATE_NETS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("fc00::/7"),
)
_LOCAL_TLDS = (".localhost", ".local", ".internal")


def is_local_ip(ip: IPAddress) -> bool:
    """Whether ``ip`` is an address of one of this machine's network interfaces.

    Checked by binding a UDP socket to it, which only works for a local address (multicast
    and the broadcast address are ruled out first, as binding to those works too).
    """
    if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((str(ip), 0))
    except OSError:
        return False
    return True


def _split_host_port(hostport: str) -> str | None:
    """The host part by Go's ``net.SplitHostPort``; None where Go returns an error."""
    i = hostport.rfind(":")
    if i < 0:
        return None
    j = k = 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != i:
            return None
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            return None
    if "[" in hostport[j:] or "]" in hostport[k:]:
        return None
    return host


def _ip_allowed(ip: IPAddress, is_local: Callable[[IPAddress], bool]) -> bool:
    # netip's IsLoopback/IsPrivate/IsUnspecified look through an IPv4-mapped address.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_unspecified
        or any(ip in net for net in _PRIVATE_NETS if net.version == ip.version)
        or is_local(ip)
    )


def _host_verdict(
    host_header: str, hostname: str, is_local: Callable[[IPAddress], bool]
) -> Literal["ip", "name"] | None:
    host = _split_host_port(host_header)
    if host is None:
        host = host_header
        # Go would not strip the brackets here, so a bare "[::1]" (port 80) got 403 there.
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if _ip_allowed(ip, is_local):
            return "ip"

    host = host.lower()
    if host in ("", "localhost") or host == hostname.lower() or host.endswith(_LOCAL_TLDS):
        return "name"
    return None


def host_allowed(
    host_header: str,
    *,
    hostname: str,
    is_local: Callable[[IPAddress], bool] = is_local_ip,
) -> bool:
    """Ollama's DNS-rebinding guard: whether a request's ``Host`` header is acceptable.

    Allowed: empty, ``localhost``, the machine's ``hostname``, anything ending in
    ``.localhost``, ``.local`` or ``.internal`` (case-insensitive), and IP addresses that are
    loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), unspecified, or on a local
    interface (``is_local``). A port is ignored; IPv6 addresses are bracketed when a port
    follows, and may be bracketed without one.
    """
    return _host_verdict(host_header, hostname, is_local) is not None


def host_guard_middleware(*, hostname: str) -> Middleware:
    """Ollama's ``allowedHostsMiddleware``; install it only when listening on loopback.

    A rejected ``Host`` gets 403 with an empty body. For a Host allowed by name (not an IP
    address), an OPTIONS request is answered here with 204.
    """

    # Verdicts by Host header, for those that do not ask the network interfaces (which can
    # change); bounded, so that made-up hosts cannot grow it.
    known: dict[str, Literal["ip", "name"] | None] = {}

    @web.middleware
    async def host_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST, "")
        if host in known:
            verdict = known[host]
        else:
            asked = False

            def is_local(ip: IPAddress) -> bool:
                nonlocal asked
                asked = True
                return is_local_ip(ip)

            verdict = _host_verdict(host, hostname, is_local)
            if not asked and len(known) < 256:
                known[host] = verdict
        if verdict is None:
            return _forbidden()
        if verdict == "name" and request.method == hdrs.METH_OPTIONS:
            return _no_content()
        return await handler(request)

    return host_guard
