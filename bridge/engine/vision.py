"""Images for models with a vision projector (an `mmproj` GGUF), through llama.cpp's libmtmd.

Part of the llama.cpp adapter (`engine.llamacpp` drives it). A prompt arrives with Ollama's
`[img-N]` tags where image N goes; the tags become libmtmd's media marker, libmtmd splits the
prompt into text tokens and image chunks, and each image chunk is encoded by the projector and
decoded into the sequence as embeddings when the prefill reaches it.

Image positions appear in a job's token list as negative pseudo-ids derived from the image
bytes, so that prefix reuse works across requests (the same image at the same place matches)
and nothing mistakes them for vocabulary ids.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp

from bridge.domain import IMAGE_TAG
from bridge.errors import EngineFailed, InvalidRequest, ModelLoadFailed


@functools.cache
def _mtmd() -> Any:
    # Loading libmtmd costs start-up time; only models with a projector need it.
    from llama_cpp import mtmd_cpp

    return mtmd_cpp


@dataclass(frozen=True, slots=True)
class Span:
    """An image's place in a prompt: its first position and how many it takes."""

    start: int
    n_pos: int
    chunk: Any  # the libmtmd chunk, owned by the prompt's `Chunks`


class Chunks:
    """libmtmd's chunk list for one prompt, freed when the job that holds it is dropped."""

    def __init__(self, ptr: Any) -> None:
        self.ptr = ptr

    def __del__(self) -> None:
        if self.ptr:
            _mtmd().mtmd_input_chunks_free(self.ptr)
            self.ptr = None


@dataclass(slots=True)
class MediaPrompt:
    tokens: list[int]
    spans: list[Span]
    chunks: Chunks


class Projector:
    """A loaded projector. Created and freed on the model's owner thread."""

    def __init__(self, path: str, model: Any, *, threads: int, gpu: bool) -> None:
        m = _mtmd()
        params = m.mtmd_context_params_default()
        params.use_gpu = gpu
        params.n_threads = threads
        params.print_timings = False
        params.warmup = False
        self._ctx = m.mtmd_init_from_file(path.encode(), model, params)
        if not self._ctx:
            raise ModelLoadFailed(f"failed to load the vision projector {path}")
        if not m.mtmd_support_vision(self._ctx):
            self.close()
            raise ModelLoadFailed(f"{path} is not a vision projector")
        self.mrope = bool(m.mtmd_decode_use_mrope(self._ctx))
        # libmtmd does not promise that preprocessing (tokenizer thread) and encoding (owner
        # thread) may share its context at once: image work takes turns; text never waits.
        self._lock = threading.Lock()
        self.marker: str = bytes(m.mtmd_default_marker()).decode()

    def close(self) -> None:
        if self._ctx:
            _mtmd().mtmd_free(self._ctx)
            self._ctx = None

    def tokenize(self, prompt: str, images: Sequence[bytes], *, add_special: bool) -> MediaPrompt:
        """Text tokens and image spans of a prompt with `[img-N]` tags (a prompt without any
        gets all its images first, as a raw prompt would want). Safe off the owner thread: it
        reads the vocabulary and preprocesses images, and runs no model."""
        if self.mrope:
            # Those models (Qwen2-VL and kin) need 4-D positions for every token.
            raise InvalidRequest("images are not supported yet for this model's projector")
        m = _mtmd()
        order: list[int] = []

        def tag(match: re.Match[str]) -> str:
            n = int(match.group(1))
            if n >= len(images):
                return match.group(0)  # not one of this request's images: plain text
            order.append(n)
            return self.marker

        text = IMAGE_TAG.sub(tag, prompt)
        if not order:  # a raw prompt: its images go first
            order = list(range(len(images)))
            text = self.marker * len(images) + text
        # else images whose tags are gone (their messages were truncated away) are left out
        bitmaps: list[Any] = []
        try:
            for k in order:
                bitmaps.append(self._bitmap(images[k]))
            arr = (m.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            data = text.encode()
            inp = m.mtmd_input_text(text=data, text_len=len(data), add_special=add_special)
            inp.parse_special = True
            chunks = Chunks(m.mtmd_input_chunks_init())
            with self._lock:
                rc = m.mtmd_tokenize(self._ctx, chunks.ptr, ctypes.byref(inp), arr, len(bitmaps))
        finally:
            for b in bitmaps:
                m.mtmd_bitmap_free(b)
        if rc != 0:
            raise InvalidRequest(f"failed to process the images (error {rc})")
        tokens: list[int] = []
        spans: list[Span] = []
        n_image = 0
        for i in range(m.mtmd_input_chunks_size(chunks.ptr)):
            chunk = m.mtmd_input_chunks_get(chunks.ptr, i)
            kind = m.mtmd_input_chunk_get_type(chunk)
            if kind == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens.extend(ptr[: n.value])
            elif kind == m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                n_pos = int(m.mtmd_input_chunk_get_n_pos(chunk))
                spans.append(Span(len(tokens), n_pos, chunk))
                tokens.extend([_pseudo_id(images[order[n_image]])] * n_pos)
                n_image += 1
            else:
                raise InvalidRequest("only images are supported as media here")
        if spans and spans[-1].start + spans[-1].n_pos >= len(tokens):
            raise InvalidRequest("the prompt must go on after its last image")
        return MediaPrompt(tokens, spans, chunks)

    def _bitmap(self, data: bytes) -> Any:
        m = _mtmd()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        # Decoding the file only reads the context's settings: no need to hold up the owner.
        bitmap = m.mtmd_helper_bitmap_init_from_buf(self._ctx, buf, len(data), False)
        if not bitmap:
            raise InvalidRequest("failed to decode an image (PNG, JPEG, BMP or GIF expected)")
        return bitmap

    def decode(self, lctx: Any, span: Span, n_past: int, seq: int, n_batch: int) -> None:
        """Encode the image and decode its embeddings into sequence `seq` at `n_past`."""
        m = _mtmd()
        new_n_past = llama_cpp.llama_pos(0)
        with self._lock:
            rc = m.mtmd_helper_eval_chunk_single(
                self._ctx, lctx, span.chunk, n_past, seq, n_batch, False, ctypes.byref(new_n_past)
            )
        if rc != 0:
            raise EngineFailed(f"an error was encountered while running the model: image {rc}")


def _pseudo_id(image: bytes) -> int:
    # 62 bits: two different images at one place would need a hash collision to mix up.
    return -1 - (int.from_bytes(hashlib.blake2b(image, digest_size=8).digest(), "little") >> 2)
