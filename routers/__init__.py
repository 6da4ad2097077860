"""expertgate's routing library: embedders, guards and router families behind one protocol.

No web server and no Redis here; usable offline in a notebook.
"""

from routers.base import (
    Decision,
    GuardVerdict,
    Router,
    RouterError,
    RoutingTable,
    Target,
    get_router_class,
    register,
    registered_names,
)

__all__ = [
    "Decision",
    "GuardVerdict",
    "Router",
    "RouterError",
    "RoutingTable",
    "Target",
    "get_router_class",
    "register",
    "registered_names",
]
