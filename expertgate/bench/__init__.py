"""Benchmarks behind ``expertgate bench``: ``overhead`` and ``router``.

* ``overhead`` (:mod:`expertgate.bench.overhead`): added latency, throughput, CPU and memory of
  expertgate against a direct call, a bare Python pass-through and the LiteLLM proxy, all in
  front of one fast local upstream (:mod:`expertgate.bench.upstream_stub`).
* ``router`` (:mod:`expertgate.bench.router`): decision latency per router family and embedder
  backend, decision-cache hit latency (in-memory and Redis), embedding throughput with and
  without micro-batching.
* ``soak`` (:mod:`expertgate.bench.soak`): steady load through a real gateway while RSS
  and file descriptors are sampled.
* ``startup`` (:mod:`expertgate.bench.startup`): the first decisions after a start, with and
  without the start-up warm-up, each in a fresh process.

Every figure is printed with the machine it was measured on; speed targets are checked here
(met / not met), never in unit tests.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cli_register"]


def cli_register(parser: Any) -> None:
    """Add the ``overhead``, ``router``, ``soak`` and ``startup`` subcommands to
    ``expertgate bench``."""
    from expertgate.bench.overhead import register_overhead
    from expertgate.bench.router import register_router
    from expertgate.bench.soak import cli_register_soak
    from expertgate.bench.startup import cli_register_startup

    sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    register_overhead(sub)
    register_router(sub)
    cli_register_soak(sub)
    cli_register_startup(sub)
