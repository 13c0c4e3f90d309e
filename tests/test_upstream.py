"""The upstream library against fake Ollama and OpenAI servers on loopback (and respx for the
failures a real server cannot be made to produce on demand)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from bridge.domain import ChatRequest, Chunk, GenerateRequest, Message, ModelSpec, Options, ToolCall
from bridge.errors import (
    InvalidRequest,
    ModelNotFound,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bridge.http.openai.wire import decode_chat as decode_openai_chat
from bridge.upstream import UpstreamConfig, Upstreams
from bridge.upstream.aiohttp_transport import AiohttpTransport
from bridge.upstream.config import ModelMapping
from tests.fake_upstreams import Fake, Fault, Script, closed_port, fakes

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def cfg(fake: Fake | None = None, name: str = "up", **kw: Any) -> UpstreamConfig:
    """A config for a fake, with the periodic tasks off (tests run them by hand)."""
    values: dict[str, Any] = {
        "url": fake.base if fake else "http://127.0.0.1:9/v1",
        "kind": fake.kind if fake else "openai",
        "health_interval": 0,
        "refresh": 0,
    }
    values.update(kw)
    values.setdefault("discover", not values.get("models"))  # as the config file has it
    return UpstreamConfig(name=name, **values)


# The transports requests can go through: bridge's default (aiohttp's client under httpx) and
# httpx's own. The failure tests run on both: each must raise httpx's errors the same way.
VIA = pytest.mark.parametrize("via", ["aiohttp", "httpx"])


def transport_for(via: str) -> httpx.AsyncBaseTransport:
    return AiohttpTransport() if via == "aiohttp" else httpx.AsyncHTTPTransport()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingTransport(httpx.AsyncBaseTransport):
    """The real transport, counting the responses that are open (a leak never gets back to 0)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.open = 0
        self.total = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.open += 1
        self.total += 1
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Counted(response.stream, self),  # type: ignore[arg-type]
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Counted(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, owner: CountingTransport) -> None:
        self.inner = inner
        self.owner = owner
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for data in self.inner:
            yield data

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner.open -= 1
        await self.inner.aclose()


@contextlib.asynccontextmanager
async def running(
    *configs: UpstreamConfig,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[Upstreams]:
    ups = Upstreams(configs, transport=transport, **({"clock": clock} if clock else {}))
    await ups.start()
    try:
        yield ups
    finally:
        await ups.close()
        assert all(s.outstanding == 0 for s in ups.state())


def chat_req(model: str = "fake", **kw: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message("user", "hi"),), **kw)


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [c async for c in stream]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


# --- models: discovery, names, clashes -------------------------------------------------------


async def test_discovered_models_are_listed_under_their_names_or_prefixed_on_a_clash() -> None:
    async with (
        fakes(
            Fake("ollama", models=("llama3:latest", "qwen3:8b")),
            Fake("openai", models=("meta-llama/Llama-3.1-8B-Instruct", "/models/Foo-Q4_K_M.gguf")),
        ) as (o, a),
        running(cfg(o, "gpu1"), cfg(a, "vllm")) as ups,
    ):
        names = [s.name for s in ups.models()]
        assert names == [
            "llama3:latest",
            "qwen3:8b",
            "meta-llama/Llama-3.1-8B-Instruct:latest",
            "foo-q4_k_m:latest",
        ]
        spec = ups.models()[0]
        assert (spec.source, spec.size, spec.digest) == ("upstream", 1000, f"{0:064x}")
        assert spec.details.family == "llama" and spec.modified_at > 1.7e9
        assert ups.models()[2].details.context_length == 32768
        # A local llama3 keeps its name; the upstream's is listed as gpu1/llama3.
        names = [s.name for s in ups.models(local=["llama3"])]
        assert "llama3:latest" not in names and "gpu1/llama3:latest" in names
        # Every spelling a client may use finds the model.
        for raw, listed in [
            ("llama3", "llama3:latest"),
            ("LLAMA3:latest", "llama3:latest"),
            ("gpu1/llama3", "gpu1/llama3:latest"),
            ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct:latest"),
            ("/models/Foo-Q4_K_M.gguf", "foo-q4_k_m:latest"),
            ("vllm/foo-q4_k_m", "vllm/foo-q4_k_m:latest"),
        ]:
            route = ups.find(raw)
            assert route is not None and route.name == listed, raw
        assert ups.find("nothing") is None and ups.find("bad name!") is None
        route = ups.find("/models/Foo-Q4_K_M.gguf")
        assert route is not None and route.replicas[0].model == "/models/Foo-Q4_K_M.gguf"
        assert route.where == f"upstream vllm ({a.base}) as /models/Foo-Q4_K_M.gguf"
        assert [(s.name, s.models) for s in ups.state()] == [("gpu1", 2), ("vllm", 2)]


