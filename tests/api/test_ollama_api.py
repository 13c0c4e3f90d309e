"""The native /api/* protocol against real SmolLM2, over HTTP on loopback."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import PARAMS, SMOL, Start, default_smol_ctx, settings_for
from tests.ggufgen import write_corrupt_gguf, write_tiny_gguf
from tests.store import Store

GREEDY = {"temperature": 0, "num_predict": 8}
GGUF_NAME = "smollm2-135m-instruct.q4_1:latest"


def lines(resp: httpx.Response) -> list[dict[str, Any]]:
    body = resp.content
    assert body.endswith(b"\n")
    return [orjson.loads(line) for line in body.split(b"\n")[:-1]]


@pytest.fixture
async def client(server: TestServer) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=str(server.make_url(""))) as c:
        yield c


async def test_root_and_version(http: httpx.AsyncClient) -> None:
    r = await http.get("/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert len(r.headers["x-request-id"]) == 12
    assert (await http.get("/")).headers["x-request-id"] != r.headers["x-request-id"]
    mine = await http.get("/", headers={"X-Request-Id": "trace-7"})
    assert mine.headers["x-request-id"] == "trace-7"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert (await http.head("/")).status_code == 200
    v = (await http.get("/api/version")).json()["version"]
    major, minor, _ = (int(x) for x in v.split("."))
    assert (major, minor) >= (0, 5)


async def test_tags_lists_store_and_gguf_folder(http: httpx.AsyncClient, store: Store) -> None:
    r = await http.get("/api/tags")
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == {SMOL, GGUF_NAME}
    m = models[SMOL]
    manifest = store.root / "manifests/registry.ollama.ai/library/smollm2/135m"
    assert m["model"] == SMOL
    assert m["digest"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    layers = orjson.loads(manifest.read_bytes())
    assert m["size"] == sum(x["size"] for x in layers["layers"]) + layers["config"]["size"]
    assert m["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "134.52M",
        "quantization_level": "Q4_1",
        "context_length": 8192,
        "embedding_length": 576,
    }
    g = models[GGUF_NAME]["details"]
    assert (g["family"], g["parameter_size"], g["quantization_level"]) == (
        "llama",
        "134.52M",
        "Q4_1",
    )


async def test_client_list_and_show(client: ollama.AsyncClient) -> None:
    listed = await client.list()
    assert {m.model for m in listed.models} == {SMOL, GGUF_NAME}
    shown = await client.show(SMOL)
    assert shown.modelfile is not None and "FROM " in shown.modelfile
    assert "PARAMETER stop <|im_start|>" in shown.modelfile
    assert shown.template is not None and "range .Messages" in shown.template
    assert shown.license == "Apache-2.0"
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 8192
    assert "general.name" not in shown.modelinfo
    assert shown.modelinfo["tokenizer.ggml.tokens"] is None  # arrays are read capped at 0


async def test_show_parameters_and_errors(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/show", json={"model": SMOL})
    body = r.json()
    assert body["parameters"].splitlines() == [
        f'{"stop":<30} "<|im_start|>"',
        f'{"stop":<30} "<|im_end|>"',
    ]
    assert body["details"]["family"] == "llama"
    assert len(body["tensors"]) == 272
    # The listing names the same capabilities, last, as newer Ollama lists them.
    entry = next(t for t in (await http.get("/api/tags")).json()["models"] if t["name"] == SMOL)
    assert list(entry)[-1] == "capabilities" and entry["capabilities"] == body["capabilities"]
    assert "completion" in entry["capabilities"]
    # Request options reach the Modelfile only: Ollama renders `parameters` before them.
    r = await http.post("/api/show", json={"model": SMOL, "options": {"temperature": 0.9}})
    assert r.json()["parameters"] == body["parameters"]
    assert "PARAMETER temperature 0.9" in r.json()["modelfile"]
    r = await http.post("/api/show", json={"model": "nope"})
    assert r.status_code == 404 and r.json() == {"error": "model 'nope:latest' not found"}
    r = await http.post("/api/show", json={})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    r = await http.post("/api/show", json={"model": "bad name!"})
    assert r.status_code == 400 and r.json() == {"error": "invalid model name"}


async def test_gguf_folder_model_gets_the_stop_list_of_its_bundled_template(
    http: httpx.AsyncClient, start: Start, tmp_path: Path
) -> None:
    # SmolLM2's chat template is ChatML: `ollama create` would give it chatml's stop list.
    body = (await http.post("/api/show", json={"model": GGUF_NAME})).json()
    assert body["parameters"].splitlines() == [
        f'{"stop":<30} "<|im_start|>"',
        f'{"stop":<30} "<|im_end|>"',
    ]
    assert "PARAMETER stop <|im_end|>" in body["modelfile"]
    # A chat template like none of Ollama's gets no stop list.
    d = tmp_path / "odd"
    d.mkdir()
    write_tiny_gguf(d / "odd.gguf", chat_template="{{ messages[0].content }} ~~ unlike any")
    server = await start(settings_for(None, d))
    async with httpx.AsyncClient(base_url=str(server.make_url(""))) as other:
        shown = (await other.post("/api/show", json={"model": "odd"})).json()
    assert "parameters" not in shown and "PARAMETER" not in shown["modelfile"]


async def test_generate_stream_framing(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/generate", json={"model": SMOL, "prompt": "Hi", "options": GREEDY})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    objs = lines(r)
    *parts, final = objs
    assert parts and all(p["done"] is False and p["model"] == SMOL for p in parts)
    assert all(list(p) == ["model", "created_at", "response", "done"] for p in parts)
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["response"] == ""
    assert final["eval_count"] == 8
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_duration",
    ):
        assert isinstance(final[key], int) and final[key] > 0, key
    assert final["created_at"].endswith("Z")
    assert (
        isinstance(final["context"], list) and len(final["context"]) >= final["prompt_eval_count"]
    )


async def test_generate_not_streamed(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/generate", json={"model": SMOL, "prompt": "Hi", "stream": False, "options": GREEDY}
    )
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    r = await http.post(
        "/api/generate", json={"model": SMOL, "prompt": "Hi", "stream": False, "options": GREEDY}
    )
    body = r.json()
    assert body["done"] is True and body["response"]
    assert body["eval_count"] == 8
    streamed = await http.post(
        "/api/generate", json={"model": SMOL, "prompt": "Hi", "options": GREEDY}
    )
    assert "".join(o["response"] for o in lines(streamed)) == body["response"]


async def test_generate_raw_and_context(http: httpx.AsyncClient) -> None:
    raw = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    r = await http.post(
        "/api/generate",
        json={
            "model": SMOL,
            "prompt": raw,
            "raw": True,
            "stream": False,
            "options": GREEDY,
        },
    )
    body = r.json()
    assert "context" not in body  # raw replies carry no context
    templated = (
        await http.post(
            "/api/generate",
            json={
                "model": SMOL,
                "prompt": "Hi",
                "stream": False,
                "options": GREEDY,
            },
        )
    ).json()
    assert templated["context"]
    r = await http.post(
        "/api/generate",
        json={
            "model": SMOL,
            "prompt": "x",
            "raw": True,
            "system": "s",
        },
    )
    assert r.status_code == 400
    assert r.json() == {"error": "raw mode does not support template, system, or context"}
    follow = (
        await http.post(
            "/api/generate",
            json={
                "model": SMOL,
                "prompt": "And?",
                "context": templated["context"],
                "stream": False,
                "options": GREEDY,
            },
        )
    ).json()
    assert follow["prompt_eval_count"] > len(templated["context"])


async def test_chat_with_client(client: ollama.AsyncClient) -> None:
    msgs = [{"role": "user", "content": "Name a colour."}]
    # llama.cpp's numerics differ slightly between a cold prompt (one big batch) and a cached
    # one (a short suffix batch), as in llama-server; compare replies from the same cache state.
    await client.chat(SMOL, messages=msgs, options=GREEDY)
    resp = await client.chat(SMOL, messages=msgs, options=GREEDY)
    assert resp.message.role == "assistant" and resp.message.content
    assert resp.done and resp.done_reason == "length" and resp.eval_count == 8
    parts = [p async for p in await client.chat(SMOL, messages=msgs, options=GREEDY, stream=True)]
    assert "".join(p.message.content for p in parts) == resp.message.content
    assert parts[-1].done and parts[-1].message.content == ""


async def test_model_is_echoed_and_matched_case_insensitively(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/chat",
        json={
            "model": "SmolLM2:135M",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "options": GREEDY,
        },
    )
    assert r.status_code == 200 and r.json()["model"] == "SmolLM2:135M"


async def test_json_format(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/chat",
        json={
            "model": SMOL,
            "format": "json",
            "stream": False,
            "messages": [{"role": "user", "content": "Give me a JSON object describing a cat."}],
            "options": {"temperature": 0, "num_predict": 400},
        },
    )
    body = r.json()
    text = body["message"]["content"]
    # The grammar allows any JSON; a tiny model may still be writing it when num_predict ends.
    assert text.lstrip()[:1] in ("{", "[")
    if body["done_reason"] == "stop":
        assert isinstance(orjson.loads(text), dict | list)

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "maximum": 150},
        },
        "required": ["name", "age"],
    }
    r = await http.post(
        "/api/generate",
        json={
            "model": SMOL,
            "format": schema,
            "stream": False,
            "prompt": "Describe a person.",
            "options": {"temperature": 0, "num_predict": 400},
        },
    )
    value = orjson.loads(r.json()["response"])
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)


async def test_stop_strings(http: httpx.AsyncClient) -> None:
    base = (
        await http.post(
            "/api/generate",
            json={
                "model": SMOL,
                "prompt": "Count from 1 to 20.",
                "stream": False,
                "options": {"temperature": 0, "num_predict": 40},
            },
        )
    ).json()["response"]
    base = (
        await http.post(
            "/api/generate",
            json={
                "model": SMOL,
                "prompt": "Count from 1 to 20.",
                "stream": False,
                "options": {"temperature": 0, "num_predict": 40},
            },
        )
    ).json()["response"]  # from the same (cached) state as the next request
    assert len(base) > 10
    stop = base[5:8]
    r = (
        await http.post(
            "/api/generate",
            json={
                "model": SMOL,
                "prompt": "Count from 1 to 20.",
                "stream": False,
                "options": {"temperature": 0, "num_predict": 40, "stop": [stop]},
            },
        )
    ).json()
    assert r["done_reason"] == "stop"
    assert r["response"] == base[: base.index(stop)]


async def test_seed_repeatability_and_num_predict(http: httpx.AsyncClient) -> None:
    def body(seed: int) -> dict[str, Any]:
        return {
            "model": SMOL,
            "prompt": "Tell me a story.",
            "stream": False,
            "options": {
                "temperature": 1.0,
                "top_k": 100,
                "top_p": 1.0,
                "seed": seed,
                "num_predict": 24,
            },
        }

    await http.post("/api/generate", json=body(1))  # same cache state for a, b and c
    a = (await http.post("/api/generate", json=body(7))).json()
    b = (await http.post("/api/generate", json=body(7))).json()
    c = (await http.post("/api/generate", json=body(8))).json()
    assert a["response"] == b["response"]
    assert a["response"] != c["response"]
    assert a["eval_count"] == 24 and a["done_reason"] == "length"


async def test_load_and_unload_with_empty_prompt(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/generate", json={"model": SMOL})
    body = r.json()
    assert body["done"] is True and body["done_reason"] == "load" and body["response"] == ""
    ps = (await http.get("/api/ps")).json()["models"]
    assert [m["name"] for m in ps] == [SMOL]
    assert ps[0]["context_length"] == default_smol_ctx() and ps[0]["size"] > 0
    assert set(ps[0]) == {
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    }
    r = await http.post("/api/chat", json={"model": SMOL, "messages": [], "keep_alive": 0})
    body = r.json()
    assert body["done_reason"] == "unload"
    assert body["message"] == {"role": "assistant", "content": ""}
    assert (await http.get("/api/ps")).json() == {"models": []}


async def test_unknown_model_and_bad_names(http: httpx.AsyncClient) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    r = await http.post("/api/chat", json={"model": "ghost", "messages": msgs})
    assert r.status_code == 404 and r.json() == {"error": "model 'ghost' not found"}
    r = await http.post("/api/generate", json={"model": "ghost:7b", "prompt": "hi"})
    assert r.status_code == 404 and r.json() == {"error": "model 'ghost:7b' not found"}
    r = await http.post("/api/chat", json={"model": "a/b/c/d/e", "messages": msgs})
    assert r.status_code == 400 and r.json() == {"error": "invalid model name"}
    r = await http.post("/api/generate", json={"prompt": "hi"})
    assert r.status_code == 404 and r.json() == {"error": "model '' not found"}
    r = await http.post("/api/chat", json={"messages": msgs})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}


# What Go's json.Decoder answers (Ollama's handlers pass its text on), byte for byte.
GO_SYNTAX_ERRORS = [
    (b"  \r\n", "missing request body"),
    (b"{bad", "invalid character 'b' looking for beginning of object key string"),
    (b'{"model" "x"}', "invalid character '\"' after object key"),
    (b'{"model":"x" "stream":false}', "invalid character '\"' after object key:value pair"),
    (b'{"messages":[{} {}]}', "invalid character '{' after array element"),
    (b'{"model":"x",}', "invalid character '}' looking for beginning of object key string"),
    (b"{'model':'x'}", "invalid character '\\'' looking for beginning of object key string"),
    (b'{"stream":nope}', "invalid character 'o' in literal null (expecting 'u')"),
    (b'{"stream":tru}', "invalid character '}' in literal true (expecting 'e')"),
    (b'{"keep_alive":-x}', "invalid character 'x' in numeric literal"),
    (b'{"keep_alive":1.}', "invalid character '}' after decimal point in numeric literal"),
    (b'{"keep_alive":1e}', "invalid character '}' in exponent of numeric literal"),
    (b'{"model":"a\tb"}', "invalid character '\\t' in string literal"),
    (b'{"model":"\\q"}', "invalid character 'q' in string escape code"),
    (b'{"model":"\\u00g0"}', "invalid character 'g' in \\u hexadecimal character escape"),
    (b'{"model":"x"', "unexpected EOF"),
    (b"<html>", "invalid character '<' looking for beginning of value"),
    (b"\xef\xbb\xbf{}", "invalid character '\u00ef' looking for beginning of value"),
    (b"\x80", "invalid character '\\u0080' looking for beginning of value"),
    (b"\x0c{}", "invalid character '\\f' looking for beginning of value"),
]


@pytest.mark.parametrize(("body", "message"), GO_SYNTAX_ERRORS)
async def test_malformed_bodies_get_gos_own_message(
    http: httpx.AsyncClient, body: bytes, message: str
) -> None:
    r = await http.post("/api/chat", content=body)
    assert r.status_code == 400 and r.json() == {"error": message}


async def test_a_large_malformed_body_gets_gos_message_too(http: httpx.AsyncClient) -> None:
    body = b'{"model": "m", "images": ["' + b"QUFB" * 250_000 + b'"], "stream": flase}'
    r = await http.post("/api/generate", content=body)  # scanned on a thread: 1 MB
    assert r.status_code == 400
    assert r.json() == {"error": "invalid character 'l' in literal false (expecting 'a')"}
    cut = body[: body.index(b', "stream"')]  # the end never came
    r = await http.post("/v1/chat/completions", content=cut)
    assert r.status_code == 400 and r.json()["error"]["message"] == "unexpected EOF"


async def test_only_the_first_json_value_of_a_body_counts(http: httpx.AsyncClient) -> None:
    """As Go's Decoder: what follows the first value is never read."""
    for tail in (b" trailing", b"{", b'\n{"model": "other"}'):
        r = await http.post("/api/show", content=b'{"model": "ghost"}' + tail)
        assert r.status_code == 404 and r.json() == {"error": "model 'ghost:latest' not found"}
    # Bytes that are not UTF-8 and lone surrogate escapes are no syntax error to Go either.
    for name in (b"gh\xffst", b"gh\\ud800st"):
        r = await http.post("/api/show", content=b'{"model": "' + name + b'"}')
        assert r.status_code == 400 and r.json() == {"error": "invalid model name"}


