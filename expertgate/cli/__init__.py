"""The ``expertgate`` command line.

Each subcommand group lives in its own module with a ``register(subparsers)`` function;
modules are imported only when their group is used, so ``expertgate routers list`` never pays
for the web server and ``expertgate serve`` never imports the evaluation suite.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

# subcommand -> (module, help)
GROUPS: dict[str, tuple[str, str]] = {
    "serve": ("expertgate.cli.serve", "run the gateway"),
    "route": ("expertgate.cli.serve", "explain the routing decision for a text (dry run)"),
    "logs": ("expertgate.cli.serve", "routing-log tools (export to Parquet)"),
    "demo": ("expertgate.cli.demo",
             "start two local llama.cpp experts and the gateway, send prompts"),
    "routers": ("expertgate.cli.train", "router registry"),
    "train": ("expertgate.cli.train", "fit a router from a routing table and save its artifact"),
    "eval": ("expertgate.cli.eval", "evaluate guards and routers on public data"),
    "bench": ("expertgate.cli.bench", "benchmarks: gateway overhead, router latency, soak"),
    "data": ("expertgate.cli.train", "data-set registry: list and verify the shared data sets"),
    "embedder": ("expertgate.cli.embedder", "fine-tune the sentence encoder on in-domain data"),
    "keys": ("expertgate.cli.keys", "API keys: hash a key, add or revoke keys in Redis"),
    "policy": ("expertgate.cli.policy", "promote or revert a policy's shadow/canary candidate"),
}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="expertgate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in GROUPS else None
    for name, (module, help_) in GROUPS.items():
        if wanted is None or name == wanted:
            mod = importlib.import_module(module)
            mod.register(sub, name)
        else:
            sub.add_parser(name, help=help_)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
