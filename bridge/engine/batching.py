"""Continuous-batching bookkeeping that needs no llama.cpp: requests, slots, prefix routing,
prompt shift, and the hand-over of chunks from a model's owner thread to the event loop.

`engine.llamacpp` drives all of this from the owner thread; only `Outbox.flush` reaches across,
with one `call_soon_threadsafe` per loop and decode at most.
"""

from __future__ import annotations

import asyncio
import codecs
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.domain import Chunk, Completion, Metrics, TokenLogprob
from bridge.engine.stops import StopMatcher

Emit = Callable[["Job", "Chunk | BaseException"], None]


@dataclass(eq=False, slots=True)
class Job:
    """One completion. Built off the owner thread, then owned by it until it is done; only
    `cancelled` is written from elsewhere (the consumer went away)."""

    completion: Completion
    tokens: list[int]  # the prompt: context prefix + prompt tokens, after any shift
    budget: int  # tokens it may generate
    grammar: bytes | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Chunk | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    # Owner-thread state.
    announced: bool = False  # its first chunk has been handed over
    slot: Slot | None = None
    chain: Any = None  # its llama.cpp sampler chain
    fed: int = 0  # prompt tokens in the KV cells, reused ones included
    cached: int = 0  # prompt tokens whose KV cells were reused
    next_token: int = -1  # sampled, to be decoded in the next step
    row: int = -1  # the row of this job's logits in the current batch
    generated: list[int] = field(default_factory=list)
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    stops: StopMatcher = field(init=False)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet sent
    # Images in the prompt: spans of `tokens` (negative pseudo-ids) that the projector decodes,
    # and what keeps their native chunks alive.
    spans: list[Any] = field(default_factory=list)
    media: Any = None
    started: int = 0
    first_at: int = 0

    def __post_init__(self) -> None:
        self.stops = StopMatcher(self.completion.stop)

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.tokens)

    def next_span(self) -> Any:
        """The first image span that is not (wholly) in the KV cells yet, or None."""
        for span in self.spans:
            if span.start + span.n_pos > self.fed:
                return span
        return None

    def accept(
        self, token: int, piece: bytes | None, now: int, emit: Emit, lp: TokenLogprob | None = None
    ) -> str | None:
        """Take a sampled token (`piece` None: an end-of-generation token) and its logprob
        when asked for. Returns why the generation ends ("stop", "length"), or None to go on
        with `next_token`."""
        if not self.first_at:
            self.first_at = now
        if piece is None:
            return "stop"
        self.generated.append(token)
        if lp is not None:
            self.logprobs.append(lp)
        text, hit = self.stops.feed(self.decoder.decode(piece))
        if text:
            emit(self, Chunk(text=text, logprobs=self._take_logprobs()))
        if hit:
            return "stop"
        if len(self.generated) >= self.budget:
            return "length"
        self.next_token = token
        return None

    def finish(self, reason: str, now: int, emit: Emit) -> None:
        """Send what the decoder and the stop matcher still hold, then the final chunk."""
        if not self.stops.stopped:
            tail = self.stops.flush(self.decoder.decode(b"", final=True))
            if tail:
                emit(self, Chunk(text=tail, logprobs=self._take_logprobs()))
        emit(self, replace(self.done_chunk(reason, now), logprobs=self._take_logprobs()))

    def _take_logprobs(self) -> tuple[TokenLogprob, ...]:
        if not self.logprobs:
            return ()
        out = tuple(self.logprobs)
        self.logprobs.clear()
        return out

    def done_chunk(self, reason: str, now: int) -> Chunk:
        first_at = self.first_at or now
        metrics = Metrics(
            prompt_eval_count=len(self.tokens),
            prompt_eval_duration=first_at - (self.started or now),
            eval_count=len(self.generated),
            eval_duration=now - first_at,
            prompt_cached=self.cached,
        )
        context = None
        if self.completion.return_context:  # image positions are no tokens to send back
            context = tuple(t for t in self.tokens + self.generated if t >= 0)
        return Chunk(done=True, done_reason=reason, metrics=metrics, context=context)


@dataclass(eq=False, slots=True)
class Slot:
    """One sequence of the context: the tokens its KV cells hold, position by position, and the
    job running on it."""

    seq: int
    cells: list[int] = field(default_factory=list)
    job: Job | None = None


