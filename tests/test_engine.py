"""The llama.cpp engine on the real SmolLM2: continuous batching must not change what a stream
produces, cancellation frees only its own sequence, prefix reuse shows in the metrics."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from gguf import GGUFValueType

from bridge.domain import Chunk, Completion, LoadOptions, ModelSpec, Sampling
from bridge.engine.batching import Slot, common_prefix, pick_slot, prompt_chunk, shorten
from bridge.engine.llamacpp import LlamaCppEngine, LlamaCppModel
from bridge.errors import CapabilityMissing, ContextLengthExceeded, EngineFailed
from tests.conftest import has_gpu
from tests.ggufgen import copy_with_keys
from tests.store import smollm2_path

UINT32 = GGUFValueType.UINT32

GREEDY = Sampling(temperature=0, seed=1)
# On a CPU a sequence's numbers do not depend on what else is in its batch or its cache, so a
# stream's tokens are exactly those it gets alone. With CUDA, llama.cpp picks its kernels by
# the batch's shape (seen on an H200: a stream differs from its lone run even queued behind
# another, from the prompt cache alone); there the tests ask for whole, valid replies instead.
EXACT = not has_gpu()
SEEDED = Sampling(temperature=0.9, top_k=100, top_p=1.0, seed=42)


def chat(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


PROMPTS = (
    chat("Write a short poem about the sea."),
    chat("What is two plus two? Explain your reasoning step by step."),
    chat(
        "Here is a list of animals: "
        + ", ".join(["cat", "dog", "horse", "sheep", "goat", "cow", "duck", "goose"] * 6)
        + ". Which of them can fly?"
    ),  # long enough to be prefilled over several steps at num_batch 16
    chat("Name three colours."),
)


def spec_for(path: Path, name: str = "smollm2") -> ModelSpec:
    return ModelSpec(
        name=name,
        full_name=name,
        namespace="",
        source="gguf",
        model_path=str(path),
        digest="0" * 64,
        size=path.stat().st_size,
        modified_at=0.0,
    )


async def load(path: Path | None = None, **options: Any) -> LlamaCppModel:
    opts = {"num_ctx": 1024, "num_thread": 2, **options}
    return await LlamaCppEngine().load(spec_for(path or smollm2_path()), LoadOptions(**opts))


@pytest.fixture
async def model(request: pytest.FixtureRequest) -> AsyncIterator[LlamaCppModel]:
    params: dict[str, Any] = getattr(request, "param", {})
    m = await load(**params)
    yield m
    await m.close()


async def run(model: LlamaCppModel, prompt: str, **kw: Any) -> tuple[str, Chunk]:
    kw.setdefault("sampling", GREEDY)
    kw.setdefault("num_predict", 24)
    parts: list[str] = []
    async for chunk in model.complete(Completion(prompt=prompt, return_context=True, **kw)):
        parts.append(chunk.text)
        if chunk.done:
            return "".join(parts), chunk
    raise AssertionError("the stream ended without a final chunk")


def tokens_of(final: Chunk) -> tuple[int, ...]:
    assert final.context is not None and final.metrics is not None
    return final.context[final.metrics.prompt_eval_count :]


@pytest.mark.parametrize(
    "model",
    [{"parallel": 4, "num_batch": 16}, {"parallel": 2, "num_batch": 16}, {"parallel": 1}],
    indirect=True,
    ids=["4-slots", "2-slots-queueing", "1-slot"],
)
async def test_concurrent_streams_produce_what_each_produces_alone(model: LlamaCppModel) -> None:
    cases = [(p, GREEDY) for p in PROMPTS] + [(PROMPTS[0], SEEDED), (PROMPTS[3], SEEDED)]
    alone = [await run(model, p, sampling=s) for p, s in cases]
    together = await asyncio.gather(*(run(model, p, sampling=s) for p, s in cases))
    for (text_a, final_a), (text_b, final_b) in zip(alone, together, strict=True):
        if not EXACT:
            assert final_b.done and final_b.metrics is not None and text_b
            assert final_b.metrics.eval_count > 0
            continue
        assert tokens_of(final_b) == tokens_of(final_a)
        assert text_b == text_a
        assert final_b.done_reason == final_a.done_reason
        assert final_b.metrics is not None and final_a.metrics is not None
        assert final_b.metrics.eval_count == final_a.metrics.eval_count


@pytest.mark.parametrize("model", [{"parallel": 3}], indirect=True)
async def test_cancelling_one_stream_leaves_the_others_intact(model: LlamaCppModel) -> None:
    expected = [(await run(model, p, num_predict=32))[0] for p in PROMPTS[:2]]
    generating = [asyncio.Event() for _ in expected]

    async def other(i: int) -> str:
        parts: list[str] = []
        completion = Completion(prompt=PROMPTS[i], sampling=GREEDY, num_predict=32)
        async for chunk in model.complete(completion):
            generating[i].set()
            parts.append(chunk.text)
        return "".join(parts)

    doomed = model.complete(Completion(prompt=PROMPTS[3], sampling=GREEDY, num_predict=500))
    assert not (await anext(doomed)).done
    others = [asyncio.create_task(other(i)) for i in range(len(expected))]
    for event in generating:  # all three are in the batch now
        await event.wait()
    await doomed.aclose()  # type: ignore[attr-defined]
    texts = [await t for t in others]
    assert texts == expected if EXACT else all(texts)
    # The freed slot takes new work.
    _text, final = await run(model, PROMPTS[3], num_predict=4)
    assert final.done_reason == "length" and final.metrics is not None
    assert final.metrics.eval_count == 4


@pytest.mark.parametrize("model", [{"parallel": 1}], indirect=True)
async def test_cancellation_frees_the_sequences_cells_at_once(model: LlamaCppModel) -> None:
    _, first = await run(model, PROMPTS[0], num_predict=4)
    _, again = await run(model, PROMPTS[0], num_predict=4)
    assert again.metrics is not None and first.metrics is not None
    assert again.metrics.prompt_cached == first.metrics.prompt_eval_count - 2  # cells kept
    stream = model.complete(Completion(prompt=PROMPTS[0], sampling=GREEDY, num_predict=500))
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    _, after = await run(model, PROMPTS[0], num_predict=4)
    assert after.metrics is not None and after.metrics.prompt_cached == 0  # cells freed


@pytest.mark.parametrize("model", [{"parallel": 2}], indirect=True)
async def test_a_grammar_stream_and_a_free_one_share_the_batch(model: LlamaCppModel) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    free_prompt = PROMPTS[1]
    expected, _ = await run(model, free_prompt, num_predict=40)
    order: list[str] = []

    async def follow(tag: str, prompt: str, **kw: Any) -> str:
        parts: list[str] = []
        async for chunk in model.complete(Completion(prompt=prompt, sampling=GREEDY, **kw)):
            order.append(tag + ("-done" if chunk.done else ""))
            parts.append(chunk.text)
        return "".join(parts)

    constrained, free = await asyncio.gather(
        follow("json", chat("Describe a person."), format=schema, num_predict=200),
        follow("free", free_prompt, num_predict=40),
    )
    value = orjson.loads(constrained)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    assert free == expected if EXACT else free
    # They ran side by side: each produced tokens before the other was done.
    assert order.index("free") < order.index("json-done")
    assert order.index("json") < order.index("free-done")


@pytest.mark.parametrize("model", [{"parallel": 2}], indirect=True)
async def test_prefix_reuse_shows_in_the_metrics_and_routes_to_the_slot(
    model: LlamaCppModel,
) -> None:
    a1 = chat("My name is Ada. I live by the sea and I like long walks. Write me a long poem.")
    b1 = chat("Write a long story about a robot who learns to paint, with many details.")
    reply_a, fa = await run(model, a1, num_predict=48)
    reply_b, fb = await run(model, b1, num_predict=48)
    # Follow-ups: each carries its conversation so far. A's is routed back to A's slot even
    # though B ran last, and only the new tokens are evaluated.
    a2 = a1 + reply_a + "<|im_end|>\n" + chat("What is my name?")
    _, fa2 = await run(model, a2, num_predict=8)
    assert fa.metrics is not None and fa2.metrics is not None
    n_a2 = len(await model.tokenize(a2))
    assert fa2.metrics.prompt_eval_count == n_a2  # the whole prompt, cached part included
    assert fa2.metrics.prompt_cached >= fa.metrics.prompt_eval_count
    assert fa2.metrics.prompt_cached < n_a2
    b2 = b1 + reply_b + "<|im_end|>\n" + chat("And three more?")
    _, fb2 = await run(model, b2, num_predict=8)
    assert fb.metrics is not None and fb2.metrics is not None
    assert fb2.metrics.prompt_cached >= fb.metrics.prompt_eval_count
    # Reuse does not change the result.
    assert (await run(model, a2, num_predict=8))[0] == (await run(model, a2, num_predict=8))[0]


@pytest.mark.parametrize("model", [{"parallel": 4, "num_ctx": 256}], indirect=True)
async def test_each_slot_has_the_full_context(model: LlamaCppModel) -> None:
    assert model.n_ctx == 256
    counting = ", ".join(str(i) for i in range(1, 60)) + ","  # 222 tokens: ~34 left to fill

    async def fill() -> Chunk:
        _, final = await run(model, counting, num_predict=-1)
        return final

    finals = await asyncio.gather(*(fill() for _ in range(4)))
    for final in finals:
        assert final.done_reason == "length" and final.metrics is not None
        assert final.metrics.prompt_eval_count + final.metrics.eval_count == 256
    with pytest.raises(ContextLengthExceeded):
        await run(model, "word " * 400, shift=False)
    _, shifted = await run(model, "word " * 400, num_predict=2)
    assert shifted.metrics is not None and shifted.metrics.prompt_eval_count < 256


@pytest.mark.parametrize("model", [{"parallel": 2}], indirect=True)
async def test_interrupt_ends_every_stream_and_refuses_new_ones(model: LlamaCppModel) -> None:
    streams = [
        model.complete(Completion(prompt=p, sampling=GREEDY, num_predict=500)) for p in PROMPTS[:2]
    ]
    for s in streams:
        await anext(s)
    model.interrupt()
    for s in streams:
        with pytest.raises(EngineFailed, match="shutting down"):
            while True:
                await anext(s)
    with pytest.raises(EngineFailed, match="shutting down"):
        await run(model, PROMPTS[0])


@pytest.mark.parametrize("model", [{"parallel": 2}], indirect=True)
async def test_num_predict_zero_and_stop_strings(model: LlamaCppModel) -> None:
    text, final = await run(model, PROMPTS[1], num_predict=0)
    assert text == "" and final.done_reason == "length" and final.metrics is not None
    assert final.metrics.eval_count == 0 and final.metrics.prompt_eval_count > 0
    base, _ = await run(model, PROMPTS[1], num_predict=40)
    stop = base[10:14]
    text, final = await run(model, PROMPTS[1], num_predict=40, stop=(stop,))
    assert final.done_reason == "stop" and text == base[: base.index(stop)]


async def test_embeddings_need_an_embedding_model(model: LlamaCppModel) -> None:
    with pytest.raises(CapabilityMissing):
        await model.embed(["hello"])


@pytest.fixture(scope="module")
def embedding_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 declaring mean pooling: a (poor but real) embedding model."""
    out = tmp_path_factory.mktemp("embed") / "smollm2-mean.gguf"
    return copy_with_keys(smollm2_path(), out, **{"{arch}.pooling_type": (1, UINT32)})


