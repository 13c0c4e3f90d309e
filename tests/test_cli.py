"""`bridge serve` as a real process: start-up, bad settings, clean shutdown on a signal."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serve(tmp_path: Path, gguf_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(tmp_path / "none"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge",
            "serve",
            "--gguf-dir",
            str(gguf_dir),
            "--demo-model",
            "off",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Wait for the line that says it listens (no sleeping: read the log as it comes).
        assert proc.stderr is not None
        for line in proc.stderr:
            if b"listening on" in line:
                break
        else:
            pytest.fail("bridge exited before listening")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_bad_setting_exits_2_with_a_clear_message() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bridge", "serve", "--num-parallel", "many"],
        capture_output=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2
    assert b"--num-parallel" in r.stderr and b"Traceback" not in r.stderr


def test_sigterm_ends_streams_unloads_and_exits_0(
    serve: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, url = serve
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/").text == "Ollama is running"
        with http.stream(
            "POST",
            "/api/generate",
            json={
                "model": "smollm2-135m-instruct.q4_1",
                "prompt": "Tell an endless story.",
                "options": {"num_predict": -1},
            },
        ) as r:
            lines = r.iter_lines()
            assert orjson.loads(next(lines))["done"] is False
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)  # the stream ends instead of hanging
        objs = [orjson.loads(x) for x in rest if x]
        # Streams end cleanly with an in-band error, as after any failure mid-stream.
        assert objs[-1] == {"error": "the server is shutting down"}
        assert all(o.get("done") is False for o in objs[:-1])
    assert proc.wait(timeout=30) == 0
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert b"unloading smollm2-135m-instruct.q4_1:latest (shutdown)" in log
    assert b"Traceback" not in log


def test_serve_help_lists_every_setting() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bridge", "serve", "--help"],
        capture_output=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert b"--memory-budget" in r.stdout and b"90%" in r.stdout


def test_a_request_whose_body_comes_after_sigterm_is_answered(
    serve: tuple[subprocess.Popen[bytes], str],
) -> None:
    """In flight when the stop begins, so it finishes (aiohttp's own shutdown would stop
    reading its body)."""
    proc, url = serve
    body = orjson.dumps({"model": "smollm2-135m-instruct.q4_1"})
    host = url.removeprefix("http://")
    with socket.create_connection(("127.0.0.1", int(host.rsplit(":", 1)[1])), timeout=30) as s:
        s.sendall(
            b"POST /api/show HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (host.encode(), len(body))
        )
        reply = s.makefile("rb")
        assert reply.readline() == b"HTTP/1.1 100 Continue\r\n"  # the handler waits for it
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        for line in proc.stderr:
            if b"stopping: 1 request(s) in flight" in line:
                break
        s.sendall(body)
        assert reply.readline() == b"\r\n"
        assert reply.readline().startswith(b"HTTP/1.1 200")
        assert b'"family":"llama"' in reply.read()
    assert proc.wait(timeout=30) == 0
