"""Loads every router family: a family registers in one place, its own ``@register`` class.

Every module of the ``routers`` package is imported once (all are light: heavy libraries are
imported inside the functions that need them), so a new family needs no list to be edited:
the registry, ``expertgate routers list``, ``expertgate train``, the contract tests, the
router benchmark and the evaluation sweep all read it from ``routers.base.registered_names``
and the class's own ``trades_cost``, ``example_params`` and ``train_input``.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

__all__ = ["load_families"]


@functools.cache
def load_families() -> None:
    import routers

    for mod in pkgutil.iter_modules(routers.__path__):
        importlib.import_module(f"routers.{mod.name}")
