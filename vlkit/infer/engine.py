"""Serving engine: continuous batching over one model in one background thread.

Requests are submitted from any thread (or an asyncio event loop). The model thread loops:
  1. admit waiting requests up to `max_batch_size` running rows and prefill them (a left-padded group);
  2. merge the new rows' KV caches into the running batch (caches are left padded to a common length and a
     validity mask marks the padding, so every row attends only to its own tokens);
  3. run one decode step for all running rows; rows that hit a stop token, a stop string or their token
     budget leave the batch (their cache rows are dropped, all-padding columns are trimmed).
Positions are per row (0 at each prompt's first real token), so a request gives the same greedy tokens alone
or joined mid-decode with others. Image decoding and preprocessing run in a bounded thread pool, never on the
event loop nor in the model thread. Results go back through callbacks: asyncio queues for the server, plain
queues for synchronous callers.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import queue
import threading
import time
from typing import Any, Callable, Optional, Sequence

import torch

from vlkit.errors import ImageTokenError, UserError
from vlkit.config import GenerationConfig
from vlkit.infer.generate import left_pad, sample_tokens
from vlkit.infer.request import (Answer, Completion, ContextLengthError, EngineEvent, EngineStoppedError,
                                 QueueFullError, RequestState, SamplingParams, TooManyImagesError)
from vlkit.models.language import KVCache

__all__ = ["Answer", "Completion", "ContextLengthError", "Engine", "EngineEvent", "EngineStoppedError", "EventStream",
           "QueueFullError", "QueueSlot", "RequestHandle", "SamplingParams", "TooManyImagesError"]


class QueueSlot:
    """A place in the queue held by one request from the moment it is accepted until it is queued (the queue
    then counts it) or has failed. A context manager: leaving the block gives the place back unless `submit`
    took it over, so every way out of a request (an error, a cancelled handler) frees it."""

    def __init__(self, engine: "Engine"):
        self._engine = engine
        self.held = True

    def release(self) -> None:
        with self._engine._cond:
            if self.held:
                self.held = False
                self._engine._reserved -= 1

    def __enter__(self) -> "QueueSlot":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class RequestHandle:
    def __init__(self, engine: "Engine", seq: RequestState):
        self._engine, self._seq = engine, seq

    @property
    def id(self) -> int:
        return self._seq.id

    @property
    def done(self) -> bool:
        return self._seq.done

    def cancel(self) -> None:
        self._engine.cancel(self)


class EventStream:
    """Async iterator over one request's events (made by `Engine.open_stream` inside an event loop)."""

    def __init__(self, engine: "Engine", prompt_ids, pixels, params: SamplingParams, slot: Optional[QueueSlot],
                 stream: bool):
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._finished = False
        self.handle = engine.submit(prompt_ids, pixels, params, self._emit, slot=slot, stream=stream)

    def _emit(self, event: EngineEvent) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the event loop is gone: nobody listens any more
            self.handle.cancel()

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> EngineEvent:
        if self._finished:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event.finish_reason is not None:
            self._finished = True
        return event

    def cancel(self) -> None:
        if not self._finished:
            self.handle.cancel()

    async def collect(self) -> Completion:
        answer = Answer()
        try:
            async for ev in self:
                done = answer.add(ev)
                if done is not None:
                    return done
        finally:
            self.cancel()
        raise EngineStoppedError("the request ended without a final event")