async def test_load_and_unload_replies_are_one_object_streamed_or_not(
    http: httpx.AsyncClient,
) -> None:
    """Ollama answers them with c.JSON: application/json, no trailing newline."""
    for path, body in (
        ("/api/generate", {"model": SMOL}),
        ("/api/chat", {"model": SMOL, "stream": True}),
        ("/api/generate", {"model": SMOL, "keep_alive": 0}),
    ):
        r = await http.post(path, json=body)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json; charset=utf-8"
        assert not r.content.endswith(b"\n") and r.json()["done"] is True
        assert r.json()["done_reason"] == ("unload" if "keep_alive" in body else "load")


async def test_debug_render_only_answers_with_the_prompt(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/api/generate", json={"model": SMOL, "prompt": "Hi there", "_debug_render_only": True}
    )
    out = r.json()
    assert r.status_code == 200 and list(out) == [
        "model",
        "created_at",
        "response",
        "done",
        "_debug_info",
    ]
    rendered = out["_debug_info"]["rendered_template"]
    assert "user\nHi there<|im_end|>" in rendered and rendered.endswith("<|im_start|>assistant\n")
    assert (out["response"], out["done"], list(out["_debug_info"])) == (
        "",
        False,
        ["rendered_template"],  # image_count is left out at 0, as Go's omitempty does
    )
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = await http.post(
        "/api/chat", json={"model": SMOL, "messages": msgs, "_debug_render_only": True}
    )
    out = r.json()
    assert out["message"] == {"role": "", "content": ""} and out["done"] is False
    assert out["_debug_info"]["rendered_template"].startswith("<|im_start|>system\nBe brief.")
    assert "eval_count" not in out  # nothing was generated


