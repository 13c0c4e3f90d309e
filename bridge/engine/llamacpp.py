"""llama.cpp in the process, through llama-cpp-python. The only module that imports llama_cpp.

Thread affinity: a llama.cpp context is not thread-safe, so every loaded model gets one owner
thread (a single-worker executor) and every call on it (load, tokenize, decode, close) runs
there. Tokens reach the event loop through `loop.call_soon_threadsafe`; a cancel flag checked
after every token stops a generation whose client has gone away.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import llama_cpp
import orjson
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

from bridge.domain import Chunk, Completion, Format, LoadOptions, Metrics, ModelSpec
from bridge.engine.stops import StopMatcher
from bridge.errors import (
    BridgeError,
    ContextLengthExceeded,
    EngineFailed,
    InvalidRequest,
    ModelLoadFailed,
)
from bridge.hardware import physical_cores

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTEXT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten "
    "the prompt, adjust the context length in settings, or use a model with a longer context "
    "length"
)


SHUTTING_DOWN = "the server is shutting down"


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


class LlamaCppEngine:
    """Loads GGUF files with llama-cpp-python, one owner thread per loaded model."""

    async def load(self, spec: ModelSpec, options: LoadOptions) -> LlamaCppModel:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{spec.name}")
        loop = asyncio.get_running_loop()
        try:
            llm = await loop.run_in_executor(executor, _load, spec, options)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return LlamaCppModel(llm, executor, options)


def _load(spec: ModelSpec, options: LoadOptions) -> Any:
    if spec.problem:
        raise ModelLoadFailed(spec.problem)
    threads = options.num_thread or physical_cores()
    kwargs: dict[str, Any] = {
        "model_path": spec.model_path,
        "n_ctx": options.num_ctx,
        "n_batch": options.num_batch,
        "n_ubatch": options.num_batch,
        "n_threads": threads,
        "n_threads_batch": threads,
        "n_gpu_layers": options.num_gpu if options.num_gpu >= 0 else -1,
        "main_gpu": options.main_gpu,
        "verbose": False,
    }
    if options.use_mmap is not None:
        kwargs["use_mmap"] = options.use_mmap
    if spec.adapters:
        kwargs["lora_path"] = spec.adapters[0]
    started = time.perf_counter()
    try:
        llm = llama_cpp.Llama(**kwargs)
    except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError/OSError here
        reason = str(exc) or type(exc).__name__
        if not os.path.exists(spec.model_path):
            reason = f"model file not found: {spec.model_path}"
        raise ModelLoadFailed(f"unable to load model {spec.name}: {reason}") from exc
    log.info(
        "loaded %s (n_ctx=%d, threads=%d, gpu_layers=%s) in %.2fs",
        spec.name,
        options.num_ctx,
        threads,
        kwargs["n_gpu_layers"],
        time.perf_counter() - started,
    )
    return llm


class LlamaCppModel:
    """A loaded model. All llama.cpp calls go through `self._executor` (its owner thread)."""

    def __init__(self, llm: Any, executor: ThreadPoolExecutor, options: LoadOptions) -> None:
        self._llm = llm
        self._executor = executor
        self._options = options
        self._vocab = llm._model.vocab
        self._piece_buf = ctypes.create_string_buffer(256)
        self._grammars: dict[bytes, Any] = {}
        bos = llm.token_bos()
        self._bos_text = (
            self._piece(bos, special=True).decode("utf-8", "replace") if bos >= 0 else ""
        )
        self._size = int(llm._model.size())
        self._adds_bos = bool(llm._model.add_bos_token())
        self._stopping = threading.Event()

    @property
    def n_ctx(self) -> int:
        return int(self._llm.n_ctx())

    @property
    def size(self) -> int:
        return self._size

    @property
    def size_vram(self) -> int:
        return self._size if gpu_offload_supported() and self._options.num_gpu != 0 else 0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def tokenize(self, text: str) -> list[int]:
        return await self._run(self._tokenize, text)

    def interrupt(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        await self._run(self._llm.close)
        self._executor.shutdown(wait=False)

    async def complete(self, completion: Completion) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()
        cancel = threading.Event()
        # Items from the owner thread wait here; the loop is woken only when it has nothing
        # pending, so a loop that falls behind drains many tokens per wake-up.
        pending: list[Chunk | BaseException] = []
        lock = threading.Lock()

        def drain() -> None:
            with lock:
                items = pending.copy()
                pending.clear()
            for item in items:
                queue.put_nowait(item)

        def emit(item: Chunk | BaseException) -> None:
            with lock:
                pending.append(item)
                wake = len(pending) == 1
            if wake:
                try:
                    loop.call_soon_threadsafe(drain)
                except RuntimeError:  # the loop is closed: nobody is listening any more
                    cancel.set()

        job = loop.run_in_executor(self._executor, self._generate, completion, emit, cancel)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.done:
                    break
        finally:
            cancel.set()
            if not job.done():
                # Do not wait here (we may be inside a cancellation); the owner thread sees the
                # flag after the current token, and later jobs queue behind it on that thread.
                job.add_done_callback(_consume_exception)

    # --- on the owner thread -------------------------------------------------------------

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, big, len(big), 0, special)
            return big.raw[:n]
        return buf.raw[:n]

    def _tokenize(self, text: str) -> list[int]:
        # A template that already wrote the BOS text must not get a second BOS token.
        add_bos = not (self._bos_text and text.startswith(self._bos_text))
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def _grammar(self, fmt: Format) -> Any:
        if fmt is None or fmt == "":
            return None
        key = orjson.dumps(fmt, option=orjson.OPT_SORT_KEYS)
        grammar = self._grammars.get(key)
        if grammar is None:
            try:
                if fmt == "json":
                    grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
                elif isinstance(fmt, str):
                    raise InvalidRequest(
                        f'invalid format: "{fmt}"; expected "json" or a valid JSON Schema object'
                    )
                else:
                    grammar = LlamaGrammar.from_json_schema(
                        orjson.dumps(fmt).decode(), verbose=False
                    )
            except BridgeError:
                raise
            except Exception as exc:
                raise InvalidRequest(f"invalid JSON schema in format: {exc}") from exc
            self._grammars[key] = grammar
        return grammar

    def _generate(
        self, c: Completion, emit: Callable[[Chunk | BaseException], None], cancel: threading.Event
    ) -> None:
        if cancel.is_set():  # abandoned while it waited for this thread: skip it
            return
        try:
            self._generate_inner(c, emit, cancel)
        except BaseException as exc:
            emit(exc if isinstance(exc, BridgeError) else _engine_error(exc))

    def _generate_inner(
        self, c: Completion, emit: Callable[[Chunk | BaseException], None], cancel: threading.Event
    ) -> None:
        llm = self._llm
        n_ctx = self.n_ctx
        if self._stopping.is_set():
            raise EngineFailed(SHUTTING_DOWN)
        started = time.perf_counter_ns()
        tokens = list(c.context_prefix) + self._tokenize(c.prompt)
        if len(tokens) >= n_ctx:
            if not c.shift:
                raise ContextLengthExceeded(CONTEXT_TOO_LONG)
            tokens = shorten(tokens, n_ctx, c.num_keep + (1 if self._adds_bos else 0))
        grammar = self._grammar(c.format)
        s = c.sampling
        llm.set_seed(s.seed if s.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED)
        llm.last_n_tokens_size = n_ctx if s.repeat_last_n < 0 else s.repeat_last_n
        room = n_ctx - len(tokens)
        budget = room if c.num_predict < 0 else min(c.num_predict, room)

        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stops = StopMatcher(c.stop)
        generated: list[int] = []
        reason: str | None = None
        first_at = 0
        if budget > 0:
            gen = llm.generate(
                tokens,
                top_k=s.top_k,
                top_p=s.top_p,
                min_p=s.min_p,
                typical_p=s.typical_p,
                temp=s.temperature,
                repeat_penalty=s.repeat_penalty,
                frequency_penalty=s.frequency_penalty,
                presence_penalty=s.presence_penalty,
                grammar=grammar,
            )
            for token in gen:
                if not first_at:
                    first_at = time.perf_counter_ns()
                if cancel.is_set():
                    break
                if self._stopping.is_set():
                    raise EngineFailed(SHUTTING_DOWN)
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    reason = "stop"
                    break
                generated.append(token)
                text, hit = stops.feed(decoder.decode(self._piece(token)))
                if text:
                    emit(Chunk(text=text))
                if hit:
                    reason = "stop"
                    break
                if len(generated) >= budget:
                    reason = "length"
                    break
            gen.close()
        else:
            reason = "length"
        if cancel.is_set():
            return
        if reason != "stop" or not stops.stopped:
            tail = stops.flush(decoder.decode(b"", final=True))
            if tail:
                emit(Chunk(text=tail))
        ended = time.perf_counter_ns()
        first_at = first_at or ended
        metrics = Metrics(
            prompt_eval_count=len(tokens),
            prompt_eval_duration=first_at - started,
            eval_count=len(generated),
            eval_duration=ended - first_at,
        )
        context = tuple(tokens + generated) if c.return_context else None
        emit(Chunk(done=True, done_reason=reason, metrics=metrics, context=context))


def shorten(tokens: list[int], n_ctx: int, n_keep: int) -> list[int]:
    """llama-server's prompt shift: keep the first `n_keep` tokens, then drop whole blocks of
    half the remaining context after them, so the prompt fits with room to answer."""
    n_keep = max(0, min(n_keep, n_ctx // 2))
    block = max((n_ctx - n_keep) // 2, 1)
    erased = max((len(tokens) - n_keep - block) // block, 1)
    return tokens[:n_keep] + tokens[n_keep + erased * block :]


def _engine_error(exc: BaseException) -> BridgeError:
    log.exception("engine failure", exc_info=exc)
    return EngineFailed(f"an error was encountered while running the model: {exc}")


def _consume_exception(fut: Any) -> None:
    if not fut.cancelled():
        fut.exception()