async def test_explicit_models_renames_and_prefixed_names() -> None:
    async with fakes(Fake("openai", models=("org/Big-Model-70B", "other"))) as (a,):
        renamed = cfg(a, "big", models=(ModelMapping("big:70b", "org/Big-Model-70B"),))
        assert not renamed.discover  # an explicit list means only these
        async with running(renamed, cfg(a, "pre", names="prefixed")) as ups:
            # Prefixed upstreams never take plain names.
            names = [s.name for s in ups.models()]
            assert names == ["big:70b", "pre/org/Big-Model-70B:latest", "pre/other:latest"]
            assert ups.find("other") is None and ups.find("pre/other") is not None
            route = ups.find("big:70b")
            assert route is not None and route.replicas[0].model == "org/Big-Model-70B"
            chunks = await collect(ups.chat("big:70b", chat_req("big:70b")))
            assert a.generations()[-1].body["model"] == "org/Big-Model-70B"
            assert text_of(chunks) == "Hello from upstream"


async def test_the_same_model_on_two_upstreams_is_one_model_with_two_replicas() -> None:
    async with (
        fakes(Fake("ollama", models=("llama3:8b",)), Fake("ollama", models=("llama3:8b",))) as (
            a,
            b,
        ),
        running(cfg(a, "a"), cfg(b, "b")) as ups,
    ):
        assert [s.name for s in ups.models()] == ["llama3:8b"]
        route = ups.find("llama3:8b")
        assert route is not None and [r.upstream for r in route.replicas] == ["a", "b"]
        for _ in range(4):
            await collect(ups.chat(route, chat_req("llama3:8b")))
        assert len(a.generations()) == 2 and len(b.generations()) == 2


async def test_a_model_list_that_cannot_be_read_is_retried_on_refresh() -> None:
    async with (
        fakes(Fake("openai", models=("m1",), healthy=False)) as (a,),
        running(cfg(a)) as ups,
    ):
        assert ups.models() == []
        assert ups.state()[0].last_error == "upstream 'up' answered 500 to GET /models"
        a.healthy = True
        await ups.refresh()
        assert [s.name for s in ups.models()] == ["m1:latest"]
        a.models = ("m1", "m2")
        await ups.refresh()
        assert [s.name for s in ups.models()] == ["m1:latest", "m2:latest"]


async def test_api_key_and_headers_are_sent() -> None:
    async with fakes(Fake("openai", models=("m",))) as (a,):
        # A framing header in the config must not reach the wire (it would break the body).
        c = cfg(a, api_key="sk-test", headers={"X-Team": "search", "Content-Length": "1"})
        assert "sk-test" not in repr(c)
        async with running(c) as ups:
            chunks = await collect(ups.chat("m", chat_req("m")))
        assert chunks[0].text
        assert [s.method for s in a.seen][-1] == "POST"
        for seen in a.seen:
            assert seen.headers["Authorization"] == "Bearer sk-test"
            assert seen.headers["X-Team"] == "search"
            assert seen.headers["User-Agent"].startswith("bridge/")


# --- translation: Ollama-kind upstreams ------------------------------------------------------


async def test_chat_to_an_ollama_upstream_passes_everything_through() -> None:
    script = Script(
        thinking=("let me see",),
        tool_calls=({"name": "get_weather", "arguments": {"city": "Paris"}},),
    )
    async with fakes(Fake("ollama", models=("llama3:latest",), script=script)) as (o,):
        async with running(cfg(o)) as ups:
            req = ChatRequest(
                model="llama3",
                messages=(
                    Message("system", "be brief"),
                    Message("user", "look", images=(PNG,)),
                    Message(
                        "assistant",
                        "",
                        tool_calls=(ToolCall("get_weather", {"city": "Rome"}, 0, "call_a"),),
                    ),
                    Message("tool", "sunny", tool_name="get_weather"),
                ),
                options=Options(temperature=0, num_ctx=8192, stop=("END",), seed=3),
                format={"type": "object"},
                tools=(TOOL,),
                keep_alive=float("inf"),
                think="high",
                truncate=False,
            )
            chunks = await collect(ups.chat("llama3", req))
        body = o.generations()[0].body
        assert body["model"] == "llama3:latest" and body["stream"] is True
        assert body["options"] == {"num_ctx": 8192, "seed": 3, "temperature": 0, "stop": ["END"]}
        assert body["format"] == {"type": "object"} and body["tools"] == [TOOL]
        assert body["keep_alive"] == -1 and body["think"] == "high" and body["truncate"] is False
        assert body["messages"][1]["images"] == [base64.b64encode(PNG).decode()]
        assert body["messages"][2]["tool_calls"] == [
            {
                "id": "call_a",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Rome"}},
            }
        ]
        assert body["messages"][3] == {
            "role": "tool",
            "content": "sunny",
            "tool_name": "get_weather",
        }
        assert chunks[0].thinking == "let me see"
        assert text_of(chunks) == "Hello from upstream"
        assert [c.tool_calls for c in chunks if c.tool_calls] == [
            (ToolCall("get_weather", {"city": "Paris"}, 0, "call_0"),)
        ]
        final = chunks[-1]
        assert final.done and final.done_reason == "stop" and final.context is None
        m = final.metrics
        assert m is not None
        assert (m.prompt_eval_count, m.eval_count, m.load_duration) == (11, 3, 1_000_000)
        assert (m.prompt_eval_duration, m.eval_duration) == (2_000_000, 3_000_000)
        assert m.total_duration > 0


