"""Loaded models and who is using them: load on demand, keep warm, make room, queue.

Contract:
- `acquire` returns a `Lease` on a loaded model with one of its parallel slots held. Loads are
  single-flight (concurrent requests for one model share one load) and run one at a time. A
  request cancelled while waiting gives up its place; a load it started goes on, shielded, so
  the next request finds the model ready.
- Each lease holds a reference. When the last one is released the keep-alive timer starts (the
  last request's `keep_alive` wins); 0 unloads at once, infinity (or a pin) never.
- A model with a reference is never unloaded. To make room (`max_loaded` models, or a memory
  budget) the idle model with the shortest keep-alive, then the least recently used, goes first;
  when every loaded model is busy, the load waits for one to become idle.
- VRAM is budgeted apart from RAM. A model whose layers would not all fit beside the loaded
  ones makes room on the GPUs the same way; when the models holding VRAM are busy it does not
  wait but loads with as many layers offloaded as fit (the rest run on the CPU), as Ollama does.
- Requests waiting for a load or a slot count against `max_queue`; beyond it, QueueFull.
- A failed load is remembered for `load_cooldown` seconds and answered with the same error,
  so a broken model is not reloaded in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from bridge.domain import LoadOptions, ModelSpec
from bridge.engine.base import Engine, LoadedModel
from bridge.errors import BridgeError, ModelLoadFailed, QueueFull
from bridge.hardware import GPU
from bridge.memory import MemoryPlan, Placement, human

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadRequest:
    spec: ModelSpec
    options: LoadOptions
    plan: MemoryPlan | None = None  # None: nothing known of its memory need
    pinned: bool = False

    def at(self, vram: int) -> Placement:
        return self.plan.at(vram) if self.plan is not None else Placement(0)


@dataclass(eq=False)
class Runner:
    spec: ModelSpec
    options: LoadOptions
    model: LoadedModel
    slots: asyncio.Semaphore
    keep_alive: float
    placement: Placement = field(default_factory=lambda: Placement(0))
    pinned: bool = False
    refs: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None  # wall-clock epoch seconds; None while in use
    _timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    runner: Runner
    load_duration_ns: int

    @property
    def model(self) -> LoadedModel:
        return self.runner.model


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        *,
        default_keep_alive: float = 300.0,
        max_loaded: int = 3,
        max_queue: int = 512,
        memory_budget: int = 0,
        gpu_overhead: int = 0,
        load_cooldown: float = 10.0,
    ) -> None:
        self._engine = engine
        self._default_keep_alive = default_keep_alive
        self._max_loaded = max_loaded if max_loaded > 0 else 3  # 3 per GPU once they are known
        self._max_loaded_set = max_loaded > 0
        self._max_queue = max_queue
        self._budget = memory_budget  # 0 = no limit
        self._gpu_overhead = gpu_overhead  # bytes of each GPU left alone (OLLAMA_GPU_OVERHEAD)
        self._gpus: asyncio.Task[Sequence[GPU]] | None = None
        self._vram = 0  # bytes the GPUs give loaded models
        self._offload = False  # whether there are GPUs (a GPU build that found one)
        self._cooldown = load_cooldown
        self._runners: dict[str, Runner] = {}
        self._loading: dict[str, asyncio.Task[Runner]] = {}
        self._failed: dict[str, tuple[float, BridgeError]] = {}
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._waiting = 0

    @staticmethod
    def _key(spec: ModelSpec) -> str:
        return spec.model_path or spec.full_name

    async def gpus(self) -> Sequence[GPU]:
        """The GPUs the engine offloads to, read once (free memory as it was then)."""
        if self._gpus is None:
            self._gpus = asyncio.create_task(self._read_gpus())
        return await asyncio.shield(self._gpus)

    async def _read_gpus(self) -> Sequence[GPU]:
        try:
            found = await asyncio.to_thread(self._engine.gpus)
        except Exception as exc:  # a broken GPU runtime: serve from the CPU rather than not at all
            log.warning(
                "cannot read the GPUs (%s: %s); running on the CPU", type(exc).__name__, exc
            )
            found = []
        self._vram = sum(max(0, g.free - self._gpu_overhead) for g in found)
        self._offload = bool(found)
        if not self._max_loaded_set:  # OLLAMA_MAX_LOADED_MODELS 0: 3 x the GPUs, or 3
            self._max_loaded = 3 * max(1, len(found))
        for g in found:
            log.info(
                "GPU %s (%s): %s free of %s", g.name, g.description, human(g.free), human(g.total)
            )
        if not found:
            log.info("no GPU found: models run on the CPU")
        return found

    @property
    def offloads(self) -> bool:
        """Whether models may get layers on a GPU (known once `gpus` has answered)."""
        return self._offload

    def running(self) -> list[Runner]:
        """Loaded models, latest expiry first (in use counts as furthest away), as /api/ps sorts."""
        return sorted(
            self._runners.values(),
            key=lambda r: math.inf if r.expires_at is None else r.expires_at,
            reverse=True,
        )

    def effective_keep_alive(self, keep_alive: float | None) -> float:
        return self._default_keep_alive if keep_alive is None else keep_alive

    @contextlib.asynccontextmanager
    async def acquire(self, req: LoadRequest, keep_alive: float | None) -> AsyncIterator[Lease]:
        """Hold a slot on the model loaded with `req.options` for the duration of the block."""
        ttl = math.inf if req.pinned else self.effective_keep_alive(keep_alive)
        if self._waiting >= self._max_queue:
            raise QueueFull()
        self._waiting += 1
        started = time.perf_counter_ns()
        try:
            runner = await self._ready_runner(req)
            runner.refs += 1
            self._stop_timer(runner)
            try:
                await runner.slots.acquire()
            except BaseException:
                await self._release(runner, ttl)
                raise
        finally:
            self._waiting -= 1
        load_ns = time.perf_counter_ns() - started
        try:
            runner.keep_alive = ttl
            yield Lease(runner, load_ns)
        finally:
            runner.slots.release()
            await self._release(runner, ttl)

    async def _release(self, runner: Runner, ttl: float) -> None:
        runner.keep_alive = ttl
        runner.refs -= 1
        runner.last_used = time.monotonic()
        if runner.refs == 0:
            await self._idle(runner)

    async def _ready_runner(self, req: LoadRequest) -> Runner:
        key = self._key(req.spec)
        while True:
            runner = self._runners.get(key)
            if (
                runner is not None
                and runner.options == req.options
                and _same_files(runner.spec, req.spec)
            ):
                return runner
            if runner is not None:
                # Different load-time options (or the file changed): reload once it is idle.
                await self._wait_idle(runner)
                if self._runners.get(key) is runner:
                    await self._unload(runner, "reload")
                continue
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < self._cooldown:
                raise failed[1]
            task = self._loading.get(key)
            if task is None:
                task = asyncio.create_task(self._load(key, req))
                self._loading[key] = task
                task.add_done_callback(functools.partial(self._loaded, key))
            runner = await asyncio.shield(task)
            if runner.options == req.options:
                return runner

    def _loaded(self, key: str, task: asyncio.Task[Runner]) -> None:
        self._loading.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._failed.pop(key, None)

    async def _load(self, key: str, req: LoadRequest) -> Runner:
        async with self._load_lock:
            best = req.at(self._vram)  # as many layers on the GPUs as they could ever take
            if self._budget and best.ram > self._budget:
                raise ModelLoadFailed(
                    f"model requires more system memory ({human(best.ram)}) than is available "
                    f"({human(self._budget)})"
                )
            placement = await self._make_room(req, best)
            options = req.options
            if req.plan is not None and self._offload:
                # The layers that fit (0 when the GPUs are full: never llama.cpp's "all").
                options = dataclasses.replace(options, num_gpu=placement.gpu_layers)
            try:
                model = await self._engine.load(req.spec, options)
            except BridgeError as exc:
                self._failed[key] = (time.monotonic(), exc)
                raise
            runner = Runner(
                spec=req.spec,
                options=req.options,
                model=model,
                slots=asyncio.Semaphore(max(1, req.options.parallel)),
                keep_alive=math.inf if req.pinned else self._default_keep_alive,
                placement=placement,
                pinned=req.pinned,
            )
            self._runners[key] = runner
            # A model nobody claims (its requests were abandoned) still expires.
            self._arm_timer(runner)
            log.info(
                "loaded %s (estimated %s, %s on the GPUs, %d layers offloaded)",
                req.spec.name,
                human(placement.size),
                human(placement.vram),
                placement.gpu_layers,
            )
            return runner

    async def _make_room(self, req: LoadRequest, best: Placement) -> Placement:
        """Evict idle models until `req` fits; returns where its memory goes."""
        while True:
            vram_used = sum(r.placement.booked for r in self._runners.values())
            placement = req.at(max(0, self._vram - vram_used))
            ram_used = sum(r.placement.ram for r in self._runners.values())
            short = len(self._runners) >= self._max_loaded or bool(
                self._budget and self._runners and ram_used + placement.ram > self._budget
            )
            gpu_short = placement.gpu_layers < best.gpu_layers
            if not short and not gpu_short:
                return placement
            idle = [r for r in self._runners.values() if r.refs == 0 and not r.pinned]
            if not short:  # only the GPUs are short: only a model that holds VRAM helps,
                idle = [r for r in idle if r.placement.booked > 0]
                kept = sum(r.placement.booked for r in self._runners.values() if r not in idle)
                if req.at(max(0, self._vram - kept)).gpu_layers <= placement.gpu_layers:
                    return placement  # and only if evicting them all would gain a layer
            if idle:
                victim = min(idle, key=lambda r: (r.keep_alive, r.last_used))
                await self._unload(victim, "evicted to make room")
                continue
            if not short:
                return placement  # the rest of its layers run on the CPU
            if all(r.pinned for r in self._runners.values()):
                raise ModelLoadFailed("no room to load the model: every loaded model is pinned")
            async with self._changed:
                await self._changed.wait()

    async def _wait_idle(self, runner: Runner) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: runner.refs == 0)

    async def _idle(self, runner: Runner) -> None:
        async with self._changed:
            self._changed.notify_all()
        if runner.keep_alive <= 0 and not runner.pinned:
            await self._unload(runner, "keep_alive 0")
        else:
            self._arm_timer(runner)

    def _arm_timer(self, runner: Runner) -> None:
        self._stop_timer(runner)
        ttl = runner.keep_alive
        if math.isinf(ttl) or runner.pinned:
            runner.expires_at = math.inf
            return
        runner.expires_at = time.time() + ttl
        loop = asyncio.get_running_loop()
        runner._timer = loop.call_later(ttl, lambda: asyncio.ensure_future(self._expire(runner)))

    def _stop_timer(self, runner: Runner) -> None:
        if runner._timer is not None:
            runner._timer.cancel()
            runner._timer = None
        runner.expires_at = None

    async def _expire(self, runner: Runner) -> None:
        if runner.refs == 0 and self._runners.get(self._key(runner.spec)) is runner:
            await self._unload(runner, "keep_alive expired")

    async def _unload(self, runner: Runner, reason: str) -> None:
        key = self._key(runner.spec)
        if self._runners.get(key) is not runner:
            return
        del self._runners[key]
        self._stop_timer(runner)
        log.info("unloading %s (%s)", runner.spec.name, reason)
        await runner.model.close()
        async with self._changed:
            self._changed.notify_all()

    async def unload(self, spec: ModelSpec) -> None:
        """Unload `spec` now if idle, else as soon as its last request ends (keep_alive 0)."""
        runner = self._runners.get(self._key(spec))
        if runner is None:
            return
        runner.keep_alive = 0
        runner.pinned = False
        if runner.refs == 0:
            await self._unload(runner, "unload requested")

    def interrupt(self) -> None:
        """Shutdown begins: end every generation now (each stream ends with an error)."""
        self._max_queue = 0
        for runner in self._runners.values():
            runner.model.interrupt()

    async def close(self) -> None:
        """Unload everything (shutdown)."""
        if self._gpus is not None and not self._gpus.done():
            self._gpus.cancel()
        for task in list(self._loading.values()):
            task.cancel()
        for runner in list(self._runners.values()):
            with contextlib.suppress(Exception):
                await self._unload(runner, "shutdown")


def _same_files(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether a loaded model still is what `b` describes: the same weights, projectors and
    adapters (store blobs are named by their digest; a GGUF file by its path, size and
    mtime). Layers that do not reach the engine (params, template, system) never reload."""
    if (a.model_path, a.projectors, a.adapters) != (b.model_path, b.projectors, b.adapters):
        return False
    return a.source != "gguf" or (a.size, a.modified_at) == (b.size, b.modified_at)
