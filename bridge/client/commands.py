"""The client commands: list, ps, show, pull, push, create, cp, rm, stop (run is in `chat`).

Each talks to a running server over HTTP, the way the `ollama` CLI does, and prints what the
`ollama` CLI prints. A command returns its exit status; errors come back as ClientError and are
printed by the caller as `Error: <message>`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bridge.client import modelfile
from bridge.client.api import Api, ClientError
from bridge.client.formats import human_bytes, human_number, human_time, parse_time, table
from bridge.client.progress import Bar, Progress, Spinner
from bridge.models.names import DEFAULT_HOST, InvalidName, ModelName

# --- progress streams -----------------------------------------------------------------------


def follow(items: Iterable[dict[str, Any]], p: Progress, *, pull: bool = False) -> None:
    """Draw a progress stream: a bar per digest, a spinner per status."""
    bars: dict[str, Bar] = {}
    status = ""
    for resp in items:
        digest = str(resp.get("digest") or "")
        if digest:
            completed = int(resp.get("completed") or 0)
            if pull and completed == 0:
                continue  # the line sent before a download starts (as ollama skips it)
            bar = bars.get(digest)
            if bar is None:
                if pull:
                    name = digest.removeprefix("sha256:").strip()[:12]
                    message = f"pulling {name}:"
                else:
                    message = str(resp.get("status") or f"pushing {digest[7:19]}...")
                bar = Bar(message, int(resp.get("total") or 0), completed)
                bars[digest] = bar
                p.add(bar)
            bar.set(completed)
        elif resp.get("status") != status:
            status = str(resp.get("status") or "")
            p.add(Spinner(status))
        p.refresh()


def pull_with_progress(api: Api, name: str, err: TextIO, *, insecure: bool = False) -> None:
    p = Progress(err)
    try:
        follow(api.stream("/api/pull", {"model": name, "insecure": insecure}), p, pull=True)
    finally:
        p.stop()


# --- commands ---------------------------------------------------------------------------------


def list_models(api: Api, out: TextIO, prefix: str | None = None) -> int:
    models = (api.request("GET", "/api/tags") or {}).get("models") or []
    rows = []
    for m in models:
        name = str(m.get("name", ""))
        if prefix and not name.lower().startswith(prefix.lower()):
            continue
        size = "-" if m.get("remote_model") else human_bytes(int(m.get("size") or 0))
        modified = human_time(parse_time(str(m.get("modified_at", ""))))
        rows.append([name, str(m.get("digest", ""))[:12], size, modified])
    out.write(table(rows, ["NAME", "ID", "SIZE", "MODIFIED"]))
    return 0


def _processor(size: int, vram: int) -> str:
    if vram == 0:
        return "100% CPU"
    if vram == size:
        return "100% GPU"
    if vram > size or size == 0:
        return "Unknown"
    cpu = round((size - vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def list_running(api: Api, out: TextIO, prefix: str | None = None) -> int:
    models = (api.request("GET", "/api/ps") or {}).get("models") or []
    now = datetime.now(UTC)
    rows = []
    for m in models:
        name = str(m.get("name", ""))
        if prefix and not name.startswith(prefix):
            continue
        size, vram = int(m.get("size") or 0), int(m.get("size_vram") or 0)
        expires = parse_time(str(m.get("expires_at", "")))
        if expires is not None and expires < now:
            until = "Stopping..."
        else:
            until = human_time(expires, "Never", now=now)
        rows.append(
            [
                name,
                str(m.get("digest", ""))[:12],
                human_bytes(size),
                _processor(size, vram),
                str(m.get("context_length", 0)),
                until,
            ]
        )
    out.write(table(rows, ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]))
    return 0


def _section(out: TextIO, title: str, rows: list[list[str]], width: int = 30) -> None:
    out.write(f"  {title}\n")
    out.write(table(rows, col_width=width))
    out.write("\n")


def _head(text: str, n: int) -> list[list[str]]:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    rows = [["", x] for x in lines[:n]]
    if len(lines) > n:
        rows.append(["", "..."])
    return rows


def _number(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _go_value(v: Any) -> str:
    """Go's %v of a JSON value (numbers as float64, which %v prints like %g)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        import numpy as np

        x = float(v)
        if x == 0:
            return "0"
        exp = math.floor(math.log10(abs(x)))
        if exp < -4 or exp >= 6:  # Go's shortest %g
            return np.format_float_scientific(x, unique=True, trim="-", exp_digits=2)
        return np.format_float_positional(x, unique=True, trim="-")
    if isinstance(v, list):
        return "[" + " ".join(_go_value(x) for x in v) + "]"
    return str(v)


def _metadata(v: Any) -> str:
    if isinstance(v, list):
        shown, width = 0, 1
        for i, item in enumerate(v):
            w = len(_go_value(item)) + (2 if i else 0)
            if width + w > 10 and i > 0:
                break
            width += w
            shown += 1
        if shown < len(v):
            return _go_value(v[:shown])[:-1] + f" ...+{len(v) - shown} more]"
        return _go_value(v)
    return _go_value(v)


