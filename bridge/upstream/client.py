"""`Upstreams`: every configured upstream, its models and health, and what bridge asks of it.

One object per app, started and closed with it. Contract of `chat` and `generate` (they return
async generators of Chunks, consumed like a local model's stream):

- An unknown model raises ModelNotFound at the call. Any other error before the first chunk
  raises from the first `anext`, so the HTTP layer can still answer with a status (502, 504,
  or the upstream's own 400/404). A failure before the upstream sent a byte of its reply is
  first retried on every other replica of the model.
- An error after the first chunk raises from a later `anext` (in-band) and is never retried.
- Closing the iterator (the client went away) closes the upstream connection; reading it to
  the end returns the connection to the pool.

The requests themselves (retries, error translation, reading replies) are in `calls`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.domain import (
    ChatRequest,
    Chunk,
    Embeddings,
    GenerateRequest,
    ModelDetails,
    ModelSpec,
    Options,
)
from bridge.errors import InvalidRequest, ModelNotFound, UpstreamError, UpstreamProtocolError
from bridge.models.names import InvalidName, ModelName
from bridge.upstream import ollama_codec, openai_codec
from bridge.upstream.balancer import Balancer, Member
from bridge.upstream.calls import NO_METRICS, Call, Caller, label
from bridge.upstream.catalog import Catalog, Listed, Replica, Route
from bridge.upstream.config import UpstreamConfig
from bridge.upstream.streams import ollama_chunks, openai_chunks, whole_json

log = logging.getLogger(__name__)

PS_TIMEOUT = 1.0  # seconds an upstream's /api/ps may take before /api/ps answers without it


@dataclass(frozen=True, slots=True)
class RemoteRunner:
    """A model an upstream has loaded, as its /api/ps says (Ollama-kind upstreams only)."""

    name: str  # as bridge lists it
    upstream: str
    url: str
    model: str  # as the upstream names it
    digest: str
    size: int
    size_vram: int
    context_length: int
    expires_at: float | None
    details: ModelDetails


@dataclass(frozen=True, slots=True)
class UpstreamState:
    """One upstream's health and load, for logs and diagnostics."""

    name: str
    url: str
    kind: str
    available: bool
    outstanding: int
    failures: int
    last_error: str | None
    models: int


