"""Several server processes on one port (Linux): the primary and its workers.

One Python process forwards a few thousand upstream requests a second before its one core is
the limit. With `workers` = N, the primary starts N - 1 workers; all of them listen on the
port with SO_REUSEPORT, and the kernel spreads new connections across them. A worker serves
generations for models an upstream serves and passes everything else to the primary over a
private Unix socket (`bridge.http.forward`): local models, their memory and the store stay in
one process, as with one worker.

The primary counts the changes it makes to the store (a model created, copied, pulled or
deleted through bridge) in a small shared file that every worker maps: a worker's lookups
read the count (one memory read) and rescan when it moved, so a change is seen by the next
request whichever process it reaches. The primary holds each worker's stdin: end of file says
the primary is gone, and the worker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

from bridge.domain import LoadOptions, ModelSpec
from bridge.engine.base import LoadedModel
from bridge.errors import ModelLoadFailed
from bridge.hardware import GPU

log = logging.getLogger(__name__)

SUPPORTED = sys.platform.startswith("linux")  # where SO_REUSEPORT spreads connections


class StoreGeneration:
    """A counter of store changes in a file that several processes map."""

    def __init__(self, path: str, *, create: bool = False) -> None:
        if create:
            with open(path, "wb") as f:
                f.write(bytes(8))
        with open(path, "r+b" if create else "rb") as f:
            access = mmap.ACCESS_WRITE if create else mmap.ACCESS_READ
            self._map = mmap.mmap(f.fileno(), 8, access=access)
        self._lock = threading.Lock()

    def read(self) -> int:
        return int.from_bytes(self._map[:8], "little")

    def bump(self) -> None:
        with self._lock:  # the store writer calls this from its threads
            self._map[:8] = (self.read() + 1).to_bytes(8, "little")


def listen(host: str, port: int, *, first: bool = False) -> socket.socket:
    """A listening socket that the other processes may bind too (SO_REUSEPORT). `first`: the
    primary's, which must find the port free, as a single process would (another program,
    or another bridge with workers, on the port is an error, not a share of its traffic)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    if first:
        with socket.socket(family, kind, proto) as probe:  # no SO_REUSEPORT: fails if taken
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(addr)
            if port == 0:
                addr = (addr[0], probe.getsockname()[1], *addr[2:])
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


class PrimaryOnlyEngine:
    """A worker's engine: local models are the primary's, and requests for them never reach a
    worker's scheduler (they are passed on first); this only makes sure of it."""

    async def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedModel:
        raise ModelLoadFailed(f"{spec.name} is served by the primary process")

    def gpus(self) -> Sequence[GPU]:
        return []


class Workers:
    """The primary's side: starts the workers, restarts one that dies, stops them."""

    # A worker that dies this soon after its start, this many times running, is not restarted
    # again (it cannot start: a bad setting, a port taken by someone else).
    QUICK_EXIT = 10.0
    MAX_QUICK_EXITS = 3
    RESTART_DELAY = 1.0

    def __init__(self, argv: Sequence[str], count: int, private_dir: str) -> None:
        self._argv = [*argv, "--worker-of", private_dir]
        self._count = count
        self._procs: dict[int, asyncio.subprocess.Process] = {}  # by slot
        self._keep: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.generation = StoreGeneration(generation_path(private_dir), create=True)

    async def start(self) -> None:
        for slot in range(self._count):
            await self._spawn(slot)
            self._keep.append(asyncio.create_task(self._keep_running(slot)))
        log.info("started %d worker process(es): %s", self._count, self.pids())

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values()]

    async def _spawn(self, slot: int) -> None:
        self._procs[slot] = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bridge", *self._argv),
            stdin=asyncio.subprocess.PIPE,
            # Out of the terminal's process group: Ctrl-C reaches the primary alone, which
            # then stops the workers (each stops once, however many signals come).
            start_new_session=True,
        )

    async def _keep_running(self, slot: int) -> None:
        quick = 0
        while True:
            proc = self._procs[slot]
            began = time.monotonic()
            code = await proc.wait()
            if self._stopping.is_set():
                return
            quick = quick + 1 if time.monotonic() - began < self.QUICK_EXIT else 0
            if quick >= self.MAX_QUICK_EXITS:
                log.error(
                    "worker process %d exited (%s), %d times soon after starting: not "
                    "restarted; the others go on",
                    proc.pid,
                    code,
                    quick,
                )
                return
            log.error("worker process %d exited (%s); starting another", proc.pid, code)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.RESTART_DELAY)
                return  # stopping meanwhile
            try:
                await self._spawn(slot)
            except OSError as exc:
                log.error("cannot start a worker process: %s; the others go on", exc)
                return
            if self._stopping.is_set():  # stop() began while it started: it missed this one
                self._procs[slot].send_signal(signal.SIGTERM)
            else:
                log.info("worker process %d started", self._procs[slot].pid)

    async def stop(self, grace: float) -> None:
        """SIGTERM (open streams get `grace` seconds), then SIGKILL for any that lingers."""
        self._stopping.set()
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        if not self._keep:
            return
        # Each supervisor ends once its current worker has exited (one it was starting when
        # the stop began included: it signals that one itself).
        _, lingering = await asyncio.wait(self._keep, timeout=grace + 5)
        if lingering:
            for proc in self._procs.values():
                if proc.returncode is None:
                    proc.kill()
            await asyncio.wait(lingering, timeout=5)


def primary_socket(private_dir: str) -> str:
    return os.path.join(private_dir, "primary.sock")


def generation_path(private_dir: str) -> str:
    return os.path.join(private_dir, "store-generation")


def watch_primary() -> None:
    """In a worker: stop when the primary is gone (its end of our stdin closes)."""

    def wait() -> None:
        while os.read(0, 64):
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # run_app stops gracefully on SIGTERM

    threading.Thread(target=wait, name="primary-watch", daemon=True).start()
