"""``OLLAMA_HOST`` parsing, following Ollama's ``envconfig.Host()``.

Ollama (envconfig/config.go, v0.33) does, in order:

1. strip surrounding white space, then surrounding ``"``/``'`` quotes, then white space again;
2. split off an optional ``scheme://``. Without one the scheme is ``http`` (the exact value
   ``ollama.com`` alone means ``https://ollama.com:443``); an explicit ``http://`` makes the
   default port 80, ``https://`` makes it 443; otherwise the default port is 11434;
3. cut at the first ``/``: what follows is the path (kept, used by clients behind a proxy);
4. split ``host:port`` the way Go's ``net.SplitHostPort`` does. When that fails (no port, an
   IPv6 address without brackets, ...) the whole thing is the host, unbracketed if it is an IP
   address, and the port is the default; an empty host means 127.0.0.1;
5. a port that is not an integer in 0..65535 falls back to the default port.

The one departure: Go keeps an empty host (``:1234`` gives ``http://:1234``, which its listener
binds on all interfaces); here that host is spelled ``0.0.0.0`` so it can be passed to a binder.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["DEFAULT_PORT", "HostAddr", "parse_host"]

DEFAULT_PORT = 11434

_PORT_RE = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.ParseInt(s, 10, 32) accepts


@dataclass(frozen=True, slots=True)
class HostAddr:
    """Where the server listens (or a client connects): the parsed ``OLLAMA_HOST``."""

    scheme: str  # "http" or "https" (any other explicit scheme is kept as written)
    host: str  # "127.0.0.1", "0.0.0.0", "::1" (no brackets), "ollama.com", ...
    port: int
    path: str  # "" or "/prefix"

    @property
    def url(self) -> str:
        """``scheme://host:port/path``, the IPv6 host bracketed (Go's ``url.URL.String()``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @property
    def is_loopback(self) -> bool:
        """True for ``localhost`` and loopback IPs (127.0.0.0/8, ::1, ::ffff:127.x.x.x).

        The unspecified address (``0.0.0.0``, ``::``) binds every interface and is not loopback.
        """
        if self.host.lower() == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback


def _strip_var(value: str) -> str:
    # envconfig.Var: strings.Trim(strings.TrimSpace(v), "\"'"); Host() trims space once more.
    return value.strip().strip("\"'").strip()


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's ``net.SplitHostPort``; None where Go returns an error."""
    i = hostport.rfind(":")
    if i < 0:
        return None  # missing port
    j = k = 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != i:
            return None  # missing ']', missing port, or too many colons
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            return None  # too many colons
    if "[" in hostport[j:] or "]" in hostport[k:]:
        return None
    return host, hostport[i + 1 :]


def _parse_ip(text: str) -> str | None:
    """Go's ``net.ParseIP(text).String()``, or None when it is not an IP address."""
    if "%" in text:  # net.ParseIP takes no IPv6 zone
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # Go prints an IPv4-mapped address as plain IPv4
    return str(ip)


def _parse_port(text: str) -> int | None:
    if not _PORT_RE.fullmatch(text):
        return None
    n = int(text)
    return n if 0 <= n <= 65535 else None


def parse_host(value: str | None) -> HostAddr:
    """Parse an ``OLLAMA_HOST`` value (None or "" gives ``http://127.0.0.1:11434``)."""
    s = _strip_var(value or "")
    default_port = DEFAULT_PORT

    scheme, sep, hostport = s.partition("://")
    if not sep:
        scheme, hostport = "http", s
        if s == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443

    hostport, _, path = hostport.partition("/")

    port: int | None
    split = _split_host_port(hostport)
    if split is None:
        host, port = "127.0.0.1", default_port
        ip = _parse_ip(hostport.strip("[]"))
        if ip is not None:
            host = ip
        elif hostport:
            host = hostport
    else:
        host, port_text = split
        port = _parse_port(port_text)

    if port is None:
        port = default_port
    if not host:
        host = "0.0.0.0"  # Go keeps "" (listen on all interfaces)
    if path and not path.startswith("/"):
        path = "/" + path

    return HostAddr(scheme=scheme, host=host, port=port, path=path)
