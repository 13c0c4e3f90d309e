"""Memory plans from GGUF headers: how many layers fit in a given amount of VRAM."""

from __future__ import annotations

import os
from pathlib import Path

from bridge.domain import LoadOptions
from bridge.memory import MemoryPlan
from bridge.models.gguf_info import read_gguf
from tests.tinyllama import write_tiny_llama

OPTS = LoadOptions(num_ctx=4096)


def plan(path: Path, opts: LoadOptions = OPTS, *, offload: bool = True) -> MemoryPlan:
    size = os.path.getsize(path)
    return MemoryPlan(read_gguf(str(path)), opts, file_bytes=size, extra_bytes=0, offload=offload)


def test_layers_fit_as_far_as_the_vram_goes(smollm2: Path) -> None:
    # A small context and batch: the layers, not the compute buffer, are most of the need.
    p = plan(smollm2, LoadOptions(num_ctx=512, num_batch=64))
    assert p.max_layers == 31  # 30 blocks and the output layer
    whole = p.at(10**12)
    budgets = range(0, whole.booked + 2_000_000, 1_000_000)
    placements = [p.at(vram) for vram in budgets]
    layers = [x.gpu_layers for x in placements]
    assert layers == sorted(layers) and layers[0] == 0 and layers[-1] == 31
    assert len(set(layers)) > 2  # splits in between
    for vram, x in zip(budgets, placements, strict=True):
        assert x.booked <= vram and x.size >= p.size
        assert (x.vram == 0) == (x.gpu_layers == 0) == (x.booked == 0)
    assert whole.vram == whole.size > whole.booked


def test_a_split_that_needs_more_than_the_whole_is_not_made(smollm2: Path) -> None:
    # At 4096 tokens SmolLM2's compute buffer outweighs its layers; a split needs a second
    # one, so below the whole model's need nothing is offloaded.
    p = plan(smollm2)
    whole = p.at(10**12)
    assert p.at(whole.booked).gpu_layers == 31
    assert p.at(whole.booked - 1).gpu_layers == 0


def test_an_explicit_num_gpu_is_taken_as_it_is(smollm2: Path) -> None:
    p = plan(smollm2, LoadOptions(num_ctx=4096, num_gpu=5))
    assert p.at(0).gpu_layers == 5 and 0 < p.at(0).vram < p.at(0).size
    assert plan(smollm2, LoadOptions(num_ctx=4096, num_gpu=99)).at(0).gpu_layers == 31


def test_without_a_gpu_everything_stays_in_ram(smollm2: Path) -> None:
    x = plan(smollm2, offload=False).at(10**12)
    assert (x.vram, x.gpu_layers, x.ram) == (0, 0, x.size)


def test_tied_embeddings_count_again_for_the_output_layer(smollm2: Path, tmp_path: Path) -> None:
    # SmolLM2 has no output.weight: llama.cpp copies the token embeddings (Q8_0, 576 x 49152)
    # to the GPU for the output layer, beside output_norm (F32, 576).
    assert plan(smollm2).output_bytes == 576 * 49152 * 34 // 32 + 576 * 4
    # The tiny llama has its own output.weight (F16, 256 x 265): its embeddings stay in RAM.
    assert plan(write_tiny_llama(tmp_path / "t.gguf")).output_bytes == 256 * 265 * 2 + 256 * 4