async def test_embeddings_run_batched(embedding_gguf: Path) -> None:
    model = await load(embedding_gguf, num_ctx=256)
    try:
        texts = ["the cat sat on the mat", "a kitten rested on the rug", "markets fell today"]
        out = await model.embed(texts * 7)  # more inputs than one decode carries
        many = out.vectors
        assert len(many) == 21 and len({len(v) for v in many}) == 1 and len(many[0]) == 576
        counts = [len(await model.tokenize(t)) for t in texts]
        assert out.prompt_eval_count == 7 * sum(counts)

        def cos(a: list[float], b: list[float]) -> float:
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            return dot / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5

        assert cos(many[0], many[1]) > cos(many[0], many[2])
        alone = (await model.embed([texts[0]])).vectors[0]
        assert max(abs(x - y) for x, y in zip(alone, many[0], strict=True)) < 1e-4
        with pytest.raises(ContextLengthExceeded):
            await model.embed(["word " * 400], truncate=False)
        cut = await model.embed(["word " * 400])
        assert len(cut.vectors) == 1 and cut.prompt_eval_count == 256
    finally:
        await model.close()


def test_slot_routing() -> None:
    history = list(range(100, 200))
    slots = [Slot(0, list(range(50))), Slot(1), Slot(2, history), Slot(3)]
    # An unrelated prompt: the lowest empty slot, not a cached conversation's.
    assert pick_slot(slots, set(), [7, 8, 9]).seq == 1
    # A follow-up of the conversation in slot 2 goes back there.
    assert pick_slot(slots, set(), [*history, 1, 2, 3]).seq == 2
    # A short shared prefix is not worth another conversation's cells.
    assert pick_slot(slots, set(), [*history[:10], 1, 2]).seq == 1
    # No empty slot: the one that loses least, unless another joins up the busy ones.
    assert pick_slot([slots[0], slots[2]], set(), [7, 8, 9]).seq == 0
    assert pick_slot([slots[0], slots[2]], {1, 3}, [7, 8, 9]).seq == 2
    # Next to the busy sequences rather than apart from them, unless the prefix is long.
    near, far = Slot(1, list(range(10))), Slot(5, [*range(30), *range(500, 540)])
    assert pick_slot([near, far], {0}, [*range(30), 9]).seq == 1
    assert pick_slot([near, Slot(5, history)], {0}, [*history, 9]).seq == 1
    long = list(range(1000, 1400))
    assert pick_slot([near, Slot(5, long)], {0}, [*long, 9]).seq == 5


