"""An httpx client for Ollama-compatible registries (the OCI distribution protocol).

Requests follow Ollama's `makeRequestWithRetry`: a 401 with `WWW-Authenticate: Bearer realm=…`
fetches a token from the realm (which must be on the registry's own host) and retries once; a
404 is "file does not exist"; any other status from 400 up is `<code>: <body>`. Every httpx error
is translated here into `RegistryError` (or `Stalled` for a read that timed out), so the pull
and push code never sees httpx. The transport is injectable, for tests.

Ollama signs token requests with `~/.ollama/id_ed25519`; public registries hand out tokens for
public pulls without a signature, which is all bridge asks for.
"""

from __future__ import annotations

import base64
import logging
import os
import platform
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
import orjson

from bridge import OLLAMA_COMPAT_VERSION
from bridge.models.names import ModelName

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
USER_AGENT = (
    f"ollama/{OLLAMA_COMPAT_VERSION} "
    f"({_ARCH.get(platform.machine(), platform.machine())} {platform.system().lower()}) "
    f"Python/{platform.python_version()}"
)


class RegistryError(Exception):
    """A registry request failed; `str()` is the text Ollama would show."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(RegistryError):
    """404: Ollama's `file does not exist`."""

    def __init__(self) -> None:
        super().__init__("file does not exist", status=404)


class Stalled(RegistryError):
    """No bytes arrived for the read timeout (retried without counting as an attempt)."""


def _describe(method: str, url: str, exc: httpx.HTTPError) -> str:
    return f'{method.title()} "{url}": {exc or type(exc).__name__}'


@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    service: str
    scope: str


def _header_value(header: str, key: str) -> str:
    """Ollama's `getValue`: the quoted value after `key=` (quotes inside values allowed)."""
    start = header.find(key + "=")
    if start < 0:
        return ""
    start += len(key) + 2
    end = start
    while end < len(header):
        if header[end] == '"' and (end + 1 >= len(header) or header[end + 1] == ","):
            break
        end += 1
    return header[start:end]


def parse_challenge(header: str) -> Challenge:
    header = header.removeprefix("Bearer ")
    return Challenge(
        realm=_header_value(header, "realm"),
        service=_header_value(header, "service"),
        scope=_header_value(header, "scope"),
    )


class RegistryClient:
    """One HTTP connection pool for every registry and Hugging Face request."""

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        read_timeout: float = 30.0,
    ) -> None:
        self.http = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(30.0, read=read_timeout),
            headers={"User-Agent": USER_AGENT},
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def session(self, name: ModelName, *, insecure: bool) -> RegistrySession:
        return RegistrySession(self.http, name, insecure=insecure)


