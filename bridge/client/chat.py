"""`run`: chat with a model, streaming its reply as it comes.

Like `ollama run`: the model is looked up with /api/show and pulled when it is missing; with a
prompt (arguments, or piped standard input) the reply is printed once; otherwise an
interactive session reads messages at a `>>> ` prompt and keeps the conversation. `/bye` ends
it, `/clear` forgets the conversation, `/?` lists the commands, and a message that starts with
`\"\"\"` continues until a line that ends with `\"\"\"`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from bridge.client.api import Api, ClientError
from bridge.client.commands import pull_with_progress
from bridge.client.progress import Progress, Spinner

HELP = """Available Commands:
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
"""

ReadLine = Callable[[str], str]  # like input(): raises EOFError at the end


def ensure_model(api: Api, name: str, err: TextIO, *, insecure: bool = False) -> None:
    """`/api/show`, and a pull with progress when the model is not there."""
    try:
        api.request("POST", "/api/show", {"model": name})
    except ClientError as exc:
        if exc.status != 404:
            raise
        pull_with_progress(api, name, err, insecure=insecure)


def preload(api: Api, name: str, err: TextIO, keep_alive: str | None) -> None:
    p = Progress(err)
    p.add(Spinner(""))
    try:
        body: dict[str, Any] = {"model": name}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        api.request("POST", "/api/generate", body)
    finally:
        p.stop()


def reply(
    api: Api,
    name: str,
    messages: list[dict[str, Any]],
    out: TextIO,
    *,
    options: dict[str, Any] | None = None,
    keep_alive: str | None = None,
    fmt: str | None = None,
) -> dict[str, Any]:
    """Stream one assistant reply to `out`; returns the assistant message."""
    body: dict[str, Any] = {"model": name, "messages": messages, "stream": True}
    if options:
        body["options"] = options
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    if fmt:
        body["format"] = fmt
    content: list[str] = []
    thinking = False
    for chunk in api.stream("/api/chat", body):
        message = chunk.get("message") or {}
        if message.get("thinking"):
            if not thinking:
                out.write("Thinking...\n")
                thinking = True
            out.write(str(message["thinking"]))
        text = str(message.get("content") or "")
        if text:
            if thinking:
                out.write("\n...done thinking.\n\n")
                thinking = False
            content.append(text)
            out.write(text)
        out.flush()
    out.write("\n")
    out.flush()
    return {"role": "assistant", "content": "".join(content)}


def _read_message(read_line: ReadLine) -> str | None:
    """One message; None at the end of input."""
    try:
        line = read_line(">>> ")
    except EOFError:
        return None
    if not line.startswith('"""'):
        return line
    parts = [line[3:]]
    while not parts[-1].endswith('"""'):
        try:
            parts.append(read_line("... "))
        except EOFError:
            return None
    parts[-1] = parts[-1][:-3]
    return "\n".join(parts).strip("\n")


def interactive(
    api: Api,
    name: str,
    out: TextIO,
    read_line: ReadLine,
    *,
    options: dict[str, Any] | None = None,
    keep_alive: str | None = None,
) -> int:
    messages: list[dict[str, Any]] = []
    while True:
        text = _read_message(read_line)
        if text is None:
            out.write("\n")
            return 0
        command = text.strip()
        if not command:
            continue
        if command in ("/bye", "/exit"):
            return 0
        if command in ("/?", "/help"):
            out.write(HELP)
            continue
        if command == "/clear":
            messages = []
            out.write("Cleared session context\n")
            continue
        if command.startswith("/") and " " not in command:
            out.write(f"Unknown command '{command}'. Type /? for help\n")
            continue
        messages.append({"role": "user", "content": text})
        try:
            messages.append(reply(api, name, messages, out, options=options, keep_alive=keep_alive))
        except KeyboardInterrupt:
            messages.pop()
            out.write("\n")


def run(
    api: Api,
    name: str,
    prompt: str | None,
    out: TextIO,
    err: TextIO,
    read_line: ReadLine,
    *,
    insecure: bool = False,
    keep_alive: str | None = None,
    fmt: str | None = None,
) -> int:
    ensure_model(api, name, err, insecure=insecure)
    if prompt is not None:
        reply(api, name, [{"role": "user", "content": prompt}], out, keep_alive=keep_alive, fmt=fmt)
        return 0
    preload(api, name, err, keep_alive)
    return interactive(api, name, out, read_line, keep_alive=keep_alive)
