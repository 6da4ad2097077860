"""``expertgate serve``, ``expertgate route`` and ``expertgate logs export``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.config import ConfigError, GatewayConfig, Settings, load_config

__all__ = ["METRICS_DIR_PREFIX", "check", "log_folder_problem", "register",
           "remove_stale_metrics_dirs", "start_local_experts", "start_summary",
           "unreachable_experts"]

log = logging.getLogger("expertgate.serve")

#: how long a reload (SIGHUP, /admin/reload with --workers N) waits for each new worker to
#: be ready before it keeps the old one: imports, the embedder, the policies and the warm-up
WORKER_START_S = 180.0


#: the prefix of a supervisor's prometheus_client directory (``serve --workers N``), which
#: mkdtemp names ``expertgate-metrics-<the supervisor's pid>-<random>``
METRICS_DIR_PREFIX = "expertgate-metrics-"
_METRICS_DIR = re.compile(re.escape(METRICS_DIR_PREFIX) + r"([0-9]{1,10})-[a-z0-9_]+")


def remove_stale_metrics_dirs(tmp: Path) -> list[Path]:
    """Remove the metrics directories in ``tmp`` left by supervisors that are gone (killed
    with SIGKILL: their own ``finally`` never ran) and return them. Only directories of this
    user named as :data:`METRICS_DIR_PREFIX` names them (never a link, nor a folder of the
    older ``expertgate-metrics-<random>`` naming, whose owner cannot be told), and only when
    their pid is not a running process (a pid reused since is a folder left for later)."""
    import os
    import shutil
    import stat

    removed: list[Path] = []
    try:
        entries = list(tmp.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _METRICS_DIR.fullmatch(entry.name)
        if m is None:
            continue
        try:
            st = entry.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or \
                _running(int(m.group(1))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        log.info("removed %s, the metrics directory of a supervisor that is gone", entry)
        removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    """Whether ``pid`` names a process (any user's); pid 0 and numbers no pid can be count
    as running: nothing to remove."""
    import os

    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def register(sub: Any, name: str) -> None:
    if name == "serve":
        p = sub.add_parser("serve", help="run the gateway")
        p.add_argument("--config", type=Path, help="YAML file of experts and policies "
                       "(or EXPERTGATE_CONFIG)")
        p.add_argument("--host", help="bind address (or EXPERTGATE_HOST; default 127.0.0.1, "
                       "0.0.0.0 in the Docker image)")
        p.add_argument("--port", type=int, help="port (or EXPERTGATE_PORT; default 8080)")
        p.add_argument("--redis-url", help="Redis URL for the shared cache, log and limits "
                       "(default: in-process, no Redis); a URL with a password is better "
                       "given as EXPERTGATE_REDIS_URL, which ps does not show")
        p.add_argument("--workers", type=int, help="worker processes (or EXPERTGATE_WORKERS; "
                       "default 1); SIGHUP to this process replaces them all with workers "
                       "built from the config file")
        p.add_argument("--log-level", default=None, help="critical, error, warning, info or "
                       "debug (or EXPERTGATE_LOG_LEVEL; default info)")
        p.add_argument("--start-experts", action="store_true",
                       help="first start the config's local llama.cpp experts (smollm2, "
                       "gemma3 on their 127.0.0.1 ports) and stop them when the gateway stops")
        p.add_argument("--check", action="store_true",
                       help="run the start-up checks (config, embedder, artifacts, guards, "
                       "one warm-up decision per policy) and exit: 0 it would start, 2 it "
                       "would not (one line per problem); binds no port, calls no expert "
                       "beyond GET /models, whose answer is shown as information")
        p.set_defaults(func=cmd_serve)
    elif name == "route":
        p = sub.add_parser("route", help="print the routing Decision for a text as JSON "
                           "(dry run, no upstream call)")
        p.add_argument("--config", type=Path, required=True)
        p.add_argument("--policy", help="policy name (default: the first policy)")
        p.add_argument("text", nargs="+", help="the text to route")
        p.set_defaults(func=cmd_route)
    elif name == "logs":
        p = sub.add_parser("logs", help="routing-log tools")
        inner = p.add_subparsers(dest="logs_command", metavar="WHAT", required=True)
        e = inner.add_parser("export", help="export the routing log joined with feedback to "
                             "Parquet (or JSONL if OUT ends in .jsonl)")
        e.add_argument("--out", type=Path, required=True,
                       help="the export: a .parquet (or .pq) or .jsonl file")
        e.add_argument("--redis-url", help="read the Redis Stream (default EXPERTGATE_REDIS_URL)")
        e.add_argument("--log-path", type=Path, nargs="+", action="extend", metavar="LOG",
                       help="read this JSONL log (default EXPERTGATE_LOG_PATH or "
                       "runs/routing-log.jsonl); several (a live log and its rotated or "
                       "compressed copies, e.g. runs/routing-log.jsonl*) make one export")
        e.add_argument("--feedback-path", type=Path, nargs="+", action="extend",
                       metavar="FEEDBACK",
                       help="the ratings to join (default: the feedback file beside the live "
                       "log, <stem>.feedback.jsonl); several (its rotated copies too) are "
                       "read in order, a request's last rating counting")
        e.add_argument("--tenant", help="export only this tenant's requests (and feedback)")
        e.set_defaults(func=cmd_logs_export)


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    over = {k: v for k, v in extra.items() if v is not None}
    return Settings(**over)


def cmd_serve(args: argparse.Namespace) -> int:
    """Exit codes: 0 a clean stop; 2 the settings, the config or the gateway's start-up
    (embedder, artifacts, policies, a worker that failed to start) is at fault; 1 another
    failure (--start-experts could not start an expert). With --check: 0 it would start, 2
    it would not (:func:`check`)."""
    from pydantic import ValidationError

    from gateway.config import auth_problem, missing_credentials, settings_errors
    from gateway.redact import configure_logging

    flags = {"config": "--config", "host": "--host", "port": "--port",
             "redis_url": "--redis-url", "workers": "--workers", "log_level": "--log-level"}
    given = {k: getattr(args, k) for k in flags}
    # the DNS-rebinding guard of a keyless loopback gateway (docs/security.md): on unless the
    # environment says otherwise. A setting of this command's, not written into os.environ
    # (a process that runs the command in-process, a test, would keep it for every later
    # gateway it builds); --workers N hands it to its workers with the rest of their settings
    import os

    if "EXPERTGATE_HOST_CHECK" not in os.environ:
        given["host_check"] = True
    try:
        s = _settings(args, **given)
    except ValidationError as e:
        for line in settings_errors(e, {k: f for k, f in flags.items()
                                        if given[k] is not None}):
            print(f"expertgate serve: {line}", file=sys.stderr)
        return 2
    configure_logging(s.log_level)
    if s.config is None:
        print("expertgate serve: no configuration: pass --config FILE or set "
              "EXPERTGATE_CONFIG", file=sys.stderr)
        return 2
    if args.check:
        return check(s)
    try:
        cfg = load_config(s.config)  # fail fast, before forking workers
        problem = auth_problem(cfg, s.redis_url)
        if problem:
            raise ConfigError(problem)
    except ConfigError as e:
        print(f"expertgate serve: {e}", file=sys.stderr)
        return 2
    for line in missing_credentials(cfg):
        print(f"expertgate serve: warning: {line}", file=sys.stderr, flush=True)
    for line in (per_process_canaries(cfg, s) + per_process_limits(cfg, s)
                 + unchecked_keys(cfg, s)):
        print(f"expertgate serve: warning: {line}", file=sys.stderr, flush=True)
    busy = ((local_experts_problem(cfg) if args.start_experts else None)
            or _listen_problem(s.host, s.port) or log_folder_problem(s))
    if busy:  # before the embedder loads and --start-experts starts anything
        print(f"expertgate serve: {busy}", file=sys.stderr)
        return 2
    try:  # the embedder and every policy, once, before any server or worker starts
        embedder = _preflight(cfg, s)
    except ConfigError as e:
        print(f"expertgate serve: {e}", file=sys.stderr)
        return 2
    started: list[Any] = []
    try:
        if args.start_experts:
            from expertgate.procs import LocalExpertError

            try:
                started = start_local_experts(cfg, Path("runs/serve"), started)
            except LocalExpertError as e:
                print(f"expertgate serve: {e}", file=sys.stderr)
                return 1
        for line in unreachable_experts(cfg):
            print(f"expertgate serve: warning: {line}", file=sys.stderr, flush=True)
        print(f"expertgate serve: {start_summary(cfg, s)}", file=sys.stderr, flush=True)
        return _run(s, cfg, embedder)
    finally:
        for srv in reversed(started):
            pid = srv.pid
            srv.stop()
            print(f"expertgate serve: stopped expert {srv.name} (pid {pid})", file=sys.stderr)


def check(s: Settings) -> int:
    """``serve --check``: what start-up checks, without binding a port. Problems (what would
    stop the start) go to stderr, one line each, and make the exit 2; what a start would only
    warn about, and which experts and Redis answer now, is information (stdout)."""
    from gateway.config import auth_problem, missing_credentials

    assert s.config is not None
    say = "expertgate serve --check:"
    problems: list[str] = []

    def problem(text: str) -> None:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if len(lines) > 1 and lines[0].endswith(":"):  # "FILE: invalid configuration:" + one
            lines = [f"{lines[0]} {ln}" for ln in lines[1:]]  # line per field: each whole
        for line in lines:
            problems.append(line)
            print(f"{say} problem: {line}", file=sys.stderr, flush=True)

    def info(text: str) -> None:
        print(f"{say} {text}", flush=True)

    try:
        cfg = load_config(s.config)
    except ConfigError as e:
        problem(str(e))
        print(f"{say} {len(problems)} problem(s): the gateway would not start", file=sys.stderr)
        return 2
    info(f"config {s.config}: {len(cfg.experts)} expert(s), {len(cfg.policies)} policy(ies)")
    for why in (auth_problem(cfg, s.redis_url), log_folder_problem(s)):
        if why:
            problem(why)
    for line in (missing_credentials(cfg) + per_process_canaries(cfg, s)
                 + per_process_limits(cfg, s) + unchecked_keys(cfg, s)):
        info(f"warning: {line}")
    embedder = _check_embedder(cfg, s, problem, info)
    if embedder is not False:
        _check_policies(cfg, embedder, problem, info)
    if s.redis_url:
        info(_redis_reachability(s.redis_url))
    info(f"information: {start_summary(cfg, s)}")  # what the start would say
    down = unreachable_experts(cfg)
    for line in down:
        info(f"information: {line}")
    probed = sum(len(e.bases) for e in cfg.experts if e.kind == "openai" and e.parent is None)
    info(f"information: {probed - len(down)} of {probed} expert replica(s) answer GET /models")
    if problems:
        print(f"{say} {len(problems)} problem(s): the gateway would not start", file=sys.stderr)
        return 2
    info("ok: the gateway would start with this configuration")
    return 0


def _check_embedder(cfg: GatewayConfig, s: Settings, problem: Any, info: Any) -> Any:
    """The embedder as start-up builds it, and one embedding; False when it fails."""
    from gateway.pipeline import WARM_TEXT, build_embedder

    if not cfg.policies:
        return None
    kind = cfg.embedder.kind
    try:
        embedder = build_embedder(cfg, s.embed_threads)
        embedder.embed([WARM_TEXT])
    except ConfigError as e:
        problem(str(e))
        return False
    except Exception as e:  # an encoder's own errors (files, runtime): one line, not a trace
        problem(f"embedder {kind}: {type(e).__name__}: {e}")
        return False
    info(f"embedder {kind}: loaded ({embedder.dim}-d)")
    return embedder


def _check_policies(cfg: GatewayConfig, embedder: Any, problem: Any, info: Any) -> None:
    """Every policy built (artifacts, guards, candidates) and one warm-up decision each; a
    policy set that fails is built again one policy at a time, so each broken policy is
    named."""
    from gateway.cache import MemoryDecisionCache
    from gateway.metrics import Metrics
    from gateway.pipeline import Pipeline, build_policy_set

    try:
        pset = build_policy_set(cfg, embedder)
    except ConfigError as e:
        named = 0
        for pol in cfg.policies:
            try:
                build_policy_set(cfg.model_copy(update={"policies": [pol]}), embedder)
            except ConfigError as one:
                problem(str(one))
                named += 1
        if not named:  # a problem of the set, not of one policy
            problem(str(e))
        return
    pipeline = Pipeline(pset, embedder, MemoryDecisionCache(), Metrics())
    try:
        failed = asyncio.run(pipeline.warm())
    finally:
        pipeline.close()
    for name, rt in pset.policies.items():
        if name in failed:
            problem(f"policy {name!r} fails its first decision ({failed[name]})")
        else:
            cand = f", {rt.candidate.mode} candidate" if rt.candidate is not None else ""
            info(f"policy {name!r}: built and decided the warm-up query (router "
                 f"{rt.config.router}{cand})")


def _redis_reachability(url: str) -> str:
    """Whether Redis answers PING now: information (the gateway starts without it)."""
    import redis

    from gateway.redact import redact

    r = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        r.ping()
    except redis.RedisError as e:
        return (f"information: Redis {redact(url)} does not answer ({type(e).__name__}: "
                f"{redact(str(e))}); the gateway would start and serve without it")
    finally:
        r.close()
    return f"information: Redis {redact(url)} answers"


def per_process_canaries(cfg: GatewayConfig, s: Settings) -> list[str]:
    """One line per auto-reverting canary that several workers would test apart: without
    Redis each worker counts only the requests and ratings it receives (gateway/canary.py);
    their reverts still reach each other (the reverts file, every ``canary_sync_s``)."""
    if s.workers <= 1 or s.redis_url:
        return []
    return [f"policy {p.name!r}: its canary is tested per worker process (--workers "
            f"{s.workers} without Redis): each worker counts only its own share of the "
            f"requests and ratings, so a bad canary is detected later; a revert by one "
            f"worker reaches the others within canary_sync_s ({s.canary_sync_s:g}s). Set "
            f"--redis-url to test it on the counts of all workers"
            for p in cfg.policies
            if p.candidate is not None and p.candidate.mode == "canary"
            and p.candidate.auto_revert.enabled]


def per_process_limits(cfg: GatewayConfig, s: Settings) -> list[str]:
    """One line per config key with a rate limit that several workers would enforce apart:
    without Redis each worker process limits on its own (gateway/ratelimit.py), so the key
    gets up to ``workers`` times its budget."""
    if s.workers <= 1 or s.redis_url:
        return []
    out = []
    for i, k in enumerate(cfg.api_keys):
        limits = [n for n, v in (("requests_per_minute", k.requests_per_minute),
                                 ("tokens_per_minute", k.tokens_per_minute)) if v]
        if limits:
            out.append(f"api_keys[{i}]({k.name}): its {' and '.join(limits)} is enforced per "
                       f"worker process (--workers {s.workers} without Redis): up to "
                       f"{s.workers} x the budget. Set --redis-url to share one budget")
    return out


def _redis_holds_keys(url: str) -> bool:
    """Whether the Redis at ``url`` holds an API key record (``expertgate keys add``);
    False when it does not answer within a second (its outage is reported elsewhere)."""
    import redis

    from gateway.auth import KEY_PREFIX

    try:
        r = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    except ValueError:  # a URL redis cannot read: the gateway's own start says so
        return False
    try:
        return next(iter(r.scan_iter(match=KEY_PREFIX + "*", count=1000)), None) is not None
    except (redis.RedisError, OSError, ValueError):
        return False
    finally:
        r.close()


def unchecked_keys(cfg: GatewayConfig, s: Settings) -> list[str]:
    """Why a gateway that checks no API key (no ``api_keys``, ``require_auth: false``)
    may be open to more than its operator thinks: it listens beyond loopback (every client
    that reaches the port calls every policy and expert), or its Redis holds keys added
    with ``expertgate keys add``, which it then never asks for."""
    from gateway.config import open_to_network

    if cfg.require_auth or cfg.api_keys:
        return []
    out = open_to_network(cfg, s.host, s.port)
    if s.redis_url and _redis_holds_keys(s.redis_url):
        from gateway.redact import redact

        out.append(f"Redis {redact(s.redis_url)} holds API keys (expertgate keys add), but "
                   f"they are not checked: {cfg.source} has no api_keys and require_auth is "
                   "false, so every request is served without a key. Set require_auth: true "
                   "to require them")
    return out


def start_summary(cfg: GatewayConfig, s: Settings) -> str:
    """The line ``serve`` prints as it starts: the file, the experts and policies, the
    embedder, where the decision cache, rate limits and routing log live, and who may call.
    Without it, a Redis URL set under a wrong name left a fleet limiting and logging per
    process without a word."""
    from gateway.redact import redact

    policies = ", ".join(f"{p.name} ({p.router})" for p in cfg.policies) or "none"
    emb = cfg.embedder.kind + (f" (from {cfg.embedder_from})" if cfg.embedder_from else "")
    state = (f"in Redis {redact(s.redis_url)}" if s.redis_url else
             "in this process (no Redis URL: --redis-url or EXPERTGATE_REDIS_URL; log "
             f"{s.log_path})")
    keys = (f"{len(cfg.api_keys)} in the file" if cfg.api_keys else "none in the file")
    if s.redis_url and (cfg.api_keys or cfg.require_auth):
        keys += ", and any in Redis"
    elif not cfg.api_keys and not cfg.require_auth:
        keys = "none, every client is served"
    return (f"serving {cfg.source}: {len(cfg.experts)} expert(s), policies {policies}; "
            f"embedder {emb}; decision cache, rate limits and routing log {state}; "
            f"API keys: {keys}")


def log_folder_problem(s: Settings) -> str | None:
    """Why a gateway without Redis could not write beside its routing log (the log, its
    ratings, the request-id secret, canary reverts), naming the variable; None when it can,
    or with Redis (they live there). The folder is made, as the start makes it. Found only
    at start-up, it came after the embedder and every policy had loaded, as ``start-up
    failed: [Errno 17] File exists: ...`` naming no setting. Nothing is created (``serve
    --check`` leaves no trace): the nearest folder that exists must be one this process can
    write in. A file that is no file there (a directory named as the log) is still left to
    the start."""
    import errno
    import os
    import tempfile

    if s.redis_url:
        return None
    for path, variable in ((s.log_path, "EXPERTGATE_LOG_PATH"),
                           (s.feedback_file, "EXPERTGATE_FEEDBACK_PATH" if s.feedback_path
                            else "EXPERTGATE_LOG_PATH")):
        folder = path.absolute().parent
        try:
            while not os.path.lexists(folder) and folder != folder.parent:
                folder = folder.parent  # made by the start, below the first that exists
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{folder} is not a folder")
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            return (f"{variable}: cannot write {path}: its folder {folder} cannot be made "
                    f"or written ({e.strerror or e}); name a writable file, or give a Redis "
                    "URL (the log then goes to Redis)")
    return None


def _listen_problem(host: str, port: int) -> str | None:
    """Why the gateway could not listen on ``host:port`` (as uvicorn binds: SO_REUSEADDR),
    or None. A name that does not resolve is left to uvicorn's own error."""
    import socket

    if port == 0:
        return None
    # the family as uvicorn picks it (``localhost`` is bound as IPv4 there)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except socket.gaierror:
            return None
        except OSError as e:
            why = (e.strerror or str(e)).lower()
            return (f"cannot listen on {host}:{port}: [Errno {e.errno}] {why}; stop what "
                    f"holds it or pick another --port")
    return None


def local_experts_problem(cfg: GatewayConfig) -> str | None:
    """Why ``--start-experts`` cannot serve ``cfg`` (an expert that is not one of the local
    models on 127.0.0.1), or None: a flag that does not fit the file, said before anything
    loads (exit 2), not after the embedder and every policy (exit 1)."""
    from urllib.parse import urlsplit

    from expertgate.procs import DEFAULT_CHAT_FORMAT

    for e in cfg.experts:
        if e.parent is not None or e.kind != "openai":
            continue
        if e.name not in DEFAULT_CHAT_FORMAT or \
                urlsplit(e.bases[0]).hostname not in ("127.0.0.1", "localhost"):
            return (f"--start-experts starts only the local models "
                    f"{', '.join(DEFAULT_CHAT_FORMAT)} on 127.0.0.1; expert {e.name!r} at "
                    f"{e.bases[0]} is not one of them: start it yourself and leave out the "
                    "flag")
    return None


def start_local_experts(cfg: GatewayConfig, work: Path, started: list[Any]) -> list[Any]:
    """Start a llama.cpp server for each expert of ``cfg`` that is one of the local models
    (smollm2, gemma3) on a 127.0.0.1 port; appends each to ``started`` as it starts."""
    from urllib.parse import urlsplit

    from expertgate.procs import LlamaServer, LocalExpertError

    why = local_experts_problem(cfg)
    if why is not None:
        raise LocalExpertError(why)
    todo = []
    for e in cfg.experts:
        if e.parent is not None or e.kind != "openai":
            continue
        u = urlsplit(e.bases[0])
        todo.append(LlamaServer.for_model(e.name, port=u.port, log_path=work / f"{e.name}.log"))
    for srv in todo:
        srv.start(wait=False)  # all load at once; readiness is awaited below
        started.append(srv)
        print(f"expertgate serve: starting expert {srv.name} (llama.cpp, pid {srv.pid}) on "
              f"{srv.base}, log {srv.log_path}", file=sys.stderr, flush=True)
    for srv in todo:
        srv.wait_ready()
    return started


def unreachable_experts(cfg: GatewayConfig, timeout_s: float = 1.0) -> list[str]:
    """One line per expert replica that does not answer ``GET {base}/models`` now, by name.

    Start-up goes on (an expert may come up later; its requests fall back meanwhile), but
    the operator reads at once which experts the gateway cannot reach.
    """
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    probes = [(e.name, b) for e in cfg.experts
              if e.kind == "openai" and e.parent is None for b in e.bases]

    def probe(base: str) -> str | None:
        try:
            with urllib.request.urlopen(base + "/models", timeout=timeout_s) as r:
                return None if r.status < 500 else f"it answered {r.status}"
        except urllib.error.HTTPError as err:
            return None if err.code < 500 else f"it answered {err.code}"
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as err:
            why = getattr(err, "reason", err)
            return f"{type(why).__name__}: {why}" if not isinstance(why, str) else why

    if not probes:
        return []
    with ThreadPoolExecutor(min(16, len(probes))) as pool:
        results = list(pool.map(probe, [b for _, b in probes]))
    return [f"expert {name!r} is not reachable at {base} ({why}); requests for it will fail "
            f"or take a policy's fallback until it answers"
            for (name, base), why in zip(probes, results, strict=True) if why is not None]


def _preflight(cfg: GatewayConfig, s: Settings) -> Any:
    """Build the embedder and the policy set as a worker will (artifacts, router params),
    so that a failure is one line and exit 2 here, not a lifespan failure in every worker;
    returns the embedder (a single-worker server reuses it)."""
    from gateway.pipeline import build_embedder, build_policy_set

    embedder = build_embedder(cfg, s.embed_threads) if cfg.policies else None
    build_policy_set(cfg, embedder)
    return embedder


class _LifespanEcho(logging.Filter):
    """Drops uvicorn's copy of the lifespan's start-up failure: the gateway logged it
    already ("start-up failed: ..."), uvicorn would print it again."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and
                    record.pathname.replace("\\", "/").endswith("lifespan/on.py") and
                    record.getMessage() != "Application startup failed. Exiting.")


def _worker_log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with :class:`_LifespanEcho` on ``uvicorn.error``:
    what a worker process (``--workers N``) applies when it starts, so the filter the
    single process adds by hand applies in every worker too."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    conf = copy.deepcopy(LOGGING_CONFIG)
    conf.setdefault("filters", {})["lifespan_echo"] = {"()": f"{__name__}._LifespanEcho"}
    conf["loggers"]["uvicorn.error"]["filters"] = ["lifespan_echo"]
    return conf


def _run(s: Settings, cfg: GatewayConfig | None = None, embedder: Any = None) -> int:
    import uvicorn

    from gateway.httpserver import GatewayHttpProtocol

    assert s.config is not None
    kw: dict[str, Any] = {"host": s.host, "port": s.port, "log_level": s.log_level.lower(),
                          "loop": "uvloop", "http": GatewayHttpProtocol, "access_log": False,
                          "lifespan": "on", "timeout_graceful_shutdown": 30,
                          "backlog": 4096}
    if s.workers > 1:
        # each worker process builds its own app from the same environment
        import os

        config_path = Path(s.config).resolve()
        os.environ["EXPERTGATE_CONFIG"] = str(config_path)
        # a worker knows it is one of several, and which process supervises them (a
        # reload must reach them all: gateway.api.admin)
        os.environ["EXPERTGATE_WORKERS"] = str(s.workers)
        os.environ["EXPERTGATE_SUPERVISOR_PID"] = str(os.getpid())
        os.environ["EXPERTGATE_HOST_CHECK"] = "true" if s.host_check else "false"
        if s.redis_url:
            os.environ["EXPERTGATE_REDIS_URL"] = s.redis_url
        import shutil
        import tempfile

        from prometheus_client.multiprocess import mark_process_dead
        from uvicorn.supervisors.multiprocess import Multiprocess, Process

        # /metrics adds up every worker's values: prometheus_client's multiprocess mode, a
        # file per worker in a directory of this supervisor's own (mode 0700, fresh: files
        # of another run would be added in), set before a worker imports prometheus_client
        # named after this supervisor's pid: a supervisor killed with SIGKILL never removes
        # its own, the next start removes those whose supervisor is gone
        remove_stale_metrics_dirs(Path(tempfile.gettempdir()))
        metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

        def worker_gone(pid: int | None) -> None:
            # its live gauges (in flight, breakers...) leave the view; its counters and
            # histograms stay in it, so a counter never goes down when a worker is replaced
            if pid is not None:
                mark_process_dead(pid, metrics_dir)

        def count_reload(result: str) -> None:
            # a SIGHUP reload replaces the workers (whose counters start at zero): counted
            # here, in the supervisor's own file of the directory /metrics adds up. One a
            # worker's POST /admin/reload sent was counted by that worker (its marker)
            markers = sorted(Path(metrics_dir).glob(f"{RELOAD_COUNTED_PREFIX}*"))
            if markers:
                markers[0].unlink(missing_ok=True)
                return
            from prometheus_client.values import MultiProcessValue

            MultiProcessValue()("counter", "expertgate_config_reloads",
                                "expertgate_config_reloads_total", ("result",), (result,),
                                "Configuration reloads by result (failed: the running "
                                "configuration was kept)").inc(1)

        from gateway.api.admin import RELOAD_COUNTED_PREFIX
        from gateway.config import auth_problem

        class Supervisor(Multiprocess):
            """Remembers that it stopped because a worker failed to start (uvicorn's
            ``run`` returns as from a clean stop, and the command would exit 0), and waits
            long enough for a reload's new workers."""

            child_failed = False

            def handle_hup(self) -> None:
                # a file that does not load would fail every new worker (a traceback each
                # and uvicorn's "not ready in time"): checked here first, as at start-up,
                # the running workers kept (/admin/reload checked it in its worker already)
                try:
                    checked = load_config(config_path)
                    problem = auth_problem(checked, s.redis_url)
                    if problem:
                        raise ConfigError(problem)
                except ConfigError as e:
                    log.error("reload on SIGHUP failed, keeping the running workers: %s", e)
                    count_reload("failed")
                    return
                log.info("Received SIGHUP, restarting processes.")
                count_reload("ok" if self.restart_all() else "failed")

            def restart_all(self) -> bool:  # type: ignore[override]
                # uvicorn's own waits timeout_worker_healthcheck (5 s) for each new worker,
                # then keeps the old one: a worker that loads MiniLM and warms its policies
                # up takes longer, so after a 200 from /admin/reload a worker went on
                # serving the old file (a revoked key still answered there). Each new
                # worker now has WORKER_START_S; a stop asked meanwhile ends the wait.
                for idx, old in enumerate(self.processes):
                    if self._stopping():
                        return False
                    new = Process(self.config, self.sockets)
                    new.start()
                    if not self._ready(new):
                        new.kill()
                        new.join()
                        worker_gone(new.pid)
                        if not self._stopping():
                            why = (f"exited (status {new.exitcode})"
                                   if new.exitcode is not None and new.exitcode >= 0 else
                                   f"was not ready within {WORKER_START_S:g}s")
                            log.error("reload: new worker [%s] %s (its log above says why); "
                                      "keeping worker [%s] and those not yet replaced: they "
                                      "serve the previous configuration", new.pid, why,
                                      old.pid)
                        return False
                    old.terminate()
                    old.join()
                    worker_gone(old.pid)
                    self.processes[idx] = new
                return True

            def _stopping(self) -> bool:
                return self.should_exit.is_set() or any(
                    sig in self.signal_queue for sig in (signal.SIGINT, signal.SIGTERM))

            def _ready(self, new: Process) -> bool:
                deadline = time.monotonic() + WORKER_START_S
                while time.monotonic() < deadline and not self._stopping():
                    if not new.process.is_alive():
                        return False
                    if new.is_ready(timeout=1):
                        return True
                    time.sleep(0.1)
                return False

            def keep_subprocess_alive(self) -> None:
                stopping = self.should_exit.is_set()
                before = {p.pid for p in self.processes}
                super().keep_subprocess_alive()
                for pid in before - {p.pid for p in self.processes}:
                    worker_gone(pid)  # uvicorn replaced a worker that died
                if not stopping and self.should_exit.is_set():
                    self.child_failed = True  # only a worker's start-up failure sets it

            def terminate_all(self) -> None:
                # the supervisor's own copy of the listening socket kept it listening after
                # the workers closed theirs: the kernel went on accepting connections that
                # no worker would take, which hung until the supervisor exited and were
                # then reset; closed first, the socket closes with the workers' copies and
                # new clients are refused while the workers drain
                for sock in self.sockets:
                    sock.close()
                super().terminate_all()

        # each worker configures its logging from log_config (uvicorn's own, plus the
        # filter that drops its echo of a start-up failure: a worker that fails to start,
        # on a reload, said it twice)
        config = uvicorn.Config("gateway.asgi:app", workers=s.workers, factory=True,
                                log_config=_worker_log_config(), **kw)
        try:
            try:
                sock = config.bind_socket()
            except SystemExit:  # uvicorn logged the OSError (errno only) and exits 3
                print(f"expertgate serve: cannot listen on {s.host}:{s.port} (the error "
                      "above says why)", file=sys.stderr)
                return 2
            sup = Supervisor(config, sockets=[sock])
            sup.run()  # SIGINT/SIGTERM: a clean stop (the supervisor handles them)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if sup.child_failed:
            print("expertgate serve: a worker failed to start (its log above says why); "
                  "stopped", file=sys.stderr)
            return 2
        return 0
    from gateway.app import create_app

    app = create_app(s, cfg, embedder=embedder)
    echo = _LifespanEcho()
    logging.getLogger("uvicorn.error").addFilter(echo)
    # uvicorn drains on SIGINT/SIGTERM, then raises the signal again into the handler it
    # found: under the default one SIGTERM killed the process there (exit status 143, and
    # the experts --start-experts started were never stopped); this one makes it a return
    handlers = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(app, **kw)
    except _Stopped:
        pass
    except SystemExit as e:
        if e.code == 3:  # uvicorn's start-up failure: the lifespan logged why
            return 2
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        logging.getLogger("uvicorn.error").removeFilter(echo)
    return 0


class _Stopped(Exception):
    """A SIGINT or SIGTERM once uvicorn's graceful shutdown is done (or before it ran)."""


def _stopped(signum: int, frame: Any) -> None:
    raise _Stopped(signum)


@dataclass
class _Planner:
    """What gateway.request.plan needs, without a running gateway."""

    policy_set: Any
    config: GatewayConfig
    pipeline: Any
    metrics: Any


def cmd_route(args: argparse.Namespace) -> int:
    from gateway.cache import MemoryDecisionCache
    from gateway.metrics import Metrics
    from gateway.pipeline import Pipeline, build_embedder, build_policy_set
    from gateway.request import explain
    from gateway.request.plan import plan

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"expertgate route: {e}", file=sys.stderr)
        return 2
    if not cfg.policies:
        print(f"expertgate route: {args.config} has no policies", file=sys.stderr)
        return 2
    name = args.policy or cfg.policies[0].name
    try:  # a bad embedder.options is the config's error, as serve says it
        emb = build_embedder(cfg)
        pset = build_policy_set(cfg, emb)
    except ConfigError as e:
        print(f"expertgate route: {e}", file=sys.stderr)
        return 2
    if name not in pset.policies:
        print(f"expertgate route: no policy {name!r}; policies: "
              f"{', '.join(pset.policies)}", file=sys.stderr)
        return 2
    text = " ".join(" ".join(args.text).split())
    if not text or "\x00" in text:
        print("expertgate route: the text to route is empty or holds a NUL character",
              file=sys.stderr)
        return 2
    metrics = Metrics()
    pipe = Pipeline(pset, emb, MemoryDecisionCache(), metrics)
    # the same plan as POST /v1/route and a live request: decision, action, chain
    planner = _Planner(pset, cfg, pipe, metrics)

    async def run() -> dict[str, Any]:
        degraded: list[str] = []
        p = await plan(planner, "route", {"model": name, "text": text}, degraded,
                       deadline=time.monotonic() + 300, serve=False)
        return explain(p, degraded)

    out = asyncio.run(run())
    pipe.close()
    sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _export_target_problem(out: Path) -> str | None:
    """Why ``--out`` cannot take an export, or None. The export is JSONL for a name ending in
    ``.jsonl`` and Parquet otherwise, and its readers (``train --format logs``, ``eval
    offpolicy``) tell the two apart by the same suffix: Parquet under any other name (a
    ``.csv``, a ``.json``) is a file nothing reads back."""
    if out.is_dir():
        return f"cannot write --out {out}: it is a folder; name a file in it"
    if out.suffix != ".jsonl" and out.suffix.lower() not in (".parquet", ".pq"):
        return (f"--out {out}: name a .parquet or .jsonl file (the export's format, which "
                "train --format logs and eval offpolicy read by that suffix)")
    return None