# What a slot choice costs, in prompt tokens to evaluate (see pick_slot).
OVERWRITE_COST = 0.25  # per cached token overwritten: it may (or may not) serve a follow-up
GAP_COST = 128  # per extra run of consecutive busy sequence ids


def pick_slot(free: Sequence[Slot], busy: set[int], tokens: Sequence[int]) -> Slot:
    """The free slot for a prompt, weighing in prompt tokens what each choice saves and costs:

    - the prefix its cells share with the prompt is not evaluated again (a chat's follow-up
      goes back to the slot that holds its history);
    - the cells after that prefix are overwritten, and another conversation may have wanted
      them (so an unrelated prompt takes an empty slot while there is one);
    - llama.cpp decodes a run of consecutive sequence ids in one ubatch, so a slot that is not
      next to the busy ones costs another pass over the weights at every step while they
      generate together.

    Among equals, the lowest sequence id.
    """
    runs = _runs(busy)

    def score(s: Slot) -> tuple[float, int]:
        shared = common_prefix(s.cells, tokens)
        overwritten = len(s.cells) - shared
        gaps = _runs(busy | {s.seq}) - runs
        return shared - OVERWRITE_COST * overwritten - GAP_COST * gaps, -s.seq

    return max(free, key=score)


def _runs(seqs: set[int]) -> int:
    """How many runs of consecutive ids `seqs` makes."""
    return sum(1 for s in seqs if s - 1 not in seqs)


def prompt_chunk(left: int, room: int, n_batch: int) -> int:
    """How many of a prompt's `left` tokens to evaluate in a decode with `room` to spare: as many
    as fit, but never one alone out of a longer prompt (a lone row is computed differently
    from the same row among others), so 0 when only one would fit."""
    if left <= room or n_batch < 2:
        return min(left, room)
    take = room - 1 if left - room == 1 else room
    if take >= 2:
        return take
    return room if room == n_batch else 0  # a batch of two: a lone row cannot be avoided


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]: halve with slice compares (C speed)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def shorten(tokens: list[int], n_ctx: int, n_keep: int) -> list[int]:
    """llama-server's prompt shift: keep the first `n_keep` tokens, then drop whole blocks of
    half the remaining context after them, so the prompt fits with room to answer."""
    n_keep = max(0, min(n_keep, n_ctx // 2))
    block = max((n_ctx - n_keep) // 2, 1)
    erased = max((len(tokens) - n_keep - block) // block, 1)
    return tokens[:n_keep] + tokens[n_keep + erased * block :]


class Outbox:
    """Chunks on their way from the owner thread to the streams' event loops.

    `emit` collects while a decode's tokens are sampled; `flush` hands them over with one
    `call_soon_threadsafe` per loop, and none while that loop has not yet picked up an earlier
    hand-over (it then takes everything pending at once): a loop that falls behind drains many
    tokens per wake-up. With an `interval`, ordinary tokens are handed over at most that often
    (a stream's first chunk, its last and errors go at once): every wake-up of the loop costs
    CPU that the engine's threads, on a small machine, would otherwise have.
    """

    def __init__(self, interval: float = 0.0) -> None:
        self._out: list[tuple[Job, Chunk | BaseException]] = []
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Job, Chunk | BaseException]]]
        self._pending = {}
        self._lock = threading.Lock()
        self._interval = interval
        self._urgent = False
        self._last = 0.0

    def emit(self, job: Job, item: Chunk | BaseException) -> None:
        if job.cancelled:
            return
        self._out.append((job, item))
        if not job.announced or isinstance(item, BaseException) or item.done:
            job.announced = True
            self._urgent = True

    def flush(self, *, force: bool = False) -> None:
        if not self._out:
            return
        now = time.monotonic()
        if not (force or self._urgent or now - self._last >= self._interval):
            return
        self._last, self._urgent = now, False
        out, self._out = self._out, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Chunk | BaseException]]] = {}
        for job, item in out:
            by_loop.setdefault(job.loop, []).append((job, item))
        for loop, items in by_loop.items():
            with self._lock:
                pending = self._pending.setdefault(loop, [])
                wake = not pending
                pending.extend(items)
            if wake:
                try:
                    loop.call_soon_threadsafe(self._deliver, loop)
                except RuntimeError:  # the loop is closed: nobody is listening any more
                    with self._lock:
                        self._pending.pop(loop, None)
                    for job, _ in items:
                        job.cancelled = True

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            items = self._pending.pop(loop, [])
        for job, item in items:
            job.queue.put_nowait(item)
