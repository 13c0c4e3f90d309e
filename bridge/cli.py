"""Command line: `bridge serve` (flags > environment > config file > defaults), and the client
commands (`bridge list`, `pull`, `run`, ...) that talk to a running server like `ollama` does."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypedDict

from aiohttp import web

from bridge import OLLAMA_COMPAT_VERSION, __version__
from bridge.config import SETTINGS, ConfigError, Settings, load_settings
from bridge.http.inflight import INFLIGHT
from bridge.http.keys import SERVICE
from bridge.http.middleware import RequestIdFilter


def _escape(text: str) -> str:
    # argparse treats % in help texts as a format directive.
    return text.replace("%", "%%")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge", description="A drop-in replacement for `ollama serve` on llama.cpp."
    )
    parser.add_argument("--version", action="version", version=f"bridge {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="start the server")
    serve.add_argument("--config", help="config file (TOML); environment: BRIDGE_CONFIG")
    for s in SETTINGS:
        flag = "--" + s.name.replace("_", "-")
        env = f" (environment: {s.env})" if s.env else ""
        if s.name == "gguf_dirs":
            serve.add_argument(
                "--gguf-dir",
                dest="gguf_dirs",
                action="append",
                metavar="DIR",
                help=f"{_escape(s.help)} Repeatable.{env}",
            )
        elif isinstance(s.default, bool):
            serve.add_argument(
                flag, dest=s.name, action="store_true", default=None, help=f"{_escape(s.help)}{env}"
            )
        else:
            serve.add_argument(
                flag,
                dest=s.name,
                metavar=s.name.upper(),
                help=f"{_escape(s.help)} Default: {s.default!r}.{env}",
            )
    # Internal: how the primary starts a worker process (bridge.workers).
    serve.add_argument("--worker-of", metavar="DIR", help=argparse.SUPPRESS)
    from bridge.client import add_commands

    add_commands(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    if flags.get("gguf_dirs"):
        flags["gguf_dirs"] = tuple(flags["gguf_dirs"])
    return load_settings(flags, config_path=args.config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command != "serve":
        return client(args)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
    )
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # httpx logs every upstream request at INFO: a line per proxied request, and ~30 µs.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.worker_of:
        return serve_worker(settings, args.worker_of)
    return serve(settings, argv)


def client(args: argparse.Namespace) -> int:
    """A client command, against the server OLLAMA_HOST names."""
    from bridge.client import run_command

    try:
        url = load_settings().address.url
    except ConfigError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    return run_command(args, url)


SHUTDOWN_GRACE = 2.0


async def _freeze_startup_objects(app: web.Application) -> None:
    """What start-up made (modules, settings, clients) lives as long as the server: kept out
    of the collector's sight, a full collection no longer walks it (about 70,000 objects, a
    pause that every request in flight waits out)."""
    gc.collect()
    gc.freeze()


def serve(settings: Settings, argv: Sequence[str] = ()) -> int:
    """The server; with `workers` > 1 (Linux), the primary of that many processes, which it
    starts with `argv` (this command's own arguments) and stops with itself."""
    from bridge import workers
    from bridge.app import create_app

    addr = settings.address
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)
    log = logging.getLogger("bridge")
    listen: Listen = {"host": addr.host, "port": addr.port}
    drain = None
    if settings.workers > 1 and not workers.SUPPORTED:
        log.warning(
            "workers = %d needs Linux (SO_REUSEPORT); serving from one process", settings.workers
        )
    elif settings.workers > 1:
        try:
            sock = workers.listen(addr.host, addr.port, first=True)
        except OSError as exc:
            print(f"bridge: cannot listen on {addr.host}:{addr.port}: {exc}", file=sys.stderr)
            return 1
        private = tempfile.mkdtemp(prefix="bridge-")  # mode 0700: this user's processes only
        # The workers bind the port this socket got (it may have been 0).
        addr = dataclasses.replace(addr, port=sock.getsockname()[1])
        worker_argv = [*argv, "--host", addr.url]
        pool = workers.Workers(worker_argv, settings.workers - 1, private)

        async def start_workers(app: web.Application) -> None:
            app[SERVICE].resolver.watchers.append(pool.generation.bump)
            await pool.start()

        async def drain() -> None:
            # Before the primary closes its private socket: the workers' requests in flight
            # may still need it (everything but upstream generations passes through it).
            log.info("stopping: the worker processes finish their requests first")
            await pool.stop(SHUTDOWN_GRACE)

        async def stop_workers(app: web.Application) -> None:
            await pool.stop(SHUTDOWN_GRACE)  # at once where the start-up failed
            shutil.rmtree(private, ignore_errors=True)

        app.on_startup.append(start_workers)
        app.on_shutdown.append(stop_workers)
        listen = {"sock": sock, "private": workers.primary_socket(private)}

    def ready() -> None:
        log.info(
            "bridge %s (Ollama API %s) listening on %s%s",
            __version__,
            OLLAMA_COMPAT_VERSION,
            addr.url,
            f" ({settings.workers} processes)" if "sock" in listen else "",
        )

    return _run(app, listen, ready, drain)