class RegistrySession:
    """Requests for one repository, keeping the bearer token a 401 earned."""

    def __init__(self, http: httpx.AsyncClient, name: ModelName, *, insecure: bool) -> None:
        self.http = http
        self.name = name
        scheme = "http" if insecure else name.scheme
        self.base = f"{scheme}://{name.host}"
        self.repo = f"{name.namespace}/{name.model}"
        self.token: str | None = None

    def url(self, *parts: str) -> str:
        return "/".join([self.base, "v2", self.repo, *parts])

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _once(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        content: bytes | None,
        *,
        follow: bool = False,
    ) -> httpx.Response:
        try:
            request = self.http.build_request(
                method, url, headers=self._headers(headers), content=content
            )
            return await self.http.send(request, stream=True, follow_redirects=follow)
        except httpx.HTTPError as exc:
            raise RegistryError(_describe(method, url, exc)) from exc

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        follow: bool = False,
    ) -> httpx.Response:
        """A request with Ollama's status handling; the caller closes the (streamed) reply."""
        for _ in range(2):
            resp = await self._once(method, url, headers, content, follow=follow)
            if resp.status_code == 401:
                await resp.aclose()
                challenge = parse_challenge(resp.headers.get("www-authenticate", ""))
                self.token = await self._fetch_token(challenge, url)
                continue
            if resp.status_code == 404:
                await resp.aclose()
                raise NotFound()
            if resp.status_code >= 400:
                body = await _read_body(resp, method, url)
                raise RegistryError(
                    f"{resp.status_code}: {body.decode('utf-8', 'replace')}",
                    status=resp.status_code,
                )
            return resp
        raise RegistryError("unauthorized: access denied", status=401)

    async def _fetch_token(self, challenge: Challenge, request_url: str) -> str:
        realm = urlsplit(challenge.realm)
        original = urlsplit(request_url).netloc
        if realm.netloc != original:
            raise RegistryError(
                f'realm host "{realm.netloc}" does not match original host "{original}"'
            )
        params: list[tuple[str, str | int | float | bool | None]] = [("service", challenge.service)]
        params += [("scope", s) for s in challenge.scope.split(" ")]
        params += [
            ("ts", str(int(time.time()))),
            ("nonce", base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")),
        ]
        try:
            resp = await self.http.get(challenge.realm, params=params)
        except httpx.HTTPError as exc:
            raise RegistryError(_describe("GET", challenge.realm, exc)) from exc
        if resp.status_code >= 400:
            text = resp.content.decode("utf-8", "replace")
            raise RegistryError(
                f"{resp.status_code}: {text}" if text else str(resp.status_code),
                status=resp.status_code,
            )
        try:
            token = orjson.loads(resp.content).get("token")
        except (orjson.JSONDecodeError, AttributeError) as exc:
            raise RegistryError(f"invalid token response: {exc}") from exc
        if not isinstance(token, str):
            raise RegistryError("invalid token response: no token")
        return token

    async def read(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """`send`, with the body read in full."""
        resp = await self.send(method, url, headers=headers, content=content)
        await _read_body(resp, method, url)
        return resp

    # --- pull ----------------------------------------------------------------------------

    async def manifest(self, tag: str) -> bytes:
        resp = await self.read(
            "GET", self.url("manifests", tag), headers={"Accept": MANIFEST_ACCEPT}
        )
        return resp.content

    async def blob_size(self, digest: str) -> int:
        resp = await self.read("HEAD", self.url("blobs", digest))
        try:
            return int(resp.headers.get("content-length", "0"))
        except ValueError:
            return 0

    async def direct_url(self, digest: str) -> tuple[str, dict[str, str]]:
        """Where to fetch a blob's ranges: a redirect to another host (a CDN) is taken as is,
        without the registry's token; otherwise the registry URL itself, with it."""
        url = self.url("blobs", digest)
        for _ in range(10):
            resp = await self.send("GET", url)
            await resp.aclose()
            if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
                target = urljoin(url, resp.headers["location"])
                if urlsplit(target).hostname == urlsplit(url).hostname:
                    url = target
                    continue
                return target, {}
            if resp.status_code != 200:
                raise RegistryError(f"unexpected status code {resp.status_code}")
            return url, self._headers(None)
        raise RegistryError("maximum redirects exceeded (10) for directURL")

    # --- push ----------------------------------------------------------------------------

    async def blob_exists(self, digest: str) -> bool:
        try:
            await self.read("HEAD", self.url("blobs", digest))
        except NotFound:
            return False
        return True

    async def start_upload(self, digest: str, mount_from: str | None) -> tuple[bool, str]:
        """POST blobs/uploads/; returns (mounted, upload location)."""
        url = self.url("blobs", "uploads") + "/"
        if mount_from:
            url += "?" + httpx.QueryParams({"mount": digest, "from": mount_from}).__str__()
        resp = await self.read("POST", url)
        location = resp.headers.get("docker-upload-location") or resp.headers.get("location", "")
        return resp.status_code == 201, urljoin(url, location) if location else ""

    async def upload_part(
        self, url: str, chunks: AsyncIterator[bytes], *, offset: int, size: int
    ) -> tuple[str, str | None]:
        """PATCH one part; returns (next location, redirect URL when the registry answered 307)."""
        headers = self._headers(
            {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                "Content-Range": f"{offset}-{offset + size - 1}",
                "X-Redirect-Uploads": "1",
            }
        )
        try:
            request = self.http.build_request("PATCH", url, headers=headers, content=chunks)
            resp = await self.http.send(request)
        except httpx.HTTPError as exc:
            raise RegistryError(_describe("PATCH", url, exc)) from exc
        location = resp.headers.get("docker-upload-location") or resp.headers.get("location", "")
        if resp.status_code == 307:
            return urljoin(url, location) if location else url, urljoin(
                url, resp.headers.get("location", "")
            )
        if resp.status_code >= 400:
            raise RegistryError(
                f"http status {resp.status_code} {resp.reason_phrase}: {resp.text}",
                status=resp.status_code,
            )
        return (urljoin(url, location) if location else url), None

    async def put_redirected(self, url: str, chunks: AsyncIterator[bytes], size: int) -> None:
        """PUT a part to the URL a 307 named (a storage service: no registry token)."""
        try:
            resp = await self.http.put(
                url,
                content=chunks,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
        except httpx.HTTPError as exc:
            raise RegistryError(_describe("PUT", url, exc)) from exc
        if resp.status_code >= 400:
            raise RegistryError(f"http status {resp.status_code}: {resp.text}")

    async def finish_upload(self, url: str, digest: str, etag: str) -> None:
        sep = "&" if "?" in url else "?"
        query = httpx.QueryParams({"digest": digest, "etag": etag})
        await self.read(
            "PUT",
            f"{url}{sep}{query}",
            headers={"Content-Type": "application/octet-stream", "Content-Length": "0"},
        )

    async def put_manifest(self, tag: str, raw: bytes) -> None:
        await self.read(
            "PUT",
            self.url("manifests", tag),
            headers={"Content-Type": MANIFEST_ACCEPT},
            content=raw,
        )


async def _read_body(resp: httpx.Response, method: str, url: str) -> bytes:
    try:
        return await resp.aread()
    except httpx.HTTPError as exc:
        raise RegistryError(_describe(method, url, exc)) from exc
    finally:
        await resp.aclose()


async def stream_range(
    http: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    start: int,
    stop: int,
) -> AsyncIterator[bytes]:
    """The bytes [start, stop) of a blob. A server that ignores the range gets its leading
    bytes skipped. Raises Stalled when a read times out, RegistryError for anything else."""
    h = dict(headers)
    h["Range"] = f"bytes={start}-{stop - 1}"
    h["Accept-Encoding"] = "identity"  # ranges count bytes of the blob, not of an encoding
    try:
        async with http.stream("GET", url, headers=h, follow_redirects=True) as resp:
            if resp.status_code not in (200, 206):
                body = await resp.aread()
                raise RegistryError(
                    f"{resp.status_code}: {body.decode('utf-8', 'replace')}",
                    status=resp.status_code,
                )
            skip = start if resp.status_code == 200 else 0
            want = stop - start
            async for chunk in resp.aiter_bytes():
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                if len(chunk) >= want:
                    yield chunk[:want]
                    return
                want -= len(chunk)
                if chunk:
                    yield chunk
            if want > 0:
                raise RegistryError(f"unexpected EOF: {want} byte(s) missing")
    except httpx.TimeoutException as exc:
        raise Stalled(f"part stalled: {_describe('GET', url, exc)}") from exc
    except httpx.HTTPError as exc:
        raise RegistryError(_describe("GET", url, exc)) from exc
