"""A small synchronous client for the /api/* routes the command-line client uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

__all__ = ["Api", "ClientError"]


class ClientError(Exception):
    """The server answered with an error (or could not be reached); `str()` is its message."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Api:
    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            timeout=httpx.Timeout(None, connect=10.0),
            headers={"User-Agent": "bridge-cli"},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: httpx.HTTPError) -> ClientError:
        return ClientError(
            f"could not connect to the server at {self.base_url} ({exc}); "
            "is `bridge serve` running?"
        )

    @staticmethod
    def _error(resp: httpx.Response) -> ClientError:
        try:
            message = orjson.loads(resp.content).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            message = None
        text = message if isinstance(message, str) else resp.text.strip()
        return ClientError(text or f"{resp.status_code} {resp.reason_phrase}", resp.status_code)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON exchange; None for an empty reply."""
        try:
            resp = self.http.request(
                method, path, content=orjson.dumps(body) if body is not None else None
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if resp.status_code >= 400:
            raise self._error(resp)
        return orjson.loads(resp.content) if resp.content.strip() else None

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """The objects of an NDJSON reply; an in-band `{"error"}` raises ClientError."""
        try:
            with self.http.stream("POST", path, content=orjson.dumps(body)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._error(resp)
                for line in resp.iter_lines():
                    if not line.strip():
                        continue
                    obj = orjson.loads(line)
                    if isinstance(obj, dict) and "error" in obj:
                        raise ClientError(str(obj["error"]), resp.status_code)
                    yield obj
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def has_blob(self, digest: str) -> bool:
        try:
            resp = self.http.head(f"/api/blobs/{digest}")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        return resp.status_code == 200

    def upload_blob(self, digest: str, path: Path, progress: Callable[[int], None]) -> None:
        """POST a file to /api/blobs/<digest>, reporting bytes sent."""

        def chunks() -> Iterator[bytes]:
            sent = 0
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    sent += len(block)
                    progress(sent)
                    yield block

        size = path.stat().st_size
        try:
            resp = self.http.post(
                f"/api/blobs/{digest}",
                content=chunks(),
                headers={"Content-Length": str(size)},
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if resp.status_code >= 400:
            raise self._error(resp)
