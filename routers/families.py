"""Imports every router family module so that each registers itself by name."""

from __future__ import annotations

import importlib
import importlib.util

FAMILY_MODULES = (
    "routers.semantic",
    "routers.guard",
    "routers.category",
    "routers.knn",
    "routers.mf",
    "routers.classifier",
    "routers.complexity",
    "routers.skills",
    "routers.cluster",
    "routers.lora",
    "routers.stack",
    "routers.irt",
)

for _m in FAMILY_MODULES:
    if importlib.util.find_spec(_m) is not None:
        importlib.import_module(_m)
