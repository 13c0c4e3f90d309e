"""The use-cases behind both protocols: chat, generate, list, show, running models.

Handlers decode the wire into domain requests and call these; model lookup, sampling defaults,
keep-alive and prompt building happen here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bridge.config import ModelOverride, Settings
from bridge.domain import (
    ChatRequest,
    Chunk,
    Completion,
    GenerateRequest,
    Message,
    Metrics,
    ModelSpec,
    Options,
)
from bridge.engine.base import LoadedModel
from bridge.errors import CapabilityMissing, InvalidRequest, ModelLoadFailed, ModelNotFound
from bridge.memory import estimate
from bridge.models.gguf_info import GGUFError, GGUFInfo, model_info, read_gguf
from bridge.models.names import InvalidName, ModelName
from bridge.models.resolver import Resolver
from bridge.models.show import capabilities, render_modelfile, render_parameters
from bridge.options import load_options, model_defaults, num_predict, parse_options, sampling
from bridge.scheduler import Lease, LoadRequest, Runner, Scheduler
from bridge.templates.prompt import PromptTemplate, fit_chat, render_chat

log = logging.getLogger(__name__)


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


class Service:
    def __init__(self, settings: Settings, resolver: Resolver, scheduler: Scheduler) -> None:
        self.settings = settings
        self.resolver = resolver
        self.scheduler = scheduler

    # --- lookup --------------------------------------------------------------------------

    async def list_models(self) -> list[ModelSpec]:
        return await self.resolver.list()

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

    # --- show ----------------------------------------------------------------------------

    async def show(
        self,
        raw: str,
        *,
        verbose: bool = False,
        system: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> ShowInfo:
        spec = await self.find(raw, missing="model '{short}' not found")
        info: GGUFInfo | None = None
        if not spec.problem:
            try:
                info = await asyncio.to_thread(self.resolver.header, spec.model_path)
                if verbose:
                    info = await asyncio.to_thread(_full_header, spec.model_path)
            except (GGUFError, OSError) as exc:
                log.warning("show %s: %s", spec.name, exc)
        params = dict(spec.params)
        if options:
            params.update(parse_options(options).as_dict())
        if system is not None:
            spec = replace(spec, system=system)
        return ShowInfo(
            spec=spec,
            modelfile=render_modelfile(spec, params),
            parameters=render_parameters(params),
            capabilities=capabilities(spec, info),
            model_info=model_info(info, verbose=verbose) if info else {},
            tensors=[
                {"name": t.name, "type": t.type_name, "shape": list(t.shape)}
                for t in (info.tensors if info else ())
            ],
            chat_template=info.chat_template if info else None,
            system=spec.system,
        )

    # --- generation ----------------------------------------------------------------------

    async def chat(self, req: ChatRequest) -> AsyncIterator[Chunk]:
        """Stream a chat reply. Errors that can be known up front raise before the first chunk."""
        received = time.perf_counter_ns()
        spec = await self.find(req.model, missing="model '{name}' not found")
        if not req.messages:
            return self._load_or_unload(spec, req.options, req.keep_alive, received)
        info = await self.header(spec)
        self._check_completion(spec, info, req.model, "chat")
        if req.tools and "tools" not in capabilities(spec, info):
            raise CapabilityMissing(f"{spec.full_name} does not support tools")
        self._check_think(spec, info, req.model, req.think)
        messages = list(req.messages)
        # The model's MESSAGES go first; its SYSTEM only if the request does not start with one.
        messages = list(spec.messages) + messages
        if spec.system and not (req.messages and req.messages[0].role == "system"):
            messages.insert(0, Message(role="system", content=spec.system))
        template = _template(info)

        def render(msgs: Sequence[Message]) -> str:
            return render_chat(template, msgs, tools=req.tools)

        async def build(model: LoadedModel) -> str:
            if not req.truncate:
                return render(messages)

            async def count(text: str) -> int:
                return len(await model.tokenize(text))

            return await fit_chat(render, count, messages, model.n_ctx)

        return self._run(
            spec,
            info,
            req.options,
            req.keep_alive,
            req.format,
            build,
            received,
            shift=req.truncate and req.shift,
        )

    async def generate(self, req: GenerateRequest) -> AsyncIterator[Chunk]:
        received = time.perf_counter_ns()
        if req.raw and (req.template or req.system or req.context):
            raise InvalidRequest("raw mode does not support template, system, or context")
        spec = await self.find(req.model, missing="model '{name}' not found")
        if not req.prompt and not req.suffix:
            return self._load_or_unload(spec, req.options, req.keep_alive, received)
        info = await self.header(spec)
        self._check_completion(spec, info, req.model, "generate")
        self._check_think(spec, info, req.model, req.think)
        if req.suffix:
            raise CapabilityMissing(f"{spec.full_name} does not support insert")
        if req.template:
            raise InvalidRequest(
                "custom Go templates in requests are not supported yet by this server"
            )
        if req.raw:
            prompt = req.prompt
        else:
            messages: list[Message] = []
            system = req.system if req.system is not None else spec.system
            if system:
                messages.append(Message(role="system", content=system))
            if req.context is None:
                messages.extend(spec.messages)
            messages.append(Message(role="user", content=req.prompt, images=req.images))
            prompt = render_chat(_template(info), messages)
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
            shift=req.shift,
        )

    def _check_completion(self, spec: ModelSpec, info: GGUFInfo, raw: str, what: str) -> None:
        if "completion" not in capabilities(spec, info):
            raise CapabilityMissing(f'"{raw}" does not support {what}')

    def _check_think(
        self, spec: ModelSpec, info: GGUFInfo, raw: str, think: bool | str | None
    ) -> None:
        if think and "thinking" not in capabilities(spec, info):
            raise CapabilityMissing(f'"{raw}" does not support thinking')

    async def _load_or_unload(
        self, spec: ModelSpec, opts: Options, keep_alive: float | None, received: int
    ) -> AsyncIterator[Chunk]:
        if keep_alive is not None and keep_alive == 0:
            await self.scheduler.unload(spec)
            yield Chunk(done=True, done_reason="unload")
            return
        info = await self.header(spec)
        async with self._lease(spec, info, opts, keep_alive):
            pass
        yield Chunk(done=True, done_reason="load")

    def _lease(
        self, spec: ModelSpec, info: GGUFInfo, opts: Options, keep_alive: float | None
    ) -> Any:
        merged = model_defaults(spec.params).overlay(opts)
        override = self._override(spec)
        parallel = override.num_parallel if override.num_parallel else self.settings.num_parallel
        load = load_options(
            merged,
            trained_ctx=info.context_length,
            default_ctx=self.settings.context_length,
            default_gpu=self.settings.num_gpu,
            default_threads=self.settings.num_thread,
            parallel=1 if info.pooling else parallel,
        )
        weights = sum(_file_size(p) for p in (spec.model_path, *spec.projectors, *spec.adapters))
        request = LoadRequest(
            spec=spec, options=load, need=estimate(info, weights, load), pinned=override.pinned
        )
        return self.scheduler.acquire(request, keep_alive)

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
    ) -> AsyncIterator[Chunk]:
        merged = model_defaults(spec.params).overlay(opts)
        lease: Lease
        async with self._lease(spec, info, opts, keep_alive) as lease:
            text = prompt if isinstance(prompt, str) else await prompt(lease.model)
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
            )
            stream = lease.model.complete(completion)
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


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _template(info: GGUFInfo) -> PromptTemplate:
    return PromptTemplate(
        chat_template=info.chat_template,
        bos_token=info.bos_token or "",
        eos_token=info.eos_token or "",
    )


def _full_header(path: str) -> GGUFInfo:
    return read_gguf(path, full_arrays=True)
