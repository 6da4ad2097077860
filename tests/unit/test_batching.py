"""MicroBatcher: concurrent calls share passes, results reach the right callers."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from routers.batching import BatcherClosed, MicroBatcher


class RecordingEmbed:
    """A real (deterministic) embed function that records each pass and can be held."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.gate.wait(5)
        self.batches.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"cannot embed {self.fail_on!r}")
        # row i encodes its own text so a mix-up between callers is visible
        return np.array([[float(len(t)), float(sum(map(ord, t)))] for t in texts], np.float32)


def expected(text: str) -> np.ndarray:
    return np.array([len(text), sum(map(ord, text))], np.float32)


async def test_sequential_calls_dispatch_alone() -> None:
    fn = RecordingEmbed()
    b = MicroBatcher(fn, max_batch=8, max_wait_ms=50)
    for t in ["a", "bb", "ccc"]:
        np.testing.assert_array_equal(await b.embed(t), expected(t))
    await b.close()
    # idle batcher: every call is its own pass, never held for a window
    assert fn.batches == [["a"], ["bb"], ["ccc"]]


async def test_concurrent_calls_share_passes_and_map_back() -> None:
    fn = RecordingEmbed()
    b = MicroBatcher(fn, max_batch=32, max_wait_ms=0)
    fn.gate.clear()
    first = asyncio.create_task(b.embed("first"))
    await asyncio.sleep(0.05)  # the first pass is now running (held by the gate)
    texts = [f"text number {i}" * (i % 3 + 1) for i in range(20)]
    tasks = [asyncio.create_task(b.embed(t)) for t in texts]
    await asyncio.sleep(0.05)
    fn.gate.set()
    rows = await asyncio.gather(*tasks)
    np.testing.assert_array_equal(await first, expected("first"))
    for t, row in zip(texts, rows, strict=True):
        np.testing.assert_array_equal(row, expected(t))
    await b.close()
    assert fn.batches[0] == ["first"]
    assert fn.batches[1] == texts  # everything queued during the first pass went together
    assert b.stats.passes == 2 and b.stats.texts == 21


async def test_max_batch_is_respected() -> None:
    fn = RecordingEmbed()
    b = MicroBatcher(fn, max_batch=4, max_wait_ms=0)
    fn.gate.clear()
    tasks = [asyncio.create_task(b.embed(str(i))) for i in range(10)]
    await asyncio.sleep(0.05)
    fn.gate.set()
    rows = await asyncio.gather(*tasks)
    await b.close()
    assert all(len(batch) <= 4 for batch in fn.batches)
    assert sum(len(batch) for batch in fn.batches) == 10
    assert [r[1] for r in rows] == [float(ord(str(i)[0])) for i in range(10)]


async def test_pass_runs_in_one_worker_thread_off_the_loop() -> None:
    fn = RecordingEmbed()
    b = MicroBatcher(fn)
    await asyncio.gather(*(b.embed(str(i)) for i in range(40)))
    await b.close()
    assert len(fn.threads) == 1
    assert threading.current_thread().name not in fn.threads


async def test_error_reaches_every_waiter_of_the_failed_batch_only() -> None:
    fn = RecordingEmbed(fail_on="bad")
    b = MicroBatcher(fn, max_wait_ms=0)
    fn.gate.clear()
    ok_first = asyncio.create_task(b.embed("fine"))
    await asyncio.sleep(0.05)
    doomed = [asyncio.create_task(b.embed(t)) for t in ("x", "bad", "y")]
    await asyncio.sleep(0.05)
    fn.gate.set()
    np.testing.assert_array_equal(await ok_first, expected("fine"))
    results = await asyncio.gather(*doomed, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "bad" in str(r) for r in results)
    # the batcher keeps working after a failed pass
    np.testing.assert_array_equal(await b.embed("after"), expected("after"))
    await b.close()
    assert b.stats.errors == 1


async def test_wrong_shape_is_an_error() -> None:
    b = MicroBatcher(lambda texts: np.zeros((len(texts) + 1, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        await b.embed("a")
    await b.close()


async def test_close_drains_queued_calls_then_refuses() -> None:
    fn = RecordingEmbed()
    b = MicroBatcher(fn, max_wait_ms=0)
    fn.gate.clear()
    tasks = [asyncio.create_task(b.embed(f"q{i}")) for i in range(5)]
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0.01)
    with pytest.raises(BatcherClosed):
        await b.embed("late")
    fn.gate.set()
    await closing
    rows = await asyncio.gather(*tasks)
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(row, expected(f"q{i}"))
    await b.close()  # closing twice is harmless
    assert b._task is not None and b._task.done()  # the worker loop has ended


async def test_close_without_use() -> None:
    b = MicroBatcher(RecordingEmbed())
    await b.close()
    with pytest.raises(BatcherClosed):
        await b.embed("x")


async def test_cancelled_caller_does_not_break_the_batch() -> None:
    fn = RecordingEmbed()
    b = MicroBatcher(fn, max_wait_ms=0)
    fn.gate.clear()
    head = asyncio.create_task(b.embed("head"))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(b.embed("gone"))
    kept = asyncio.create_task(b.embed("kept"))
    await asyncio.sleep(0.01)
    gone.cancel()
    fn.gate.set()
    await head
    np.testing.assert_array_equal(await kept, expected("kept"))
    await b.close()
    assert ["kept"] in fn.batches


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(RecordingEmbed(), max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(RecordingEmbed(), max_wait_ms=-1)
