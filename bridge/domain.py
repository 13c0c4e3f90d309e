"""The internal request and response model every protocol codec converts to and from.

Stdlib only: the Ollama and OpenAI codecs, the service and the engines all speak these types.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

JSONSchema = Mapping[str, Any]
# `format`: None (free text), "json" (any JSON value) or a JSON schema object.
Format = str | JSONSchema | None


# Where image N of a request goes in a rendered prompt (Ollama's marker); a prompt without any
# (raw mode) takes its images first.
IMAGE_TAG = re.compile(r"\[img-(\d+)\]")


@dataclass(frozen=True, slots=True)
class Options:
    """Ollama's `options`; None means "not given", so layers can be stacked."""

    num_ctx: int | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    use_mmap: bool | None = None
    num_thread: int | None = None
    num_keep: int | None = None
    seed: int | None = None
    num_predict: int | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_last_n: int | None = None
    temperature: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: tuple[str, ...] | None = None

    def overlay(self, top: Options) -> Options:
        """These options with every key that `top` sets replaced whole (stop lists are not merged)."""
        changes = {f.name: v for f in fields(top) if (v := getattr(top, f.name)) is not None}
        return self if not changes else _replace(self, changes)

    def as_dict(self) -> dict[str, Any]:
        """The keys that are set, in declaration order."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def _replace(opts: Options, changes: Mapping[str, Any]) -> Options:
    values = {f.name: getattr(opts, f.name) for f in fields(opts)}
    values.update(changes)
    return Options(**values)


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: Mapping[str, Any]
    index: int = 0
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str = ""
    images: tuple[bytes, ...] = ()
    thinking: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_name: str | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str  # as the client sent it; responses echo it
    messages: tuple[Message, ...]
    options: Options = Options()
    format: Format = None
    tools: tuple[Mapping[str, Any], ...] = ()
    keep_alive: float | None = None  # seconds; None = server default; inf = forever
    think: bool | str | None = None
    truncate: bool = True  # drop old messages to fit the context
    shift: bool = True  # shorten a prompt that still does not fit
    logprobs: bool = False
    top_logprobs: int = 0
    debug_render_only: bool = False  # answer with the rendered prompt, generate nothing


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    model: str
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: tuple[int, ...] | None = None
    raw: bool = False
    images: tuple[bytes, ...] = ()
    options: Options = Options()
    format: Format = None
    keep_alive: float | None = None
    think: bool | str | None = None
    shift: bool = True
    truncate: bool = True  # false: a prompt too long for the context is an error
    logprobs: bool = False
    top_logprobs: int = 0
    debug_render_only: bool = False


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """/api/embed, the legacy /api/embeddings and /v1/embeddings, decoded."""

    model: str
    inputs: tuple[str, ...]
    truncate: bool = True
    dimensions: int | None = None
    # Ollama L2-normalises /api/embed and /v1 vectors; the legacy endpoint sends them raw.
    normalize: bool = True
    options: Options = Options()
    keep_alive: float | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One vector per input, in input order, and Ollama's timing fields (ns)."""

    vectors: list[list[float]]
    prompt_eval_count: int = 0
    total_duration: int = 0
    load_duration: int = 0


@dataclass(frozen=True, slots=True)
class Metrics:
    """Ollama's timing fields, all durations in nanoseconds."""

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    # Prompt tokens whose KV cells were reused from an earlier request (prefix cache); they are
    # part of prompt_eval_count but were not evaluated again.
    prompt_cached: int = 0


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token's log-probability under the model (before sampling settings), and,
    for the generated tokens, the most likely alternatives."""

    token: str
    logprob: float
    bytes: tuple[int, ...] = ()
    top: tuple[TokenLogprob, ...] = ()


@dataclass(slots=True)
class Chunk:
    """One piece of a response stream; the last one has `done` set and carries the metrics.

    Treated as immutable (change one with `dataclasses.replace`), but not frozen: one is made
    per token or upstream record, and a frozen dataclass's constructor costs four times as
    much."""

    text: str = ""
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    done: bool = False
    done_reason: str | None = None  # "stop", "length", "load", "unload"
    metrics: Metrics | None = None
    context: tuple[int, ...] | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens that made this chunk's text
    # The record exactly as an upstream of the client's own protocol sent it, when it can be
    # relayed unchanged (the same model name; never a final record): no re-encoding, and
    # fields bridge does not know survive. Whoever changes the chunk must drop it.
    raw: bytes | None = field(default=None, compare=False, repr=False)
    # `_debug_render_only`'s answer: the prompt as rendered, and how many images it holds.
    debug: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1  # -1 = random


@dataclass(frozen=True, slots=True)
class Completion:
    """What an engine runs: a rendered prompt and how to continue it."""

    prompt: str
    sampling: Sampling = Sampling()
    num_predict: int = -1  # -1 = until the context is full
    stop: tuple[str, ...] = ()
    format: Format = None
    context_prefix: tuple[int, ...] = ()  # token ids put before the prompt (generate's `context`)
    return_context: bool = False
    shift: bool = True  # a prompt that does not fit is shortened (else ContextLengthExceeded)
    num_keep: int = 4  # tokens kept at the start when shortening
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, with `logprobs`
    images: tuple[bytes, ...] = ()  # image N goes where the prompt says `[img-N]` (IMAGE_TAG)


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """The options that shape a loaded model; a change in any of them means a reload."""

    num_ctx: int
    num_batch: int = 512
    num_gpu: int = -1  # -1 = as many layers as fit (all, on a GPU build)
    main_gpu: int = 0
    use_mmap: bool | None = None
    num_thread: int = 0  # 0 = the physical core count
    parallel: int = 1


@dataclass(frozen=True, slots=True)
class ModelDetails:
    parent_model: str = ""
    format: str = "gguf"
    family: str = ""
    families: tuple[str, ...] | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    context_length: int | None = None
    embedding_length: int | None = None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model as found on disk: where its files are and what its layers say. Nothing loaded."""

    name: str  # display name, e.g. "llama3:latest"
    full_name: str  # registry.ollama.ai/library/llama3:latest
    namespace: str
    source: str  # "ollama", "gguf" or "demo"
    model_path: str  # the weights (the first file of a split GGUF)
    digest: str  # hex sha256 of the manifest (or of the file's identity for GGUF folders)
    size: int
    modified_at: float  # epoch seconds
    details: ModelDetails = ModelDetails()
    projectors: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()
    template: str | None = None  # Ollama Go template layer
    system: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    messages: tuple[Message, ...] = ()
    license: tuple[str, ...] = ()
    problem: str | None = None  # why it cannot be used (missing blob, corrupt file)
    source_path: str = ""  # the file whose mtime is `modified_at` (manifest, or the GGUF)
    # From the config blob, shown by /api/show: the renderer and parser named at create
    # time, and the lowest Ollama version the model needs.
    renderer: str = ""
    parser: str = ""
    requires: str = ""
