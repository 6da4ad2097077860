"""The in-process decision cache (the embedded default). The Redis cache is tested against a
real redis-server in tests/integration."""

from __future__ import annotations

import asyncio

from gateway.cache import MemoryDecisionCache, decision_key, text_hash


async def test_get_set_and_ttl_expiry() -> None:
    c = MemoryDecisionCache()
    await c.set("k", {"mode": "single"}, ttl_s=0.05)
    assert await c.get("k") == {"mode": "single"}
    await asyncio.sleep(0.08)
    assert await c.get("k") is None
    await c.set("z", {"a": 1}, ttl_s=0)  # ttl 0 means: do not cache
    assert await c.get("z") is None


async def test_lru_is_bounded() -> None:
    c = MemoryDecisionCache(max_entries=3)
    for i in range(5):
        await c.set(f"k{i}", {"i": i}, ttl_s=60)
    assert len(c) == 3
    assert await c.get("k0") is None and await c.get("k4") == {"i": 4}
    await c.get("k2")  # touch: k2 becomes most recent
    await c.set("k5", {"i": 5}, ttl_s=60)
    assert await c.get("k2") == {"i": 2} and await c.get("k3") is None


def test_key_changes_with_policy_version_and_text() -> None:
    a = decision_key("auto", "v1", text_hash("hello"))
    assert a == decision_key("auto", "v1", text_hash("hello"))
    assert a != decision_key("auto", "v2", text_hash("hello"))
    assert a != decision_key("auto", "v1", text_hash("hello!"))
    assert a != decision_key("cheap", "v1", text_hash("hello"))


async def test_memory_is_bounded_by_bytes_as_measured() -> None:
    import tracemalloc

    value = {"mode": "single", "targets": [{"expert": "smollm2", "score": 0.83}],
             "reason": "semantic: route 'chit-chat' -> smollm2 (similarity 0.812)", "x": "y" * 200}
    c = MemoryDecisionCache(max_entries=10**9, max_bytes=2 * 1024 * 1024)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            await c.set(decision_key("auto", "v1", text_hash(f"distinct prompt {i}")), value, 3600)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert c.bytes <= c.max_bytes
    assert 2000 < len(c) < 20_000  # evicted by bytes, not by the entry cap
    # what the process really holds stays near the bound (orjson's 4 KiB buffers made this
    # ~40x the JSON's size before)
    assert grown < 1.25 * c.max_bytes, grown
    assert await c.get(decision_key("auto", "v1", text_hash("distinct prompt 19999"))) == value
    assert await c.get(decision_key("auto", "v1", text_hash("distinct prompt 0"))) is None
