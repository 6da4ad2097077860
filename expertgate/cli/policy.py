"""``expertgate policy promote|revert NAME --config FILE [--url URL] [--redis-url URL]``.

``promote`` makes a policy's candidate router (``candidate:`` in shadow or canary mode) the
policy's router; ``revert`` drops the candidate and keeps the incumbent. The YAML file is
rewritten atomically (a temporary file renamed over it, so a reload never reads half a file)
and, with ``--url``, the running gateway reloads it (``POST /admin/reload``), which swaps the
policy set atomically: in-flight requests finish on the old one. The file keeps its
permissions and its leading comment block; comments further in are not kept (the file is
re-serialised). A config path that is a symlink is rewritten at its target, the link kept.

Gateways sharing one Redis (several ``serve`` processes, replicas) are each told, whichever
of them ``--url`` names and whether they are up: with a Redis URL (``--redis-url``, else
``EXPERTGATE_REDIS_URL``) the end of the candidate is recorded there
(:func:`gateway.canary_sync.record_end`), and every gateway on that Redis drops the candidate
within its canary sync interval (``EXPERTGATE_CANARY_SYNC_S``, 1 s) and reads its
configuration file again; one that is down reads the record when it starts. A gateway whose
own file still names the candidate keeps it off (and, for a promotion, serves the policy's
router until its file is updated).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

__all__ = ["register", "rewrite"]


def register(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="promote or revert a policy's shadow/canary candidate")
    inner = p.add_subparsers(dest="policy_command", metavar="WHAT")
    for cmd, help_ in (("promote", "make the candidate the policy's router"),
                       ("revert", "drop the candidate, keep the policy's router")):
        sp = inner.add_parser(cmd, help=help_)
        sp.add_argument("policy", help="policy name")
        sp.add_argument("--config", required=True, help="the gateway's YAML file")
        sp.add_argument("--url", default=None, help="running gateway to reload "
                        "(e.g. http://127.0.0.1:8080; a client's base URL ending in /v1 "
                        "names it too)")
        sp.add_argument("--api-key", default=os.environ.get("EXPERTGATE_API_KEY"),
                        help="an admin key for --url's /admin/reload, when the gateway has "
                        "API keys (default EXPERTGATE_API_KEY, better: ps shows the command "
                        "line)")
        sp.add_argument("--redis-url", default=None,
                        help="the gateways' Redis, where the end is recorded for every gateway "
                        "on it (default EXPERTGATE_REDIS_URL; better for a URL with a "
                        "password: ps shows the command line)")
        sp.set_defaults(func=_run, action=cmd)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def rewrite(data: dict[str, Any], policy: str, action: str) -> dict[str, Any]:
    """The configuration with ``policy``'s candidate promoted or dropped; ValueError if the
    policy or its candidate is missing."""
    if not isinstance(data, dict):
        raise ValueError("the file is not a mapping of experts and policies")
    pols = [p for p in data.get("policies") or [] if isinstance(p, dict)
            and p.get("name") == policy]
    if not pols:
        raise ValueError(f"no policy {policy!r} in the configuration")
    pol = pols[0]
    cand = pol.get("candidate")
    if not cand:
        raise ValueError(f"policy {policy!r} has no candidate to {action}")
    if action == "promote":
        # what a promotion copies must be there (a revert of a broken candidate is a fix)
        if not isinstance(cand, dict):
            raise ValueError(f"the candidate of policy {policy!r} is not a mapping "
                             "(router, artifact, mode, ...)")
        for key in ("router", "artifact"):
            if not cand.get(key):
                raise ValueError(f"the candidate of policy {policy!r} has no {key}")
    del pol["candidate"]
    if action == "promote":
        pol["router"] = cand["router"]
        pol["artifact"] = cand["artifact"]
        pol["params"] = dict(cand.get("params") or {})
        pol.pop("routes", None)
    return data


def _check_models(cfg: Any, policy: str, folder: Path) -> None:
    """The promoted router decides between its table's models and the policy's ``models:``
    maps them to experts: a map written for the incumbent's table (or none, where the
    candidate's models are no experts) is refused by the gateway at load, so it is refused
    here before the file is written. ValueError naming the models."""
    from routers.artifacts import load_router
    from routers.base import RouterError

    pol = next(p for p in cfg.policies if p.name == policy)
    # a relative path names a folder beside the config file, as the gateway reads it
    art = pol.artifact if pol.artifact.is_absolute() else folder / pol.artifact
    try:
        table = list(getattr(load_router(art), "experts_", []))
    except (RouterError, OSError) as e:
        raise ValueError(f"cannot load the candidate's artifact {pol.artifact}: {e}") from None
    if not table:
        return
    experts = {e.name for e in cfg.experts}
    stray = sorted(set(pol.models) - set(table))
    unknown = sorted(m for m in table if pol.models.get(m, m) not in experts)
    if stray or unknown:
        raise ValueError(
            f"policy {policy!r}: the candidate's router decides between "
            f"{', '.join(table)}; " + "; ".join(
                ([f"models: maps {', '.join(stray)}, which it does not know"] if stray
                 else []) + ([f"{', '.join(unknown)} map(s) to no expert"] if unknown
                             else []))
            + ": edit the policy's models: for the candidate, then promote")


def _leading_comments(text: str) -> list[str]:
    out = []
    for ln in text.splitlines(keepends=True):
        if not ln.lstrip().startswith("#") and ln.strip():
            break
        out.append(ln if ln.endswith("\n") else ln + "\n")
    return out


_PAST = {"promote": "promoted", "revert": "reverted"}


def _identity(path: Path, policy: str) -> str:
    """The running candidate's identity (as the gateways compute it), from the file as it
    is before the rewrite; ValueError when its artifact cannot be read."""
    from gateway.canary_sync import candidate_identity
    from gateway.config import load_config
    from routers.artifacts import artifact_version

    cfg = load_config(path)  # artifact paths resolved against the file's folder
    pol = next(p for p in cfg.policies if p.name == policy)
    cand = pol.candidate
    assert cand is not None and cand.artifact is not None  # rewrite() checked
    try:
        version = artifact_version(cand.artifact)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the candidate's artifact {cand.artifact}: {e}") from None
    return candidate_identity(cand, version)


def _record(url: str, policy: str, identity: str, action: str) -> str | None:
    """Record the end in Redis; None, or the line that says which Redis failed and why.
    The file is written by then: exit 1 (as a failed reload), not 2 (nothing done)."""
    import redis

    from expertgate.cli._redis import redis_failure
    from gateway.canary_sync import record_end

    r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        record_end(r, policy, identity, action)
    except redis.RedisError as e:
        return redis_failure(f"policy {action}", url, e, "the end is not recorded there; "
                             "the file is written: reload every gateway (SIGHUP or POST "
                             "/admin/reload)")
    finally:
        r.close()
    return None


def _error_message(r: Any) -> str:
    """The message of an OpenAI-shaped error answer, else its text (shortened)."""
    try:
        msg = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        msg = None
    return str(msg) if msg else " ".join(r.text.split())[:300]


def _run(args: argparse.Namespace) -> int:
    from expertgate.cli._redis import bad_redis_url
    from gateway.config import ConfigError, Settings, load_yaml, parse_config, read_config_text

    path = Path(args.config)
    if bad_redis_url(f"policy {args.action}", args.redis_url):
        return 2  # before the file is written: the end could not be recorded there
    redis_url = args.redis_url or Settings().redis_url
    identity = None
    try:
        # as the gateway reads it: a FIFO or /dev/zero is refused, not read without end
        text = read_config_text(path)
        data = load_yaml(text)
        new = rewrite(data, args.policy, args.action)
        cfg = parse_config(new, str(path))  # never write a file the gateway would refuse
        if args.action == "promote":
            _check_models(cfg, args.policy, path.resolve().parent)
        if redis_url:
            try:
                identity = _identity(path, args.policy)
            except ValueError as e:  # a revert of a broken candidate still goes ahead
                if args.action == "promote":
                    raise
                print(f"expertgate policy revert: {e}; the revert is not recorded in Redis: "
                      "reload every gateway", file=sys.stderr)
    except (OSError, yaml.YAMLError, ValueError, ConfigError) as e:
        print(f"expertgate policy {args.action}: {e}", file=sys.stderr)
        return 2
    # the file's leading comment block (what train writes into policy.yaml says how it was
    # made) is kept; comments further in are not (the YAML is re-serialised)
    head = "".join(ln for ln in _leading_comments(text))
    # a config reached through a symlink (a deploy folder, a checkout) is rewritten where it
    # is: renaming over the link would leave the real file with the candidate and the link
    # a copy that nothing else reads
    real = path.resolve()
    fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(head)
        yaml.safe_dump(new, f, sort_keys=False)
    os.chmod(tmp, stat.S_IMODE(real.stat().st_mode))  # mkstemp's 0600 would lock readers out
    os.replace(tmp, real)
    print(f"{_PAST[args.action]} the candidate of policy {args.policy!r} in {path}")
    rc = 0
    if identity is not None and redis_url:
        why = _record(redis_url, args.policy, identity, args.action)
        if why is None:
            print("recorded in Redis: every gateway on it drops the candidate within its "
                  "canary sync interval (EXPERTGATE_CANARY_SYNC_S) and reads its "
                  "configuration file again")
        else:
            print(why, file=sys.stderr)
            rc = 1
    elif not redis_url:
        print("no Redis URL (--redis-url, EXPERTGATE_REDIS_URL): other gateways learn of "
              "this only when reloaded", file=sys.stderr)
    if args.url:
        import httpx

        headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        base = args.url.rstrip("/")
        # an OpenAI client's base URL (http://host:8080/v1) names the same gateway
        base = base[:-3] if base.endswith("/v1") else base
        try:
            r = httpx.post(base + "/admin/reload", headers=headers, timeout=60)
        except httpx.HTTPError as e:
            print(f"reload failed ({e}); the file is written: reload with SIGHUP or "
                  "POST /admin/reload", file=sys.stderr)
            return 1
        if r.status_code != 200:
            # the raw JSON said neither what to do nor that the file was written already
            hint = (" (an admin key is needed: --api-key KEY or EXPERTGATE_API_KEY)"
                    if r.status_code in (401, 403) else "")
            print(f"expertgate policy {args.action}: the reload at {base} answered "
                  f"{r.status_code}: {_error_message(r)}{hint}; the file is written: reload "
                  "with SIGHUP or POST /admin/reload", file=sys.stderr)
            return 1
        changed = r.json().get("changed")
        served = r.json().get("config")
        note = ""
        if (rc == 0 and identity is not None and args.policy not in (changed or [])
                and (not served or Path(served) == path.resolve())):
            # "changed []" read as "the promotion did nothing": the gateway had re-read the
            # file when it met the end recorded in Redis, before this reload
            note = (f" (policy {args.policy!r} was already served from the rewritten file: "
                    "the end recorded in Redis reached the gateway first)")
        print(f"reloaded: changed {changed}{note}")
        if served and Path(served) != path.resolve():
            # it reloaded its own file, which still names the candidate: the promotion or
            # revert is not what it serves (a copy of the file was rewritten)
            print(f"the gateway at {args.url} serves {served}, not {path.resolve()}: its "
                  "own file still names the candidate. Run this command with --config "
                  f"{served} (on its host), then reload it", file=sys.stderr)
            return 1
    return rc