async def test_generate_to_an_ollama_upstream_returns_its_context() -> None:
    async with fakes(Fake("ollama", models=("llama3:latest",))) as (o,):
        async with running(cfg(o)) as ups:
            req = GenerateRequest(
                model="llama3", prompt="hi", system="sys", context=(5, 6), raw=False, images=(PNG,)
            )
            chunks = await collect(ups.generate("llama3", req))
        body = o.generations()[0].body
        assert body["prompt"] == "hi" and body["system"] == "sys" and body["context"] == [5, 6]
        assert body["images"] == [base64.b64encode(PNG).decode()]
        assert text_of(chunks) == "Hello from upstream"
        assert chunks[-1].context == (1, 2, 3)


async def test_openai_client_requests_reach_an_ollama_upstream_in_its_own_terms() -> None:
    """An OpenAI client's request, decoded as bridge's /v1 routes decode it, sent to Ollama."""
    async with fakes(Fake("ollama", models=("llama3:latest",))) as (o,):
        async with running(cfg(o)) as ups:
            req, _, _ = decode_openai_chat(
                {
                    "model": "llama3",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 7,
                    "response_format": {"type": "json_object"},
                    "reasoning_effort": "low",
                }
            )
            chunks = await collect(ups.chat("llama3", req))
        body = o.generations()[0].body
        assert body["options"] == {"num_predict": 7, "top_p": 1.0, "temperature": 1.0}
        assert body["format"] == "json" and body["think"] == "low"
        assert chunks[-1].done_reason == "stop"


async def test_load_and_unload_go_to_an_ollama_upstream_and_are_no_ops_on_openai() -> None:
    async with (
        fakes(Fake("ollama", models=("m:latest",)), Fake("openai", models=("o",))) as (o, a),
        running(cfg(o, "ol"), cfg(a, "oa")) as ups,
    ):
        [load] = await collect(ups.chat("m", ChatRequest(model="m", messages=())))
        [unload] = await collect(ups.generate("m", GenerateRequest(model="m", keep_alive=0.0)))
        assert (load.done_reason, unload.done_reason) == ("load", "unload")
        assert o.generations()[1].body == {
            "model": "m:latest",
            "prompt": "",
            "stream": True,
            "keep_alive": 0,
        }
        [load] = await collect(ups.chat("o", ChatRequest(model="o", messages=())))
        assert load.done_reason == "load" and a.generations() == []


# --- translation: OpenAI-kind upstreams ------------------------------------------------------


async def test_chat_to_an_openai_upstream_translates_request_and_stream() -> None:
    script = Script(
        thinking=("hmm",),
        tool_calls=(
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_time", "arguments": {}},
        ),
        prompt_tokens=21,
    )
    async with fakes(Fake("openai", models=("m",), script=script)) as (a,):
        async with running(cfg(a)) as ups:
            req = ChatRequest(
                model="m",
                messages=(
                    Message("user", "what is this", images=(PNG,)),
                    Message(
                        "assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Rome"}),)
                    ),
                    Message("tool", "sunny", tool_name="get_weather"),
                ),
                options=Options(
                    num_predict=50,
                    temperature=0.2,
                    top_p=0.9,
                    top_k=20,
                    repeat_penalty=1.1,
                    seed=-1,
                    stop=("x",),
                    num_ctx=4096,
                ),
                format={"type": "object", "properties": {}},
                tools=(TOOL,),
                think="medium",
            )
            chunks = await collect(ups.chat("m", req))
        body = a.generations()[0].body
        assert body["model"] == "m" and body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert (body["max_tokens"], body["temperature"], body["top_p"]) == (50, 0.2, 0.9)
        assert (body["top_k"], body["repetition_penalty"], body["repeat_penalty"]) == (20, 1.1, 1.1)
        assert "seed" not in body and "num_ctx" not in body and body["stop"] == ["x"]
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "schema", "schema": {"type": "object", "properties": {}}},
        }
        assert body["reasoning_effort"] == "medium"
        assert body["chat_template_kwargs"] == {"enable_thinking": True}
        assert body["tools"] == [TOOL]
        user, assistant, tool = body["messages"]
        assert user["content"] == [
            {"type": "text", "text": "what is this"},
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()},
            },
        ]
        call_id = assistant["tool_calls"][0]["id"]
        assert assistant["tool_calls"][0]["function"] == {
            "name": "get_weather",
            "arguments": '{"city":"Rome"}',
        }
        assert tool == {"role": "tool", "content": "sunny", "tool_call_id": call_id}

        assert chunks[0].thinking == "hmm"
        assert text_of(chunks) == "Hello from upstream"
        calls = [c.tool_calls for c in chunks if c.tool_calls]
        assert calls == [
            (
                ToolCall("get_weather", {"city": "Paris"}, 0, "call_0"),
                ToolCall("get_time", {}, 1, "call_1"),
            )
        ]
        final = chunks[-1]
        assert final.done and final.done_reason == "stop"  # tool_calls -> stop, as Ollama says
        assert final.metrics is not None
        assert (final.metrics.prompt_eval_count, final.metrics.eval_count) == (21, 3)
        assert final.metrics.total_duration >= final.metrics.eval_duration > 0


