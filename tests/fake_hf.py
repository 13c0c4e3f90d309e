"""A Hugging Face hub for tests: the file-tree API and `resolve` downloads (with ranges, via a
redirect, as the hub does). Not a test module."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # "user/repo" -> files
    corrupt: set[str] = field(default_factory=set)  # paths served with a flipped byte
    seen: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/models/{user}/{repo}/tree/main", self._tree)
        app.router.add_get("/{user}/{repo}/resolve/main/{path:.+}", self._resolve)
        app.router.add_get("/cdn/{user}/{repo}/{path:.+}", self._cdn)
        return app

    async def _tree(self, request: web.Request) -> web.Response:
        repo = f"{request.match_info['user']}/{request.match_info['repo']}"
        self.seen.append(f"tree {repo}")
        files = self.repos.get(repo)
        if files is None:
            return web.json_response({"error": "Repository not found"}, status=404)
        entries: list[dict[str, Any]] = [
            {"type": "directory", "path": "sub", "oid": "x", "size": 0}
        ]
        for path, data in files.items():
            entry: dict[str, Any] = {
                "type": "file",
                "path": path,
                "size": len(data),
                "oid": "0" * 40,
            }
            if path.endswith(".gguf"):
                sha = hashlib.sha256(data).hexdigest()
                entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return web.json_response(entries)

    async def _resolve(self, request: web.Request) -> web.Response:
        m = request.match_info
        self.seen.append(f"resolve {m['path']}")
        raise web.HTTPFound(f"/cdn/{m['user']}/{m['repo']}/{m['path']}")

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        data = self.repos[f"{m['user']}/{m['repo']}"][m["path"]]
        if m["path"] in self.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        rng = request.headers.get("Range")
        if not rng:
            return web.Response(body=data)
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", rng)
        assert match
        start, stop = int(match.group(1)), int(match.group(2)) + 1
        self.seen.append(f"range {m['path']} {start}-{stop - 1}")
        return web.Response(
            status=206,
            body=data[start:stop],
            headers={"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"},
        )
