"""Splitting an upstream's response body into NDJSON lines or SSE `data` payloads.

Both are fed the body's byte chunks as they arrive and hand back what each chunk completes, so
a record is passed on as soon as its newline is in. They are plain objects, not async
generators: a reply's bytes cross one await per network read, not one per layer. A line longer
than `MAX_LINE` is a malformed stream, not a memory problem.
"""

from __future__ import annotations

from typing import Final

from bridge.errors import UpstreamProtocolError

# Ollama's Go client allows 8 MB lines; a reply with big tool-call arguments stays well under.
MAX_LINE: Final = 8 * 1024 * 1024


class Lines:
    """`\\n`-terminated lines (a `\\r` before the `\\n` dropped)."""

    __slots__ = ("_pending", "_who")

    def __init__(self, who: str) -> None:
        self._who = who
        self._pending = bytearray()  # the start of a line whose end has not arrived yet

    def feed(self, data: bytes) -> list[bytes]:
        """The lines `data` completes."""
        if b"\n" not in data:
            self._keep(data)
            return []
        # One split in C rather than a search per line: a read often holds many records.
        lines = data.split(b"\n")
        rest = lines.pop()
        carried = bool(self._pending)
        if carried:
            self._pending += lines[0]
            lines[0] = bytes(self._pending)
            self._pending.clear()
        if rest:
            self._keep(rest)
        if carried or b"\r" in data:
            return [line[:-1] if line.endswith(b"\r") else line for line in lines]
        return lines

    def _keep(self, part: bytes) -> None:
        self._pending += part
        if len(self._pending) > MAX_LINE:
            raise UpstreamProtocolError(f"{self._who} sent a line longer than {MAX_LINE} bytes")

    def end(self) -> list[bytes]:
        """A last line without its newline, at the end of the body."""
        rest = bytes(self._pending).rstrip(b"\r")
        self._pending.clear()
        return [rest] if rest.strip() else []


class Events:
    """The `data` of each server-sent event (multi-line data joined with `\\n`).

    Comments and the `event`, `id` and `retry` fields are skipped: OpenAI-compatible servers
    put everything a client needs into `data`, including their errors.
    """

    __slots__ = ("_data", "_lines")

    def __init__(self, who: str) -> None:
        self._lines = Lines(who)
        self._data: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes]:
        return self._events(self._lines.feed(data))

    def end(self) -> list[bytes]:
        """Events at the end of the body, from a server that leaves out the last blank line."""
        out = self._events(self._lines.end())
        if self._data:
            out.append(b"\n".join(self._data))
            self._data = []
        return out

    def _events(self, lines: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return out
