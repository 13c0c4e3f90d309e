"""The command-line client: `bridge list|ps|show|pull|push|create|cp|rm|stop|run`.

It talks to a running server over HTTP, like the `ollama` CLI, at the address OLLAMA_HOST
names (127.0.0.1:11434 by default), and prints what the `ollama` CLI prints.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TextIO

from bridge.client import chat, commands
from bridge.client.api import Api, ClientError

__all__ = ["COMMANDS", "add_commands", "run_command"]

COMMANDS = ("list", "ls", "ps", "show", "pull", "push", "create", "cp", "rm", "stop", "run")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client subcommands to the `bridge` parser."""
    p = sub.add_parser("list", aliases=["ls"], help="list models")
    p.add_argument("prefix", nargs="?")
    p = sub.add_parser("ps", help="list running models")
    p.add_argument("prefix", nargs="?")
    p = sub.add_parser("show", help="show information for a model")
    p.add_argument("model")
    group = p.add_mutually_exclusive_group()
    for field in ("license", "modelfile", "parameters", "system", "template"):
        group.add_argument(f"--{field}", dest="field", action="store_const", const=field)
    p.add_argument("-v", "--verbose", action="store_true", help="show more information")
    for name, text in (("pull", "pull a model from a registry"), ("push", "push a model")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model")
        p.add_argument("--insecure", action="store_true", help="use an insecure registry")
    p = sub.add_parser("create", help="create a model from a Modelfile")
    p.add_argument("model")
    p.add_argument("-f", "--file", help='name of the Modelfile (default "Modelfile")')
    p.add_argument("-q", "--quantize", help="quantize the model to this level (e.g. q4_K_M)")
    p = sub.add_parser("cp", help="copy a model")
    p.add_argument("source")
    p.add_argument("destination")
    p = sub.add_parser("rm", help="remove models")
    p.add_argument("models", nargs="+")
    p = sub.add_parser("stop", help="stop a running model")
    p.add_argument("model")
    p = sub.add_parser("run", help="chat with a model")
    p.add_argument("model")
    p.add_argument("prompt", nargs="*")
    p.add_argument("--insecure", action="store_true", help="use an insecure registry")
    p.add_argument("--keepalive", help='how long the model stays loaded (e.g. "5m")')
    p.add_argument("--format", help='response format (e.g. "json")')


def _read_line(prompt: str) -> str:
    with contextlib.suppress(ImportError):  # line editing and history for input()
        import readline  # noqa: F401
    return input(prompt)


def run_command(
    args: argparse.Namespace,
    base_url: str,
    *,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run one client command; errors are printed as `Error: <message>` with status 1."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        with Api(base_url) as api:
            return _dispatch(api, args, stdin, out, err)
    except ClientError as exc:
        err.write(f"Error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        err.write("\n")
        return 130


def _dispatch(api: Api, args: argparse.Namespace, stdin: TextIO, out: TextIO, err: TextIO) -> int:
    cmd = args.command
    if cmd in ("list", "ls"):
        return commands.list_models(api, out, args.prefix)
    if cmd == "ps":
        return commands.list_running(api, out, args.prefix)
    if cmd == "show":
        return commands.show(api, out, args.model, args.field, verbose=args.verbose)
    if cmd == "pull":
        return commands.pull(api, err, args.model, insecure=args.insecure)
    if cmd == "push":
        return commands.push(api, out, err, args.model, insecure=args.insecure)
    if cmd == "create":
        return commands.create(api, err, args.model, file=args.file, quantize=args.quantize)
    if cmd == "cp":
        return commands.copy(api, out, args.source, args.destination)
    if cmd == "rm":
        return commands.remove(api, out, err, args.models)
    if cmd == "stop":
        return commands.stop(api, args.model)
    if cmd == "run":
        prompts = list(args.prompt)
        if not stdin.isatty():
            prompts.insert(0, stdin.read())
        prompt = " ".join(prompts) if prompts else None
        return chat.run(
            api,
            args.model,
            prompt,
            out,
            err,
            _read_line,
            insecure=args.insecure,
            keep_alive=args.keepalive,
            fmt=args.format,
        )
    raise ValueError(f"unknown command {cmd!r}")
