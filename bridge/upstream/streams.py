"""Reading an upstream's reply body: NDJSON, SSE or one JSON document -> Chunks or a value.

Each reader ends with a done chunk or raises: a stream that stops before its last record is
an `UpstreamProtocolError`, an error record the upstream sends mid-stream an `UpstreamError`
with the upstream's own message. After the done chunk a reader keeps consuming (and ignoring)
the body, so that reading on to its end leaves the connection fit for reuse. Transport errors
(httpx's) pass through untouched: the client translates them, in one place.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.domain import Chunk
from bridge.errors import UpstreamError, UpstreamProtocolError
from bridge.upstream import ollama_codec
from bridge.upstream.framing import Events, Lines
from bridge.upstream.openai_codec import StreamDecoder


@dataclass(frozen=True, slots=True)
class Reply:
    """What a reader knows about the reply besides its body."""

    who: str  # "upstream 'gpu1'", for messages
    started_ns: int  # perf_counter_ns when the call began (before any retries): total_duration
    sent_ns: int  # perf_counter_ns when this attempt's request went out
    headers: Mapping[str, str]


def error_text(obj: Any) -> str | None:
    """The message of an error reply in any of the usual shapes, or None if it is not one.

    Ollama: {"error": "..."}; OpenAI, llama-server: {"error": {"message": ...}};
    older vLLM: {"object": "error", "message": ...}.
    """
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, str) and err:
        return err
    if isinstance(err, dict):
        msg = err.get("message")
        return msg if isinstance(msg, str) and msg else orjson.dumps(err).decode()
    if obj.get("object") == "error":
        msg = obj.get("message")
        return msg if isinstance(msg, str) and msg else "unknown error"
    return None


def loads(data: bytes, who: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(
            f"{who} sent something that is not JSON: {data[:120]!r}"
        ) from exc


async def read_all(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([data async for data in body])


def _ollama_record(line: bytes, reply: Reply, chat: bool, relay_as: str | None) -> Chunk:
    obj = loads(line, reply.who)
    if (msg := error_text(obj)) is not None:
        raise UpstreamError(msg)
    relay = relay_as is not None and isinstance(obj, dict) and obj.get("model") == relay_as
    return ollama_codec.chunk(
        obj,
        chat=chat,
        who=reply.who,
        started_ns=reply.started_ns,
        raw=line + b"\n" if relay else None,
    )


async def ollama_chunks(
    body: AsyncIterator[bytes], reply: Reply, *, chat: bool, relay_as: str | None = None
) -> AsyncGenerator[Chunk, None]:
    """An /api/chat or /api/generate stream (or the single object of a load or unload).
    `relay_as`: the model name the client asked for; records the upstream wrote under that
    very name keep their bytes (`Chunk.raw`) for a client of the same protocol."""
    split = Lines(reply.who)
    done = False
    async for data in body:
        for line in split.feed(data):
            if not done and line.strip():
                chunk = _ollama_record(line, reply, chat, relay_as)
                done = chunk.done
                yield chunk
    for line in split.end():
        if not done:
            chunk = _ollama_record(line, reply, chat, relay_as)
            done = chunk.done
            yield chunk
    if not done:
        raise UpstreamProtocolError(f"{reply.who} ended the stream before it was done")


async def openai_chunks(
    body: AsyncIterator[bytes], reply: Reply, *, chat: bool
) -> AsyncGenerator[Chunk, None]:
    """A /chat/completions or /completions SSE stream; also a whole JSON reply, from a server
    that ignores `stream`."""
    decoder = StreamDecoder(
        who=reply.who, chat=chat, started_ns=reply.started_ns, sent_ns=reply.sent_ns
    )
    if reply.headers.get("content-type", "").startswith("application/json"):
        obj = loads(await read_all(body), reply.who)
        if (msg := error_text(obj)) is not None:
            raise UpstreamError(msg)
        for chunk in decoder.feed(obj):
            yield chunk
        yield decoder.final()
        return
    split = Events(reply.who)
    done = False
    async for data in body:
        for event in split.feed(data):
            if done:
                continue
            if _is_done(event):
                done = True
                yield decoder.final()
                continue
            for chunk in _openai_event(event, reply, decoder):
                yield chunk
    for event in split.end():
        if done:
            break
        if _is_done(event):
            done = True
            yield decoder.final()
            continue
        for chunk in _openai_event(event, reply, decoder):
            yield chunk
    if done:
        return
    if decoder.finish is None:
        raise UpstreamProtocolError(f"{reply.who} ended the stream before it was done")
    yield decoder.final()  # a server that stops after the finish reason without [DONE]


def _is_done(event: bytes) -> bool:
    return len(event) < 16 and event.strip() == b"[DONE]"


def _openai_event(event: bytes, reply: Reply, decoder: StreamDecoder) -> list[Chunk]:
    obj = loads(event, reply.who)
    if (msg := error_text(obj)) is not None:
        raise UpstreamError(msg)
    return decoder.feed(obj)


async def whole_json(body: AsyncIterator[bytes], reply: Reply) -> AsyncGenerator[Any, None]:
    """A reply that is one JSON document (embeddings)."""
    obj = loads(await read_all(body), reply.who)
    if (msg := error_text(obj)) is not None:
        raise UpstreamError(msg)
    yield obj