async def test_strict_openai_upstreams_get_no_extensions() -> None:
    async with fakes(Fake("openai", models=("m",))) as (a,):
        async with running(cfg(a, extensions=False)) as ups:
            req = chat_req("m", options=Options(top_k=5, min_p=0.1), think=True)
            await collect(ups.chat("m", req))
        body = a.generations()[0].body
        assert not {"top_k", "min_p", "chat_template_kwargs", "reasoning_effort"} & set(body)


async def test_length_finish_and_llama_server_timings() -> None:
    script = Script(finish="length", timings=True)
    async with fakes(Fake("openai", models=("m",), script=script)) as (a,):
        async with running(cfg(a)) as ups:
            chunks = await collect(
                ups.generate("m", GenerateRequest(model="m", prompt="p", system="s"))
            )
        body = a.generations()[0].body
        assert a.generations()[0].path == "/v1/chat/completions"
        assert body["messages"] == [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "p"},
        ]
        final = chunks[-1]
        assert final.done_reason == "length" and final.metrics is not None
        assert final.metrics.prompt_eval_duration == 2_500_000
        assert final.metrics.eval_duration == 7_500_000


async def test_raw_and_fill_in_the_middle_generate_use_completions() -> None:
    async with fakes(Fake("openai", models=("m",))) as (a,):
        async with running(cfg(a)) as ups:
            raw = GenerateRequest(
                model="m", prompt="<s>hi", raw=True, options=Options(num_predict=3)
            )
            chunks = await collect(ups.generate("m", raw))
            await collect(
                ups.generate("m", GenerateRequest(model="m", prompt="def f(", suffix=")"))
            )
            with pytest.raises(InvalidRequest):
                await collect(
                    ups.generate(
                        "m", GenerateRequest(model="m", prompt="x", template="{{ .Prompt }}")
                    )
                )
        first, second = a.generations()
        assert first.path == "/v1/completions"
        assert first.body["prompt"] == "<s>hi" and first.body["max_tokens"] == 3
        assert second.body["suffix"] == ")"
        assert text_of(chunks) == "Hello from upstream" and chunks[-1].done


async def test_a_server_that_ignores_stream_is_read_whole() -> None:
    script = Script(tool_calls=({"name": "f", "arguments": {"a": 1}},), thinking=("t",))
    async with fakes(Fake("openai", models=("m",), script=script)) as (a,):
        transport = httpx.AsyncHTTPTransport()

        class NoStream(httpx.AsyncBaseTransport):
            """Turns `stream` off on the way, as a server that ignores it would."""

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                body = request.content.replace(b'"stream":true', b'"stream":false')
                headers = [(k, v) for k, v in request.headers.items() if k != "content-length"]
                forwarded = httpx.Request(
                    request.method, request.url, headers=headers, content=body
                )
                return await transport.handle_async_request(forwarded)

        async with running(cfg(a), transport=NoStream()) as ups:
            chunks = await collect(ups.chat("m", chat_req("m")))
        await transport.aclose()
        assert [c.thinking for c in chunks if c.thinking] == ["t"]
        assert text_of(chunks) == "Hello from upstream"
        assert [c.tool_calls for c in chunks if c.tool_calls] == [
            (ToolCall("f", {"a": 1}, 0, "call_0"),)
        ]
        assert chunks[-1].metrics is not None and chunks[-1].metrics.eval_count == 3


async def test_embeddings_from_both_kinds() -> None:
    async with (
        fakes(Fake("ollama", models=("e:latest",)), Fake("openai", models=("oe",))) as (
            o,
            a,
        ),
        running(cfg(o, "ol"), cfg(a, "oa")) as ups,
    ):
        got = await ups.embed("e", ["one two", "three"], dimensions=2, truncate=False)
        assert got.vectors == [[7.0, 1.0, 0.5], [5.0, 1.0, 0.5]]
        assert got.prompt_eval_count == 3 and got.load_duration == 1_000_000
        assert o.generations()[0].body == {
            "model": "e:latest",
            "input": ["one two", "three"],
            "truncate": False,
            "dimensions": 2,
        }
        got = await ups.embed("oe", ["one two", "three"])
        assert got.vectors == [[7.0, 1.0, 0.5], [5.0, 1.0, 0.5]]  # put back in order
        assert got.prompt_eval_count == 3 and got.total_duration > 0
        assert (await ups.embed("oe", [])).vectors == []