def _unread_rotated_feedback(read: list[Path]) -> list[tuple[Path, Path]]:
    """Rotated copies (``NAME.1``, ``NAME.2.gz``, ...) beside the feedback files ``read`` that
    were not read themselves: a logrotate rule for ``*.jsonl`` rotates the feedback file too,
    and the ratings in its copies would be lost without a word."""
    import re

    given = {f.resolve() for f in read}
    out = []
    for live in read:
        if not live.parent.is_dir():
            continue
        pattern = re.compile(re.escape(live.name) + r"[.-]\d+(\.gz)?$")
        for f in sorted(live.parent.iterdir()):
            if pattern.match(f.name) and f.resolve() not in given:
                out.append((f, live))
    return out


def cmd_logs_export(args: argparse.Namespace) -> int:
    import redis

    from expertgate.cli._redis import bad_redis_url, redis_failure
    from gateway.logs import export_routing_log, feedback_path_for

    if bad_redis_url("logs export", args.redis_url):
        return 2
    bad = _export_target_problem(args.out)
    if bad:
        print(f"expertgate logs export: error: {bad}", file=sys.stderr)
        return 2
    s = Settings()
    files = args.log_path or args.feedback_path
    if args.redis_url and files:
        print("expertgate logs export: --redis-url reads the routing log and the ratings from "
              "Redis; --log-path and --feedback-path read files: give one or the other",
              file=sys.stderr)
        return 2
    # files the user names are what they mean to export, whatever the shell's Redis URL
    redis_url = args.redis_url or (None if files else s.redis_url)
    log_paths = [Path(x) for x in args.log_path or [s.log_path]]
    # a rotated or compressed log (routing-log.1.jsonl, routing-log.jsonl.gz) reads the
    # feedback file of the live log, where the gateway writes every rating
    fb = list(args.feedback_path) if args.feedback_path else [s.feedback_file] \
        if args.log_path is None else list(dict.fromkeys(map(feedback_path_for, log_paths)))
    # a feedback file the user names is one they mean to read: a missing one (a typo, a
    # rotated copy already gone) is a usage error, not a silently smaller join; only the
    # default file may be absent (a gateway that has received no rating yet)
    missing = [f for f in args.feedback_path or [] if not f.exists()]
    if missing:
        print(f"expertgate logs export: --feedback-path: no such file: "
              f"{', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    read = [] if redis_url else [*log_paths, *fb]
    if any(args.out.resolve() == f.resolve() for f in read):
        # replaced by the export (renamed over it): a live gateway's records went on into
        # the old file, unlinked, and its ratings or log were gone
        print(f"expertgate logs export: --out {args.out} is a file the export reads (the "
              "routing log or its ratings): name another file", file=sys.stderr)
        return 2
    for lp in [] if redis_url else log_paths:
        why = ("no routing log at {} (and no Redis URL)" if not lp.exists() else
               "{} is the feedback file (ratings), not a routing log"
               if lp.name.endswith(".feedback.jsonl") else None)
        if why:
            print(f"expertgate logs export: {why.format(lp)}", file=sys.stderr)
            return 2
    try:
        st = export_routing_log(args.out, redis_url=redis_url, log_path=log_paths,
                                feedback_path=fb, tenant=args.tenant)
    except (OSError, EOFError) as e:  # a .gz that is no gzip: LogReadError names the file
        print(f"expertgate logs export: {e}", file=sys.stderr)
        return 2
    except redis.RedisError as e:  # the environment's, as a log file that cannot be read
        print(redis_failure("logs export", str(redis_url), e, f"{args.out} not written"),
              file=sys.stderr)
        return 2
    skipped = [f"{k} {what}" for k, what in (
        (st.malformed_lines, "malformed log line(s)"),
        (st.mistyped, "record(s) with wrongly typed fields"),
        (st.bad_ratings, "invalid rating(s) (no request id, or a score null, not a number "
                         "or outside [0, 1])"),
        (st.malformed_feedback_lines, "malformed feedback line(s)")) if k]
    source = "the Redis stream" if redis_url else ", ".join(map(str, log_paths))
    if st.written == 0:
        print(f"expertgate logs export: no record to write from {source}"
              + (f" for tenant {args.tenant}" if args.tenant else "")
              + (f"; skipped {'; '.join(skipped)}" if skipped else "")
              + f"; {args.out} not written", file=sys.stderr)
        return 1
    print(f"wrote {st.written} record(s) to {args.out}" +
          (f" (tenant {args.tenant})" if args.tenant else ""))
    if st.feedback_missing is not None:
        print(f"feedback: no feedback file at {st.feedback_missing}: no record has a rating "
              "(--feedback-path FILE names the file the gateway wrote ratings to)")
    else:
        print(f"feedback: {st.joined} rating(s) joined; {st.unmatched} rating(s) match no "
              "exported record (requests in another log file, or unknown ids)")
    if not redis_url:
        for rotated, live in _unread_rotated_feedback(fb):
            print(f"note: {rotated} looks like a rotated copy of {live}: its ratings were not "
                  "read (--feedback-path ROTATED LIVE reads both)")
    if skipped:
        print(f"skipped {'; '.join(skipped)}")
    return 0
