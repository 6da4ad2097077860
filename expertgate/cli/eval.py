"""``expertgate eval guard|routing|report|offpolicy``: subcommands defined in evals/ (offpolicy
 in expertgate.cli.offpolicy, which resolves gateway policies)."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

SUBCOMMANDS = {
    "guard": ("evals.guard_eval", "guard quality, GQR-Bench protocol"),
    "routing": ("evals.routing_eval", "cost-quality of routers (RouteLLM / RouterBench metrics)"),
    "report": ("evals.report", "Markdown + PNG report of the latest evaluation runs"),
    "offpolicy": ("expertgate.cli.offpolicy", "off-policy evaluation of a router on another "
                  "router's logs (IPS, SNIPS, doubly robust); --simulate proves it"),
}


def register(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="evaluate guards and routers on public data")
    inner = p.add_subparsers(dest="eval_command", metavar="WHAT")
    for cmd, (module, help_) in SUBCOMMANDS.items():
        sp: argparse.ArgumentParser = inner.add_parser(cmd, help=help_)
        # each evals module exposes cli_register(parser) which adds flags and set_defaults(func)
        importlib.import_module(module).cli_register(sp)
