"""``expertgate bench router``."""

from __future__ import annotations

from typing import Any

__all__ = ["register_router"]


def register_router(sub: Any) -> None:
    sub.add_parser("router", help="router decision latency")
