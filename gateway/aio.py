"""Stopping background tasks for good.

A loop task that awaits Redis commands runs them under ``asyncio.timeout`` (redis-py's
socket timeout). On Python 3.11, a ``cancel()`` that lands in the same event-loop iteration
as such a timeout's own deadline can be absorbed by the timeout (it takes the cancellation
for its own and raises ``TimeoutError``, which the loop treats as a Redis failure and goes
on): ``task.cancel(); await task`` then waits for ever. :func:`stop_task` cancels until the
task has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["stop_task"]


async def stop_task(task: asyncio.Task[Any] | None, *, wait_s: float = 0.5,
                    attempts: int = 20) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again each ``wait_s`` while
    it has not (at most ``attempts`` times); its result or error is dropped."""
    if task is None:
        return
    for _ in range(attempts):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=wait_s)
    if task.done() and not task.cancelled():
        with contextlib.suppress(BaseException):
            task.result()
