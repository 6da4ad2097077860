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
    _plain_help(parser)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        _named_help(parser, argv).print_help()  # `expertgate eval`: eval's commands
        return 2
    prog = " ".join(a for a in argv[:2] if not a.startswith("-"))
    bad = _out_of_range(args) or _unwritable_outputs(args)
    if bad:
        print(f"expertgate {prog}: error: {bad}", file=sys.stderr)
        return 2
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe met here, not in the interpreter's exit
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # an input no check foresaw: one line, not a traceback
        if isinstance(e, BrokenPipeError) and _stdout_closed():
            return _reader_gone()
        if os.environ.get("EXPERTGATE_DEBUG"):
            raise
        settings = _settings_problems(e, args)
        if settings:
            for line in settings:
                print(f"expertgate {prog}: {line}", file=sys.stderr)
            return 2
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"expertgate {prog}: error: {type(e).__name__}"
              f"{': ' + msg[:500] if msg else ''} (EXPERTGATE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
    return int(rc or 0)


#: the status of a process a closed pipe ends (128 + SIGPIPE), as ``yes | head`` gives
CLOSED_PIPE = 141


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (a socket's BrokenPipeError, a
    benchmark's upstream, is another matter, said as any error)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's capture)
        return False


def _reader_gone() -> int:
    """The reader of stdout went away (``expertgate routers list | head -3``): stop quietly,
    as Unix tools do, rather than in the crash path (``error: BrokenPipeError``). What is
    still buffered goes to /dev/null, so the interpreter's exit does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing to redirect
        pass
    return CLOSED_PIPE


def _settings_problems(error: Exception, args: argparse.Namespace) -> list[str]:
    """One line per invalid setting when ``error`` is the gateway's settings refusing the
    environment (an ``EXPERTGATE_*`` variable, or an option the command passed on): the
    variable or option, and why. A command that reads a setting (keys, policy, logs export
    read the Redis URL) ended in ``error: ValidationError: 1 validation error for
    Settings``, naming neither, over a variable set for another command. Empty for any
    other error."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError) or error.title != "Settings":
        return []
    from gateway.config import settings_errors

    # an option is named only when its value is the one refused: a command that read the
    # settings for another field (keys add: the config path) met the variable's value
    flags = {str(err["loc"][0]): "--" + str(err["loc"][0]).replace("_", "-")
             for err in error.errors() if err["loc"]
             and getattr(args, str(err["loc"][0]), None) is not None
             and str(getattr(args, str(err["loc"][0]))) == str(err.get("input"))}
    return settings_errors(error, flags)


def _named_help(parser: argparse.ArgumentParser,
                argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the deepest command ``argv`` names."""
    for word in argv:
        subs = next((a.choices for a in parser._actions
                     if isinstance(a, argparse._SubParsersAction)), {})
        if word not in subs:
            break
        parser = subs[word]
    return parser


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """--help pages show the modules' docstrings, written for Sphinx: their ``name``
    markup is shown as name."""
    if parser.description:
        parser.description = parser.description.replace("``", "")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _plain_help(sub)
            for choice in action._choices_actions:
                choice.help = choice.help.replace("``", "") if choice.help else choice.help


def _out_of_range(args: argparse.Namespace) -> str | None:
    """The first count option out of its range, said naming the flag (checked here, once,
    for every command that has it, before the command's work)."""
    threads = getattr(args, "threads", None)
    if isinstance(threads, int) and threads < 1:
        return f"--threads must be at least 1, not {threads}"
    seed = getattr(args, "seed", None)
    if isinstance(seed, int) and seed < 0:
        return f"--seed must be a non-negative integer, not {seed}"
    for attr in ("seeds", "train_seeds", "layers"):  # counts (seeds; encoder layers)
        n = getattr(args, attr, None)
        if isinstance(n, int) and not isinstance(n, bool) and n < 1:
            return f"--{attr.replace('_', '-')} must be at least 1, not {n}"
    typos = getattr(args, "typos", None)
    if isinstance(typos, float) and not 0.0 < typos <= 1.0:
        return f"--typos must lie in (0, 1] (a share of words), not {typos}"
    augment = getattr(args, "augment_typos", None)
    if isinstance(augment, float) and not 0.0 <= augment <= 1.0:
        return f"--augment-typos must lie in [0, 1] (0: no augmentation), not {augment}"
    routers = getattr(args, "routers", None)
    if isinstance(routers, str) and not any(r.strip() for r in routers.split(",")):
        return (f"--routers names no router ({routers!r}); give a comma-separated list of "
                "families (expertgate routers list), or leave the flag out for all of them")
    frr = getattr(args, "target_frr", None)
    if isinstance(frr, str):
        try:
            bad = any(not 0.0 <= float(f) < 1.0 for f in frr.split(",") if f.strip())
        except ValueError:
            bad = False  # not numbers: the command's own parser says so
        if bad:
            return f"--target-frr takes rates in [0, 1), comma-separated, not {frr!r}"
    return None


#: options that name a file or folder a command writes
_OUTPUTS = ("json", "out", "metrics_json", "plot", "cache_dir", "save_cascade",
            "save_selected")
#: those of them that name a file (a folder there could only fail after the work)
_FILE_OUTPUTS = ("json", "metrics_json", "plot")
#: those that name a folder (a file there could only fail after the work); a command whose
#: ``--out`` is a folder says so with ``set_defaults(out_is_folder=True)``, one whose
#: ``--out`` is a file with ``set_defaults(out_is_file=True)``
_FOLDER_OUTPUTS = ("cache_dir", "save_cascade", "save_selected")


def _unwritable_outputs(args: argparse.Namespace) -> str | None:
    """The first output path the command could not write, and why (checked before the
    command's work, which can take minutes); None when every one is writable. A missing
    folder on the way is created, as the command would."""
    import tempfile
    from pathlib import Path

    for attr in _OUTPUTS:
        value = getattr(args, attr, None)
        if not isinstance(value, str | os.PathLike) or not str(value):
            continue  # unset, or a flag (train --json prints JSON)
        path = Path(value).expanduser()
        flag = "--" + attr.replace("_", "-")
        if (attr in _FILE_OUTPUTS or (attr == "out" and getattr(args, "out_is_file", False))) \
                and path.is_dir():
            return f"cannot write {flag} {value}: it is a folder; name a file in it"
        is_folder = attr in _FOLDER_OUTPUTS or (attr == "out"
                                                and getattr(args, "out_is_folder", False))
        if is_folder and path.exists() and not path.is_dir():
            return f"cannot write {flag} {value}: it is a file; name a folder"
        if path.exists() and not os.access(path, os.W_OK):
            return f"cannot write {flag} {value}: permission denied"
        folder = path if attr == "cache_dir" else path.absolute().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            return f"cannot write {flag} {value}: {e.strerror or e} ({folder})"
    return None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
