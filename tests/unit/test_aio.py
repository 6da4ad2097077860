"""gateway.aio.stop_task: a loop task whose cancellation was absorbed still stops."""

from __future__ import annotations

import asyncio

from gateway.aio import stop_task


async def test_a_task_that_absorbs_a_cancel_is_cancelled_again_until_it_ends() -> None:
    # what Python 3.11's asyncio.timeout does when a cancel lands with its own deadline:
    # the loop sees a TimeoutError ("Redis failed") and goes on; `cancel(); await` hung
    absorbed = 0

    async def loop() -> None:
        nonlocal absorbed
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if absorbed == 0:
                    absorbed += 1
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue
                raise

    task = asyncio.get_running_loop().create_task(loop())
    await asyncio.sleep(0.01)
    await asyncio.wait_for(stop_task(task, wait_s=0.1), 5)
    assert task.done() and task.cancelled() and absorbed == 1
    await stop_task(None)  # nothing to stop
