"""Loaded models and who is using them: load on demand, keep warm, unload when idle.

Contract:
- `acquire` returns a `Lease` on a loaded model with one of its parallel slots held. Loads are
  single-flight (concurrent requests for one model share one load) and run one at a time. A
  request that is cancelled while waiting gives up its place; the load it started goes on,
  shielded, so that the next request finds the model ready.
- Each lease holds a reference. When the last reference is released the keep-alive timer starts
  (the last request's `keep_alive` wins); 0 unloads at once, infinity never.
- A model with a reference is never unloaded. When `max_loaded` models are loaded, the idle one
  with the shortest keep-alive (then least recently used) is evicted to make room.
- At most `max_queue` requests wait at once; beyond that `acquire` raises QueueFull.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from bridge.domain import LoadOptions, ModelSpec
from bridge.engine.base import Engine, LoadedModel
from bridge.errors import QueueFull

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Runner:
    spec: ModelSpec
    options: LoadOptions
    model: LoadedModel
    slots: asyncio.Semaphore
    keep_alive: float
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
    ) -> None:
        self._engine = engine
        self._default_keep_alive = default_keep_alive
        self._max_loaded = max_loaded if max_loaded > 0 else 3
        self._max_queue = max_queue
        self._runners: dict[str, Runner] = {}
        self._loading: dict[str, asyncio.Task[Runner]] = {}
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._waiting = 0

    @staticmethod
    def _key(spec: ModelSpec) -> str:
        return spec.model_path or spec.full_name

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
    async def acquire(
        self, spec: ModelSpec, options: LoadOptions, keep_alive: float | None
    ) -> AsyncIterator[Lease]:
        """Hold a slot on `spec` loaded with `options` for the duration of the block."""
        ttl = self.effective_keep_alive(keep_alive)
        if self._waiting >= self._max_queue:
            raise QueueFull()
        self._waiting += 1
        started = time.perf_counter_ns()
        try:
            runner = await self._ready_runner(spec, options)
            runner.refs += 1
            self._stop_timer(runner)
        finally:
            self._waiting -= 1
        load_ns = time.perf_counter_ns() - started
        try:
            async with runner.slots:
                runner.keep_alive = ttl
                yield Lease(runner, load_ns)
        finally:
            runner.keep_alive = ttl
            runner.refs -= 1
            runner.last_used = time.monotonic()
            if runner.refs == 0:
                await self._idle(runner)

    async def _ready_runner(self, spec: ModelSpec, options: LoadOptions) -> Runner:
        key = self._key(spec)
        while True:
            runner = self._runners.get(key)
            if runner is not None and runner.options == options and runner.spec == spec:
                return runner
            if runner is not None:
                # Different load-time options (or the file changed): reload once it is idle.
                await self._wait_idle(runner)
                if self._runners.get(key) is runner:
                    await self._unload(runner, "reload")
                continue
            task = self._loading.get(key)
            if task is None:
                task = asyncio.create_task(self._load(key, spec, options))
                self._loading[key] = task
                task.add_done_callback(functools.partial(self._loaded, key))
            runner = await asyncio.shield(task)
            if runner.options == options:
                return runner

    def _loaded(self, key: str, _task: asyncio.Task[Runner]) -> None:
        self._loading.pop(key, None)

    async def _load(self, key: str, spec: ModelSpec, options: LoadOptions) -> Runner:
        async with self._load_lock:
            await self._make_room()
            model = await self._engine.load(spec, options)
            runner = Runner(
                spec=spec,
                options=options,
                model=model,
                slots=asyncio.Semaphore(max(1, options.parallel)),
                keep_alive=self._default_keep_alive,
            )
            self._runners[key] = runner
            # A model nobody claims (its requests were abandoned) still expires.
            self._arm_timer(runner)
            return runner

    async def _make_room(self) -> None:
        while len(self._runners) >= self._max_loaded:
            idle = [r for r in self._runners.values() if r.refs == 0]
            if idle:
                victim = min(idle, key=lambda r: (r.keep_alive, r.last_used))
                await self._unload(victim, "evicted to make room")
            else:
                async with self._changed:
                    await self._changed.wait()

    async def _wait_idle(self, runner: Runner) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: runner.refs == 0)

    async def _idle(self, runner: Runner) -> None:
        async with self._changed:
            self._changed.notify_all()
        if runner.keep_alive <= 0:
            await self._unload(runner, "keep_alive 0")
        else:
            self._arm_timer(runner)

    def _arm_timer(self, runner: Runner) -> None:
        self._stop_timer(runner)
        ttl = runner.keep_alive
        if math.isinf(ttl):
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
        if runner.refs == 0:
            await self._unload(runner, "unload requested")

    async def close(self) -> None:
        """Unload everything (shutdown)."""
        for task in list(self._loading.values()):
            task.cancel()
        for runner in list(self._runners.values()):
            with contextlib.suppress(Exception):
                await self._unload(runner, "shutdown")