@pytest.mark.parametrize(
    "vectors", [[[1.0, 2.0], [3.0]], [[1.0, "x"], [2.0, 3.0]], [[1.0, True], [2.0, 3.0]]]
)
async def test_embeddings_that_are_not_vectors_are_a_protocol_error(vectors: Any) -> None:
    bad = Fault(status=200, body={"model": "e:latest", "embeddings": vectors})
    async with (
        fakes(Fake("ollama", models=("e:latest",), faults=[bad])) as (o,),
        running(cfg(o, "ol")) as ups,
    ):
        with pytest.raises(UpstreamProtocolError, match="not vectors of numbers"):
            await ups.embed("e", ["one", "two"])


# --- errors before the first chunk: statuses, retries ----------------------------------------


async def test_an_error_status_before_the_first_byte_is_retried_on_another_replica() -> None:
    async with fakes(
        Fake("ollama", models=("m:latest",)), Fake("ollama", models=("m:latest",))
    ) as (
        a,
        b,
    ):
        # One list of faults for both: whichever replica is tried first takes the first one.
        a.faults = b.faults = [Fault(status=500, body={"error": "runner crashed"})]
        async with running(cfg(a, "a"), cfg(b, "b")) as ups:
            chunks = await collect(ups.chat("m", chat_req("m")))
            assert text_of(chunks) == "Hello from upstream"
            assert len(a.generations()) == len(b.generations()) == 1
            # Both fail: the client gets the last error, which the HTTP layer makes a 502.
            a.faults += [
                Fault(status=500, body={"error": "x"}),
                Fault(status=503, body={"error": "y"}),
            ]
            with pytest.raises(UpstreamError) as info:
                await collect(ups.chat("m", chat_req("m")))
            assert type(info.value) is UpstreamError
            assert info.value.message == "upstream 'a' answered 503: y" or (
                info.value.message == "upstream 'b' answered 503: y"
            )
            assert sorted(s.failures for s in ups.state()) == [1, 2]


async def test_client_errors_are_the_clients_and_not_retried() -> None:
    async with fakes(
        Fake("ollama", models=("m:latest",)), Fake("ollama", models=("m:latest",))
    ) as (
        a,
        b,
    ):
        a.faults = b.faults = [Fault(status=400, body={"error": "invalid format"})]
        async with running(cfg(a, "a"), cfg(b, "b")) as ups:
            with pytest.raises(InvalidRequest, match=r"^invalid format$"):
                await collect(ups.chat("m", chat_req("m")))
            assert len(a.generations()) + len(b.generations()) == 1
            assert all(s.failures == 0 for s in ups.state())


async def test_a_model_missing_upstream_is_not_found_and_other_statuses_are_502() -> None:
    async with fakes(Fake("openai", models=("m",))) as (a,):
        a.faults = [
            Fault(status=404, body={"error": {"message": "The model `m` does not exist."}}),
            Fault(status=401, body={"error": {"message": "bad key"}}),
            Fault(status=500, body="<html>oops</html>"),
        ]
        async with running(cfg(a)) as ups:
            with pytest.raises(ModelNotFound, match="does not exist"):
                await collect(ups.chat("m", chat_req("m")))
            with pytest.raises(UpstreamError, match=r"^upstream 'up' answered 401: bad key$"):
                await collect(ups.chat("m", chat_req("m")))
            with pytest.raises(UpstreamError, match="answered 500"):
                await collect(ups.chat("m", chat_req("m")))
            with pytest.raises(ModelNotFound, match=r"^model 'nope' not found$"):
                await collect(ups.chat("nope", chat_req("nope")))


@VIA
async def test_an_unreachable_upstream_is_a_clear_502(via: str) -> None:
    c = cfg(None, url=f"http://127.0.0.1:{closed_port()}/v1", models=(ModelMapping("m", "m"),))
    async with running(c, transport=transport_for(via)) as ups:
        with pytest.raises(UpstreamUnavailable, match=r"^upstream 'up' cannot be reached"):
            await collect(ups.chat("m", chat_req("m")))
        with pytest.raises(UpstreamUnavailable):
            await ups.embed("m", ["x"])


@VIA
async def test_a_reset_before_the_reply_is_retried_and_a_hang_times_out(via: str) -> None:
    async with fakes(
        Fake("ollama", models=("m:latest",)), Fake("ollama", models=("m:latest",))
    ) as (
        a,
        b,
    ):
        a.faults = b.faults = [Fault(reset=True)]
        async with running(
            cfg(a, "a", read_timeout=0.2),
            cfg(b, "b", read_timeout=0.2),
            transport=transport_for(via),
        ) as ups:
            # One resets the connection before replying, the other answers.
            assert text_of(await collect(ups.chat("m", chat_req("m")))) == "Hello from upstream"
            assert len(a.generations()) == len(b.generations()) == 1
            # Both hang before replying: each is given read_timeout, then the client gets a 504.
            a.faults += [Fault(hang=True), Fault(hang=True)]
            with pytest.raises(UpstreamTimeout, match=r"^upstream '.' sent nothing for 0.2s$"):
                await collect(ups.chat("m", chat_req("m")))
            assert len(a.generations()) == len(b.generations()) == 2