def serve_worker(settings: Settings, private_dir: str) -> int:
    """A worker process: the primary started it with its own arguments (bridge.workers)."""
    from bridge import workers
    from bridge.app import create_app

    addr = settings.address
    app = create_app(settings, primary_socket=workers.primary_socket(private_dir))
    app.on_startup.append(_freeze_startup_objects)
    log = logging.getLogger("bridge")

    async def follow_primary(app: web.Application) -> None:
        generation = workers.StoreGeneration(workers.generation_path(private_dir))
        app[SERVICE].resolver.follow(generation.read)
        workers.watch_primary()

    app.on_startup.append(follow_primary)
    try:
        sock = workers.listen(addr.host, addr.port)
    except OSError as exc:
        print(f"bridge worker: cannot listen on {addr.host}:{addr.port}: {exc}", file=sys.stderr)
        return 1

    def ready() -> None:
        log.info("worker %d answering on %s", os.getpid(), addr.url)

    return _run(app, {"sock": sock}, ready)


class Listen(TypedDict, total=False):
    host: str
    port: int
    sock: socket.socket  # bound already (workers share the port)
    private: str  # a Unix socket for the primary's workers alone


def _run(
    app: web.Application,
    listen: Listen,
    ready: Callable[[], None],
    drain: Callable[[], Awaitable[None]] | None = None,
) -> int:
    try:
        with asyncio.Runner() as runner:
            return runner.run(_serve_until_stopped(app, listen, ready, drain))
    except KeyboardInterrupt:  # Ctrl-C before the server took over the signals
        return 0


async def _serve_until_stopped(
    app: web.Application,
    listen: Listen,
    ready: Callable[[], None],
    drain: Callable[[], Awaitable[None]] | None,
) -> int:
    """Serve until SIGINT or SIGTERM, then stop in this order: stop accepting on the public
    socket (as Ollama does at once) and end local generations; `drain` (the workers finish
    and exit); requests in flight get SHUTDOWN_GRACE seconds; then the private socket closes,
    what is left is cut, and every model is unloaded.
    Later signals change nothing: a service manager that signals every process, and the
    primary that signals its workers again, must not break a stop off half-way."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def stop() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: None)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        # A client that disconnects cancels its handler at once, which frees its queue place
        # or slot and stops its generation.
        handler_cancellation=True,
        access_log=None,
        # Requests had their grace already (`idle`): what is still open is cut.
        shutdown_timeout=0.5,
    )
    await runner.setup()  # start-up: settings, the first scan, upstreams, workers
    try:
        if "sock" in listen:
            public: web.BaseSite = web.SockSite(runner, listen["sock"])
        else:
            public = web.TCPSite(runner, listen["host"], listen["port"])
        try:
            await public.start()
        except OSError as exc:
            print(
                f"bridge: cannot listen on {listen.get('host')}:{listen.get('port')}: {exc}",
                file=sys.stderr,
            )
            return 1
        if "private" in listen:
            await web.UnixSite(runner, listen["private"]).start()
        ready()
        await stopping.wait()
        await public.stop()
        logging.getLogger("bridge").info(
            "stopping: %d request(s) in flight get up to %gs", app[INFLIGHT].count, SHUTDOWN_GRACE
        )
        app[SERVICE].scheduler.interrupt()  # local generations end now, with an error record
        if drain is not None:
            await drain()
        # Requests in flight finish, bodies still arriving included: aiohttp's shutdown
        # below reads nothing more from any connection.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_GRACE):
                await app[INFLIGHT].idle()
    finally:
        await runner.cleanup()
    return 0
