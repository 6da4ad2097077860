"""Micro-batching of embedding calls for an asyncio server.

One forward pass over 16 short texts costs far less than 16 passes over one (the fixed cost
of a call dominates small inputs), but a server receives texts one request at a time.
:class:`MicroBatcher` lets concurrent ``await batcher.embed(text)`` calls share a pass:

* the pass runs in ONE dedicated worker thread, never on the event loop, so the loop keeps
  serving other requests (and the embedder is never entered by two threads at once);
* "natural batching": a call that finds the worker idle is dispatched at once, alone, so at
  concurrency 1 nothing waits for a window to fill; texts that arrive while a pass is running
  queue up and go together into the next pass (at most ``max_batch``);
* ``max_wait_ms`` is a linger used only under load (the previous pass held more than one
  text): the next pass waits up to that long for more texts, so batches stay large instead of
  alternating big/small. An idle batcher never lingers;
* an error raised by the pass is set on every caller of that batch; callers of other batches
  are unaffected;
* ``close()`` refuses new calls, finishes everything already queued, then stops the worker.

The batcher binds to the event loop of its first call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["BatcherClosed", "BatcherStats", "MicroBatcher"]

EmbedFn = Callable[[list[str]], np.ndarray]


class BatcherClosed(RuntimeError):
    """``embed`` was called on a batcher that is closing or closed."""


@dataclass(slots=True)
class BatcherStats:
    """Counters for benchmarks and metrics."""

    passes: int = 0
    texts: int = 0
    max_batch_seen: int = 0
    errors: int = 0

    @property
    def mean_batch(self) -> float:
        return self.texts / self.passes if self.passes else 0.0


_Item = tuple[str, "asyncio.Future[np.ndarray]"]
_STOP = object()


class MicroBatcher:
    """Batches concurrent single-text embedding calls into shared forward passes.

    ``embed_fn(texts) -> (len(texts), dim) array`` is called in the worker thread; it may be
    any embedder's ``embed`` method.
    """

    def __init__(self, embed_fn: EmbedFn, max_batch: int = 32, max_wait_ms: float = 2.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.embed_fn = embed_fn
        self.max_batch = int(max_batch)
        self.max_wait_ms = float(max_wait_ms)
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Item | object] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._last_size = 0

    def _start(self) -> asyncio.Queue[_Item | object]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-batch")
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="micro-batcher")
        return self._queue

    async def embed(self, text: str) -> np.ndarray:
        """The embedding (one row, shape ``(dim,)``) of ``text``, computed in a shared pass."""
        if self._closing:
            raise BatcherClosed("the micro-batcher is closed")
        queue = self._start()
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        queue.put_nowait((text, fut))
        return await fut

    async def close(self) -> None:
        """Stop accepting calls, finish every queued call, stop the worker thread."""
        if self._closing:
            if self._task is not None:
                await asyncio.shield(self._task)
            return
        self._closing = True
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task
        if self._executor is not None:
            # the worker is idle here (the last pass was awaited), so this does not block
            self._executor.shutdown(wait=True)

    async def _collect(self, queue: asyncio.Queue[_Item | object],
                       batch: list[_Item]) -> bool:
        """Add queued items to ``batch``; return False once the stop sentinel is seen."""
        while len(batch) < self.max_batch and not queue.empty():
            item = queue.get_nowait()
            if item is _STOP:
                return False
            batch.append(item)  # type: ignore[arg-type]
        if (self.max_wait_ms > 0 and self._last_size > 1 and len(batch) < self.max_batch):
            # under load: linger briefly so the next pass is full rather than a straggler
            deadline = time.monotonic() + self.max_wait_ms / 1000.0
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
                if item is _STOP:
                    return False
                batch.append(item)  # type: ignore[arg-type]
        return True

    async def _run(self) -> None:
        assert self._queue is not None and self._executor is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        running = True
        while running:
            first = await queue.get()
            if first is _STOP:
                break
            batch: list[_Item] = [first]  # type: ignore[list-item]
            running = await self._collect(queue, batch)
            live = [(t, f) for t, f in batch if not f.cancelled()]
            self._last_size = len(batch)
            if not live:
                continue
            texts = [t for t, _ in live]
            self.stats.passes += 1
            self.stats.texts += len(texts)
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(texts))
            try:
                X = await loop.run_in_executor(self._executor, self.embed_fn, texts)
                X = np.asarray(X)
                if X.ndim != 2 or X.shape[0] != len(texts):
                    raise ValueError(f"embed_fn returned shape {X.shape} for {len(texts)} texts")
            except Exception as e:  # handed to every waiter of this batch, never swallowed
                self.stats.errors += 1
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            for i, (_, f) in enumerate(live):
                if not f.done():
                    f.set_result(X[i])