# --- errors after the first chunk: in-band, never retried ------------------------------------


@pytest.mark.parametrize("kind", ["ollama", "openai"])
@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        (Fault(reset=True, after=2), UpstreamProtocolError, "broke off its reply"),
        (Fault(garbage=True, after=2), UpstreamProtocolError, "not JSON"),
        (
            Fault(truncate=True, after=2),
            UpstreamProtocolError,
            "ended the stream before it was done",
        ),
        (Fault(error="model crashed", after=2), UpstreamError, "^model crashed$"),
        (Fault(hang=True, after=2), UpstreamTimeout, "sent nothing"),
    ],
)
@VIA
async def test_a_failure_after_the_first_chunk_is_in_band_and_not_retried(
    kind: str, fault: Fault, error: type[UpstreamError], text: str, via: str
) -> None:
    async with fakes(Fake(kind, models=("m",)), Fake(kind, models=("m",))) as (a, b):
        a.faults = b.faults = [fault]
        async with running(
            cfg(a, "a", read_timeout=0.2),
            cfg(b, "b", read_timeout=0.2),
            transport=transport_for(via),
        ) as ups:
            stream = ups.chat("m", chat_req("m"))
            first = await anext(stream)
            assert first.text == "Hello"
            with pytest.raises(error, match=text) as info:
                async for _ in stream:
                    pass
            assert type(info.value) is error
            assert len(a.generations()) + len(b.generations()) == 1  # never retried
            await stream.aclose()


async def test_a_stream_with_no_records_is_an_error_before_the_first_chunk() -> None:
    async with fakes(Fake("ollama", models=("m:latest",))) as (a,):
        a.faults = [Fault(truncate=True, after=0)]
        async with running(cfg(a)) as ups:
            with pytest.raises(UpstreamProtocolError, match="ended the stream before it was done"):
                await collect(ups.chat("m", chat_req("m")))


# --- balancing, ejection, return -------------------------------------------------------------


async def test_requests_go_to_the_replica_with_the_fewest_in_flight() -> None:
    async with fakes(
        Fake("ollama", models=("m:latest",)), Fake("ollama", models=("m:latest",))
    ) as (
        a,
        b,
    ):
        held = Fault(hang=True, after=1)  # a stream that stays open after its first chunk
        a.faults = b.faults = [held, held, held]
        async with running(cfg(a, "a"), cfg(b, "b")) as ups:
            streams = []
            for _ in range(3):
                stream = ups.chat("m", chat_req("m"))
                await anext(stream)
                streams.append(stream)
            busy = {st.name: st.outstanding for st in ups.state()}
            assert sorted(busy.values()) == [1, 2]  # the second went to the idle one
            quiet = a if busy["a"] == 1 else b
            await collect(ups.chat("m", chat_req("m")))
            assert len(quiet.generations()) == 2
            for stream in streams:
                await stream.aclose()
            assert [st.outstanding for st in ups.state()] == [0, 0]
            await a.idle()
            await b.idle()


async def test_a_failing_upstream_is_ejected_then_returns_when_healthy() -> None:
    clock = Clock()
    async with fakes(Fake("ollama", models=("m:latest",))) as (b,):
        dead = cfg(
            None,
            "a",
            url=f"http://127.0.0.1:{closed_port()}",
            kind="ollama",
            models=(ModelMapping("m:latest", "m:latest"),),
            max_failures=2,
            eject_for=30,
        )
        async with running(dead, cfg(b, "b"), clock=clock) as ups:
            for _ in range(6):
                assert text_of(await collect(ups.chat("m", chat_req("m")))) == "Hello from upstream"
            a_state = ups.state()[0]
            assert not a_state.available and a_state.failures == 2
            assert "cannot be reached" in (a_state.last_error or "")
            assert len(b.generations()) == 6  # every request was served, by b
            # Health checks keep it out while it is down.
            await ups.check()
            assert not ups.state()[0].available and ups.state()[0].failures == 3
            # After eject_for it is tried again; one more failure puts it out again at once.
            clock.now += 31
            assert ups.state()[0].available
            for _ in range(2):  # ties go round-robin: one of two requests tries a first
                await collect(ups.chat("m", chat_req("m")))
            assert not ups.state()[0].available and ups.state()[0].failures == 4


