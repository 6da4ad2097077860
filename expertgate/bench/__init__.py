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

import argparse
from collections.abc import Callable
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
    for p in sub.choices.values():
        func = p.get_default("func")
        if func is not None:
            p.set_defaults(func=_stopping_children(func))


def _stopping_children(func: Callable[[argparse.Namespace], int]
                       ) -> Callable[[argparse.Namespace], int]:
    """A benchmark whose every exit (an error, Ctrl-C, SIGTERM, SIGHUP) stops the servers it
    started (gateways, the floor, upstream doubles, redis), each by its own PID."""
    def run(args: argparse.Namespace) -> int:
        from expertgate.procs import stop_children_on_exit

        with stop_children_on_exit():
            return func(args)

    return run
