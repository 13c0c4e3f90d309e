"""A registry for tests: a real aiohttp server speaking the OCI distribution endpoints Ollama
uses, with ranges, the 401 bearer-token flow, a CDN redirect and injectable faults.

Not a test module. Faults are queued per blob digest and consumed one per ranged GET:
`("reset", n)` sends n bytes of the range and then drops the connection, `("status", code)`
answers with that status, `("corrupt", 0)` serves the range with its first byte flipped.
`gate` (when set) holds every ranged blob GET until it is released.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
TOKEN = "test-token"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    auth: str | None
    host: str


@dataclass
class FakeRegistry:
    auth: bool = False  # require a bearer token (401 + WWW-Authenticate first)
    realm_host: str | None = None  # announce a token realm on another host
    cdn: bool = False  # blob GETs redirect (307) to another host name for the same server
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    seen: list[Seen] = field(default_factory=list)
    tokens_issued: list[dict[str, Any]] = field(default_factory=list)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    gate: asyncio.Event | None = None
    port: int = 0

    # --- content ---------------------------------------------------------------------------

    def add_model(
        self,
        repo: str,
        tag: str,
        layers: list[tuple[str, bytes]],
        config: dict[str, Any] | None = None,
        *,
        pretty: bool = False,
    ) -> bytes:
        """Publish a model; layers are (kind, bytes). Returns the manifest bytes."""
        descs = []
        for kind, data in layers:
            self.blobs[sha(data)] = data
            descs.append(
                {
                    "mediaType": f"application/vnd.ollama.image.{kind}",
                    "digest": sha(data),
                    "size": len(data),
                }
            )
        cfg = orjson.dumps(config or {"model_format": "gguf", "model_family": "llama"})
        self.blobs[sha(cfg)] = cfg
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": sha(cfg), "size": len(cfg)},
            "layers": descs,
        }
        raw = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 if pretty else 0)
        self.manifests[(repo, tag)] = raw
        return raw

    def blob_gets(self, digest: str) -> list[Seen]:
        """The ranged GETs that fetched bytes of `digest` (registry or CDN)."""
        return [s for s in self.seen if s.method == "GET" and s.range and digest in s.path]

    # --- the server ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record, self._auth])
        r = app.router
        r.add_get("/token", self._token)
        r.add_route("*", "/v2/{ns}/{model}/manifests/{tag}", self._manifest)
        r.add_route("*", "/v2/{ns}/{model}/blobs/uploads/", self._start_upload)
        r.add_route("*", "/v2/{ns}/{model}/blobs/uploads/{id}", self._upload)
        r.add_route("*", "/v2/{ns}/{model}/blobs/{digest}", self._blob)
        r.add_get("/cdn/{digest}", self._cdn)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method,
                request.path_qs,
                request.headers.get("Range"),
                request.headers.get("Authorization"),
                request.host,
            )
        )
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        authorized = request.headers.get("Authorization") == f"Bearer {TOKEN}"
        if self.auth and request.path.startswith("/v2/") and not authorized:
            parts = request.path.split("/")
            realm_host = self.realm_host or request.host
            challenge = (
                f'Bearer realm="http://{realm_host}/token",service="fake-registry",'
                f'scope="repository:{parts[2]}/{parts[3]}:pull"'
            )
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED"}]},
                status=401,
                headers={"WWW-Authenticate": challenge},
            )
        return await handler(request)

    async def _token(self, request: web.Request) -> web.Response:
        self.tokens_issued.append(
            {k: request.query.getall(k) for k in ("service", "scope", "ts", "nonce")}
        )
        return web.json_response({"token": TOKEN})

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        key = (
            f"{request.match_info['ns']}/{request.match_info['model']}",
            request.match_info["tag"],
        )
        if request.method == "PUT":
            self.manifests[key] = await request.read()
            return web.Response(status=201)
        faults = self.faults.get(f"manifest:{key[0]}:{key[1]}")
        if faults:
            kind, value = faults.pop(0)
            if kind == "status":
                return web.Response(status=value, text="registry trouble")
        raw = self.manifests.get(key)
        if raw is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        return web.Response(body=raw, content_type=MANIFEST_TYPE)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        data = self.blobs.get(digest)
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data))})
        if self.cdn:
            host = "localhost" if request.host.startswith("127.0.0.1") else "127.0.0.1"
            return web.Response(
                status=307, headers={"Location": f"http://{host}:{self.port}/cdn/{digest}"}
            )
        return await self._serve(request, digest, data)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        return await self._serve(request, digest, self.blobs[digest])

    async def _serve(self, request: web.Request, digest: str, data: bytes) -> web.StreamResponse:
        rng = request.headers.get("Range")
        if not rng:
            return web.Response(body=data, content_type="application/octet-stream")
        if self.gate is not None:
            await self.gate.wait()
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng)
        assert m, rng
        start, stop = int(m.group(1)), int(m.group(2)) + 1
        body = data[start:stop]
        faults = self.faults.get(digest)
        fault = faults.pop(0) if faults else None
        if fault and fault[0] == "status":
            return web.Response(status=fault[1], text="blob trouble")
        if fault and fault[0] == "corrupt":
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        resp = web.StreamResponse(
            status=206,
            headers={
                "Content-Range": f"bytes {start}-{stop - 1}/{len(data)}",
                "Content-Type": "application/octet-stream",
            },
        )
        resp.content_length = len(body)
        await resp.prepare(request)
        if fault and fault[0] == "reset":
            await resp.write(body[: fault[1]])
            await resp.drain()
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-body
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp

    async def _start_upload(self, request: web.Request) -> web.Response:
        assert request.method == "POST"
        mount = request.query.get("mount")
        if mount and mount in self.blobs:
            return web.Response(status=201)
        upload = uuid.uuid4().hex
        self.uploads[upload] = bytearray()
        location = (
            f"/v2/{request.match_info['ns']}/{request.match_info['model']}/blobs/uploads/{upload}"
        )
        return web.Response(status=202, headers={"Location": location})

    async def _upload(self, request: web.Request) -> web.Response:
        upload = request.match_info["id"]
        buf = self.uploads[upload]
        if request.method == "PATCH":
            start = int(request.headers["Content-Range"].split("-")[0])
            assert start == len(buf), (start, len(buf))
            buf += await request.read()
            return web.Response(status=202, headers={"Location": request.path})
        assert request.method == "PUT"
        buf += await request.read()
        digest = request.query["digest"]
        if sha(bytes(buf)) != digest:
            return web.json_response({"errors": [{"code": "DIGEST_INVALID"}]}, status=400)
        self.blobs[digest] = bytes(buf)
        del self.uploads[upload]
        return web.Response(status=201)