async def test_an_ejected_upstream_returns_on_a_passing_health_check() -> None:
    clock = Clock()
    async with (
        fakes(Fake("ollama", models=("m:latest",)), Fake("ollama", models=("m:latest",))) as (
            a,
            b,
        ),
        running(cfg(a, "a", max_failures=1), cfg(b, "b", max_failures=1), clock=clock) as ups,
    ):
        a.faults = b.faults = [Fault(status=500, body={"error": "x"})] * 2
        with pytest.raises(UpstreamError):
            await collect(ups.chat("m", chat_req("m")))
        assert not any(s.available for s in ups.state())
        with pytest.raises(UpstreamUnavailable, match="no upstream can serve m:latest now"):
            await collect(ups.chat("m", chat_req("m")))
        b.healthy = False
        await ups.check()
        assert [s.available for s in ups.state()] == [True, False]
        assert text_of(await collect(ups.chat("m", chat_req("m")))) == "Hello from upstream"
        assert (len(a.generations()), len(b.generations())) == (2, 1)


async def test_health_checks_and_refreshes_run_in_the_background() -> None:
    clock = Clock()
    async with fakes(Fake("openai", models=("m1",))) as (a,):
        c = cfg(a, health_interval=0.01, refresh=0.01, max_failures=1)
        async with running(c, clock=clock) as ups:
            a.models = ("m1", "m2")
            while len(ups.models()) < 2:  # the list is read again, untouched by the test
                a.got.clear()
                await a.got.wait()
            a.healthy = False
            while ups.state()[0].available:  # a failing check ejects it
                a.got.clear()
                await a.got.wait()
            a.healthy = True
            while not ups.state()[0].available:  # and a passing one brings it back
                a.got.clear()
                await a.got.wait()
        assert [s.name for s in ups.models()] == ["m1:latest", "m2:latest"]


# --- connections: nothing leaks ---------------------------------------------------------------


@VIA
@pytest.mark.parametrize("kind", ["ollama", "openai"])
async def test_a_client_that_goes_away_closes_the_upstream_connection(kind: str, via: str) -> None:
    async with fakes(Fake(kind, models=("m",))) as (a,):
        a.faults = [Fault(hang=True, after=2)]
        transport = CountingTransport(transport_for(via))
        async with running(cfg(a), transport=transport) as ups:
            stream = ups.chat("m", chat_req("m"))
            await anext(stream)
            assert transport.open == 1 and a.active == 1
            await stream.aclose()
            assert transport.open == 0
            await a.idle()  # the fake's handler was cancelled: the connection is gone there too


@VIA
async def test_no_connection_is_left_open_whatever_happens(via: str) -> None:
    async with fakes(Fake("ollama", models=("m:latest",)), Fake("openai", models=("o",))) as (o, a):
        transport = CountingTransport(transport_for(via))
        async with running(
            cfg(o, "ol", read_timeout=0.2, max_failures=99),
            cfg(a, "oa", read_timeout=0.2, max_failures=99),
            transport=transport,
        ) as ups:
            o.faults = [
                Fault(status=500, body={"error": "x"}),
                Fault(reset=True),
                Fault(reset=True, after=1),
                Fault(garbage=True, after=1),
                Fault(hang=True, after=1),
            ]
            a.faults = [Fault(truncate=True, after=1), Fault(error="bad", after=1)]
            for model in ["m"] * 5 + ["o"] * 3:
                with contextlib.suppress(UpstreamError):
                    await collect(ups.chat(model, chat_req(model)))
            await ups.embed("m", ["x"])
            await ups.embed("o", ["x"])
            assert transport.open == 0 and transport.total > 8
        assert transport.open == 0


@VIA
async def test_a_full_connection_pool_times_out_instead_of_hanging(via: str) -> None:
    async with fakes(Fake("ollama", models=("m:latest",))) as (o,):
        o.faults = [Fault(hang=True, after=1)]
        c = cfg(o, max_connections=1, read_timeout=0.2)
        # httpx's own transport takes its pool size from the client, bridge's from the config.
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
        async with running(c, transport=transport if via == "httpx" else None) as ups:
            held = ups.chat("m", chat_req("m"))
            await anext(held)
            with pytest.raises(UpstreamTimeout):
                await collect(ups.chat("m", chat_req("m")))
            assert len(o.generations()) == 1  # the second never got a connection
            await held.aclose()
            assert text_of(await collect(ups.chat("m", chat_req("m")))) == "Hello from upstream"


@VIA
async def test_a_finished_stream_leaves_its_connection_for_the_next_request(via: str) -> None:
    async with fakes(Fake("ollama", models=("m:latest",)), Fake("openai", models=("o",))) as fs:
        async with running(cfg(fs[0], "ol"), cfg(fs[1], "oa"), transport=transport_for(via)) as ups:
            for _ in range(5):
                await collect(ups.chat("m", chat_req("m")))
                await collect(ups.chat("o", chat_req("o")))
        for f in fs:
            assert len({s.peer for s in f.generations()}) == 1  # one connection, kept alive


# --- respx: failures of the HTTP client itself ------------------------------------------------


def _respx_upstreams(router: respx.Router, *configs: UpstreamConfig) -> Upstreams:
    return Upstreams(configs, transport=httpx.MockTransport(router.handler))


