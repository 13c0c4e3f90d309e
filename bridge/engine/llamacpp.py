"""llama.cpp in the process, through llama-cpp-python's low-level API, with continuous batching.

The only module that imports llama_cpp (besides `engine.quantize`, which only quantizes).

Thread affinity: a llama.cpp context is not thread-safe. Each loaded model has one owner thread
that loads it, runs every decode and every sampler, and frees it. Work reaches that thread
through an inbox; tokens go back to the event loop in batches, one `call_soon_threadsafe` per
decode for all its streams at once. Tokenizing reads only the vocabulary, which is immutable
once loaded, so it runs on a second thread and never waits behind a decode step (llama-server
tokenizes outside its decode loop too); the model is freed only after that thread has stopped.

Continuous batching: the context holds `parallel` sequences (slots), each with `num_ctx` KV
cells of its own (a non-unified cache: one stream per sequence, so what a sequence computes does
not depend on what else shares the batch). Each step decodes the next token of every
generating sequence together, then chunks of waiting prompts, up to `num_batch` tokens, so a
long prompt is prefilled a chunk at a time while the others keep generating. A request goes to
the free slot whose cached tokens share the longest prefix with its prompt (within limits: see
`batching.pick_slot`), and reuses those KV cells.

Cancellation: closing a stream sets a flag that the owner thread reads before the next step;
the sequence leaves the batch and its KV cells are freed then.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar, cast

import llama_cpp
import llama_cpp._ggml
import numpy as np
import orjson
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from bridge.domain import (
    Chunk,
    Completion,
    Embeddings,
    Format,
    LoadOptions,
    ModelSpec,
    Sampling,
    TokenLogprob,
)
from bridge.engine.batching import (
    Job,
    Outbox,
    Slot,
    common_prefix,
    pick_slot,
    prompt_chunk,
    shorten,
)
from bridge.engine.vision import Projector
from bridge.errors import (
    BridgeError,
    CapabilityMissing,
    ContextLengthExceeded,
    EngineFailed,
    InvalidRequest,
    ModelLoadFailed,
)
from bridge.hardware import GPU, physical_cores

log = logging.getLogger(__name__)
native_log = logging.getLogger(__name__ + ".native")

T = TypeVar("T")

CONTEXT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten "
    "the prompt, adjust the context length in settings, or use a model with a longer context "
    "length"
)
SHUTTING_DOWN = "the server is shutting down"
UNLOADED = "the model was unloaded"
EMBED_SEQS = 16  # inputs one embedding decode may carry
# Tokens reach the event loop at most this often (first and last chunks at once): fewer
# wake-ups leave the cores to llama.cpp, and 20 ms between deliveries is not visible.
FLUSH_INTERVAL = 0.02


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


def gpus() -> list[GPU]:
    """The GPUs this build of llama.cpp can offload to (none on a CPU-only build)."""
    _backend()
    if not gpu_offload_supported():
        return []
    lib = _ggml_devices()
    devices = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]
    kinds = [lib.ggml_backend_dev_type(dev) for dev in devices]
    # llama.cpp offloads to integrated GPUs only where there is no discrete one.
    wanted = _DEV_GPU if _DEV_GPU in kinds else _DEV_IGPU
    found = []
    for dev, kind in zip(devices, kinds, strict=True):
        if kind != wanted:
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(
            GPU(
                name=(lib.ggml_backend_dev_name(dev) or b"").decode("utf-8", "replace"),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(
                    "utf-8", "replace"
                ),
                free=free.value,
                total=total.value,
            )
        )
    return found


_DEV_GPU, _DEV_IGPU = 1, 2  # enum ggml_backend_dev_type (llama.cpp since September 2025)


@functools.cache
def _ggml_devices() -> ctypes.CDLL:
    # llama-cpp-python loads libggml but declares none of its device functions.
    lib: ctypes.CDLL = llama_cpp._ggml.libggml
    lib.ggml_backend_dev_count.argtypes = []
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
        fn.argtypes = [ctypes.c_void_p]
        fn.restype = ctypes.c_char_p
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    lib.ggml_backend_dev_memory.restype = None
    return lib


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _native_log(level: int, text: bytes, user_data: Any) -> None:
    # llama.cpp's INFO and WARN lines are load chatter; only its errors are ours to show.
    lvl = logging.ERROR if level == 3 else logging.DEBUG
    if native_log.isEnabledFor(lvl):
        native_log.log(lvl, "%s", text.decode("utf-8", "replace").rstrip("\n"))


@functools.cache
def _backend() -> None:
    llama_cpp.llama_backend_init()
    llama_cpp.llama_log_set(_native_log, ctypes.c_void_p(0))


class LlamaCppEngine:
    """Loads GGUF files with llama.cpp; each loaded model batches its requests on one thread."""

    def gpus(self) -> list[GPU]:
        return gpus()

    async def load(self, spec: ModelSpec, options: LoadOptions) -> LlamaCppModel:
        if spec.problem:
            raise ModelLoadFailed(spec.problem)
        batcher = _Batcher(spec, options)
        try:
            # Shielded: a waiter that gives up must not cancel the owner thread's future.
            await asyncio.shield(asyncio.wrap_future(batcher.loaded))
        except BaseException:
            batcher.request_close()  # abandoned mid-load: free it once the load is over
            raise
        return LlamaCppModel(batcher)


class LlamaCppModel:
    """A loaded model: the event-loop face of its `_Batcher`."""

    def __init__(self, batcher: _Batcher) -> None:
        self._b = batcher

    @property
    def n_ctx(self) -> int:
        return self._b.n_ctx

    @property
    def size(self) -> int:
        return self._b.size

    async def tokenize(self, text: str) -> list[int]:
        return await self._b.off_thread(self._b.tokenize, text)

    def interrupt(self) -> None:
        self._b.interrupt()

    async def close(self) -> None:
        self._b.request_close()
        await asyncio.shield(asyncio.wrap_future(self._b.closed))

    async def complete(self, completion: Completion) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        job = await self._b.off_thread(self._b.prepare, completion, loop)
        if job.budget <= 0:  # nothing to generate (num_predict 0): the prompt is not even run
            yield job.done_chunk("length", time.perf_counter_ns())
            return
        self._b.submit(job)
        try:
            while True:
                item = await job.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.done:
                    break
        finally:
            # Also when the consumer went away: the owner thread drops the sequence before
            # its next decode step and frees its KV cells.
            self._b.cancel(job)

    async def embed(self, texts: Sequence[str], *, truncate: bool = True) -> Embeddings:
        """One vector per text as the model pools it (not normalised), several texts per
        decode. Needs a model whose GGUF declares a pooling type (an embedding model); others
        raise CapabilityMissing."""
        if not self._b.embeddings:
            raise CapabilityMissing("this model does not support embeddings")
        inputs = await self._b.off_thread(self._b.tokenize_all, texts)
        fut: Future[Embeddings] = Future()
        self._b.call(fut, self._b.embed, inputs, truncate)
        return await asyncio.wrap_future(fut)


_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class _Batch:
    """A llama_batch over arrays this object owns, filled a run of tokens at a time."""

    def __init__(self, capacity: int, n_seq: int) -> None:
        self.capacity = capacity
        self.token = (ctypes.c_int32 * capacity)()
        self.pos = (ctypes.c_int32 * capacity)()
        self.n_seq_id = (ctypes.c_int32 * capacity)(*([1] * capacity))
        self.seq_id = (ctypes.c_void_p * capacity)()
        self.logits = (ctypes.c_int8 * capacity)()
        self._seq_values = (ctypes.c_int32 * n_seq)(*range(n_seq))
        base = ctypes.addressof(self._seq_values)
        self._seq_ptr = [base + 4 * s for s in range(n_seq)]
        self.native = llama_cpp.llama_batch(
            n_tokens=0,
            token=ctypes.cast(self.token, ctypes.POINTER(ctypes.c_int32)),
            embd=None,
            pos=ctypes.cast(self.pos, ctypes.POINTER(ctypes.c_int32)),
            n_seq_id=ctypes.cast(self.n_seq_id, ctypes.POINTER(ctypes.c_int32)),
            seq_id=ctypes.cast(self.seq_id, ctypes.POINTER(ctypes.POINTER(ctypes.c_int32))),
            logits=ctypes.cast(self.logits, ctypes.POINTER(ctypes.c_int8)),
        )
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, output: bool) -> int:
        """Append one token; returns its row."""
        n = self.n
        self.token[n] = token
        self.pos[n] = pos
        self.seq_id[n] = self._seq_ptr[seq]
        self.logits[n] = output
        self.n = n + 1
        return n

    def add_run(self, tokens: list[int], pos: int, seq: int, output_last: bool) -> int:
        """Append consecutive tokens of one sequence; returns the row of the last one."""
        n, k = self.n, len(tokens)
        self.token[n : n + k] = cast("list[ctypes.c_int32 | int]", tokens)
        self.pos[n : n + k] = list(range(pos, pos + k))
        self.seq_id[n : n + k] = [self._seq_ptr[seq]] * k
        ctypes.memset(ctypes.addressof(self.logits) + n, 0, k)
        self.logits[n + k - 1] = output_last
        self.n = n + k
        return n + k - 1

    def seal(self) -> Any:
        self.native.n_tokens = self.n
        return self.native


class _Batcher:
    """Everything of one loaded model that lives on its owner thread, and the few entry points
    (submit, cancel, call, interrupt, request_close) that other threads may use."""

    def __init__(self, spec: ModelSpec, options: LoadOptions) -> None:
        self.spec = spec
        self.options = options
        self.loaded: Future[None] = Future()
        self.closed: Future[None] = Future()
        self.aux = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tokens-{spec.name}")
        self._inbox: collections.deque[Job | _Call] = collections.deque()
        self._inbox_lock = threading.Lock()
        self._gone = False  # the owner thread has stopped taking work
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closing = False
        self._outbox = Outbox(FLUSH_INTERVAL)
        # Set by the load.
        self.slots: list[Slot] = []
        self.n_ctx = 0
        self.size = 0
        self.embeddings = False
        self._model: Any = None
        self._ctx: Any = None
        self._mem: Any = None
        self._vocab: Any = None
        self._lora: Any = None
        self._projector: Projector | None = None
        self._n_vocab = 0
        self._n_batch = 0
        self._bos_text = ""
        self._adds_bos = False
        self._adds_eos = False
        self._batch: _Batch | None = None
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []  # in admission order
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._grammars: dict[bytes, bytes] = {}  # format key -> checked GBNF
        self._grammar_lock = threading.Lock()
        self._piece_buf = ctypes.create_string_buffer(256)
        self._thread = threading.Thread(target=self._main, name=f"model-{spec.name}", daemon=True)
        self._thread.start()

    # --- any thread ----------------------------------------------------------------------

    async def off_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the tokenizer thread (work that reads only the vocabulary)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.aux, fn, *args)
        except RuntimeError as exc:  # the executor is shut down: the model is gone
            if self._closing:
                raise EngineFailed(UNLOADED) from exc
            raise

    def submit(self, job: Job) -> None:
        self._put(job)

    def call(self, fut: Future[T], fn: Callable[..., T], *args: Any) -> None:
        """Run `fn(*args)` on the owner thread between decode steps; its result goes to `fut`."""
        self._put((fut, fn, args))

    def _put(self, item: Job | _Call) -> None:
        with self._inbox_lock:
            if self._gone:
                raise EngineFailed(UNLOADED)
            self._inbox.append(item)
        self._wake.set()

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        self._wake.set()

    def interrupt(self) -> None:
        self._stopping.set()
        self._wake.set()

    def request_close(self) -> None:
        self._closing = True
        self._wake.set()

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as a prompt. Reads only the vocabulary: safe off the owner thread."""
        if self._closing:
            raise EngineFailed(UNLOADED)
        add_bos = self._adds_special(text)
        data = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, len(buf), add_bos, True)
        if n < 0:
            buf = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, len(buf), add_bos, True)
        return list(buf[:n])

    def tokenize_all(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tokenize(t) for t in texts]

    def prepare(self, c: Completion, loop: asyncio.AbstractEventLoop) -> Job:
        """Everything about a request that can fail before it runs: tokens, fit, grammar."""
        if self._stopping.is_set():
            raise EngineFailed(SHUTTING_DOWN)
        n_ctx = self.n_ctx
        media = None
        if c.images:
            if self._projector is None:
                raise CapabilityMissing("this model does not support images")
            media = self._projector.tokenize(
                c.prompt, c.images, add_special=self._adds_special(c.prompt)
            )
            tokens = list(c.context_prefix) + media.tokens
        else:
            tokens = list(c.context_prefix) + self.tokenize(c.prompt)
        if not tokens:
            raise InvalidRequest("the prompt is empty")
        if c.context_prefix and not all(0 <= t < self._n_vocab for t in c.context_prefix):
            raise InvalidRequest("context holds a token id that this model does not have")
        if len(tokens) >= n_ctx:
            if not c.shift or media is not None:  # a shift would cut through an image
                raise ContextLengthExceeded(CONTEXT_TOO_LONG)
            tokens = shorten(tokens, n_ctx, c.num_keep + (1 if self._adds_bos else 0))
        room = n_ctx - len(tokens)
        budget = room if c.num_predict < 0 else min(c.num_predict, room)
        grammar = self._grammar(c.format)
        job = Job(c, tokens, budget, grammar, loop)
        if media is not None:
            offset = len(c.context_prefix)
            job.spans = [replace(sp, start=sp.start + offset) for sp in media.spans]
            job.media = media.chunks
        return job

    def _adds_special(self, text: str) -> bool:
        # A template that already wrote the BOS text must not get a second BOS token.
        return not (self._bos_text and text.startswith(self._bos_text))

    def _grammar(self, fmt: Format) -> bytes | None:
        """The GBNF for `format`, checked once by parsing it (the vocabulary is all it reads)."""
        if fmt is None or fmt == "":
            return None
        key = orjson.dumps(fmt, option=orjson.OPT_SORT_KEYS)
        with self._grammar_lock:
            known = self._grammars.get(key)
        if known is not None:
            return known
        if fmt == "json":
            gbnf = JSON_GBNF
        elif isinstance(fmt, str):
            raise InvalidRequest(
                f'invalid format: "{fmt}"; expected "json" or a valid JSON Schema object'
            )
        else:
            try:
                gbnf = json_schema_to_gbnf(orjson.dumps(fmt).decode())
            except Exception as exc:  # the converter raises whatever the schema trips on
                raise InvalidRequest(f"invalid JSON schema in format: {exc}") from exc
        text = gbnf.encode("utf-8")
        probe = llama_cpp.llama_sampler_init_grammar(self._vocab, text, b"root")
        if not probe:
            raise InvalidRequest("invalid JSON schema in format: the grammar does not parse")
        llama_cpp.llama_sampler_free(probe)
        with self._grammar_lock:
            self._grammars[key] = text
        return text

    # --- the owner thread ----------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            self._free()
            if not isinstance(exc, BridgeError):
                log.exception("loading %s failed", self.spec.name)
                exc = ModelLoadFailed(f"unable to load model {self.spec.name}: {exc}")
            _settle(self.loaded, exc)
            _settle(self.closed)
            return
        _settle(self.loaded)
        try:
            self._serve()
        except BaseException as exc:  # a bug here must not leave streams hanging
            self._fail_all(_engine_error(exc))
        finally:
            gone = EngineFailed(UNLOADED)
            with self._inbox_lock:
                self._gone = True
                left = list(self._inbox)
                self._inbox.clear()
            for item in left:
                if isinstance(item, Job):
                    self._waiting.append(item)
                elif item[0].set_running_or_notify_cancel():
                    item[0].set_exception(gone)
            self._fail_all(gone)
            self._outbox.flush(force=True)
            self._free()
            _settle(self.closed)

    def _load(self) -> None:
        _backend()
        spec, o = self.spec, self.options
        if not os.path.exists(spec.model_path):
            raise ModelLoadFailed(
                f"unable to load model {spec.name}: model file not found: {spec.model_path}"
            )
        threads = o.num_thread or physical_cores()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = o.num_gpu if o.num_gpu >= 0 else 0x7FFFFFFF  # int max: every layer
        mp.main_gpu = o.main_gpu
        use_mmap = (o.use_mmap is None or o.use_mmap) and not spec.adapters
        mp.load_mode = (
            llama_cpp.LLAMA_LOAD_MODE_MMAP if use_mmap else llama_cpp.LLAMA_LOAD_MODE_NONE
        )
        started = time.perf_counter()
        self._model = llama_cpp.llama_model_load_from_file(spec.model_path.encode(), mp)
        if not self._model:
            raise ModelLoadFailed(
                f"unable to load model {spec.name}: failed to load model from file: "
                f"{spec.model_path}"
            )
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.embeddings = self._meta(f"{self._meta('general.architecture')}.pooling_type") != ""

        n_seq = max(1, o.parallel)
        cp = llama_cpp.llama_context_default_params()
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        if o.num_gpu == 0:  # CPU only: no big matrix products sent to a GPU either
            cp.op_offload = False
        # Off, as llama-cpp-python's Llama had it: replies stay token-for-token what they were
        # (on a CPU, flash attention is ~15% faster but changes the numerics).
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if self.embeddings:
            # Inputs are packed several to a decode and the cache is cleared after each, so
            # the sequences share one unified stream; a non-causal model needs a whole input
            # in one ubatch.
            n_seq = max(n_seq, EMBED_SEQS)
            cp.embeddings = True
            cp.kv_unified = True
            cp.n_ctx = o.num_ctx
            cp.n_batch = cp.n_ubatch = max(o.num_batch, o.num_ctx)
        else:
            # One KV stream per sequence: `num_ctx` cells each, and a sequence's numbers do not
            # depend on its neighbours in the batch.
            cp.kv_unified = False
            cp.n_ctx = o.num_ctx * n_seq
            cp.n_batch = cp.n_ubatch = o.num_batch
        cp.n_seq_max = n_seq
        self._ctx = llama_cpp.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise ModelLoadFailed(f"unable to load model {spec.name}: failed to create a context")
        if spec.adapters:
            self._lora = llama_cpp.llama_adapter_lora_init(self._model, spec.adapters[0].encode())
            if not self._lora:
                raise ModelLoadFailed(
                    f"unable to load model {spec.name}: failed to load adapter {spec.adapters[0]}"
                )
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._lora)
            scales = (ctypes.c_float * 1)(1.0)
            if llama_cpp.llama_set_adapters_lora(self._ctx, adapters, 1, scales):
                raise ModelLoadFailed(
                    f"unable to load model {spec.name}: failed to apply adapter {spec.adapters[0]}"
                )
        if spec.projectors and not self.embeddings:
            self._projector = Projector(
                spec.projectors[0],
                self._model,
                threads=threads,
                gpu=mp.n_gpu_layers != 0 and gpu_offload_supported(),
            )
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._n_batch = int(llama_cpp.llama_n_batch(self._ctx))
        self.n_ctx = int(
            llama_cpp.llama_n_ctx(self._ctx)
            if self.embeddings
            else llama_cpp.llama_n_ctx_seq(self._ctx)
        )
        self.size = int(llama_cpp.llama_model_size(self._model))
        self.slots = [Slot(s) for s in range(1 if self.embeddings else n_seq)]
        self._batch = _Batch(max(self._n_batch, n_seq), n_seq)
        bos = llama_cpp.llama_vocab_bos(self._vocab)
        self._bos_text = (
            self._piece(bos, special=True).decode("utf-8", "replace") if bos >= 0 else ""
        )
        self._adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._adds_eos = bool(llama_cpp.llama_vocab_get_add_eos(self._vocab))
        log.info(
            "loaded %s (n_ctx=%d x %d slots, batch=%d, threads=%d, gpu_layers=%s) in %.2fs",
            spec.name,
            self.n_ctx,
            len(self.slots),
            self._n_batch,
            threads,
            mp.n_gpu_layers,
            time.perf_counter() - started,
        )

    def _meta(self, key: str) -> str:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else ""

    def _free(self) -> None:
        for job in [*self._active, *self._waiting]:
            self._free_chain(job)
        self._active.clear()
        self._waiting.clear()
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        # Tokenizations read the model: let the last one finish before freeing it.
        self.aux.shutdown(wait=True, cancel_futures=True)
        if self._projector is not None:  # after the tokenizer thread: it uses the projector
            self._projector.close()
            self._projector = None
        if self._lora:
            llama_cpp.llama_adapter_lora_free(self._lora)
            self._lora = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def _serve(self) -> None:
        while True:
            self._wake.clear()
            self._take_inbox()
            if self._closing:
                return
            if self._stopping.is_set():
                self._fail_all(EngineFailed(SHUTTING_DOWN))
            self._reap()
            self._admit()
            if self._active:
                try:
                    self._step()
                except Exception as exc:  # a bug: fail the running requests, keep the model
                    self._fail_active(_engine_error(exc))
            if not self._active and not self._inbox:
                self._outbox.flush(force=True)
                self._wake.wait()
            else:
                self._outbox.flush()

    def _take_inbox(self) -> None:
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, Job):
                self._waiting.append(item)
                continue
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc if isinstance(exc, BridgeError) else _engine_error(exc))

    def _reap(self) -> None:
        """Drop cancelled jobs; a running one's KV cells are freed at once."""
        if any(j.cancelled for j in self._waiting):
            self._waiting = collections.deque(j for j in self._waiting if not j.cancelled)
        for job in [j for j in self._active if j.cancelled]:
            self._release(job, keep_cells=False)

    def _admit(self) -> None:
        while self._waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self._waiting.popleft()
            if job.cancelled:
                continue
            busy = {s.seq for s in self.slots if s.job is not None}
            slot = pick_slot(free, busy, job.tokens)
            try:
                job.chain = self._chain(job)
            except BaseException as exc:
                self._outbox.emit(job, exc if isinstance(exc, BridgeError) else _engine_error(exc))
                continue
            # Reuse the KV cells of the shared prefix, but evaluate at least the last two
            # prompt tokens: the last one's logits are what the first sample needs, and a
            # lone row would be computed differently from the same row in a longer chunk.
            keep = max(0, min(common_prefix(slot.cells, job.tokens), len(job.tokens) - 2))
            for span in job.spans:  # an image is decoded whole or not at all
                if span.start < keep < span.start + span.n_pos:
                    keep = span.start
            if keep < len(slot.cells):
                if not llama_cpp.llama_memory_seq_rm(self._mem, slot.seq, keep, -1):
                    llama_cpp.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                    keep = 0
                del slot.cells[keep:]
            job.fed = job.cached = keep
            job.slot = slot
            job.started = time.perf_counter_ns()
            slot.job = job
            self._active.append(job)

    def _chain(self, job: Job) -> Any:
        """The request's sampler chain, in llama-cpp-python's order; penalties see the prompt.
        None for plain greedy decoding, which `_sample` does itself (an argmax over the logits
        costs 8 µs; llama.cpp's sampler first copies the whole vocabulary, 54 µs here)."""
        s: Sampling = job.completion.sampling
        last_n = self.n_ctx if s.repeat_last_n < 0 else s.repeat_last_n
        penalties = last_n > 0 and (
            s.repeat_penalty != 1.0 or s.frequency_penalty != 0.0 or s.presence_penalty != 0.0
        )
        if s.temperature == 0 and not penalties and job.grammar is None:
            return None
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = functools.partial(llama_cpp.llama_sampler_chain_add, chain)
        try:
            if penalties:
                pen = llama_cpp.llama_sampler_init_penalties(
                    self._n_vocab, last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
                )
                add(pen)
                for t in job.tokens[-last_n:]:
                    if t < 0:  # an image position, no token
                        continue
                    llama_cpp.llama_sampler_accept(pen, t)
            if job.grammar is not None:
                grammar = llama_cpp.llama_sampler_init_grammar(self._vocab, job.grammar, b"root")
                if not grammar:
                    raise InvalidRequest(
                        "invalid JSON schema in format: the grammar does not parse"
                    )
                add(grammar)
            seed = s.seed & 0xFFFFFFFF if s.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED
            if s.temperature < 0:
                add(llama_cpp.llama_sampler_init_dist(seed))
            elif s.temperature == 0:
                add(llama_cpp.llama_sampler_init_greedy())
            else:
                add(llama_cpp.llama_sampler_init_top_k(s.top_k))
                add(llama_cpp.llama_sampler_init_typical(s.typical_p, 1))
                add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
                add(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
                add(llama_cpp.llama_sampler_init_temp(s.temperature))
                add(llama_cpp.llama_sampler_init_dist(seed))
        except BaseException:
            llama_cpp.llama_sampler_free(chain)
            raise
        return chain

    def _step(self) -> None:
        """One round: a decode of every generating sequence's next token, then prompt chunks,
        oldest request first, up to `num_batch` tokens, each sequence's in a decode of its own.

        Why separate decodes: without flash attention, llama.cpp computes a sequence's rows
        slightly differently when the sequence has one row in a ubatch than when it has
        several, and it splits a multi-sequence batch into ubatches with an equal number of
        rows per sequence. Kept apart, a sequence always gets the rows it would get alone (one
        when generating, two or more per prompt chunk), and batching does not change a result.
        """
        batch = self._batch
        assert batch is not None
        batch.clear()
        generating: list[Job] = []
        for slot in self.slots:  # in sequence order: ubatches take runs of consecutive ids
            job = slot.job
            if job is not None and job.next_token >= 0 and batch.n < self._n_batch:
                job.row = batch.add(job.next_token, len(slot.cells), slot.seq, True)
                slot.cells.append(job.next_token)
                job.next_token = -1
                generating.append(job)
        if generating and self._decode(generating):
            now = time.perf_counter_ns()
            for job in generating:
                self._sample(job, now)
            # These tokens need not wait for the prompt chunks (or images) below.
            self._outbox.flush(force=any(j.prefilling for j in self._active))
        room = self._n_batch
        for job in [j for j in self._active if j.prefilling]:
            home = job.slot
            assert home is not None
            span = job.next_span()
            if span is not None and span.start == job.fed:
                # An image: the projector encodes it and decodes its embeddings (its own
                # decodes, a whole step's worth of work).
                if room < self._n_batch:
                    break
                self._decode_image(job, span)
                break
            limit = span.start if span is not None else len(job.tokens)
            take = prompt_chunk(limit - job.fed, room, self._n_batch)
            if not take:
                break
            room -= take
            end = job.fed + take
            run = job.tokens[job.fed : end]
            batch.clear()
            last = batch.add_run(run, job.fed, home.seq, end == len(job.tokens))
            home.cells.extend(run)
            job.fed = end
            if self._decode([job]) and not job.prefilling:
                job.row = last
                self._sample(job, time.perf_counter_ns())
                self._outbox.flush()

    def _decode_image(self, job: Job, span: Any) -> None:
        home = job.slot
        assert home is not None and self._projector is not None
        try:
            self._projector.decode(self._ctx, span, job.fed, home.seq, self._n_batch)
        except BridgeError as exc:
            log.error("decoding an image failed: %s", exc.message)
            self._outbox.emit(job, exc)
            self._release(job, keep_cells=False)
            return
        home.cells.extend(job.tokens[span.start : span.start + span.n_pos])
        job.fed = span.start + span.n_pos

    def _decode(self, jobs: list[Job]) -> bool:
        """Decode the batch; on failure, fail `jobs` (and free their cells)."""
        assert self._batch is not None
        rc = llama_cpp.llama_decode(self._ctx, self._batch.seal())
        if rc == 0:
            return True
        log.error("llama_decode returned %d for a batch of %d tokens", rc, self._batch.n)
        err = EngineFailed(f"an error was encountered while running the model: decode {rc}")
        for job in jobs:
            self._outbox.emit(job, err)
            self._release(job, keep_cells=False)
        return False

    def _sample(self, job: Job, now: int) -> None:
        row, job.row = job.row, -1
        if job.chain is None:  # greedy: the first of the largest logits, as llama.cpp picks
            logits = llama_cpp.llama_get_logits_ith(self._ctx, row)
            token = int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
        else:
            token = int(llama_cpp.llama_sampler_sample(job.chain, self._ctx, row))
        piece = None if self._is_eog(token) else self._piece(token)
        lp = None
        if job.completion.logprobs and piece is not None:
            lp = self._logprob(row, token, job.completion.top_logprobs)
        reason = job.accept(token, piece, now, self._outbox.emit, lp)
        if reason is not None:
            job.finish(reason, now, self._outbox.emit)
            self._release(job, keep_cells=True)

    def _logprob(self, row: int, token: int, top: int) -> TokenLogprob:
        """`token`'s log-probability under the model's raw distribution at `row` (the
        sampler's own settings aside, as Ollama reports it), with the `top` likeliest tokens.
        Only requests that ask pay for this: one pass over the vocabulary in numpy."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, row)
        logits = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
        peak = float(logits.max())
        norm = peak + math.log(float(np.exp(logits - peak).sum()))
        alternatives: tuple[TokenLogprob, ...] = ()
        if top > 0:
            best = np.argpartition(logits, -top)[-top:]
            best = best[np.argsort(-logits[best], kind="stable")]
            alternatives = tuple(self._token_logprob(int(t), float(logits[t]) - norm) for t in best)
        return replace(self._token_logprob(token, float(logits[token]) - norm), top=alternatives)

    def _token_logprob(self, token: int, logprob: float) -> TokenLogprob:
        piece = self._piece(token)
        return TokenLogprob(piece.decode("utf-8", "replace"), logprob, tuple(piece))

    def _release(self, job: Job, *, keep_cells: bool) -> None:
        self._free_chain(job)
        slot = job.slot
        if slot is not None:
            slot.job = None
            job.slot = None
            if not keep_cells:
                llama_cpp.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                slot.cells.clear()
        self._active.remove(job)

    def _free_chain(self, job: Job) -> None:
        if job.chain is not None:
            llama_cpp.llama_sampler_free(job.chain)
            job.chain = None

    def _fail_active(self, exc: BridgeError) -> None:
        for job in list(self._active):
            self._outbox.emit(job, exc)
            self._release(job, keep_cells=False)

    def _fail_all(self, exc: BridgeError) -> None:
        self._fail_active(exc)
        while self._waiting:
            self._outbox.emit(self._waiting.popleft(), exc)

    def embed(self, inputs: list[list[int]], truncate: bool) -> Embeddings:
        """Pool each input's embedding, packing inputs into as few decodes as fit."""
        batch = self._batch
        assert batch is not None
        limit = min(self._n_batch, self.n_ctx)
        for i, toks in enumerate(inputs):
            if not toks:
                raise InvalidRequest("cannot embed an empty input")
            if len(toks) > limit:
                if not truncate:
                    raise ContextLengthExceeded("the input length exceeds the context length")
                # Keep the closing separator (EOS) that models such as BERT pool on.
                inputs[i] = toks[: limit - 1] + toks[-1:] if self._adds_eos else toks[:limit]
        n_embd = int(llama_cpp.llama_model_n_embd_out(self._model))
        vectors: list[list[float]] = []
        i = 0
        while i < len(inputs):
            batch.clear()
            group = 0
            while i + group < len(inputs) and group < EMBED_SEQS:
                toks = inputs[i + group]
                if batch.n + len(toks) > limit:
                    break
                batch.add_run(toks, 0, group, True)
                ctypes.memset(ctypes.addressof(batch.logits) + batch.n - len(toks), 1, len(toks))
                group += 1
            llama_cpp.llama_memory_clear(self._mem, True)
            rc = llama_cpp.llama_decode(self._ctx, batch.seal())
            if rc != 0:
                raise EngineFailed(f"an error was encountered while embedding: decode {rc}")
            for s in range(group):
                ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, s)
                if not ptr:
                    raise EngineFailed("the model returned no embedding")
                vectors.append(ptr[:n_embd])
            i += group
        llama_cpp.llama_memory_clear(self._mem, True)
        return Embeddings(vectors=vectors, prompt_eval_count=sum(len(t) for t in inputs))

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        cached = self._pieces.get(token) if not special else None
        if cached is not None:
            return cached
        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, big, len(big), 0, special)
            piece = big.raw[:n]
        else:
            piece = buf.raw[:n]
        if not special:
            self._pieces[token] = piece
        return piece

    def _is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
        return eog


def _settle(fut: Future[None], exc: BaseException | None = None) -> None:
    """Complete a future the owner thread owns, unless it was cancelled meanwhile."""
    with contextlib.suppress(InvalidStateError):
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


def _engine_error(exc: BaseException) -> BridgeError:
    log.exception("engine failure", exc_info=exc)
    return EngineFailed(f"an error was encountered while running the model: {exc}")