class Engine:
    """Continuous-batching generation for a Pipeline (model + tokenizer + processor)."""

    def __init__(self, pipe, max_batch_size: int = 16, max_queue: int = 64, preprocess_workers: int = 2):
        if max_batch_size < 1:
            raise UserError(f"max_batch_size={max_batch_size!r} must be >= 1")
        if max_queue < 1:
            raise UserError(f"max_queue={max_queue!r} must be >= 1")
        self.pipe = pipe
        self.model = pipe.model
        self.tokenizer = pipe.tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.preprocess_workers = preprocess_workers
        self.pool = concurrent.futures.ThreadPoolExecutor(preprocess_workers, thread_name_prefix="vlkit-preprocess")
        self._cond = threading.Condition()
        self._waiting: collections.deque[RequestState] = collections.deque()
        self._reserved = 0
        self._calls: collections.deque = collections.deque()
        self._running: list[RequestState] = []
        self._cache: Optional[KVCache] = None
        self._next_pos: Optional[torch.Tensor] = None  # (B,) position of each row's pending token
        self._pending: Optional[torch.Tensor] = None  # (B,) last sampled token of each row, not yet fed
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        # counters for tests, benchmarks and /health
        self.steps = 0
        self.max_rows_seen = 0
        self.completed = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            if getattr(self.pool, "_shutdown", False):  # restarted after stop()
                self.pool = concurrent.futures.ThreadPoolExecutor(self.preprocess_workers,
                                                                  thread_name_prefix="vlkit-preprocess")
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="vlkit-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    # -- preprocessing (thread pool) -------------------------------------------------------------------
    async def run_in_pool(self, fn: Callable, *args: Any) -> Any:
        """Run blocking work (image decoding, tokenization) in the preprocessing pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def prepare(self, prompt: str | Sequence[dict], images: Sequence[Any] = ()) -> tuple[list[int], list[torch.Tensor]]:
        """Images (PIL, bytes, paths) + a prompt or chat messages -> (prompt ids, pixel tensors)."""
        cfg = self.model.cfg
        if len(images) > cfg.max_images:
            raise TooManyImagesError(f"{len(images)} images given; this model accepts at most {cfg.max_images}")
        pixels = [self.pipe.image_tensor(im) for im in images]
        return self.pipe.prompt_ids(prompt, pixels), pixels

    # -- submission ------------------------------------------------------------------------------------
    def reserve(self) -> QueueSlot:
        """Hold a queue place while a request is being preprocessed (429 early instead of after the work);
        use the slot in a `with` block and pass it to `submit`/`open_stream`."""
        with self._cond:
            if len(self._waiting) + self._reserved >= self.max_queue:
                raise QueueFullError(f"the server queue is full ({self.max_queue} requests waiting); retry later")
            self._reserved += 1
        return QueueSlot(self)

    def check(self, prompt_ids: Sequence[int], pixels: Sequence[torch.Tensor], params: SamplingParams) -> GenerationConfig:
        """Validate a request before it can join a batch (a bad request fails alone, never its batch); returns
        its GenerationConfig. Raises a UserError naming the bad value."""
        cfg = self.model.cfg
        if len(pixels) > cfg.max_images:
            raise TooManyImagesError(f"{len(pixels)} images given; this model accepts at most {cfg.max_images}")
        self._check_prompt(prompt_ids, pixels)
        n = params.max_new_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise UserError(f"max_new_tokens={n!r} must be a positive integer")
        limit = cfg.text.max_position_embeddings
        if len(prompt_ids) + n > limit:
            raise ContextLengthError(
                f"the prompt has {len(prompt_ids)} tokens (images included) and {n} new tokens are asked for; "
                f"together they exceed the context of {limit} tokens")
        if not prompt_ids:
            raise UserError("the prompt is empty")
        gen = self.pipe.generation_config(max_new_tokens=n, temperature=float(params.temperature),
                                          top_p=float(params.top_p), top_k=int(params.top_k), seed=params.seed)
        gen.validate()
        return gen

    def _check_prompt(self, prompt_ids: Sequence[int], pixels: Sequence[torch.Tensor]) -> None:
        """Token ids in the vocabulary, images the model can encode, and exactly as many image positions as
        the images fill (else features would land in another request's row or fail the whole batch)."""
        cfg = self.model.cfg
        if any(not isinstance(i, int) or not 0 <= i < cfg.text.vocab_size for i in prompt_ids):
            raise UserError(f"prompt token ids must be integers in [0, {cfg.text.vocab_size})")
        slots = {cfg.image_token_id: 0, cfg.video_token_id: 0}  # a clip (T, C, H, W) fills video pads if any
        for k, p in enumerate(pixels):
            c = cfg.vision.num_channels
            if not isinstance(p, torch.Tensor) or p.ndim not in (3, 4) or p.shape[-3] != c:
                raise UserError(f"image {k} must be a ({c}, H, W) tensor (a video clip: (T, {c}, H, W))")
            slot = cfg.video_token_id if p.ndim == 4 and cfg.video_token_id is not None else cfg.image_token_id
            try:
                slots[slot] += (self.model.tokens_per_image(p.shape[-2], p.shape[-1]) if p.ndim == 3 else
                                self.model.tokens_per_clip(p.shape[0], p.shape[-2], p.shape[-1]))
            except ValueError as exc:
                raise UserError(f"image {k}: {exc}") from None
        for token, filled in slots.items():
            positions = sum(1 for i in prompt_ids if i == token) if token is not None else 0
            if positions != filled:
                raise ImageTokenError(f"the prompt has {positions} {'video' if token == cfg.video_token_id else 'image'}"
                                      f" positions but its {len(pixels)} image(s) and clip(s) fill {filled}")

    def submit(self, prompt_ids: Sequence[int], pixels: Sequence[torch.Tensor], params: SamplingParams,
               emit: Callable[[EngineEvent], None], slot: Optional[QueueSlot] = None,
               stream: bool = True) -> RequestHandle:
        """Queue a request (in the place `slot` holds, if given); `emit` is called from the model thread with
        each event (stream=False: text only in the final event). Thread-safe."""
        gen = self.check(prompt_ids, pixels, params)
        seq = RequestState(list(prompt_ids), list(pixels), params, gen, emit, stream)
        with self._cond:
            if self._thread is None or self._stopping:
                raise EngineStoppedError("the engine is not running")
            if slot is not None and slot.held:
                slot.held = False  # the queue counts this request from now on
                self._reserved -= 1
            elif len(self._waiting) + self._reserved >= self.max_queue:
                raise QueueFullError(f"the server queue is full ({self.max_queue} requests waiting); retry later")
            self._waiting.append(seq)
            self._cond.notify_all()
        return RequestHandle(self, seq)

    def open_stream(self, prompt_ids: Sequence[int], pixels: Sequence[torch.Tensor], params: SamplingParams,
                    slot: Optional[QueueSlot] = None, stream: bool = True) -> EventStream:
        """Submit from inside an event loop; iterate the result with `async for`. Raises at once on a full queue."""
        return EventStream(self, prompt_ids, pixels, params, slot, stream)

    def generate(self, prompt_ids: Sequence[int], pixels: Sequence[torch.Tensor], params: SamplingParams,
                 timeout: Optional[float] = None) -> Completion:
        """Blocking: submit and wait for the whole answer (any thread but the model thread)."""
        events: queue.Queue = queue.Queue()
        handle = self.submit(prompt_ids, pixels, params, events.put, stream=False)
        answer = Answer()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ev = events.get(timeout=left)
            except queue.Empty:
                handle.cancel()
                raise TimeoutError(f"no answer within {timeout} s") from None
            done = answer.add(ev)
            if done is not None:
                return done

    def cancel(self, handle: RequestHandle) -> None:
        with self._cond:
            handle._seq.cancelled = True
            self._cond.notify_all()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` in the model thread between decode steps (other uses of the model, e.g. image generation)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._thread is None or self._stopping:
                raise EngineStoppedError("the engine is not running")
            self._calls.append((fn, fut))
            self._cond.notify_all()
        return fut

    # -- the model thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._running or self._calls):
                    self._cond.wait()
                if self._stopping:
                    break
                calls = list(self._calls)
                self._calls.clear()
                room = self.max_batch_size - len(self._running)
                new = []
                while self._waiting and len(new) < room:
                    seq = self._waiting.popleft()
                    if seq.cancelled:
                        self._finish(seq, "cancelled")
                    else:
                        new.append(seq)
            for fn, fut in calls:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # handed to the caller
                        fut.set_exception(exc)
            try:
                with torch.inference_mode():
                    self._drop_cancelled()
                    if new:
                        self._prefill(new)
                    if self._running:
                        self._decode_step()
            except Exception as exc:  # a bug or resource error: fail the affected requests, keep serving
                for seq in self._running + [s for s in new if not s.done]:
                    self._finish(seq, "error", error=f"{type(exc).__name__}: {exc}")
                self._running, self._cache, self._next_pos, self._pending = [], None, None, None
        # stopping: tell everyone still waiting
        for seq in list(self._waiting) + self._running:
            self._finish(seq, "error", error="the engine was stopped")
        self._waiting.clear()
        self._running = []
        for _, fut in self._calls:
            fut.cancel()

    def _prefill(self, new: list[RequestState]) -> None:
        model = self.model
        device = next(model.parameters()).device
        ids, mask = left_pad([s.prompt_ids for s in new], self.tokenizer.pad_id)
        cache = model.new_cache()
        images = [p.to(device) for s in new for p in s.pixels]
        logits, next_pos = model.prefill(ids.to(device), cache, attention_mask=mask.to(device), images=images)
        tokens = self._sample(logits, new)
        keep = [i for i, (s, t) in enumerate(zip(new, tokens)) if not self._accept(s, t)]
        if not keep:
            return
        if len(keep) < len(new):
            cache.select(torch.tensor(keep, device=device))
        next_pos = next_pos[keep]
        pending = torch.tensor([tokens[i] for i in keep], dtype=torch.long, device=device)
        joined = [new[i] for i in keep]
        if self._running:
            self._cache = self._cache.concat(cache)
            self._next_pos = torch.cat([self._next_pos, next_pos])
            self._pending = torch.cat([self._pending, pending])
            self._running += joined
        else:
            self._cache, self._next_pos, self._pending, self._running = cache, next_pos, pending, joined
        self.max_rows_seen = max(self.max_rows_seen, len(self._running))

    def _decode_step(self) -> None:
        logits = self.model.decode(self._pending, self._cache, self._next_pos)
        self.steps += 1
        self.max_rows_seen = max(self.max_rows_seen, len(self._running))
        tokens = self._sample(logits, self._running)
        keep = [i for i, (s, t) in enumerate(zip(self._running, tokens)) if not self._accept(s, t)]
        self._next_pos = self._next_pos + 1
        self._pending = torch.tensor(tokens, dtype=torch.long, device=self._pending.device)
        self._keep_rows(keep)

    def _drop_cancelled(self) -> None:
        keep = []
        for i, s in enumerate(self._running):
            if s.cancelled:
                self._finish(s, "cancelled")
            else:
                keep.append(i)
        self._keep_rows(keep)

    def _keep_rows(self, keep: list[int]) -> None:
        if len(keep) == len(self._running):
            return
        if not keep:
            self._running, self._cache, self._next_pos, self._pending = [], None, None, None
            return
        rows = torch.tensor(keep, device=self._pending.device)
        self._cache.select(rows)
        self._cache.trim()
        self._next_pos, self._pending = self._next_pos[rows], self._pending[rows]
        self._running = [self._running[i] for i in keep]

    def _sample(self, logits: torch.Tensor, seqs: list[RequestState]) -> list[int]:
        """Greedy rows in one argmax; sampled rows one by one with their own generator (seeded requests give
        the same tokens alone or in a batch)."""
        greedy = [i for i, s in enumerate(seqs) if s.gen.temperature == 0.0]
        out = [0] * len(seqs)
        if greedy:
            g = torch.tensor(greedy, device=logits.device)
            picked = sample_tokens(logits[g], seqs[greedy[0]].gen).tolist()  # greedy ignores all but vocab_limit
            for i, t in zip(greedy, picked):
                out[i] = t
        for i, s in enumerate(seqs):
            if s.gen.temperature != 0.0:
                out[i] = int(sample_tokens(logits[i:i + 1], s.gen, s.generator)[0])
        return out

    def _accept(self, seq: RequestState, token: int) -> bool:
        """Record one sampled token, emit the new text; True when the request is finished."""
        if seq.cancelled:
            self._finish(seq, "cancelled")
            return True
        seq.generated += 1
        if token in seq.stop_ids:
            self._emit_text(seq, final=True)
            self._finish(seq, "stop")
            return True
        seq.tokens.append(token)
        if self._emit_text(seq, final=False):
            self._finish(seq, "stop")
            return True
        if seq.generated >= seq.params.max_new_tokens:
            self._emit_text(seq, final=True)
            self._finish(seq, "length")
            return True
        return False

    def _emit_text(self, seq: RequestState, final: bool) -> bool:
        """Emit the text not yet sent; True if a stop string was found (see RequestState.take_text)."""
        piece, hit = seq.take_text(self.tokenizer.decode, final)
        if piece:
            self._send(seq, EngineEvent(text=piece, token_ids=[]))
        return hit

    def _finish(self, seq: RequestState, reason: str, error: Optional[str] = None) -> None:
        if seq.done:
            return
        seq.done = True
        self.completed += 1
        self._send(seq, EngineEvent(finish_reason=reason, error=error, token_ids=list(seq.tokens),
                                    prompt_tokens=len(seq.prompt_ids), completion_tokens=seq.generated))

    def _send(self, seq: RequestState, event: EngineEvent) -> None:
        try:
            seq.emit(event)
        except Exception:  # a consumer that went away must not stop the model loop
            seq.cancelled = True