def show(
    api: Api, out: TextIO, name: str, field: str | None = None, *, verbose: bool = False
) -> int:
    body: dict[str, Any] = {"model": name}
    if verbose:
        body["verbose"] = True
    resp = api.request("POST", "/api/show", body) or {}
    if field is not None:
        value = resp.get(field) or ""
        if field == "modelfile" or not value:
            out.write(str(value) + ("" if str(value).endswith("\n") or not value else "\n"))
        else:
            out.write(f"{value}\n")
        return 0
    details = resp.get("details") or {}
    info = resp.get("model_info") or {}
    rows: list[list[str]] = []
    if info:
        arch = str(info.get("general.architecture") or "")
        if arch:
            rows.append(["", "architecture", arch])
        params = str(details.get("parameter_size") or "")
        if not params and isinstance(info.get("general.parameter_count"), int | float):
            params = human_number(int(info["general.parameter_count"]))
        if params:
            rows.append(["", "parameters", params])
        for key, label in (
            ("context_length", "context length"),
            ("embedding_length", "embedding length"),
        ):
            if f"{arch}.{key}" in info:
                rows.append(["", label, _number(info[f"{arch}.{key}"])])
    else:
        rows.append(["", "architecture", str(details.get("family") or "")])
        rows.append(["", "parameters", str(details.get("parameter_size") or "")])
    rows.append(["", "quantization", str(details.get("quantization_level") or "")])
    _section(out, "Model", rows)
    caps = resp.get("capabilities") or []
    if caps:
        _section(out, "Capabilities", [["", str(c)] for c in caps])
    if resp.get("parameters"):
        prows = [["", *line.split()] for line in str(resp["parameters"]).splitlines() if line]
        _section(out, "Parameters", prows)
    if verbose and info:
        _section(out, "Metadata", [["", k, _metadata(info[k])] for k in sorted(info)])
    tensors = resp.get("tensors") or []
    if verbose and tensors:
        rows = [
            ["", str(t.get("name")), str(t.get("type")), _go_value(t.get("shape") or [])]
            for t in tensors
        ]
        _section(out, "Tensors", rows)
    if resp.get("system"):
        _section(out, "System", _head(str(resp["system"]), 2), 100)
    if resp.get("license"):
        _section(out, "License", _head(str(resp["license"]), 2), 100)
    return 0


def pull(api: Api, err: TextIO, name: str, *, insecure: bool = False) -> int:
    pull_with_progress(api, name, err, insecure=insecure)
    return 0


def push(api: Api, out: TextIO, err: TextIO, name: str, *, insecure: bool = False) -> int:
    p = Progress(err)
    try:
        follow(api.stream("/api/push", {"model": name, "insecure": insecure}), p)
    except ClientError as exc:
        text = str(exc).lower()
        if "access denied" in text or "unauthorized" in text:
            raise ClientError(
                "you are not authorized to push to this namespace, "
                "create the model under a namespace you own"
            ) from exc
        raise
    finally:
        p.stop()
    n = ModelName.parse(name)
    destination = n.full
    if n.host.endswith((".ollama.ai", ".ollama.com")) or n.host == DEFAULT_HOST:
        destination = "https://ollama.com/" + n.display.removesuffix(":latest")
    out.write(f"\nYou can find your model at:\n\n\t{destination}\n")
    return 0


def copy(api: Api, out: TextIO, source: str, destination: str) -> int:
    api.request("POST", "/api/copy", {"source": source, "destination": destination})
    out.write(f"copied '{source}' to '{destination}'\n")
    return 0


def unload(api: Api, name: str) -> None:
    """What `ollama stop` and `ollama rm` send: a generate with no prompt and keep_alive 0."""
    api.request("POST", "/api/generate", {"model": name, "keep_alive": 0})


def stop(api: Api, name: str) -> int:
    try:
        unload(api, name)
    except ClientError as exc:
        if "not found" in str(exc):
            raise ClientError(f'couldn\'t find model "{name}" to stop') from exc
        raise
    return 0


def remove(api: Api, out: TextIO, err: TextIO, names: list[str]) -> int:
    for name in names:
        try:
            unload(api, name)
        except ClientError as exc:
            if "not found" not in str(exc).lower():
                err.write(f"Warning: unable to stop model '{name}'\n")
        api.request("DELETE", "/api/delete", {"name": name})
        out.write(f"deleted '{name}'\n")
    return 0


def _uploads(api: Api, uploads: dict[Path, str], p: Progress) -> None:
    for path, digest in uploads.items():
        spinner = Spinner(f"copying file {digest} 0%")
        p.add(spinner)
        if not api.has_blob(digest):
            size = max(path.stat().st_size, 1)

            def progress(
                sent: int, spinner: Spinner = spinner, d: str = digest, size: int = size
            ) -> None:
                spinner.message = f"copying file {d} {100 * sent // size}%"
                p.refresh()

            api.upload_blob(digest, path, progress)
        spinner.message = f"copying file {digest} 100%"
        spinner.stop()


def create(
    api: Api,
    err: TextIO,
    name: str,
    *,
    file: str | None = None,
    quantize: str | None = None,
) -> int:
    try:
        ModelName.parse(name)
    except InvalidName as exc:
        raise ClientError(f"invalid model name: {name}") from exc
    path: Path | None = None
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ClientError("specified Modelfile wasn't found")
    elif Path("Modelfile").is_file():
        path = Path("Modelfile")
    p = Progress(err)
    try:
        try:
            commands = modelfile.read(path) if path else modelfile.parse("FROM .\n")
            p.add(Spinner("gathering model components"))
            plan = modelfile.create_request(
                commands, path.parent if path else Path("."), warn=lambda w: _warn(err, w)
            )
        except modelfile.ModelfileError as exc:
            raise ClientError(str(exc)) from exc
        plan.request["model"] = name
        if quantize:
            plan.request["quantize"] = quantize
        _uploads(api, plan.uploads, p)
        follow(api.stream("/api/create", plan.request), p)
    finally:
        p.stop()
    return 0


def _warn(err: TextIO, text: str) -> None:
    err.write(text + "\n")