def test_prompt_chunks_never_leave_a_lone_token() -> None:
    assert prompt_chunk(10, 512, 512) == 10
    assert prompt_chunk(513, 512, 512) == 511  # not 512 + 1
    assert prompt_chunk(600, 512, 512) == 512
    assert prompt_chunk(5, 1, 512) == 0  # a single row does not fit: wait for the next step
    assert prompt_chunk(1, 512, 512) == 1  # a one-token prompt is one row anyway
    assert prompt_chunk(5, 1, 1) == 1  # num_batch 1: nothing else is possible
    # num_batch 2 with 3 left: take 2 (then 1), never 0 forever.
    assert prompt_chunk(3, 2, 2) == 2 and prompt_chunk(1, 2, 2) == 1


def test_common_prefix_and_shorten() -> None:
    assert common_prefix([1, 2, 3, 4], [1, 2, 9]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    long = list(range(1000))
    assert common_prefix(long, [*long[:637], -1]) == 637
    assert shorten(list(range(300)), 256, 4)[:4] == [0, 1, 2, 3]
    assert len(shorten(list(range(300)), 256, 4)) < 256


async def test_an_image_is_reused_from_the_cache_only_when_it_is_the_same_image(
    tmp_path: Path,
) -> None:
    from tests.api.test_vision import png
    from tests.mmproj import IMAGE_TOKENS, write_tiny_mmproj

    mmproj = write_tiny_mmproj(tmp_path / "mmproj.gguf")
    spec = dataclasses.replace(spec_for(smollm2_path()), projectors=(str(mmproj),))
    model = await LlamaCppEngine().load(spec, LoadOptions(num_ctx=512, num_thread=2))
    try:
        red, blue = png(8, 8, (255, 0, 0)), png(8, 8, (0, 0, 255))
        prompt = chat("[img-0]What colour is this?")
        _, first = await run(model, prompt, images=(red,), num_predict=4)
        _, again = await run(model, prompt, images=(red,), num_predict=4)
        _, other = await run(model, prompt, images=(blue,), num_predict=4)
        assert first.metrics is not None and again.metrics is not None
        assert other.metrics is not None
        start = len(await model.tokenize(chat("")[: chat("").index("\n") + 1]))
        assert first.metrics.prompt_eval_count == again.metrics.prompt_eval_count
        # The same image: everything but the last two prompt tokens comes from the cache.
        assert again.metrics.prompt_cached == again.metrics.prompt_eval_count - 2
        # Another image at that place: only the text before it is reused.
        assert other.metrics.prompt_cached == start
        assert first.metrics.prompt_eval_count >= start + IMAGE_TOKENS
        assert first.context is not None and all(t >= 0 for t in first.context)
    finally:
        await model.close()