async def test_a_null_body_is_an_empty_request(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/generate", content=b"null")  # Go decodes null as no fields
    assert r.status_code == 404 and r.json() == {"error": "model '' not found"}


async def test_local_suffix_and_cloud_status(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/generate", json={"model": f"{SMOL}:local"})
    assert r.status_code == 200 and r.json()["model"] == f"{SMOL}:local"
    r = await http.post("/api/show", json={"model": f"{SMOL}:LOCAL"})
    assert r.status_code == 200 and r.json()["details"]["family"] == "llama"
    assert "context_length" not in r.json()["details"]  # the listing's alone, in Ollama
    r = await http.request("DELETE", "/api/delete", json={"model": "x:local:cloud"})
    assert r.status_code == 400 and r.json()["error"].startswith("use either :local or :cloud")
    r = await http.post("/api/chat", json={"model": "x:local:cloud"})
    assert r.status_code == 400
    assert r.json() == {"error": 'use either :local or :cloud, not both: "x:local:cloud"'}
    r = await http.post("/api/chat", json={"model": "ghost:local", "messages": []})
    assert r.status_code == 404 and r.json() == {"error": "model 'ghost:local' not found"}
    r = await http.get("/api/status")
    assert r.status_code == 200 and set(r.json()) == {"cloud"}
    assert r.json()["cloud"]["source"] in ("none", "config")  # OLLAMA_NO_CLOUD unset here


async def test_bad_bodies(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/chat", content=b"")
    assert r.status_code == 400 and r.json() == {"error": "missing request body"}
    r = await http.post("/api/chat", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"].startswith("invalid character 'n'")
    r = await http.post("/api/generate", json={"model": SMOL, "prompt": 5})
    assert r.status_code == 400
    assert r.json() == {
        "error": "json: cannot unmarshal number into Go struct field "
        "GenerateRequest.prompt of type string"
    }
    r = await http.post(
        "/api/generate", json={"model": SMOL, "prompt": "x", "options": {"num_ctx": "big"}}
    )
    assert r.status_code == 500  # as Ollama answers option type errors
    assert r.json() == {"error": 'option "num_ctx" must be of type integer'}
    r = await http.post("/api/generate", json={"model": SMOL, "prompt": "x", "keep_alive": "300"})
    assert r.status_code == 400
    assert r.json() == {"error": 'time: missing unit in duration "300"'}
    r = await http.post("/api/chat", json={"model": SMOL, "messages": [], "think": "lots"})
    assert r.status_code == 400


async def test_unknown_route_and_method(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/nothing")
    assert r.status_code == 404 and r.text == "404 page not found"
    r = await http.get("/api/chat")
    assert r.status_code == 405 and r.text == "405 method not allowed"


async def test_cors(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/tags", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.content == b""
    r = await http.get("/api/tags", headers={"Origin": "http://localhost:3000"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    r = await http.options(
        "/api/chat",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert r.status_code == 204


async def test_disallowed_host_header(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/tags", headers={"Host": "attacker.example"})
    assert r.status_code == 403


async def test_models_appear_and_disappear_without_restart(
    http: httpx.AsyncClient, store: Store, smollm2: Path
) -> None:
    path = store.add("fresh:1b", model=smollm2, params=PARAMS)
    names = {m["name"] for m in (await http.get("/api/tags")).json()["models"]}
    assert "fresh:1b" in names
    r = await http.post("/api/show", json={"model": "fresh:1b"})
    assert r.status_code == 200
    path.unlink()
    names = {m["name"] for m in (await http.get("/api/tags")).json()["models"]}
    assert "fresh:1b" not in names
    assert (await http.post("/api/show", json={"model": "fresh:1b"})).status_code == 404


async def test_missing_blob_is_reported_when_used(
    start: Start, tmp_path: Path, smollm2: Path
) -> None:
    store = Store(tmp_path / "models")
    store.add(SMOL, model=smollm2, params=PARAMS)
    store.add("broken:latest", model=smollm2, params=PARAMS)
    manifest = orjson.loads(
        (store.root / "manifests/registry.ollama.ai/library/broken/latest").read_bytes()
    )
    # Point the broken model at weights that are not in the store.
    manifest["layers"][0]["digest"] = "sha256:" + "ab" * 32
    (store.root / "manifests/registry.ollama.ai/library/broken/latest").write_bytes(
        orjson.dumps(manifest)
    )
    server = await start(settings_for(store))
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=60) as http:
        names = {m["name"] for m in (await http.get("/api/tags")).json()["models"]}
        assert names == {SMOL, "broken:latest"}
        r = await http.post("/api/generate", json={"model": "broken", "prompt": "hi"})
        assert r.status_code == 500
        assert "missing" in r.json()["error"] and "sha256-" + "ab" * 32 in r.json()["error"]
        r = await http.post(
            "/api/generate",
            json={
                "model": SMOL,
                "prompt": "hi",
                "stream": False,
                "options": GREEDY,
            },
        )
        assert r.status_code == 200 and r.json()["done"]


async def test_corrupt_gguf_never_breaks_listing(
    start: Start, tmp_path: Path, gguf_dir: Path
) -> None:
    write_corrupt_gguf(gguf_dir / "broken.gguf")
    (gguf_dir / "notes.txt").write_text("not a model")
    server = await start(settings_for(None, gguf_dir))
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=60) as http:
        names = {m["name"] for m in (await http.get("/api/tags")).json()["models"]}
        assert names == {GGUF_NAME, "broken:latest"}
        r = await http.post(
            "/api/chat",
            json={
                "model": "broken",
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert r.status_code == 500
        assert "broken.gguf" in r.json()["error"]
        r = await http.post(
            "/api/generate",
            json={
                "model": GGUF_NAME,
                "prompt": "hi",
                "stream": False,
                "options": GREEDY,
            },
        )
        assert r.status_code == 200


async def test_client_disconnect_frees_the_slot(http: httpx.AsyncClient) -> None:
    # num_predict -1 runs until the 4096-token context is full: far longer than the test
    # timeout, so the second request only finishes if the first one was stopped.
    async with http.stream(
        "POST",
        "/api/generate",
        json={
            "model": SMOL,
            "prompt": "Write an endless story.",
            "options": {"num_predict": -1},
        },
    ) as r:
        seen = 0
        async for line in r.aiter_lines():
            if line:
                seen += 1
            if seen == 3:
                break
    r2 = await http.post(
        "/api/generate",
        json={
            "model": SMOL,
            "prompt": "hi",
            "stream": False,
            "options": GREEDY,
        },
    )
    assert r2.status_code == 200 and r2.json()["eval_count"] == 8


async def test_long_history_is_truncated_to_fit(http: httpx.AsyncClient) -> None:
    turn = "Tell me about the weather in a very long and detailed way please. " * 4
    history: list[dict[str, str]] = [{"role": "system", "content": "You are terse."}]
    for i in range(12):
        history += [
            {"role": "user", "content": f"{i}: {turn}"},
            {"role": "assistant", "content": turn},
        ]
    history.append({"role": "user", "content": "Summarise."})
    body = {
        "model": SMOL,
        "messages": history,
        "stream": False,
        "options": {"num_ctx": 512, "num_predict": 8, "temperature": 0},
    }
    r = await http.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    assert 0 < r.json()["prompt_eval_count"] <= 512
    r = await http.post("/api/chat", json={**body, "truncate": False})
    assert r.status_code == 400
    assert r.json()["error"].startswith("the prompt is longer than the context length")


async def test_long_prompt_is_shifted_to_fit(http: httpx.AsyncClient) -> None:
    body = {
        "model": SMOL,
        "prompt": "word " * 600,
        "raw": True,
        "stream": False,
        "options": {"num_ctx": 256, "num_predict": 4, "temperature": 0},
    }
    r = await http.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] < 256
    for off in ({"shift": False}, {"truncate": False}):  # truncate: the prompt goes as it is
        r = await http.post("/api/generate", json={**body, **off})
        assert r.status_code == 400
        assert r.json()["error"].startswith("the prompt is longer than the context length")


async def test_generation_stops_at_the_context_end(http: httpx.AsyncClient) -> None:
    counting = ", ".join(str(i) for i in range(1, 30)) + ","
    r = await http.post(
        "/api/generate",
        json={
            "model": SMOL,
            "prompt": counting,
            "raw": True,
            "stream": False,
            "options": {"num_ctx": 256, "num_predict": -1, "temperature": 0},
        },
    )
    out = r.json()
    n_ctx = (await http.get("/api/ps")).json()["models"][0]["context_length"]
    assert out["done_reason"] == "length"
    assert out["prompt_eval_count"] + out["eval_count"] == n_ctx
