"""The engine protocol: what the scheduler and service need from a model runtime.

An engine loads a model file into a `LoadedModel`. A loaded model runs completions as an async
stream of `Chunk`s. Implementations own their threads: nothing here may block the event loop,
and closing the stream (the client went away) must stop the work within a token.

A model loaded with `parallel` slots runs that many `complete` calls at once, batched together;
more calls wait inside the model for a free slot. The model picks the slot itself: the one whose
cached tokens share the longest prefix with the new prompt, whose KV cells it then reuses (the
final chunk's `Metrics.prompt_cached` says how many).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from bridge.domain import Chunk, Completion, Embeddings, LoadOptions, ModelSpec
from bridge.hardware import GPU


class LoadedModel(Protocol):
    @property
    def n_ctx(self) -> int:
        """Context length per slot."""
        ...

    @property
    def size(self) -> int:
        """Bytes this model holds in memory (weights and caches)."""
        ...

    def complete(self, completion: Completion) -> AsyncIterator[Chunk]:
        """Stream the continuation of `completion.prompt`; the last chunk has `done` and metrics.

        Raises bridge errors (e.g. ContextLengthExceeded) before the first chunk when the
        request cannot run. Closing the iterator cancels the generation.
        """
        ...

    async def embed(self, texts: Sequence[str], *, truncate: bool = True) -> Embeddings:
        """One embedding per text as the model pools it (not normalised), several texts per
        decode; `prompt_eval_count` is the tokens of all. Raises CapabilityMissing for a model
        without pooling (not an embedding model), and ContextLengthExceeded for a text longer
        than the context unless `truncate` (then it is cut)."""
        ...

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as a prompt (special tokens parsed, BOS as the model wants)."""
        ...

    def interrupt(self) -> None:
        """End every generation at its next token with EngineFailed (server shutdown);
        later requests fail the same way. Safe to call from any thread."""
        ...

    async def close(self) -> None:
        """Free the model; waits for work in progress to stop."""
        ...


class Engine(Protocol):
    async def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedModel:
        """Load `spec`'s weights; raises ModelLoadFailed with a clear reason. `options.num_gpu`
        is the number of layers to offload, negative for all of them."""
        ...

    def gpus(self) -> Sequence[GPU]:
        """The GPUs it can offload layers to, with their free memory now; empty when it runs
        on the CPU alone. Blocking: called off the event loop."""
        ...
