"""Command line: `bridge serve` (flags > environment > config file > defaults), and the client
commands (`bridge list`, `pull`, `run`, ...) that talk to a running server like `ollama` does."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from bridge import OLLAMA_COMPAT_VERSION, __version__
from bridge.config import SETTINGS, ConfigError, Settings, load_settings
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
    return serve(settings)


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


def serve(settings: Settings) -> int:
    from bridge.app import create_app

    addr = settings.address
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)
    log = logging.getLogger("bridge")

    def ready(_banner: str) -> None:
        # run_app calls this once the socket is listening.
        log.info(
            "bridge %s (Ollama API %s) listening on %s",
            __version__,
            OLLAMA_COMPAT_VERSION,
            addr.url,
        )

    try:
        # handler_cancellation: a client that disconnects cancels its handler at once, which
        # frees its queue place or slot and stops its generation.
        web.run_app(
            app,
            host=addr.host,
            port=addr.port,
            print=ready,
            handler_cancellation=True,
            access_log=None,
            # On SIGINT/SIGTERM open streams get this long to finish, then are cancelled
            # (which stops their generation); then every model is unloaded.
            shutdown_timeout=SHUTDOWN_GRACE,
        )
    except OSError as exc:
        print(f"bridge: cannot listen on {addr.host}:{addr.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