@pytest.mark.parametrize(
    ("exc", "error", "text"),
    [
        (
            httpx.ConnectError("connection refused"),
            UpstreamUnavailable,
            "cannot be reached: connection refused",
        ),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout, "did not accept a connection in time"),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, "sent nothing for 300s"),
        (httpx.PoolTimeout("full"), UpstreamTimeout, "no free connection"),
        (
            httpx.RemoteProtocolError("server disconnected"),
            UpstreamProtocolError,
            "broke off its reply",
        ),
        (
            httpx.ReadError("reset by peer"),
            UpstreamProtocolError,
            "broke off its reply: reset by peer",
        ),
    ],
)
async def test_httpx_failures_become_upstream_errors_and_are_retried(
    exc: Exception, error: type[UpstreamError], text: str
) -> None:
    router = respx.Router(assert_all_called=False)
    a = router.post("http://a.test/v1/chat/completions").mock(side_effect=exc)
    b = router.post("http://b.test/v1/chat/completions").mock(side_effect=exc)
    models = (ModelMapping("m", "m"),)
    ups = _respx_upstreams(
        router,
        cfg(None, "a", url="http://a.test/v1", models=models),
        cfg(None, "b", url="http://b.test/v1", models=models),
    )
    await ups.start()
    try:
        with pytest.raises(error, match=text):
            await collect(ups.chat("m", chat_req("m")))
        assert a.call_count == 1 and b.call_count == 1  # tried on both replicas
    finally:
        await ups.close()


async def test_a_read_error_mid_stream_is_in_band() -> None:
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
            raise httpx.ReadError("connection reset by peer")

    router = respx.Router()
    router.post("http://a.test/v1/chat/completions").mock(
        return_value=httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Broken()
        )
    )
    ups = _respx_upstreams(
        router, cfg(None, "a", url="http://a.test/v1", models=(ModelMapping("m", "m"),))
    )
    await ups.start()
    try:
        stream = ups.chat("m", chat_req("m"))
        assert (await anext(stream)).text == "Hi"
        with pytest.raises(UpstreamProtocolError, match="connection reset by peer"):
            await anext(stream)
        assert ups.state()[0].failures == 1
    finally:
        await ups.close()


async def test_show_asks_an_ollama_upstream_and_has_nothing_from_openai_ones() -> None:
    async with (
        fakes(Fake("ollama", models=("m:latest",)), Fake("openai", models=("o",))) as (o, a),
        running(cfg(o, "ol"), cfg(a, "oa")) as ups,
    ):
        shown = await ups.show("m")
        assert shown is not None and shown["capabilities"] == ["completion", "tools"]
        assert o.seen[-1].body == {"model": "m:latest"}
        assert await ups.show("o") is None


# --- /api/ps and fallback ---------------------------------------------------------------------


async def test_running_lists_what_ollama_upstreams_have_loaded() -> None:
    async with (
        fakes(
            Fake("ollama", models=("llama3:latest", "qwen:7b"), loaded=("llama3:latest", "x:1"))
        ) as (o,),
        running(
            cfg(o, "gpu1"),
            cfg(None, "dead", url=f"http://127.0.0.1:{closed_port()}", kind="ollama"),
        ) as ups,
    ):
        [r] = await ups.running()
        assert (r.name, r.upstream, r.model, r.size, r.size_vram, r.context_length) == (
            "llama3:latest",
            "gpu1",
            "llama3:latest",
            5000,
            4000,
            8192,
        )
        assert r.expires_at == 1893456000.0
        [r] = await ups.running(local=["llama3"])
        assert r.name == "gpu1/llama3:latest"


async def test_a_local_model_that_cannot_load_falls_back_to_an_ollama_upstream() -> None:
    async with fakes(Fake("ollama", models=())) as (o,):
        async with running(
            cfg(o, "big", fallback=("deepseek:671b",)),
            cfg(o, "all", fallback=True, names="prefixed"),
        ) as ups:
            local = ModelSpec(
                name="deepseek:671b",
                full_name="registry.ollama.ai/library/deepseek:671b",
                namespace="library",
                source="ollama",
                model_path="/blobs/x",
                digest="d" * 64,
                size=1,
                modified_at=0.0,
            )
            route = ups.fallback(local)
            assert route is not None and route.fallback and route.spec is local
            assert [(r.upstream, r.model) for r in route.replicas] == [
                ("big", "deepseek:671b"),
                ("all", "deepseek:671b"),
            ]
            assert route.where.startswith(f"upstream big ({o.url}) as deepseek:671b")
            chunks = await collect(ups.chat(route, chat_req("deepseek:671b")))
            assert text_of(chunks) == "Hello from upstream"
            assert o.generations()[0].body["model"] == "deepseek:671b"
            other = dataclasses.replace(local, name="other:latest")
            route = ups.fallback(other)
            assert route is not None and [r.upstream for r in route.replicas] == ["all"]
        async with running(cfg(o, "none")) as ups:
            assert ups.fallback(local) is None