class Upstreams:
    """Every configured upstream: its client, its models, its health, and the calls to it."""

    def __init__(
        self,
        configs: Sequence[UpstreamConfig],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configs = tuple(configs)
        self._transport = transport
        self._clock = clock
        self._members = {c.name: Member(c) for c in self.configs}
        self._balancer = Balancer(self._members, clock)
        self._calls = Caller(self._balancer, clock)
        self._listed: dict[str, tuple[Listed, ...]] = {}
        self._born = time.time()
        self._catalog = Catalog()
        self._rebuild()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the clients, read every model list once, then keep lists and health current."""
        self._calls.open_clients(self.configs, self._transport)
        await self.refresh()
        for m in self._members.values():
            if m.config.discover and m.config.refresh > 0:
                self._spawn(self._every(m.config.refresh, self._discover, m))
            if m.config.health_interval > 0:
                self._spawn(self._every(m.config.health_interval, self._check, m))

    async def close(self) -> None:
        """Stop the background tasks and close every connection."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._calls.aclose()

    def _spawn(self, job: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _every(
        self, seconds: float, job: Callable[[Member], Awaitable[None]], member: Member
    ) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job(member)
            except Exception:  # a bug here must not end the loop; upstream errors never get here
                log.exception("upstream %s: periodic %s failed", member.config.name, job.__name__)

    async def refresh(self) -> None:
        """Read the model list of every upstream that is discovered, now."""
        await asyncio.gather(
            *(self._discover(m) for m in self._members.values() if m.config.discover)
        )

    async def check(self) -> None:
        """Run one health check on every upstream, now."""
        await asyncio.gather(*(self._check(m) for m in self._members.values()))

    async def _discover(self, member: Member) -> None:
        c = member.config
        try:
            if c.kind == "ollama":
                listed = ollama_codec.listed(await self._calls.get(member, "api/tags"), label(c))
            else:
                listed = openai_codec.listed(await self._calls.get(member, "models"), label(c))
        except UpstreamError as exc:
            if member.last_error != exc.message:
                log.warning("cannot read the model list of upstream %s: %s", c.name, exc.message)
            member.failed(exc.message, self._clock())
            return
        member.succeeded()
        if tuple(listed) != self._listed.get(c.name):
            self._listed[c.name] = tuple(listed)
            self._rebuild()
            log.info("upstream %s lists %d models", c.name, len(listed))

    async def _check(self, member: Member) -> None:
        try:
            await self._calls.get(
                member, "api/version" if member.config.kind == "ollama" else "models"
            )
        except UpstreamError as exc:
            member.failed(exc.message, self._clock())
            return
        member.succeeded()

    def _rebuild(self) -> None:
        self._catalog = Catalog.build(
            [(c, self._listed.get(c.name, ())) for c in self.configs], now=self._born
        )

    # --- models --------------------------------------------------------------------------

    def find(self, raw: str) -> Route | None:
        """The upstream model a client named (`llama3`, `gpu1/llama3`, `org/Model-7B`), if any.

        Call it when no local model has the name: local models win a name they share."""
        return self._catalog.find(raw)

    def models(self, local: Iterable[str] = ()) -> list[ModelSpec]:
        """Every upstream model once (source "upstream"), for /api/tags and /v1/models;
        `local` are the local models' names, which upstream models must not shadow."""
        return self._catalog.listing(local)

    def fallback(self, spec: ModelSpec) -> Route | None:
        """Where a local model that failed to load can be served instead, if anywhere."""
        replicas = []
        for c in self.configs:
            if c.serves_fallback(spec.name):
                remote = next((m.remote for m in c.models if _same(m.name, spec.name)), spec.name)
                replicas.append(Replica(c.name, c.url, c.kind, remote))
        return Route(spec, tuple(replicas), fallback=True) if replicas else None

    async def running(self, local: Iterable[str] = ()) -> list[RemoteRunner]:
        """The models loaded on Ollama-kind upstreams (other kinds do not say), under the names
        bridge lists them by. An upstream that does not answer in time is left out."""
        names = list(local)
        members = [m for m in self._members.values() if m.config.kind == "ollama"]
        replies = await asyncio.gather(*(self._ps(m) for m in members))
        out: list[RemoteRunner] = []
        for m, listed in zip(members, replies, strict=True):
            c = m.config
            for item in listed:
                name = self._catalog.name_of(c.name, item.remote, names)
                if name is None and c.serves_fallback(item.remote):
                    name = item.remote
                if name is None:
                    continue
                out.append(
                    RemoteRunner(
                        name=name,
                        upstream=c.name,
                        url=c.url,
                        model=item.remote,
                        digest=item.digest,
                        size=item.size,
                        size_vram=item.size_vram,
                        context_length=item.context_length,
                        expires_at=item.expires_at,
                        details=item.details,
                    )
                )
        return out

    async def _ps(self, member: Member) -> list[Listed]:
        if not member.available(self._clock()):
            return []  # ejected: /api/ps must not wait for a server known to be down
        try:
            async with asyncio.timeout(PS_TIMEOUT):
                reply = await self._calls.get(member, "api/ps")
            return ollama_codec.listed(reply, label(member.config))
        except TimeoutError:
            log.debug("upstream %s: /api/ps took longer than %ss", member.config.name, PS_TIMEOUT)
            return []
        except UpstreamError as exc:
            log.debug("upstream %s: no /api/ps: %s", member.config.name, exc.message)
            return []

    def state(self) -> list[UpstreamState]:
        now = self._clock()
        return [
            UpstreamState(
                name=m.config.name,
                url=m.config.url,
                kind=m.config.kind,
                available=m.available(now),
                outstanding=m.outstanding,
                failures=m.failures,
                last_error=m.last_error,
                models=self._catalog.served_by(m.config.name),
            )
            for m in self._members.values()
        ]

    def _route(self, target: str | Route) -> Route:
        if isinstance(target, Route):
            return target
        route = self.find(target)
        if route is None:
            raise ModelNotFound(f"model '{target}' not found")
        return route

    # --- calls ---------------------------------------------------------------------------

    def chat(self, target: str | Route, req: ChatRequest) -> AsyncGenerator[Chunk, None]:
        """Stream a chat reply from a replica of the model (see the module's contract)."""
        route = self._route(target)
        if not req.messages:  # load or unload: only an Ollama upstream has anything to do
            ollama = self._ollama_only(route)
            if ollama is None:
                return _single(_loaded(req.keep_alive))
            route = ollama

        def call(r: Replica) -> Call[Chunk]:
            if r.kind == "ollama":
                return Call(
                    "api/chat",
                    ollama_codec.chat_body(r.model, req),
                    lambda body, reply: ollama_chunks(body, reply, chat=True, relay_as=req.model),
                )
            body = openai_codec.chat_body(r.model, req, extensions=self._ext(r))
            return Call(
                "chat/completions", body, lambda b, reply: openai_chunks(b, reply, chat=True)
            )

        return self._calls.stream(route, call)

    def generate(self, target: str | Route, req: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        """Stream a generate reply from a replica of the model (see the module's contract)."""
        route = self._route(target)
        if not req.prompt and not req.suffix:
            ollama = self._ollama_only(route)
            if ollama is None:
                return _single(_loaded(req.keep_alive))
            route = ollama

        def call(r: Replica) -> Call[Chunk]:
            if r.kind == "ollama":
                return Call(
                    "api/generate",
                    ollama_codec.generate_body(r.model, req),
                    lambda body, reply: ollama_chunks(body, reply, chat=False, relay_as=req.model),
                )
            if req.template:
                raise InvalidRequest(
                    "custom templates are not supported by an OpenAI-compatible upstream"
                )
            if req.images and (req.raw or req.suffix):
                raise InvalidRequest("images need a chat prompt, not raw or suffix, here")
            path, body = openai_codec.generate_body(r.model, req, extensions=self._ext(r))
            chat = path == "chat/completions"
            return Call(path, body, lambda b, reply: openai_chunks(b, reply, chat=chat))

        return self._calls.stream(route, call)

    async def embed(
        self,
        target: str | Route,
        inputs: Sequence[str],
        *,
        truncate: bool = True,
        dimensions: int | None = None,
        options: Options | None = None,
        keep_alive: float | None = None,
    ) -> Embeddings:
        """One vector per input, from a replica of the model."""
        route = self._route(target)
        started = time.perf_counter_ns()
        if not inputs:
            return Embeddings(vectors=[])

        def call(r: Replica) -> Call[Any]:
            if r.kind == "ollama":
                body = ollama_codec.embed_body(
                    r.model,
                    inputs,
                    truncate=truncate,
                    dimensions=dimensions,
                    options=options or Options(),
                    keep_alive=keep_alive,
                )
                return Call("api/embed", body, whole_json)
            return Call(
                "embeddings", openai_codec.embed_body(r.model, inputs, dimensions), whole_json
            )

        opened = await self._calls.open(route, call)
        try:
            if opened.member.config.kind == "ollama":
                vectors, metrics = ollama_codec.embeddings(opened.first, opened.who)
            else:
                vectors, metrics = openai_codec.embeddings(opened.first, opened.who)
        except UpstreamError as exc:
            opened.member.failed(exc.message, self._clock())
            raise
        finally:
            await self._calls.release(opened)
        if len(vectors) != len(inputs):
            raise UpstreamProtocolError(
                f"{opened.who} sent {len(vectors)} embeddings for {len(inputs)} inputs"
            )
        if len({len(v) for v in vectors}) > 1 or not all(
            type(x) in (int, float) for v in vectors for x in v
        ):
            raise UpstreamProtocolError(
                f"{opened.who} sent embeddings that are not vectors of numbers of one length"
            )
        opened.member.succeeded()
        return Embeddings(
            vectors=vectors,
            prompt_eval_count=metrics.prompt_eval_count,
            total_duration=time.perf_counter_ns() - started,
            load_duration=metrics.load_duration,
        )

    async def show(self, target: str | Route) -> dict[str, Any] | None:
        """An Ollama-kind replica's own /api/show reply for the model (template, parameters,
        capabilities, model_info), or None when only OpenAI-kind upstreams serve it."""
        route = self._ollama_only(self._route(target))
        if route is None:
            return None
        opened = await self._calls.open(
            route, lambda r: Call("api/show", {"model": r.model}, whole_json)
        )
        try:
            obj = opened.first
        finally:
            await self._calls.release(opened)
        if not isinstance(obj, dict):
            raise UpstreamProtocolError(f"{opened.who} sent a show reply that is not an object")
        opened.member.succeeded()
        return obj

    def _ext(self, r: Replica) -> bool:
        return self._members[r.upstream].config.extensions

    def _ollama_only(self, route: Route) -> Route | None:
        replicas = tuple(r for r in route.replicas if r.kind == "ollama")
        return dataclasses.replace(route, replicas=replicas) if replicas else None


async def _single(chunk: Chunk) -> AsyncGenerator[Chunk, None]:
    yield chunk


def _loaded(keep_alive: float | None) -> Chunk:
    reason = "unload" if keep_alive is not None and keep_alive == 0 else "load"
    return Chunk(done=True, done_reason=reason, metrics=NO_METRICS)


def _same(a: str, b: str) -> bool:
    try:
        return ModelName.parse(a).key() == ModelName.parse(b).key()
    except InvalidName:
        return a == b
