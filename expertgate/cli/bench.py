"""``expertgate bench overhead|router|soak``: defined in expertgate.bench."""

from __future__ import annotations

from typing import Any


def register(sub: Any, name: str) -> None:
    from expertgate.bench import cli_register

    p = sub.add_parser(name, help="benchmarks: gateway overhead, router latency, soak")
    cli_register(p)
