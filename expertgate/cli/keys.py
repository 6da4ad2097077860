"""``expertgate keys hash|add|revoke``: API keys are stored as sha256 digests, never in clear.

``hash`` prints the digest for the config file's ``api_keys``; ``add`` and ``revoke`` write
or delete the Redis record (layout in :mod:`gateway.auth`), which running gateways pick up
without a restart. A key is read from ``--key``, or from stdin so it stays out of the shell
history; ``--generate`` makes a new random key and prints it once. ``add --admin`` makes an
admin key; without ``--experts`` a key may call by name only the experts its policies reach.
``add`` checks ``--policies`` and ``--experts`` against the gateways' configuration
(``--config`` or EXPERTGATE_CONFIG) before it stores anything.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config import GatewayConfig

__all__ = ["cmd_add", "cmd_hash", "cmd_revoke", "register"]


_HEX64 = re.compile(r"[0-9a-f]{64}")

#: a Redis that drops packets answers within these, not after the OS's ~2 min connect timeout
REDIS_TIMEOUTS = {"socket_connect_timeout": 5.0, "socket_timeout": 10.0}


def register(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="API keys: hash a key, add or revoke keys in Redis")
    inner = p.add_subparsers(dest="keys_command", metavar="WHAT", required=True)
    h = inner.add_parser("hash", help="print the sha256 digest of a key (for api_keys)")
    _key_args(h)
    h.set_defaults(func=cmd_hash)
    a = inner.add_parser("add", help="store a key in Redis (no restart needed)",
                         description="store an API key in Redis, where every gateway on it "
                         "finds it without a restart (only its sha256 digest is stored)")
    _key_args(a)
    a.add_argument("--redis-url", help=_REDIS_URL_HELP)
    a.add_argument("--config", help="the gateways' configuration file (default "
                   "EXPERTGATE_CONFIG): --policies and --experts must name what it has")
    a.add_argument("--name", required=True, help="tenant name")
    a.add_argument("--policies", default="*", help="comma-separated policies, or *")
    a.add_argument("--experts", default=None,
                   help="comma-separated experts the key may call by name, or * for all "
                   "(default: the experts its policies can reach)")
    a.add_argument("--admin", action="store_true",
                   help="an admin key: may use /admin/* (reload, state) and the admin views")
    a.add_argument("--replace", action="store_true",
                   help="store the key even when Redis holds it for another tenant")
    a.add_argument("--requests-per-minute", type=int, metavar="N",
                   help="requests a minute this key may make, counted across every gateway "
                   "on this Redis (default: no limit)")
    a.add_argument("--tokens-per-minute", type=int, metavar="N",
                   help="tokens a minute (prompt estimate + max_tokens, settled with the "
                   "upstream's usage), counted likewise (default: no limit)")
    a.set_defaults(func=cmd_add)
    r = inner.add_parser("revoke", help="delete a key from Redis (by key or digest)")
    _key_args(r, generate=False)  # a new random key is never one to revoke
    r.add_argument("--sha256", help="the digest instead of the key")
    r.add_argument("--redis-url", help=_REDIS_URL_HELP)
    r.add_argument("--config", help="the gateways' configuration file (default "
                   "EXPERTGATE_CONFIG): a key it lists stays valid whatever Redis holds, "
                   "and revoke says so")
    r.set_defaults(func=cmd_revoke)


_REDIS_URL_HELP = ("the gateways' Redis (default EXPERTGATE_REDIS_URL, better for a URL with "
                   "a password: ps shows the command line)")


def _redis_url(args: argparse.Namespace, command: str) -> str | None:
    """``--redis-url``, else EXPERTGATE_REDIS_URL; None (and a line saying so) without, or
    when the URL cannot be read."""
    from expertgate.cli._redis import bad_redis_url
    from gateway.config import Settings

    if bad_redis_url(f"keys {command}", args.redis_url):
        return None
    url = args.redis_url or Settings().redis_url
    if not url:
        print(f"expertgate keys {command}: no Redis URL: pass --redis-url URL or set "
              "EXPERTGATE_REDIS_URL", file=sys.stderr)
    return url


def _key_args(p: argparse.ArgumentParser, *, generate: bool = True) -> None:
    p.add_argument("--key", help="the key (default: read one line from stdin)")
    if generate:
        p.add_argument("--generate", action="store_true", help="generate a new random key")


def _read_key(args: argparse.Namespace) -> str | None:
    """The key (``--generate``, ``--key``, else a line of stdin, asked for without echo on
    a terminal); None, after a line naming the command and where it looked, when empty: a
    usage error (exit 2), never a digest of nothing."""
    if getattr(args, "generate", False):
        key = "sk-eg-" + secrets.token_urlsafe(32)
        print(f"key (shown once): {key}", file=sys.stderr)
        return key
    if args.key is not None:
        key, where = args.key, "--key is empty"
    elif sys.stdin.isatty():
        # a terminal: it waited for a line without a word (the command looked hung), and a
        # typed key stayed on the screen and in the scrollback
        import getpass

        key = getpass.getpass("API key (not shown; Enter to finish): ")
        where = "nothing was typed"
    else:
        key, where = sys.stdin.readline(), "stdin gave an empty line (or none)"
    key = key.strip()
    if not key:
        print(f"expertgate keys {args.keys_command}: no key: {where}; pass --key KEY, "
              "one line on stdin, or --generate", file=sys.stderr)
        return None
    return key


def cmd_hash(args: argparse.Namespace) -> int:
    from gateway.auth import hash_key

    key = _read_key(args)
    if key is None:
        return 2
    print(hash_key(key))
    return 0


#: APIKeyConfig field -> the option of `keys add` that sets it
_OPTION = {"sha256": "--key"}


def cmd_add(args: argparse.Namespace) -> int:
    import redis
    from pydantic import ValidationError

    from expertgate.cli._redis import redis_failure
    from gateway.auth import KEY_CACHE_S, KEY_PREFIX, hash_key, key_record
    from gateway.config import APIKeyConfig

    url = _redis_url(args, "add")
    if url is None:
        return 2
    key = _read_key(args)
    if key is None:
        return 2
    digest = hash_key(key)
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    if not policies and args.experts is None and not getattr(args, "admin", False):
        # `--policies "$POLICIES"` with the variable unset: a key that may use nothing
        print(f"expertgate keys add: --policies names no policy ({args.policies!r}): give "
              "a comma-separated list, or '*' for all (the default); a key for experts by "
              "name only names them with --experts, an admin-only key takes --admin",
              file=sys.stderr)
        return 2
    try:
        cfg = APIKeyConfig(name=args.name, sha256=digest, policies=policies,
                           experts=None if args.experts is None else
                           [x.strip() for x in args.experts.split(",") if x.strip()],
                           admin=bool(getattr(args, "admin", False)),
                           requests_per_minute=args.requests_per_minute,
                           tokens_per_minute=args.tokens_per_minute)
    except ValidationError as e:
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            opt = _OPTION.get(field, "--" + field.replace("_", "-"))
            print(f"expertgate keys add: {opt}: {err['msg']}", file=sys.stderr)
        return 2
    if not _names_known(cfg, args):
        return 2
    r = redis.Redis.from_url(url, **REDIS_TIMEOUTS)
    try:
        old = r.hget(KEY_PREFIX + digest, "name")
        old_admin = r.hget(KEY_PREFIX + digest, "admin") if old is not None else None
        old_name = old.decode(errors="replace") if isinstance(old, bytes) else old
        was_admin = (old_admin.decode(errors="replace") if isinstance(old_admin, bytes)
                     else str(old_admin or "")).strip().lower() in ("1", "true", "yes")
        if old_name is not None and old_name != cfg.name and \
                not getattr(args, "replace", False):
            # the same key given for another tenant (a pasted key) would move the old
            # tenant's key, limits and policies to the new name
            print(f"expertgate keys add: this key is stored for tenant {old_name!r}, not "
                  f"{cfg.name!r}: pass --replace to hand it over", file=sys.stderr)
            return 2
        pipe = r.pipeline()
        pipe.delete(KEY_PREFIX + digest)  # replace, never merge with an older record
        record: dict[Any, Any] = dict(key_record(cfg))
        pipe.hset(KEY_PREFIX + digest, mapping=record)
        pipe.execute()
    except redis.RedisError as e:  # the environment's, as a bad --redis-url: exit 2
        print(redis_failure("keys add", url, e, "the key is not stored"), file=sys.stderr)
        return 2
    finally:
        r.close()
    role = "admin" if cfg.admin else "tenant"
    verb = "stored" if old_name is None else f"replaced (was {old_name!r})"
    if was_admin and not cfg.admin:
        # re-added to change a limit, --admin forgotten: the operator's own key lost /admin
        print("expertgate keys add: note: this key was an admin key and is a tenant key now "
              "(pass --admin to keep /admin/* and the dashboard)", file=sys.stderr)
    print(f"{verb} {KEY_PREFIX}{digest} for {role} {args.name}")
    if old_name is not None:
        # a gateway that has seen the key keeps its old record (limits, admin) that long
        print(f"running gateways use the new record within {KEY_CACHE_S:g} s")
    return 0


def _names_known(key: Any, args: argparse.Namespace) -> bool:
    """The key's policies and experts exist in the gateways' configuration (``--config``,
    else EXPERTGATE_CONFIG); one line per unknown option. A key naming a policy the gateways
    lack is stored as any other, and each of its requests is a 404 ``model_not_found``.
    Without a configuration the names cannot be checked, and a line says so."""
    path, cfg = _gateway_config(args, "add")
    if path is None:
        print("expertgate keys add: --policies and --experts not checked against the "
              "gateways' configuration (pass --config FILE or set EXPERTGATE_CONFIG)",
              file=sys.stderr)
        return True
    if cfg is None:
        return False
    policies = [p.name for p in cfg.policies]
    experts = [e.name for e in cfg.experts]
    ok = True
    for i, k in enumerate(cfg.api_keys):
        if k.sha256 == key.sha256:
            # the gateways take a config key's record over Redis's: this one would be stored
            # and reported, and never used (an --admin here left a tenant key a tenant key)
            ok = False
            print(f"expertgate keys add: this key is already in {path} as api_keys[{i}]"
                  f"({k.name}), and a config key's record wins over Redis's: the record "
                  "stored here would never be used. Edit it in the file (and reload), or add "
                  "another key", file=sys.stderr)
    for opt, names, known, what, whats in (
            ("--policies", key.policies, policies, "policy", "policies"),
            ("--experts", key.experts or [], experts, "expert", "experts")):
        bad = [n for n in names if n != "*" and n not in known]
        if bad:
            ok = False
            print(f"expertgate keys add: {opt}: no {what} named {', '.join(map(repr, bad))} "
                  f"in {path} ({whats}: {', '.join(known) or 'none'})", file=sys.stderr)
    return ok


def cmd_revoke(args: argparse.Namespace) -> int:
    import redis

    from expertgate.cli._redis import redis_failure
    from gateway.auth import KEY_CACHE_S, KEY_PREFIX, hash_key

    url = _redis_url(args, "revoke")
    if url is None:
        return 2
    if args.sha256:
        # as printed by other tools: upper case (PowerShell, certutil), a trailing line
        digest = args.sha256.strip().lower()
        if not _HEX64.fullmatch(digest):
            print("expertgate keys revoke: --sha256: not a sha256 digest (64 hex digits); "
                  "nothing revoked", file=sys.stderr)
            return 2
    else:
        key = _read_key(args)
        if key is None:
            return 2
        digest = hash_key(key)
    r = redis.Redis.from_url(url, **REDIS_TIMEOUTS)
    try:
        n = r.delete(KEY_PREFIX + digest)
    except redis.RedisError as e:
        print(redis_failure("keys revoke", url, e, "the key is not revoked"), file=sys.stderr)
        return 2
    finally:
        r.close()
    print(f"{'revoked' if n else 'no such key'}: {KEY_PREFIX}{digest}")
    if n:
        # a gateway that has seen the key remembers it that long: tried at once, it still
        # answered, and the revocation looked broken
        print(f"running gateways refuse it within {KEY_CACHE_S:g} s (a gateway that cannot "
              "reach Redis keeps the keys it knows until it can)")
    listed = _config_entry(digest, args)
    if listed is not None:
        # "no such key" read as "already revoked": the key went on working
        print(f"expertgate keys revoke: this key is in {listed}: the gateways take it from "
              "there, so it stays valid until it is removed from the file and the gateways "
              "reloaded", file=sys.stderr)
        return 1
    return 0 if n else 1


def _config_entry(digest: str, args: argparse.Namespace) -> str | None:
    """``FILE as api_keys[i](name)`` when the gateways' configuration (``--config``, else
    EXPERTGATE_CONFIG) lists the key ``digest``; None when it does not, or cannot be read."""
    path, cfg = _gateway_config(args, "revoke")
    if cfg is None:
        return None
    for i, k in enumerate(cfg.api_keys):
        if k.sha256 == digest:
            return f"{path} as api_keys[{i}]({k.name})"
    return None


def _gateway_config(args: argparse.Namespace,
                    command: str) -> tuple[str | Path | None, GatewayConfig | None]:
    """``(path, config)`` of the gateways' configuration (``--config``, else
    EXPERTGATE_CONFIG): ``(None, None)`` when neither names one; ``(path, None)`` when it
    does not load, after a line that says why."""
    from gateway.config import ConfigError, Settings, load_config

    path = getattr(args, "config", None) or Settings().config
    if not path:
        return None, None
    try:
        return path, load_config(path)
    except ConfigError as e:
        print(f"expertgate keys {command}: --config: {e}", file=sys.stderr)
        return path, None
