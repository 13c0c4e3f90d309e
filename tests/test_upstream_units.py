"""The pure parts of bridge.upstream: config tables, framing, codecs and names; and the fake
upstreams checked against the official clients, so that what they speak is the real protocol."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest

from bridge.config import ConfigError, load_settings
from bridge.domain import Message, ToolCall
from bridge.errors import UpstreamProtocolError
from bridge.upstream import ModelMapping, UpstreamConfig, UpstreamConfigError, parse_upstreams
from bridge.upstream.catalog import Catalog, Listed, own_name
from bridge.upstream.framing import MAX_LINE, Events, Lines
from bridge.upstream.ollama_codec import keep_alive_value, parse_time
from bridge.upstream.openai_codec import StreamDecoder, image_url, messages
from bridge.upstream.streams import error_text
from tests.fake_upstreams import Fake, Script, fakes


def test_the_package_exports_what_it_says() -> None:
    import bridge.upstream as package

    assert sorted(package.__all__) == sorted(
        n for n in dir(package) if n[0].isupper() or n == "parse_upstreams"
    )


# --- config ----------------------------------------------------------------------------------


def test_an_upstream_table_with_every_setting() -> None:
    [u] = parse_upstreams(
        [
            {
                "name": "vllm-a",
                "url": "http://10.0.0.5:8000/",
                "kind": "openai",
                "api_key_env": "KEY",
                "headers": {"X-Team": "search"},
                "models": {"llama3.1:8b": "meta-llama/Llama-3.1-8B-Instruct"},
                "refresh": "2m",
                "names": "prefixed",
                "connect_timeout": 2,
                "read_timeout": "90s",
                "max_connections": 8,
                "health_interval": "5s",
                "max_failures": 1,
                "eject_for": "1m",
                "extensions": False,
            }
        ],
        environ={"KEY": "sk-1"},
    )
    assert u == UpstreamConfig(
        name="vllm-a",
        url="http://10.0.0.5:8000/v1",  # a bare OpenAI-kind host gets its /v1
        kind="openai",
        api_key="sk-1",
        headers={"X-Team": "search"},
        models=(ModelMapping("llama3.1:8b", "meta-llama/Llama-3.1-8B-Instruct"),),
        discover=False,  # an explicit list, unless discover = true
        refresh=120.0,
        names="prefixed",
        connect_timeout=2.0,
        read_timeout=90.0,
        max_connections=8,
        health_interval=5.0,
        max_failures=1,
        eject_for=60.0,
        extensions=False,
    )


def test_defaults_and_a_plain_list_of_models() -> None:
    [a, b] = parse_upstreams(
        [
            {"name": "gpu1", "url": "http://gpu1:11434", "kind": "ollama"},
            {"name": "b", "url": "https://x/openai/v1", "kind": "openai", "models": ["m"]},
        ],
        environ={},
    )
    assert (a.url, a.discover, a.refresh, a.names, a.read_timeout) == (
        "http://gpu1:11434",
        True,
        60.0,
        "auto",
        300.0,
    )
    assert (a.health_interval, a.max_failures, a.eject_for, a.fallback) == (10.0, 3, 30.0, False)
    assert b.url == "https://x/openai/v1" and b.models == (ModelMapping("m", "m"),)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "http://x", "kind": "ollama"}, "name is required"),
        ({"name": "a b", "url": "http://x", "kind": "ollama"}, "must be letters"),
        ({"name": "a", "url": "ftp://x", "kind": "ollama"}, "must be http"),
        ({"name": "a", "url": "http://x", "kind": "vllm"}, "kind must be ollama or openai"),
        ({"name": "a", "url": "http://x", "kind": "ollama", "colour": 1}, "unknown setting"),
        ({"name": "a", "url": "http://x", "kind": "ollama", "read_timeout": 0}, "more than 0"),
        (
            {"name": "a", "url": "http://x", "kind": "ollama", "refresh": "5 minutes"},
            "unknown unit",
        ),
        ({"name": "a", "url": "http://x", "kind": "ollama", "models": ["bad name!"]}, "valid"),
        ({"name": "a", "url": "http://x", "kind": "ollama", "api_key_env": "NOPE"}, "not set"),
        ({"name": "a", "url": "http://x", "kind": "openai", "fallback": True}, "kind ollama"),
        ({"name": "a", "url": "http://x", "kind": "ollama", "names": "mixed"}, "auto or"),
    ],
)
def test_bad_tables_name_the_problem(table: dict[str, Any], message: str) -> None:
    with pytest.raises(UpstreamConfigError, match=message):
        parse_upstreams([table], environ={})


def test_the_config_file_reads_upstream_tables(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(
        '[[upstream]]\nname = "a"\nurl = "http://a:11434"\nkind = "ollama"\nfallback = true\n'
        '[[upstream]]\nname = "b"\nurl = "http://b:8000/v1"\nkind = "openai"\n'
    )
    s = load_settings({}, environ={"BRIDGE_CONFIG": str(cfg)})
    assert [(u.name, u.kind, u.fallback) for u in s.upstreams] == [
        ("a", "ollama", True),
        ("b", "openai", False),
    ]
    assert s.upstreams[0].serves_fallback("anything")
    cfg.write_text('[[upstream]]\nname = "a"\nurl = "http://a"\nkind = "ollama"\n' * 2)
    with pytest.raises(ConfigError, match="names must be unique: a"):
        load_settings({}, environ={"BRIDGE_CONFIG": str(cfg)})
    assert load_settings({}, environ={}).upstreams == ()


def test_fallback_lists_match_names_as_ollama_does() -> None:
    u = UpstreamConfig("a", "http://a", "ollama", fallback=("Llama3", "qwen:7b"))
    assert u.serves_fallback("llama3:latest") and u.serves_fallback("qwen:7b")
    assert not u.serves_fallback("qwen:14b")


# --- framing ---------------------------------------------------------------------------------


def _feed(parser: Lines | Events, *parts: bytes) -> list[bytes]:
    out = [item for p in parts for item in parser.feed(p)]
    return out + parser.end()


def test_lines_are_split_wherever_the_chunks_break() -> None:
    got = _feed(Lines("u"), b'{"a":', b'1}\r\n{"b"', b":2}\n\n", b"tail")
    assert got == [b'{"a":1}', b'{"b":2}', b"", b"tail"]


def test_lines_match_a_whole_body_split_for_any_cuts() -> None:
    """Every way of cutting a body into reads gives the lines of the whole body, a `\r`
    before a `\n` dropped even when a read ends between them."""
    rng = random.Random(7)
    for _ in range(3000):
        records = [bytes(rng.choices(b"ab\r{}", k=rng.randint(0, 5))) for _ in range(4)]
        body = b"\n".join(records) + rng.choice([b"", b"\n", b"\r\n", b"x", b"\r"])
        cuts = sorted(rng.sample(range(len(body) + 1), min(len(body) + 1, rng.randint(0, 5))))
        reads = [body[i:j] for i, j in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        split = Lines("u")
        got = [line for data in reads for line in split.feed(data)]
        *whole, last = body.split(b"\n")
        assert got == [line.removesuffix(b"\r") for line in whole], reads
        assert split.end() == ([last.rstrip(b"\r")] if last.rstrip(b"\r").strip() else [])


def test_an_endless_line_is_a_protocol_error() -> None:
    split = Lines("upstream 'u'")
    with pytest.raises(UpstreamProtocolError, match="longer than"):
        for _ in range(MAX_LINE // 65536 + 2):
            split.feed(b"x" * 65536)


def test_sse_events_comments_and_multi_line_data() -> None:
    got = _feed(
        Events("u"),
        b': keep-alive\n\ndata: {"a"\n',
        b"data: :1}\nevent: x\nid: 3\n\ndata:[DONE]\n\n",
        b"data: last",
    )
    assert got == [b'{"a"\n:1}', b"[DONE]", b"last"]


# --- codecs and names ------------------------------------------------------------------------


def test_image_types_are_sniffed_for_data_urls() -> None:
    assert image_url(b"\x89PNG\r\n\x1a\nxx").startswith("data:image/png;base64,")
    assert image_url(b"RIFF\x00\x00\x00\x00WEBPVP8").startswith("data:image/webp;base64,")
    assert image_url(b"GIF89a").startswith("data:image/gif;base64,")
    assert image_url(b"\xff\xd8\xff\xe0").startswith("data:image/jpeg;base64,")


def test_tool_results_get_the_id_of_the_call_they_answer() -> None:
    out = messages(
        (
            Message(
                "assistant",
                tool_calls=(
                    ToolCall("a", {}, 0, "id-a"),
                    ToolCall("b", {"x": 1}, 1),
                ),
            ),
            Message("tool", "B", tool_name="b"),
            Message("tool", "A", tool_name="a"),
            Message("tool", "?", tool_call_id="explicit"),
        )
    )
    ids = [c["id"] for c in out[0]["tool_calls"]]
    assert ids == ["id-a", "call_0_1"]
    assert [m["tool_call_id"] for m in out[1:]] == ["call_0_1", "id-a", "explicit"]


def test_tool_call_fragments_without_an_index_and_bad_arguments() -> None:
    d = StreamDecoder(who="u", chat=True)
    d.feed(
        {"choices": [{"delta": {"tool_calls": [{"function": {"name": "f", "arguments": '{"a"'}}]}}]}
    )
    d.feed({"choices": [{"delta": {"tool_calls": [{"function": {"arguments": ": 1}"}}]}}]})
    [chunk] = d.feed({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
    assert chunk.tool_calls == (ToolCall("f", {"a": 1}, 0, None),)
    d = StreamDecoder(who="upstream 'u'", chat=True)
    d.feed(
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "[1"}}]}}]}
    )
    with pytest.raises(UpstreamProtocolError, match="not a JSON object"):
        d.final()


def test_usage_fallbacks_when_a_server_sends_none() -> None:
    d = StreamDecoder(who="u", chat=False)
    for t in ("a", "b", "c"):
        d.feed({"choices": [{"text": t}]})
    d.feed({"choices": [{"text": "", "finish_reason": "length"}]})
    final = d.final()
    assert final.done_reason == "length" and final.metrics is not None
    assert final.metrics.eval_count == 3 and final.metrics.prompt_eval_count == 0


def test_error_replies_in_every_shape() -> None:
    assert error_text({"error": "model 'x' not found"}) == "model 'x' not found"
    assert error_text({"error": {"message": "bad", "type": "x"}}) == "bad"
    assert error_text({"object": "error", "message": "old vllm"}) == "old vllm"
    assert error_text({"choices": []}) is None and error_text([1]) is None


def test_go_times_and_keep_alive() -> None:
    assert parse_time("2030-01-01T00:00:00Z") == 1893456000.0
    assert parse_time("2030-01-01T01:00:00.123456789+01:00") == pytest.approx(1893456000.123456)
    assert parse_time("garbage") is None and parse_time(None) is None
    assert (keep_alive_value(float("inf")), keep_alive_value(300.0), keep_alive_value(1.5)) == (
        -1,
        300,
        1.5,
    )


def test_names_clients_cannot_send_are_tidied() -> None:
    assert own_name("/models/Llama-3.2-1B-Instruct-Q4_K_M.gguf").display == (
        "llama-3.2-1b-instruct-q4_k_m:latest"
    )
    assert own_name("Qwen/Qwen2.5-7B-Instruct").display == "Qwen/Qwen2.5-7B-Instruct:latest"
    assert own_name("gpt-4o@2024").display == "gpt-4o-2024:latest"


def test_a_catalog_with_renames_replicas_and_clashes() -> None:
    a = UpstreamConfig("a", "http://a", "ollama", models=(ModelMapping("chat", "llama3:8b"),))
    b = UpstreamConfig("b", "http://b/v1", "openai", models=(ModelMapping("chat", "org/Chat"),))
    c = UpstreamConfig("c", "http://c", "ollama")
    cat = Catalog.build([(a, []), (b, []), (c, [Listed("chat:latest"), Listed("solo:1")])], now=5.0)
    route = cat.find("chat")
    assert route is not None
    assert [(r.upstream, r.kind, r.model) for r in route.replicas] == [
        ("a", "ollama", "llama3:8b"),
        ("b", "openai", "org/Chat"),
        ("c", "ollama", "chat:latest"),
    ]
    assert [s.name for s in cat.listing(())] == ["chat:latest", "solo:1"]
    assert [s.name for s in cat.listing(["chat"])] == [
        "solo:1",
        "a/chat:latest",
        "b/chat:latest",
        "c/chat:latest",
    ]
    assert cat.name_of("b", "org/Chat") == "chat:latest"
    assert cat.name_of("b", "org/Chat", local=["chat"]) == "b/chat:latest"
    assert cat.listing(())[0].modified_at == 5.0 and cat.served_by("c") == 2


# --- the fakes speak the real protocols --------------------------------------------------------


async def test_the_fake_ollama_is_read_by_the_official_client() -> None:
    script = Script(tool_calls=({"name": "f", "arguments": {"x": 1}},), thinking=("t",))
    async with (
        fakes(Fake("ollama", models=("m:latest",), script=script)) as (o,),
        ollama.AsyncClient(host=o.url) as client,
    ):
        assert [m.model for m in (await client.list()).models] == ["m:latest"]
        parts = [
            p
            async for p in await client.chat("m", [{"role": "user", "content": "hi"}], stream=True)
        ]
        assert "".join(p.message.content or "" for p in parts) == "Hello from upstream"
        assert parts[-1].done and parts[-1].eval_count == 3
        whole = await client.chat("m", [{"role": "user", "content": "hi"}])
        assert whole.message.content == "Hello from upstream" and whole.message.thinking == "t"
        assert whole.message.tool_calls and whole.message.tool_calls[0].function.arguments == {
            "x": 1
        }
        gen = await client.generate("m", "hi")
        assert gen.response == "Hello from upstream" and gen.context == [1, 2, 3]
        emb = await client.embed("m", ["a", "bb"])
        assert [len(v) for v in emb.embeddings] == [3, 3]


async def test_the_fake_openai_server_is_read_by_the_official_client() -> None:
    script = Script(tool_calls=({"name": "f", "arguments": {"x": 1}},))
    async with (
        fakes(Fake("openai", models=("m",), script=script)) as (a,),
        openai.AsyncOpenAI(base_url=a.base, api_key="x", max_retries=0) as client,
    ):
        assert [m.id async for m in client.models.list()] == ["m"]
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, args, finish, usage = "", "", None, None
        async for event in stream:
            if event.usage:
                usage = event.usage
            for choice in event.choices:
                text += choice.delta.content or ""
                for call in choice.delta.tool_calls or ():
                    args += call.function.arguments or "" if call.function else ""
                finish = choice.finish_reason or finish
        assert (text, args, finish) == ("Hello from upstream", '{"x":1}', "tool_calls")
        assert usage is not None and usage.completion_tokens == 3
        whole = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert whole.choices[0].message.tool_calls is not None
        emb = await client.embeddings.create(model="m", input=["a", "bb"])
        assert [d.index for d in emb.data] == [1, 0]
