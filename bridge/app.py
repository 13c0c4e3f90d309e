"""Assembling the aiohttp application. No I/O here: resources start in cleanup contexts."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable

import httpx
from aiohttp import web

from bridge.config import Settings
from bridge.engine.base import Engine
from bridge.http.anthropic.routes import add_routes as add_anthropic_routes
from bridge.http.cors import allowed_origins, host_guard_middleware, install_cors
from bridge.http.errors import error_middleware
from bridge.http.inflight import install_in_flight
from bridge.http.keys import SERVICE, SETTINGS
from bridge.http.middleware import install_request_ids
from bridge.http.ollama.manage import add_routes as add_manage_routes
from bridge.http.ollama.routes import add_routes as add_ollama_routes
from bridge.http.openai.routes import add_routes as add_openai_routes
from bridge.memory import available_memory
from bridge.models.resolver import Resolver
from bridge.scheduler import Scheduler
from bridge.service import Service
from bridge.upstream import Upstreams

log = logging.getLogger(__name__)

# Images arrive base64-encoded inside JSON bodies; Ollama sets no small limit either.
MAX_BODY = 256 * 1024 * 1024


def _default_engine() -> Engine:
    from bridge.engine.llamacpp import LlamaCppEngine

    return LlamaCppEngine()


def create_app(
    settings: Settings,
    *,
    engine_factory: Callable[[], Engine] | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    primary_socket: str | None = None,
) -> web.Application:
    """The bridge application. `engine_factory` and `upstream_transport` are the seams tests
    use to inject failures. With `primary_socket`, a worker process (see `bridge.workers`):
    it serves upstream generations and passes the rest to the primary listening there."""
    app = web.Application(client_max_size=MAX_BODY)
    if primary_socket is not None:
        from bridge.http.forward import install_forwarding
        from bridge.workers import PrimaryOnlyEngine

        install_forwarding(app, primary_socket)
        engine_factory = PrimaryOnlyEngine
    install_cors(app, allowed_origins(settings.origins))
    if settings.address.is_loopback:
        app.middlewares.append(host_guard_middleware(hostname=socket.gethostname()))
    install_request_ids(app)
    app.middlewares.append(error_middleware)
    install_in_flight(app)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_service_ctx(engine_factory or _default_engine, upstream_transport))
    app.on_shutdown.append(_interrupt)
    add_ollama_routes(app)
    add_manage_routes(app)
    add_openai_routes(app)
    add_anthropic_routes(app)
    return app


async def _interrupt(app: web.Application) -> None:
    # Runs when the server stops accepting, before it waits for open requests to finish.
    app[SERVICE].scheduler.interrupt()


async def _first_scan(resolver: Resolver, settings: Settings) -> None:
    specs = await resolver.list()
    log.info(
        "%d model(s) found (store %s, %d GGUF folder(s))",
        len(specs),
        settings.models_dir(),
        len(settings.gguf_dirs),
    )


def _service_ctx(
    engine_factory: Callable[[], Engine],
    upstream_transport: httpx.AsyncBaseTransport | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        resolver = Resolver(
            store_dir=settings.models_dir(),
            gguf_dirs=settings.gguf_dirs,
            aliases=settings.aliases,
            demo=settings.demo_model,
        )
        scheduler = Scheduler(
            engine_factory(),
            default_keep_alive=settings.keep_alive,
            max_loaded=settings.max_loaded_models,
            max_queue=settings.max_queue,
            memory_budget=settings.memory_budget or int(0.9 * available_memory()),
            gpu_overhead=settings.gpu_overhead,
            load_cooldown=settings.load_cooldown,
        )
        upstreams = Upstreams(settings.upstreams, transport=upstream_transport)
        await upstreams.start()
        app[SERVICE] = Service(settings, resolver, scheduler, upstreams)
        # The first scan reads every GGUF header; it runs in the background so that the
        # server answers at once (a request that needs the models waits for its own scan).
        scan = asyncio.create_task(_first_scan(resolver, settings))
        gpus = asyncio.create_task(scheduler.gpus())  # logged now, not at the first load
        yield
        scan.cancel()
        gpus.cancel()
        await resolver.close()
        await scheduler.close()
        await upstreams.close()

    return ctx
