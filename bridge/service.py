"""The use-cases behind both protocols: chat, generate, list, show, running models.

Handlers decode the wire into domain requests and call these; model lookup, sampling defaults,
keep-alive and prompt building happen here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from bridge.config import ModelOverride, Settings
from bridge.domain import (
    IMAGE_TAG,
    ChatRequest,
    Chunk,
    Completion,
    Embeddings,
    EmbedRequest,
    GenerateRequest,
    LoadOptions,
    Message,
    Metrics,
    ModelSpec,
    Options,
)
from bridge.engine.base import LoadedModel
from bridge.errors import (
    CapabilityMissing,
    EngineFailed,
    InvalidModelName,
    InvalidRequest,
    ModelLoadFailed,
    ModelNotFound,
)
from bridge.hardware import context_tier
from bridge.memory import MemoryPlan
from bridge.models.gguf_info import GGUFError, GGUFInfo, model_info, read_gguf
from bridge.models.names import InvalidName, ModelName
from bridge.models.resolver import Resolver
from bridge.models.show import capabilities, render_modelfile, render_parameters
from bridge.options import load_options, model_defaults, num_predict, parse_options, sampling
from bridge.scheduler import Lease, LoadRequest, Runner, Scheduler
from bridge.templates.detect import NamedTemplate, detect
from bridge.templates.output import OutputShape, shape_output
from bridge.templates.prompt import PromptTemplate, fit_chat, render_chat, render_fim
from bridge.templates.thinking import ThinkingSplitter
from bridge.upstream import RemoteRunner, Route, Upstreams

log = logging.getLogger(__name__)

IMAGE_TOKENS = 768  # what Ollama counts per image when fitting a chat into the context


@dataclass(frozen=True, slots=True)
class ShowInfo:
    spec: ModelSpec
    modelfile: str
    parameters: str
    capabilities: tuple[str, ...]
    model_info: dict[str, Any]
    tensors: list[dict[str, Any]]
    chat_template: str | None
    system: str | None
    # Where an upstream serves it: (the upstream's name for it, the upstream's URL).
    remote: tuple[str, str] | None = None


# A route already decided for this request (by a worker process's front door), by name.
_DECIDED: contextvars.ContextVar[tuple[str, Route] | None] = contextvars.ContextVar(
    "decided", default=None
)


@contextlib.contextmanager
def decided(raw: str, route: Route) -> Iterator[None]:
    """Within this block, requests for `raw` in this task go to `route` without a lookup."""
    token = _DECIDED.set((raw, route))
    try:
        yield
    finally:
        _DECIDED.reset(token)


class Service:
    def __init__(
        self,
        settings: Settings,
        resolver: Resolver,
        scheduler: Scheduler,
        upstreams: Upstreams | None = None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.scheduler = scheduler
        self.upstreams = upstreams
        # Local models that failed to load and went to a fallback upstream: name -> when.
        self._failed: dict[str, float] = {}
        self._plans: dict[tuple[Any, ...], MemoryPlan] = {}

    # --- lookup --------------------------------------------------------------------------

    async def list_models(self) -> list[ModelSpec]:
        """Local models, then upstream ones (a local model keeps a clashing name)."""
        local = await self.resolver.list()
        if self.upstreams is None:
            return local
        remote = self.upstreams.models([s.name for s in local])
        return sorted(local + remote, key=lambda s: s.modified_at, reverse=True)

    async def list_capabilities(self, specs: Sequence[ModelSpec]) -> dict[str, tuple[str, ...]]:
        """What each local model can do, as /api/show says it, for the listing (headers are
        read once per file version; a model whose file cannot be read gets none)."""

        def compute() -> dict[str, tuple[str, ...]]:
            out: dict[str, tuple[str, ...]] = {}
            for spec in specs:
                if spec.source == "upstream" or spec.problem or not spec.model_path:
                    continue
                try:
                    info = self.resolver.header(spec.model_path)
                except (GGUFError, OSError):
                    continue
                out[spec.name] = capabilities(spec, info, _template(spec, info))
            return out

        return await asyncio.to_thread(compute)

    async def describe(self, raw: str) -> ModelSpec | None:
        """The model named `raw`, local or upstream, or None (also for an invalid name)."""
        try:
            target = await self._target(raw, missing="")
        except (InvalidModelName, ModelNotFound):
            return None
        return target.spec if isinstance(target, Route) else target

    async def upstream_route(self, raw: str) -> Route | None:
        """Where a request for `raw` goes when that is an upstream (as `chat`, `generate` and
        `embed` decide it); None for local models and names not found or not valid."""
        try:
            target = await self._target(raw, missing="")
        except (InvalidRequest, ModelNotFound):
            return None
        return target if isinstance(target, Route) else None

    async def _target(self, raw: str, *, missing: str) -> ModelSpec | Route:
        """A local model, else an upstream route; never another model. A name an upstream
        serves does not rescan the local store on every request (a recent scan is trusted)."""
        pinned = _DECIDED.get()
        if pinned is not None and pinned[0] == raw:
            return pinned[1]
        name, local_only = source_suffix(raw)
        if local_only:  # `name:local`: this machine's model alone, never an upstream's
            spec = await self.resolver.find(name, rescan=True)
            if spec is None:
                raise ModelNotFound(missing.format(name=raw, short=ModelName.parse(name).display))
            return spec
        try:
            served = self.upstreams is not None and self.upstreams.find(raw) is not None
            spec = await self.resolver.find(raw, rescan=not served)
        except InvalidModelName:
            route = self.upstreams.find(raw) if self.upstreams else None
            if route is None:
                raise
            return route
        if spec is not None:
            fallback = self._fallback(spec)
            if fallback is not None and (spec.problem or self._recently_failed(spec)):
                return fallback  # a broken blob, or a load that failed moments ago
            return spec
        route = self.upstreams.find(raw) if self.upstreams else None
        if route is not None:
            return route
        raise ModelNotFound(missing.format(name=raw, short=ModelName.parse(raw).display))

    def _fallback(self, spec: ModelSpec) -> Route | None:
        return self.upstreams.fallback(spec) if self.upstreams is not None else None

    def _recently_failed(self, spec: ModelSpec) -> bool:
        at = self._failed.get(spec.name)
        if at is None:
            return False
        if time.monotonic() - at < max(self.settings.load_cooldown, 1.0):
            return True
        del self._failed[spec.name]  # cooled down: try loading it here again
        return False

    def _fell_back(self, spec: ModelSpec, route: Route, exc: ModelLoadFailed) -> None:
        self._failed[spec.name] = time.monotonic()
        log.warning("%s: %s; serving it from %s", spec.name, exc.message, route.where)

    async def _local_or_fallback(
        self,
        spec: ModelSpec,
        local: Callable[[], Awaitable[AsyncIterator[Chunk]]],
        remote: Callable[[Upstreams, Route], AsyncIterator[Chunk]],
    ) -> AsyncIterator[Chunk]:
        """`local()`'s stream, unless the model fails to load (its header, or the load before
        the first chunk) and an upstream is its fallback: then that upstream's stream."""
        route = self._fallback(spec)
        if route is None or self.upstreams is None:
            return await local()
        upstreams = self.upstreams
        try:
            stream = await local()
        except ModelLoadFailed as exc:
            self._fell_back(spec, route, exc)
            return remote(upstreams, route)
        try:
            first = await anext(stream, None)
        except ModelLoadFailed as exc:
            await stream.aclose()  # type: ignore[attr-defined]
            self._fell_back(spec, route, exc)
            return remote(upstreams, route)
        except BaseException:  # the client went away while the model loaded: free it now
            await stream.aclose()  # type: ignore[attr-defined]
            raise
        return _prepend(first, stream)

    async def find(self, raw: str, *, missing: str) -> ModelSpec:
        """The model named `raw`; `missing` is the not-found text, `{name}` = the name as sent,
        `{short}` = its normalised short form (each endpoint words it as Ollama does)."""
        spec = await self.resolver.find(raw)
        if spec is None:
            short = ModelName.parse(raw).display
            raise ModelNotFound(missing.format(name=raw, short=short))
        return spec

    async def header(self, spec: ModelSpec) -> GGUFInfo:
        if spec.problem:
            raise ModelLoadFailed(spec.problem)
        try:
            return await asyncio.to_thread(self.resolver.header, spec.model_path)
        except (GGUFError, OSError) as exc:
            raise ModelLoadFailed(f"unable to load model {spec.name}: {exc}") from exc

    def running(self) -> list[Runner]:
        return self.scheduler.running()

    async def remote_running(self) -> list[RemoteRunner]:
        """Models loaded on upstreams that say so (Ollama-kind), under the names bridge lists
        them by; an upstream that does not answer in time is left out."""
        if self.upstreams is None:
            return []
        local = [s.name for s in await self.resolver.list()]
        return await self.upstreams.running(local)

    # --- show ----------------------------------------------------------------------------

    async def show(
        self,
        raw: str,
        *,
        verbose: bool = False,
        system: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> ShowInfo:
        target = await self._target(raw, missing="model '{short}' not found")
        if isinstance(target, Route):
            # Served by an upstream: what bridge knows of it (`ollama run` shows before it runs).
            remote = target.spec
            first = target.replicas[0]
            return ShowInfo(
                spec=remote,
                remote=(first.model, first.url),
                modelfile=render_modelfile(remote, {}),
                parameters="",
                capabilities=("completion",),
                model_info={},
                tensors=[],
                chat_template=None,
                system=None,
            )
        spec = target
        info: GGUFInfo | None = None
        if not spec.problem:
            try:
                info = await asyncio.to_thread(self.resolver.header, spec.model_path)
                if verbose:
                    info = await asyncio.to_thread(_full_header, spec.model_path)
            except (GGUFError, OSError) as exc:
                log.warning("show %s: %s", spec.name, exc)
        spec = await _with_detected_stop(spec, info)
        params = dict(spec.params)
        if options:  # in the Modelfile only: Ollama renders `parameters` before merging them
            params.update(parse_options(options).as_dict())
        if system is not None:
            spec = replace(spec, system=system)
        return ShowInfo(
            spec=spec,
            modelfile=render_modelfile(spec, params),
            parameters=render_parameters(dict(spec.params)),
            capabilities=capabilities(spec, info, _template(spec, info)),
            model_info=model_info(info, verbose=verbose) if info else {},
            tensors=[
                {"name": t.name, "type": t.type_name, "shape": list(t.shape)}
                for t in (info.tensors if info else ())
            ],
            chat_template=info.chat_template if info else None,
            system=spec.system,
        )

    # --- generation ---------------------------------------------------------------------

    async def chat(self, req: ChatRequest) -> AsyncIterator[Chunk]:
        """Stream a chat reply. Errors that can be known up front raise before the first chunk."""
        received = time.perf_counter_ns()
        target = await self._target(req.model, missing="model '{name}' not found")
        if isinstance(target, Route):
            assert self.upstreams is not None
            _no_debug_upstream(req)
            return self.upstreams.chat(target, req)
        return await self._local_or_fallback(
            target,
            lambda: self._chat(target, req, received),
            lambda upstreams, route: upstreams.chat(route, req),
        )

    async def _chat(self, spec: ModelSpec, req: ChatRequest, received: int) -> AsyncIterator[Chunk]:
        if not req.messages:
            return self._load_or_unload(spec, req, "chat", received)
        info = await self.header(spec)
        spec = await _with_detected_stop(spec, info)
        template = _template(spec, info)
        caps = capabilities(spec, info, template)
        self._check_completion(caps, req.model, "chat")
        if req.tools and "tools" not in caps:
            raise CapabilityMissing(f"{spec.full_name} does not support tools")
        if any(m.images for m in req.messages) and "vision" not in caps:
            raise CapabilityMissing(f"{spec.full_name} does not support vision")
        think = self._think(caps, req.model, req.think)
        # The model's MESSAGES go first; its SYSTEM only if the request does not start with one.
        messages = list(spec.messages) + list(req.messages)
        if spec.system and req.messages[0].role != "system":
            messages.insert(0, Message(role="system", content=spec.system))
        if _drops_old_thinking(spec):
            messages = _without_old_thinking(messages)
        messages, images = _tag_images(messages)

        def render(msgs: Sequence[Message]) -> str:
            return render_chat(template, msgs, tools=req.tools, think=think)

        async def build(model: LoadedModel) -> str:
            if not req.truncate:
                return render(messages)

            async def count(text: str) -> int:
                return len(await model.tokenize(text))

            return await fit_chat(render, count, messages, model.n_ctx, image_tokens=IMAGE_TOKENS)

        shaping = OutputShape(
            tool_tag=template.tool_tag() if req.tools else None,
            tool_names=tuple(_tool_names(req.tools)),
            thinking_tags=template.thinking_tags() if think else None,
        )
        return self._run(
            spec,
            info,
            req.options,
            req.keep_alive,
            req.format,
            build,
            received,
            shift=req.truncate and req.shift,
            shape=shaping,
            logprobs=(req.logprobs, req.top_logprobs),
            images=images,
            debug_render_only=req.debug_render_only,
        )

    async def generate(self, req: GenerateRequest) -> AsyncIterator[Chunk]:
        received = time.perf_counter_ns()
        if req.raw and (req.template or req.system or req.context):
            raise InvalidRequest("raw mode does not support template, system, or context")
        target = await self._target(req.model, missing="model '{name}' not found")
        if isinstance(target, Route):
            assert self.upstreams is not None
            _no_debug_upstream(req)
            return self.upstreams.generate(target, req)
        return await self._local_or_fallback(
            target,
            lambda: self._generate(target, req, received),
            lambda upstreams, route: upstreams.generate(route, req),
        )

    async def _generate(
        self, spec: ModelSpec, req: GenerateRequest, received: int
    ) -> AsyncIterator[Chunk]:
        if not req.prompt and not req.suffix:
            return self._load_or_unload(spec, req, "generate", received)
        info = await self.header(spec)
        spec = await _with_detected_stop(spec, info)
        template = _template(spec, info, req.template)
        caps = capabilities(spec, info, template)
        self._check_completion(caps, req.model, "generate")
        think = self._think(caps, req.model, req.think)
        if req.suffix and "insert" not in caps:
            raise CapabilityMissing(f"{spec.full_name} does not support insert")
        if req.images and "vision" not in caps:
            raise CapabilityMissing(f"{spec.full_name} does not support vision")
        images = req.images
        if req.raw:
            prompt = req.prompt
        elif req.suffix:
            prompt = render_fim(template, req.prompt, req.suffix)
        else:
            messages: list[Message] = []
            system = req.system if req.system is not None else spec.system
            if system:
                messages.append(Message(role="system", content=system))
            if req.context is None:
                messages.extend(spec.messages)
            messages.append(Message(role="user", content=req.prompt, images=req.images))
            messages, images = _tag_images(messages)
            prompt = render_chat(template, messages, think=think)
        shaping = OutputShape(thinking_tags=template.thinking_tags() if think else None)
        return self._run(
            spec,
            info,
            req.options,
            req.keep_alive,
            req.format,
            prompt,
            received,
            context=req.context or (),
            return_context=not req.raw,
            raw=req.raw,
            # Not truncating: the prompt goes as it is, and one too long is an error.
            shift=req.shift and req.truncate,
            shape=shaping,
            logprobs=(req.logprobs, req.top_logprobs),
            images=images,
            debug_render_only=req.debug_render_only,
        )

    async def embed(self, req: EmbedRequest) -> Embeddings:
        """Embeddings of every input, L2-normalised unless `req.normalize` is off, cut to
        `req.dimensions` (and normalised again) when that is shorter. No inputs: the model is
        loaded (or unloaded, keep_alive 0) and no vector comes back, as Ollama does."""
        received = time.perf_counter_ns()
        target = await self._target(
            req.model, missing='model "{name}" not found, try pulling it first'
        )
        if isinstance(target, Route):
            return await self._embed_remote(target, req)
        try:
            return await self._embed(target, req, received)
        except ModelLoadFailed as exc:
            route = self._fallback(target)
            if route is None:
                raise
            self._fell_back(target, route, exc)
            return await self._embed_remote(route, req)

    async def _embed_remote(self, route: Route, req: EmbedRequest) -> Embeddings:
        assert self.upstreams is not None
        remote = await self.upstreams.embed(
            route,
            req.inputs,
            truncate=req.truncate,
            dimensions=req.dimensions,
            options=req.options,
            keep_alive=req.keep_alive,
        )
        # Not every OpenAI-compatible server normalises; unit vectors whatever served them.
        vectors = [_shape_vector(v, req.dimensions, req.normalize) for v in remote.vectors]
        return replace(remote, vectors=vectors)

    async def _embed(self, spec: ModelSpec, req: EmbedRequest, received: int) -> Embeddings:
        if not req.inputs:
            async for _ in self._load_or_unload(spec, req, None, received):
                pass
            return Embeddings(vectors=[])
        info = await self.header(spec)
        lease: Lease
        async with self._lease(spec, info, req.options, req.keep_alive) as lease:
            out = await lease.model.embed(req.inputs, truncate=req.truncate)
        vectors = [_shape_vector(v, req.dimensions, req.normalize) for v in out.vectors]
        return replace(
            out,
            vectors=vectors,
            total_duration=time.perf_counter_ns() - received,
            load_duration=lease.load_duration_ns,
        )

    def _check_completion(self, caps: tuple[str, ...], raw: str, what: str) -> None:
        if "completion" not in caps:
            raise CapabilityMissing(f'"{raw}" does not support {what}')

    def _think(
        self, caps: tuple[str, ...], raw: str, think: bool | str | None
    ) -> bool | str | None:
        """The effective `think`: refused where the model cannot think; on by default where
        it can, as Ollama does."""
        if think and "thinking" not in caps:
            raise CapabilityMissing(f'"{raw}" does not support thinking')
        if think is None and "thinking" in caps:
            return True
        return think

    async def _load_or_unload(
        self,
        spec: ModelSpec,
        req: ChatRequest | GenerateRequest | EmbedRequest,
        what: str | None,
        received: int,
    ) -> AsyncIterator[Chunk]:
        """Nothing to answer: keep_alive 0 unloads the model, anything else loads it. For
        `what` ("chat", "generate"), a model that cannot complete is refused first, as Ollama
        does at scheduling."""
        if req.keep_alive is not None and req.keep_alive == 0:
            await self.scheduler.unload(spec)
            yield Chunk(done=True, done_reason="unload")
            return
        info = await self.header(spec)
        if what is not None:
            self._check_completion(capabilities(spec, info, _template(spec, info)), req.model, what)
        async with self._lease(spec, info, req.options, req.keep_alive):
            pass
        yield Chunk(done=True, done_reason="load")

    @contextlib.asynccontextmanager
    async def _lease(
        self, spec: ModelSpec, info: GGUFInfo, opts: Options, keep_alive: float | None
    ) -> AsyncIterator[Lease]:
        gpus = await self.scheduler.gpus()
        merged = model_defaults(spec.params).overlay(opts)
        override = self._override(spec)
        parallel = override.num_parallel if override.num_parallel else self.settings.num_parallel
        load = load_options(
            merged,
            trained_ctx=info.context_length,
            # A machine told to keep models off its GPUs gets the CPU's default context.
            default_ctx=self.settings.context_length
            or context_tier(gpus if self.settings.num_gpu != 0 else ()),
            default_gpu=self.settings.num_gpu,
            default_threads=self.settings.num_thread,
            parallel=1 if info.pooling else parallel,
        )
        plan = self._plan(spec, info, load, len(gpus))
        request = LoadRequest(spec=spec, options=load, plan=plan, pinned=override.pinned)
        async with self.scheduler.acquire(request, keep_alive) as lease:
            yield lease

    def _plan(self, spec: ModelSpec, info: GGUFInfo, load: LoadOptions, gpus: int) -> MemoryPlan:
        """The model's memory plan, made once per file and load options (it walks every
        tensor of the header: about 0.3 ms for a small model, more for a big MoE)."""
        key = (spec.model_path, spec.size, spec.modified_at, spec.projectors, spec.adapters)
        offload = self.scheduler.offloads
        plan = self._plans.get((key, load, offload, gpus))
        if plan is None:
            if len(self._plans) >= 256:
                self._plans.clear()
            plan = self._plans[(key, load, offload, gpus)] = MemoryPlan(
                info,
                load,
                file_bytes=_file_size(spec.model_path),
                extra_bytes=sum(_file_size(p) for p in (*spec.projectors, *spec.adapters)),
                offload=offload,
                devices=gpus,
            )
        return plan

    def _override(self, spec: ModelSpec) -> ModelOverride:
        key = ModelName.parse(spec.full_name).key()
        for name, override in self.settings.model_overrides.items():
            try:
                if ModelName.parse(name).key() == key:
                    return override
            except InvalidName:
                continue
        return ModelOverride()

    async def _run(
        self,
        spec: ModelSpec,
        info: GGUFInfo,
        opts: Options,
        keep_alive: float | None,
        fmt: Any,
        prompt: str | Callable[[LoadedModel], Awaitable[str]],
        received: int,
        *,
        context: tuple[int, ...] = (),
        return_context: bool = False,
        shift: bool = True,
        shape: OutputShape | None = None,
        logprobs: tuple[bool, int] = (False, 0),
        images: tuple[bytes, ...] = (),
        raw: bool = False,
        debug_render_only: bool = False,
    ) -> AsyncIterator[Chunk]:
        merged = model_defaults(spec.params).overlay(opts)
        lease: Lease
        async with self._lease(spec, info, opts, keep_alive) as lease:
            text = prompt if isinstance(prompt, str) else await prompt(lease.model)
            if images and not raw and not IMAGE_TAG.search(text):
                images = ()  # their messages were truncated away
            if debug_render_only:
                yield Chunk(debug=(text, len(images)))
                return
            if self.settings.log_prompts:
                log.debug("prompt for %s: %r", spec.name, text)
            completion = Completion(
                prompt=text,
                shift=shift,
                num_keep=merged.num_keep if merged.num_keep is not None else 4,
                sampling=sampling(merged),
                num_predict=num_predict(merged, lease.model.n_ctx),
                stop=merged.stop or (),
                format=fmt,
                context_prefix=context,
                return_context=return_context,
                logprobs=logprobs[0],
                top_logprobs=logprobs[1],
                images=images,
            )
            stream = lease.model.complete(completion)
            if shape is not None and shape.active:
                stream = shape_output(stream, shape, started_thinking=_ends_with_open(text, shape))
            try:
                async for chunk in stream:
                    if chunk.done:
                        m = chunk.metrics or Metrics()
                        chunk = replace(
                            chunk,
                            metrics=replace(
                                m,
                                total_duration=time.perf_counter_ns() - received,
                                load_duration=lease.load_duration_ns,
                            ),
                        )
                    yield chunk
            finally:
                await stream.aclose()  # type: ignore[attr-defined]


async def _prepend(first: Chunk | None, rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    try:
        if first is None:
            return
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


def _tag_images(messages: Sequence[Message]) -> tuple[list[Message], tuple[bytes, ...]]:
    """Ollama's image markers: image N of the conversation becomes `[img-N]` at the front of
    its message (or replaces a literal `[img]` there); the engine puts the image where its tag
    is. Returns the messages and every image in tag order."""
    out: list[Message] = []
    images: list[bytes] = []
    for m in messages:
        if not m.images:
            out.append(m)
            continue
        prefix, content = "", m.content
        for data in m.images:
            tag = f"[img-{len(images)}]"
            images.append(data)
            if "[img]" in content:
                content = content.replace("[img]", tag, 1)
            else:
                prefix += tag
        out.append(replace(m, content=prefix + content))
    return out, tuple(images)


def _drops_old_thinking(spec: ModelSpec) -> bool:
    """Ollama drops earlier turns' thinking for the qwen3 family and deepseek-r1 only."""
    if spec.details.family == "qwen3":
        return True
    try:
        return ModelName.parse(spec.full_name).model.lower() == "deepseek-r1"
    except InvalidName:
        return False


def _without_old_thinking(messages: list[Message]) -> list[Message]:
    """Assistant turns before the last user message lose a leading `<think>...</think>`."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    out = []
    for i, m in enumerate(messages):
        if m.role == "assistant" and i < last_user:
            splitter = ThinkingSplitter()
            _, content = splitter.feed(m.content)
            content += splitter.flush()[1]
            m = replace(m, content=content)
        out.append(m)
    return out


async def _with_detected_stop(spec: ModelSpec, info: GGUFInfo | None) -> ModelSpec:
    """A GGUF file outside a store gets the stop list `ollama create` would give it: that of
    the bundled template its chat template matches."""
    if spec.source == "ollama" or "stop" in spec.params or info is None or not info.chat_template:
        return spec
    template = info.chat_template
    named = _detected.get(template)
    if named is None and template not in _detected:
        named = _detected[template] = await asyncio.to_thread(detect, template)
    if named is None or not named.stop:
        return spec
    return replace(spec, params={**spec.params, "stop": list(named.stop)})


_detected: dict[str, NamedTemplate | None] = {}  # chat template -> match (there are few)


def _shape_vector(vector: list[float], dimensions: int | None, normalize: bool) -> list[float]:
    if dimensions is not None and 0 < dimensions < len(vector):
        vector = vector[:dimensions]
    if not all(map(math.isfinite, vector)):
        raise EngineFailed("embedding contains NaN or Inf values")
    if not normalize:
        return vector
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def _tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    names = []
    for t in tools:
        fn = t.get("function")
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            names.append(fn["name"])
    return names


def _ends_with_open(prompt: str, shape: OutputShape) -> bool:
    return shape.thinking_tags is not None and prompt.rstrip().endswith(shape.thinking_tags[0])


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _template(
    spec: ModelSpec, info: GGUFInfo | None, override: str | None = None
) -> PromptTemplate:
    """The renderer Ollama would use: a request template, else the model's Go template
    layer, else the GGUF chat template (and else `{{ .Prompt }}`)."""
    return PromptTemplate(
        go_template=override or spec.template,
        chat_template=info.chat_template if info else None,
        bos_token=(info.bos_token if info else None) or "",
        eos_token=(info.eos_token if info else None) or "",
    )


def _full_header(path: str) -> GGUFInfo:
    return read_gguf(path, full_arrays=True)


def _no_debug_upstream(req: ChatRequest | GenerateRequest) -> None:
    if req.debug_render_only:
        raise InvalidRequest("_debug_render_only is not available for a model an upstream serves")


def source_suffix(raw: str) -> tuple[str, bool]:
    """Ollama's source suffixes: `name:local` asks for the local model (-> ("name", True));
    `:cloud` and `-cloud` tags are left in the name, for an upstream that serves them. Both
    at once is an error, worded as Ollama words it."""
    base, source = _cut_source(raw.strip())
    if source is None:
        return raw, False
    if _cut_source(base)[1] is not None:
        raise InvalidRequest(
            f"use either :local or :cloud, not both: {orjson.dumps(raw.strip()).decode()}"
        )
    return (base, True) if source == "local" else (raw, False)


def _cut_source(raw: str) -> tuple[str, str | None]:
    head, colon, suffix = raw.rpartition(":")
    if not colon:
        return raw, None
    tag = suffix.strip().lower()
    if tag in ("local", "cloud"):
        return head, tag
    if "/" not in suffix and tag.endswith("-cloud"):
        return f"{head}:{suffix.strip()[: -len('-cloud')]}", "cloud"
    return raw, None
