"""Settings (environment, ``EXPERTGATE_*``) and the YAML file of experts and policies.

``Settings`` is the one place that reads the environment. ``load_config(path)`` parses and
validates the YAML; a bad file fails at start-up with the file, the field and why
(:class:`ConfigError`).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import ipaddress
import math
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.dialect import Dialect
from gateway.redact import redact

__all__ = [
    "APIKeyConfig",
    "AutoRevertConfig",
    "CandidateConfig",
    "ConfigError",
    "EmbedderConfig",
    "ExpertConfig",
    "ExploreConfig",
    "GatewayConfig",
    "GuardConfig",
    "PolicyConfig",
    "RejectConfig",
    "RouteConfig",
    "Settings",
    "StrictLoader",
    "auth_problem",
    "env_key",
    "load_config",
    "load_yaml",
    "missing_credentials",
    "open_to_network",
    "read_config_text",
    "redis_url_problem",
    "settings_errors",
]

#: who may read an endpoint that is neither the API nor admin: anyone, any valid key, an admin
Access = Literal["open", "key", "admin"]



_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def settings_errors(err: ValidationError, flags: dict[str, str] | None = None) -> list[str]:
    """One line per invalid ``EXPERTGATE_*`` variable of a :class:`Settings` validation
    error: the variable, the value's problem (pydantic's first line names neither).
    ``flags`` maps a field given on the command line to its option, named instead."""
    out = []
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else "?"
        name = (flags or {}).get(field, f"EXPERTGATE_{field.upper()}")
        value = e.get("input")
        # a Redis URL's password is not repeated; pydantic's "Value error, " says nothing
        out.append(f"{name}: {e['msg'].removeprefix('Value error, ')}"
                   + (f" (got {redact(repr(value))})" if isinstance(value, str | int | float)
                      else ""))
    return out


def redis_url_problem(url: str) -> str | None:
    """Why redis-py cannot connect with ``url`` (None when it can): a scheme other than
    redis://, rediss:// or unix:// (``http://...``, ``localhost:6379``), a port that is no
    number, an option it cannot read. Said where the URL is given, before any work: it
    surfaced as ``ValueError`` from the first connection, in a command's crash path or
    after a gateway had loaded everything. The message never repeats the URL (a password)."""
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError as e:
        return (f"not a Redis URL: {redact(str(e))} (e.g. redis://127.0.0.1:6379/0, "
                "rediss://:PASSWORD@HOST:6380/0, unix:///run/redis.sock)")
    return None


class ConfigError(ValueError):
    """The configuration file is missing or invalid; the message names file, field and why."""


class Settings(BaseSettings):
    """Process settings from the environment (prefix ``EXPERTGATE_``)."""

    model_config = SettingsConfigDict(env_prefix="EXPERTGATE_", extra="ignore")

    config: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: a gateway that checks no API key and listens on loopback answers only requests whose
    #: ``Host`` names this machine (a DNS-rebinding guard: a web page's own name resolved to
    #: 127.0.0.1). ``expertgate serve`` turns it on; docs/security.md
    host_check: bool = False
    #: more ``Host`` names such a gateway answers (comma-separated: a reverse proxy's public
    #: name when it passes the client's Host on); ``*`` answers any
    allowed_hosts: str = ""
    redis_url: str | None = None
    #: routing-log JSONL file used when there is no Redis
    log_path: Path = Path("runs/routing-log.jsonl")
    #: feedback JSONL file used when there is no Redis
    feedback_path: Path | None = None
    #: the largest request body any endpoint reads (checked before reading and while reading)
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    #: a request's body must arrive within this many seconds of its headers (else 408)
    body_timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    #: a connection must send a request's headers within this many seconds (else closed)
    header_timeout_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    #: open client connections per process; more are answered 503 and closed
    max_connections: int = Field(default=4096, ge=1)
    max_messages: int = Field(default=512, ge=1)
    #: whole-request deadline (decision + upstream incl. fallbacks), seconds
    request_deadline_s: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    #: the in-process decision cache's bounds (used without Redis): entries and bytes;
    #: a single-expert decision costs ~650 bytes, so 64 MiB holds ~100,000 of them
    decision_cache_size: int = Field(default=100_000, ge=1)
    decision_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    embed_threads: int = Field(default=1, ge=1)
    #: how long to skip Redis after it failed before trying again, seconds
    redis_retry_s: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    redis_timeout_s: float = Field(default=0.25, gt=0, allow_inf_nan=False)
    #: seconds between two exchanges of canary counts and reverts with the other processes
    #: (Redis, or the reverts file of ``serve --workers N``): the longest a revert decided
    #: elsewhere takes to stop this process's canary (gateway/canary_sync.py)
    canary_sync_s: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    log_queue_size: int = Field(default=10_000, ge=1)
    log_level: str = "info"
    workers: int = Field(default=1, ge=1)
    #: freeze start-up objects out of the cyclic GC (keeps GC pauses off the tail)
    gc_freeze: bool = True
    #: decide one query per policy at start-up and before a reloaded set serves, so the
    #: first request pays no first-use costs (``Pipeline.warm``)
    warm_up: bool = True
    #: check upstreams in /readyz (one GET /models per replica, cached briefly)
    ready_check_upstreams: bool = True
    #: /readyz answers 503 when any one expert has no replica up (default: only when none is)
    ready_require_all_experts: bool = False
    #: who may read GET /metrics ("open", "key": any valid API key, "admin": an admin key;
    #: with no keys configured "key" is open and "admin" is loopback only, as /admin/*)
    metrics_auth: Access = "admin"
    #: who may read GET /docs, /redoc and /openapi.json
    docs_auth: Access = "key"
    #: who sees the checks of GET /readyz (which name experts); everyone gets its status code
    #: and ``{"status"}`` so probes need no key
    readyz_auth: Access = "key"
    #: the most bytes of request line + headers the server reads (431 beyond)
    max_header_bytes: int = Field(default=65_536, ge=1024)
    #: serve the dashboard at /ui (its data needs the admin API's credentials)
    ui: bool = True
    #: which media URLs in chat message parts (image_url, audio_url, video_url, file) an
    #: expert may be sent to fetch: "public" (data: URIs and http(s) URLs of public hosts),
    #: "data-only", or "any" (no check). gateway/request/media.py, docs/security.md
    media_urls: Literal["public", "data-only", "any"] = "public"
    #: when set (comma-separated hosts and *.suffixes), the only hosts "public" allows
    media_allowed_domains: str = ""

    @field_validator("redis_url")
    @classmethod
    def _readable_redis_url(cls, v: str | None) -> str | None:
        if not v:
            return None  # EXPERTGATE_REDIS_URL= : no Redis, as when it is not set
        why = redis_url_problem(v)
        if why is not None:
            raise ValueError(why)
        return v

    @field_validator("media_allowed_domains")
    @classmethod
    def _media_domains(cls, v: str) -> str:
        from gateway.request.media import parse_domains

        return ",".join(parse_domains(v))

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        if v.strip().upper() not in _LOG_LEVELS:
            raise ValueError(f"unknown log level {v!r}; use one of "
                             f"{', '.join(lv.lower() for lv in _LOG_LEVELS)}")
        return v.strip()

    @property
    def feedback_file(self) -> Path:
        return self.feedback_path or self.log_path.with_name(self.log_path.stem + ".feedback.jsonl")


# --------------------------------------------------------------------------- YAML schema


_NUMBERS = (int, float, int | None, float | None)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: an OpenAI endpoint path at the end of a URL given as an expert's base
_ENDPOINT = re.compile(r"(.*?)/(?:chat/completions|completions|embeddings|models)/?$")
#: a shell / docker compose variable reference: ${NAME}, ${NAME:-default}, ...
_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:[:?+=-][^}]*)?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1: `requests_per_minute: yes` (YAML 1.1's true) was a limit
        # of one request a minute, `timeout_s: true` a 1 s timeout
        if isinstance(v, bool) and info.field_name is not None and \
                cls.model_fields[info.field_name].annotation in _NUMBERS:
            raise ValueError(f"a number is needed, not true/false ({str(v).lower()})")
        return v


class PriceConfig(_Model):
    input_per_1m: float = Field(0.0, ge=0)
    output_per_1m: float = Field(0.0, ge=0)

    def cost(self, usage: tuple[int, int]) -> float:
        """USD for (prompt tokens, completion tokens)."""
        return (usage[0] * self.input_per_1m + usage[1] * self.output_per_1m) / 1e6


class ExpertConfig(_Model):
    """An upstream model: an OpenAI-compatible server (vLLM, llama.cpp, ...) or a LiteLLM
    provider, a LoRA adapter (``parent`` = its base expert), with one or more replicas."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._:/@-]+$")]
    kind: Literal["openai", "litellm"] = "openai"
    api_base: str | None = None
    replicas: list[str] = Field(default_factory=list)
    #: the model name sent upstream (default: the expert's name)
    model: str | None = None
    #: name of the environment variable holding the upstream API key (never the key itself)
    api_key_env: str | None = None
    price: PriceConfig = Field(default_factory=lambda: PriceConfig.model_validate({}))
    timeout_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(3.0, gt=0)
    max_concurrency: int = Field(256, ge=1)
    parent: str | None = None
    description: str = ""
    skills: list[str] = Field(default_factory=list)
    #: the upstream serves POST /v1/embeddings (the gateway passes embeddings only to these)
    embeddings: bool = False
    #: LoRA adapters resident per replica (api_base -> adapter names), for affinity
    resident_adapters: dict[str, list[str]] = Field(default_factory=dict)
    #: the request dialect of its server (gateway/dialect.py): openai sends the body as the
    #: client wrote it; llama-cpp-python rewrites what llama-cpp-python's server cannot read
    dialect: Dialect = "openai"
    # base URL (credentials removed) -> its "Basic ..." Authorization value. Credentials
    # written in a URL are moved here at load, so no URL the gateway prints can carry them.
    _basic_auth: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, v: str | None) -> str | None:
        # the key itself written here was logged at every start-up ("the variable sk-... is
        # not set"): the message never repeats the value
        if v is not None and not _ENV_NAME.fullmatch(v):
            raise ValueError("must be the name of an environment variable (letters, digits "
                             "and _, not starting with a digit) that holds the upstream's key, "
                             "never the key itself")
        return v

    @model_validator(mode="after")
    def _bases(self) -> ExpertConfig:
        if self.kind == "litellm" and self.dialect != "openai":
            raise ValueError("dialect applies to kind: openai experts (LiteLLM adapts the "
                             "request to its provider itself)")
        if self.kind == "openai" and not (self.api_base or self.replicas or self.parent):
            raise ValueError("an openai-compatible expert needs api_base or replicas "
                             "(or a LoRA parent whose replicas it shares)")
        fields = [("api_base", self.api_base)] if self.api_base is not None else []
        fields += [(f"replicas[{i}]", b) for i, b in enumerate(self.replicas)]
        for key, b in fields:
            why = _url_problem(b)
            if why is not None:
                raise ValueError(f"{key}: {why}")
        if self.api_base is not None:
            self.api_base = self._take_credentials(self.api_base)
        self.replicas = [self._take_credentials(b) for b in self.replicas]
        seen: set[str] = set()
        # api_base and a replica may name one server: it is used once (bases)
        for key, b in [(f"replicas[{i}]", b) for i, b in enumerate(self.replicas)]:
            if b.rstrip("/") in seen:
                raise ValueError(f"{key}: {b.rstrip('/')!r} is listed more than once: one "
                                 "server would count as several replicas (a retry on "
                                 "'another' replica reaches it again)")
            seen.add(b.rstrip("/"))
        self.resident_adapters = {_strip_userinfo(b): a
                                  for b, a in self.resident_adapters.items()}
        return self

    def _take_credentials(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        if self.api_key_env:
            raise ValueError(
                f"api base {redact(url)!r} carries credentials (user:password@) and "
                f"api_key_env {self.api_key_env!r} is set: both would be the upstream's "
                "Authorization header, so every call would fail. Keep one of them")
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        clean = _strip_userinfo(url)
        self._basic_auth[clean.rstrip("/")] = "Basic " + base64.b64encode(
            pair.encode()).decode()
        return clean

    def upstream_headers(self, base: str) -> dict[str, str]:
        """The headers of a call to replica ``base``: JSON, and its credentials if any."""
        h = {"content-type": "application/json"}
        if self.api_key_env:
            key = env_key(self.api_key_env)
            if key:
                h["authorization"] = f"Bearer {key}"
        elif self._basic_auth:
            basic = self._basic_auth.get(base.rstrip("/"))
            if basic is not None:
                h["authorization"] = basic
        return h

    @property
    def credentials_digest(self) -> str:
        """Changes when the URL credentials change (they are not part of ``model_dump``)."""
        return hashlib.sha256(orjson.dumps(self._basic_auth, option=orjson.OPT_SORT_KEYS)
                              ).hexdigest()

    @property
    def upstream_model(self) -> str:
        return self.model or self.name

    @property
    def bases(self) -> list[str]:
        out = [b.rstrip("/") for b in self.replicas]
        if self.api_base and self.api_base.rstrip("/") not in out:
            out.insert(0, self.api_base.rstrip("/"))
        return out


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an expert's base URL (None when it can): an http(s) scheme, a
    host, a numeric port in 1..65535. The message never repeats a password: a user:password
    whose password holds an unencoded '/' ends the host at that '/', so the rest of the
    password would show as the path (and in every log line and /admin/state)."""
    ref = _ENV_REF.search(redact(url))
    if ref is not None:
        return (f"{ref.group(0)} is not expanded: the configuration file is read as written, "
                "without environment variables; write the URL, or expand the file before "
                "(envsubst < gw.template.yaml > gw.yaml)")
    if not url.startswith(("http://", "https://")):
        return f"api base {redact(url)!r} must start with http:// or https://"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        # a line break went into the request line sent upstream (a header of its own there)
        return ("invalid URL: it holds whitespace or a control character (a line break, a "
                "tab, a space): percent-encode it (a space as %20)")
    parts = urlsplit(url)
    if "@" in url[len(parts.scheme) + 3 + len(parts.netloc):]:
        return ("invalid URL: '@' after the host. If the URL carries user:password@, "
                "percent-encode the password's special characters: '/' as %2F, '@' as %40, "
                "':' as %3A (or give the key with api_key_env)")
    if "?" in url or "#" in url:
        # the gateway appends /chat/completions and the other paths to the base: a query
        # was dropped from every call (an api-key there never sent), yet shown in
        # /admin/state and the logs; the message does not repeat it
        base = redact(url.split("?", 1)[0].split("#", 1)[0])
        return (f"invalid URL: {base!r} is followed by a query (?...) or fragment (#...), "
                "which an API base cannot have: no call would carry it (the gateway appends "
                "/chat/completions and the other paths to the base); give the upstream's "
                "key with api_key_env")
    if not parts.hostname:
        return f"invalid URL {redact(url)!r}: no host"
    try:
        port = parts.port
    except ValueError:
        raw = parts.netloc.rsplit("@", 1)[-1].rsplit("]", 1)[-1].partition(":")[2]
        return (f"invalid URL {redact(url)!r}: the port {raw!r} is not a number in "
                "1..65535")
    if port == 0:
        return f"invalid URL {redact(url)!r}: the port must lie in 1..65535"
    endpoint = _ENDPOINT.search(parts.path)
    if endpoint is not None:
        return (f"{redact(url)!r} is an endpoint, not the API's base: write the URL up to "
                f"{endpoint.group(1)!r} (the base, as http://host:8000/v1); the gateway adds "
                "/chat/completions and the other paths itself")
    return None


def _strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class RouteConfig(_Model):
    name: str = Field(min_length=1)
    expert: str = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)
    description: str = ""

    @model_validator(mode="after")
    def _has_text(self) -> RouteConfig:
        if not self.examples and not self.description:
            raise ValueError(f"route {self.name!r} needs examples or a description")
        return self


class RejectConfig(_Model):
    """What a rejected request gets: an error, a refusal completion, or a fallback expert."""

    action: Literal["error", "refusal", "fallback"] = "error"
    status: int = Field(400, ge=400, le=499)
    message: str = "This request is outside what this service answers."
    expert: str | None = None

    @model_validator(mode="after")
    def _fallback_expert(self) -> RejectConfig:
        if self.action == "fallback" and not self.expert:
            raise ValueError("on_reject.action 'fallback' needs on_reject.expert")
        return self


class GuardConfig(_Model):
    """A guard artifact run before the policy's router (``routers.guard``)."""

    artifact: Path
    enabled: bool = True


class ExploreConfig(_Model):
    """Exploration budget of a policy (routers/explore.py): a share ``rate`` of requests goes
    to an expert other than the router's choice, drawn uniformly (``epsilon``) or by the
    router's scores (``softmax`` at ``temperature``) among the decision's candidates. Every
    decision logs its propensities so that logs support off-policy evaluation."""

    rate: float = Field(0.0, ge=0, lt=1)
    method: Literal["epsilon", "softmax"] = "epsilon"
    temperature: float = Field(0.1, gt=0)


class AutoRevertConfig(_Model):
    """When a canary reverts by itself (gateway/canary.py): its error rate above, or its
    mean feedback below, the incumbent's by more than ``margin`` under an anytime-valid
    sequential test at level ``alpha``, once each arm has ``min_samples`` observations."""

    enabled: bool = True
    margin: float = Field(0.05, ge=0, le=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    min_samples: int = Field(100, ge=1)


def _finite_params(params: dict[str, Any]) -> dict[str, Any]:
    """Router parameters hold no NaN or infinity (YAML's .nan, .inf): a threshold of NaN
    compares false with everything and rejects every request without saying why."""
    bad = [k for k, v in params.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"params {', '.join(map(repr, bad))} must be finite numbers")
    return params


def _known_family(router: str) -> None:
    """``router`` names a registered family (or ``auto``)."""
    from routers.base import registered_names

    known = registered_names()
    if router != "auto" and router not in known:
        raise ValueError(f"unknown router family {router!r}; known: "
                         f"{', '.join(sorted(known))}, auto")


class CandidateConfig(_Model):
    """A candidate router run beside the policy's own: in ``shadow`` it decides on live
    traffic off the request path and its decision is logged, never served; as a ``canary``
    it serves ``share`` of the traffic. ``expertgate policy promote|revert`` ends it."""

    router: str
    artifact: Path | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    mode: Literal["shadow", "canary"] = "shadow"
    share: float = Field(0.05, gt=0, lt=1)
    auto_revert: AutoRevertConfig = Field(
        default_factory=lambda: AutoRevertConfig.model_validate({}))

    _params = field_validator("params")(_finite_params)

    @model_validator(mode="after")
    def _artifact(self) -> CandidateConfig:
        _known_family(self.router)
        if self.artifact is None:
            raise ValueError(f"candidate router {self.router!r} needs an artifact folder "
                             "(train one with `expertgate train`)")
        return self


class PolicyConfig(_Model):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._:/@-]+$")]
    #: a registered family, or ``auto``: whatever family the artifact holds (the choice
    #: ``expertgate train --router auto`` made by cross-validation)
    router: str = "semantic"
    params: dict[str, Any] = Field(default_factory=dict)
    artifact: Path | None = None
    routes: list[RouteConfig] = Field(default_factory=list)
    guard: GuardConfig | None = None
    on_reject: RejectConfig = Field(default_factory=lambda: RejectConfig.model_validate({}))
    #: experts tried after the decision's own targets, in order
    fallback: list[str] = Field(default_factory=list)
    #: how many of the decision's targets to try before the configured fallback chain
    max_attempts: int = Field(3, ge=1)
    #: at most a year: Redis refuses an expiry past its range, which read as Redis down
    cache_ttl_s: float = Field(3600.0, ge=0, le=31_536_000, allow_inf_nan=False)
    routing_text: Literal["last_user", "conversation"] = "last_user"
    log_prompts: bool = False
    max_tokens_cap: int | None = Field(None, ge=1)
    #: rewrite the response's `model` field to the policy name
    rewrite_model: bool = False
    explore: ExploreConfig | None = None
    #: a learned router's table model -> the expert serving it (``expertgate train`` prints
    #: this map); models not listed must be expert names themselves
    models: dict[str, str] = Field(default_factory=dict)
    candidate: CandidateConfig | None = None
    #: learn online from /v1/feedback (routers with partial_fit: cluster)
    online: bool = False
    description: str = ""

    _params = field_validator("params")(_finite_params)

    @model_validator(mode="after")
    def _router_input(self) -> PolicyConfig:
        first: dict[str, int] = {}
        for j, r in enumerate(self.routes):
            if r.name in first:
                # the semantic router keeps one route per name: the other's examples would
                # be routed to the first one's expert, without a word
                raise ValueError(f"routes[{j}]({r.name}).name: the same name as "
                                 f"routes[{first[r.name]}]; each route needs its own name")
            first[r.name] = j
        if self.router == "semantic" and not self.routes and self.artifact is None:
            raise ValueError("a semantic policy needs routes (or an artifact)")
        _known_family(self.router)
        if self.router != "semantic" and self.artifact is None:
            raise ValueError(f"router {self.router!r} needs an artifact folder "
                             "(train one with `expertgate train`)")
        return self


class EmbedderConfig(_Model):
    #: one of routers.embed.EMBEDDER_KINDS (the gateway's config module stays import-light)
    kind: Literal["minilm", "onnx", "distilled", "static", "hashing"] = "minilm"
    options: dict[str, Any] = Field(default_factory=dict)
    #: share one forward pass among requests arriving together
    micro_batch: bool = True
    max_batch: int = Field(32, ge=1)


class APIKeyConfig(_Model):
    """An API key, stored as its sha256 hex digest, with what it may use.

    ``experts`` lists the concrete experts the key may call by name; left out, it is the
    experts reachable from the key's allowed policies (targets, fallbacks, aggregators, the
    reject fallback): ``["*"]`` opens every expert only when written. ``admin`` keys may use
    the ``/admin/*`` endpoints (and the dashboard's admin views); tenant keys get 403 there.
    """

    name: str = Field(min_length=1)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    policies: list[str] = Field(default_factory=lambda: ["*"])
    experts: list[str] | None = None
    admin: bool = False
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)

    @field_validator("sha256", mode="before")
    @classmethod
    def _digest(cls, v: Any) -> Any:
        # a digest another tool printed in upper case (as `keys revoke --sha256` takes it),
        # or with a line end; anything else is said without repeating it (a pasted key)
        d = v.strip().lower() if isinstance(v, str) else None
        if d is None or not _HEX64.fullmatch(d):
            raise ValueError("the key's sha256 digest is needed, 64 hex digits (expertgate "
                             "keys hash prints it), never the key itself")
        return d


class _References(ValueError):
    """The names a configuration uses that refer to nothing it has, one line each, every
    line starting with the field that holds the name (:func:`parse_config` prints them as
    its other problems; pydantic alone placed them at "(top level)")."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class GatewayConfig(_Model):
    experts: list[ExpertConfig]
    policies: list[PolicyConfig] = Field(default_factory=list)
    embedder: EmbedderConfig = Field(default_factory=lambda: EmbedderConfig.model_validate({}))
    api_keys: list[APIKeyConfig] = Field(default_factory=list)
    #: when true every request needs a valid key (401 otherwise)
    require_auth: bool = False
    source: str = ""
    digest: str = ""
    #: where ``embedder`` came from when the config has none: the artifact whose training
    #: record it is (:func:`resolve_embedder`); empty when written or the default
    embedder_from: str = ""

    @field_validator("experts")
    @classmethod
    def _some_experts(cls, v: list[ExpertConfig]) -> list[ExpertConfig]:
        if not v:
            raise ValueError("at least one expert is needed")
        return v

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        """Every name the file uses refers to something it has; each problem is said at the
        field that holds the name (:class:`_References`), all of them at once."""
        out: list[str] = []
        names = [e.name for e in self.experts]
        pnames = [p.name for p in self.policies]
        for what, label, listed in (("expert", "experts", names),
                                    ("policy", "policies", pnames)):
            for j, n in enumerate(listed):
                i = listed.index(n)
                if i != j:
                    out.append(f"{label}[{j}]({n}).name: the same name as {label}[{i}]; each "
                               f"{what} needs its own")
        for j, n in enumerate(pnames):
            if n in names:
                out.append(f"policies[{j}]({n}).name: the name of experts[{names.index(n)}] "
                           "too: a request's model would name both; rename one")
        known = set(names)
        listed_experts = f"(experts: {', '.join(names)})"

        def unknown(where: str, name: str) -> None:
            if name not in known:
                out.append(f"{where}: no expert named {name!r} {listed_experts}")

        by_name = {e.name: e for e in self.experts}
        for i, e in enumerate(self.experts):
            if e.parent is None:
                continue
            where = f"experts[{i}]({e.name}).parent"
            if e.parent not in known:
                unknown(where, e.parent)
                continue
            if e.parent == e.name:
                out.append(f"{where}: an adapter cannot be its own parent; its parent must be "
                           "an expert with api_base/replicas")
                continue
            chain, cur = [e.name], by_name[e.parent]
            while cur.parent is not None and cur.name not in chain:
                chain.append(cur.name)
                cur = by_name.get(cur.parent, cur)
                if cur.parent is not None and cur.parent not in known:
                    break
            if cur.name in chain:
                out.append(f"{where}: the parents form a cycle "
                           f"({' -> '.join([*chain, cur.name])}); an adapter's parent "
                           "must be an expert with api_base/replicas")
                continue
            if not e.bases and not by_name[e.parent].bases:
                out.append(f"{where}: {e.parent!r} has no api_base or replicas of its own (it "
                           "is an adapter too): an adapter's parent must be an expert with "
                           "api_base/replicas")
                continue
            if not e.bases:  # served by its parent's server: it speaks that server's dialect
                own = by_name[e.parent].dialect
                if "dialect" in e.model_fields_set and e.dialect != own:
                    out.append(f"experts[{i}]({e.name}).dialect: {e.dialect!r}, but the "
                               f"adapter is served by its parent's server, which speaks "
                               f"{own!r} (leave dialect out: it is the parent's)")
                    continue
                e.dialect = own
        for i, p in enumerate(self.policies):
            at = f"policies[{i}]({p.name})"
            for j, r in enumerate(p.routes):
                unknown(f"{at}.routes[{j}]({r.name}).expert", r.expert)
            for j, f in enumerate(p.fallback):
                unknown(f"{at}.fallback[{j}]", f)
            for m, ex in p.models.items():
                unknown(f"{at}.models.{m}", ex)
            if p.on_reject.expert is not None:
                unknown(f"{at}.on_reject.expert", p.on_reject.expert)
        seen: dict[str, str] = {}
        policies = set(pnames)
        for i, k in enumerate(self.api_keys):
            label = f"api_keys[{i}]({k.name})"
            if k.sha256 in seen:
                out.append(f"{label}.sha256: same key as {seen[k.sha256]}: each key must be "
                           "listed once (the last one would silently win)")
            seen.setdefault(k.sha256, label)
            bad = [n for n in k.policies if n != "*" and n not in policies]
            if bad:
                out.append(f"{label}.policies: no policy named {', '.join(map(repr, bad))}"
                           f" (policies: {', '.join(pnames) or 'none'})")
            bad = [n for n in (k.experts or []) if n != "*" and n not in known]
            if bad:
                out.append(f"{label}.experts: no expert named {', '.join(map(repr, bad))}"
                           f" (experts: {', '.join(names)})")
        if out:
            raise _References(out)
        return self

    def expert(self, name: str) -> ExpertConfig | None:
        for e in self.experts:
            if e.name == name:
                return e
        return None


def env_key(name: str) -> str:
    """The upstream key in environment variable ``name``, without the whitespace around it:
    a key read from a file (a Kubernetes secret, ``echo KEY > file``) ends with a line
    break, which made every call's ``Authorization`` header invalid (the expert failed as
    misconfigured); ``""`` when the variable is not set."""
    return os.environ.get(name, "").strip()


def _bad_key(key: str) -> bool:
    return any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in key)


def missing_credentials(cfg: GatewayConfig) -> list[str]:
    """One line per expert whose ``api_key_env`` names a variable that is not set (or
    empty): the gateway would call that upstream without credentials. A warning, not an
    error: a config may list a hosted expert that a local set-up never calls, and its
    requests fail over to a policy's fallback (the upstream answers 401). Also one line per
    variable whose key holds whitespace or a control character inside it (never the key):
    no header can carry it, so every call to that expert fails."""
    out = []
    for i, e in enumerate(cfg.experts):
        if not e.api_key_env:
            continue
        key = env_key(e.api_key_env)
        if not key:
            out.append(f"experts[{i}]({e.name}).api_key_env: the variable {e.api_key_env} is "
                       f"not set: calls to {e.name!r} go without credentials until it is (and "
                       "a restart)")
        elif _bad_key(key):
            out.append(f"experts[{i}]({e.name}).api_key_env: the variable {e.api_key_env} "
                       "holds whitespace or a control character inside the key: no header "
                       f"can carry it, so every call to {e.name!r} fails until it is fixed "
                       "(and a restart)")
    return out


def _loopback_host(host: str) -> bool:
    """Whether ``host`` (``--host``) binds only this machine's loopback interface."""
    h = host.strip().strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, maybe another interface


def open_to_network(cfg: GatewayConfig, host: str, port: int) -> list[str]:
    """One line when a gateway that checks no API key (no ``api_keys``, ``require_auth``
    false) listens beyond loopback: every client that reaches the port may call every
    policy and expert. Said at start (``serve``, ``serve --check``) and in a reload's
    ``warnings`` (a reload that drops the keys opens a running gateway)."""
    if cfg.require_auth or cfg.api_keys or _loopback_host(host):
        return []
    return [f"listening on {host}:{port} without API keys ({cfg.source} has no api_keys "
            "and require_auth is false): every client that reaches this port may call "
            "every policy and expert. Add api_keys, or set require_auth: true with keys in "
            "Redis (expertgate keys add), or listen on 127.0.0.1 (in a container: publish "
            "the port on 127.0.0.1 only)"]


def auth_problem(cfg: GatewayConfig, redis_url: str | None) -> str | None:
    """Why nobody could call the gateway: ``require_auth: true`` with no ``api_keys`` and
    no Redis to hold keys (``expertgate keys add``); None when someone can."""
    if cfg.require_auth and not cfg.api_keys and not redis_url:
        return (f"{cfg.source}: require_auth: true, but there are no api_keys and no Redis "
                "(--redis-url, for keys added with `expertgate keys add`): every request, "
                "admin included, would be refused. Add api_keys, or a Redis URL")
    return None


def _where(loc: tuple[Any, ...], data: Any) -> str:
    """Turn a pydantic error location into a readable path, using names where present."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and 0 <= item < len(node):
            node = node[item]
            label = node.get("name") if isinstance(node, dict) else None
            parts.append(f"[{item}]" + (f"({label})" if label else ""))
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


#: TLS options other gateways take per model (LiteLLM's ssl_verify, ...): the gateway has
#: none, and its refusal says what to do instead
_TLS_FIELDS = frozenset({"ssl_verify", "verify_ssl", "verify", "ssl", "tls", "insecure",
                         "tls_verify", "ca_bundle", "ca_cert", "ca_file", "cafile",
                         "ssl_ca_cert"})
_TLS_HINT = (" (https experts are checked against the system's trusted CAs, and the check "
             "cannot be turned off: to trust an internal CA, set SSL_CERT_FILE=/path/ca.pem "
             "in the gateway's environment)")


#: what an entry of each section holds, for an entry written as a plain value (a key pasted
#: under api_keys: the value itself is never repeated)
_ENTRY = {
    "APIKeyConfig": "an API key entry is {name, sha256, ...} where sha256 is the key's digest "
                    "(expertgate keys hash), never the key itself",
    "ExpertConfig": "an expert is {name, api_base or replicas, ...}",
    "PolicyConfig": "a policy is {name, router, routes or artifact, ...}",
    "RouteConfig": "a route is {name, expert, examples or description}",
    "RejectConfig": "on_reject is {action, message, ...}",
    "GuardConfig": "guard is {artifact}",
    "EmbedderConfig": "embedder is {kind, options}",
    "PriceConfig": "price is {input_per_1m, output_per_1m}",
    "ExploreConfig": "explore is {rate, method, temperature}",
    "CandidateConfig": "candidate is {router, artifact, mode, ...}",
    "AutoRevertConfig": "auto_revert is {margin, alpha, min_samples}",
}


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with 'experts' and "
                          "'policies'")
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"{source}: invalid configuration:"]
        for err in e.errors():
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, _References):
                lines += [f"  {line}" for line in cause.problems]
                continue
            loc = tuple(err["loc"])
            hint = _TLS_HINT if (err["type"] == "extra_forbidden" and loc[:1] == ("experts",)
                                 and str(loc[-1]).lower() in _TLS_FIELDS) else ""
            msg = err["msg"].removeprefix("Value error, ")  # pydantic's, saying nothing
            if err["type"] == "model_type":  # named a class the operator never wrote
                found = {str: "a string", int: "a number", float: "a number", bool:
                         "true/false", list: "a list"}.get(type(err["input"]), "a plain value")
                what = _ENTRY.get(str((err.get("ctx") or {}).get("class_name")), "")
                msg = f"a mapping is needed, not {found}" + (f": {what}" if what else "")
            lines.append(f"  {_where(loc, data)}: {msg}{hint}")
        raise ConfigError("\n".join(lines)) from None
    cfg.source = source
    try:
        raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError as e:  # non-string keys, integers beyond 64 bits in free-form fields
        raise ConfigError(f"{source}: invalid configuration: values must be JSON-like "
                          f"(string keys, 64-bit integers): {e}") from None
    cfg.digest = hashlib.sha256(raw).hexdigest()[:16]
    return cfg


def resolve_embedder(cfg: GatewayConfig) -> GatewayConfig:
    """A config without ``embedder:`` embeds with the embedder its routers were trained with:
    when every artifact of its policies (router, candidate, guard) that records how to build
    its embedder (``embedder_spec`` in its ``router.json``, a two-stage guard's in its front's;
    written by ``expertgate train`` and by ``eval guard --save-selected/--save-cascade``)
    records the same one, that one
    (``embedder_from`` names the artifact; the gateway logs it at start-up). Without such a
    record, or with records that disagree, the default stays and an artifact trained with
    another embedder is refused at start-up with both names, as before. A config that says
    ``embedder:`` is never changed. :func:`load_config` applies it once the artifact paths
    are resolved against the config file's folder (read earlier, a relative path would name
    a folder under the working directory)."""
    if "embedder" in cfg.model_fields_set:
        return cfg
    from routers.guard_cascade import is_cascade

    found: dict[str, tuple[dict[str, Any], str]] = {}
    for pol in cfg.policies:
        for art in (pol.artifact, pol.candidate.artifact if pol.candidate else None,
                    pol.guard.artifact if pol.guard else None):
            if art is None:
                continue
            # a two-stage guard is served on its front's vectors
            rel = "front/router.json" if is_cascade(art) else "router.json"
            try:
                manifest = orjson.loads((Path(art) / rel).read_bytes())
            except (OSError, ValueError):
                continue  # missing or unreadable: the policy's own loading says so
            spec = manifest.get("embedder_spec") if isinstance(manifest, dict) else None
            if isinstance(spec, dict) and isinstance(spec.get("kind"), str):
                key = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS).decode()
                found.setdefault(key, (spec, str(art)))
    if len(found) != 1:
        return cfg
    spec, where = next(iter(found.values()))
    try:
        emb = EmbedderConfig.model_validate({"kind": spec["kind"],
                                             "options": spec.get("options") or {}})
    except ValidationError:
        return cfg
    cfg.embedder = emb
    cfg.embedder_from = where
    return cfg


#: the most nodes a config may expand to through YAML aliases (``*anchor``): a few aliases
#: of aliases ("billion laughs") would otherwise expand to billions of values when the
#: configuration is validated and digested
MAX_ALIAS_NODES = 100_000


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (PyYAML keeps the last
    one silently: a second ``experts:`` list would replace the first, ``admin: false`` then
    ``admin: true`` would make an admin key), and a document whose aliases expand to more
    than :data:`MAX_ALIAS_NODES` nodes. Merge keys (``<<: *anchor``) may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[tuple[str, str], Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or \
                    key_node.tag == "tag:yaml.org,2002:merge":
                continue
            k = (key_node.tag, key_node.value)
            if k in first:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key_node.value!r} (first at line "
                    f"{first[k].line + 1})", key_node.start_mark)
            first[k] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        if self.anchors or _has_alias(node):
            _check_expansion(node)
        return self.construct_document(node)


def _has_alias(node: yaml.Node) -> bool:
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            return True  # a node reached twice is an alias
        seen.add(id(n))
        if isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack.extend((k, v))
    return False


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand to more than MAX_ALIAS_NODES nodes."""
    size: dict[int, int] = {}

    def count(n: yaml.Node, depth: int) -> int:
        if id(n) in size:
            return size[id(n)]
        if depth > 200:
            raise yaml.constructor.ConstructorError(
                None, None, "the document nests too deep (recursive aliases?)", n.start_mark)
        size[id(n)] = 1  # a recursive alias counts once; the construction refuses it later
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(count(c, depth + 1) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(count(k, depth + 1) + count(v, depth + 1) for k, v in n.value)
        if total > MAX_ALIAS_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"aliases (*anchor) expand to more than {MAX_ALIAS_NODES:,} "
                "values; a configuration needs far fewer", n.start_mark)
        size[id(n)] = total
        return total

    count(root, 0)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`StrictLoader` (the loader every config read uses)."""
    return yaml.load(text, Loader=StrictLoader)


#: the largest configuration file read (semantic routes' examples included, far beyond any)
MAX_CONFIG_BYTES = 16 * 1024 * 1024


def read_config_text(p: Path) -> str:
    """The file's text: a regular file of at most :data:`MAX_CONFIG_BYTES`. A path that
    reached a device or a pipe (a symlink to ``/dev/zero``, a FIFO) read without end, or
    never returned, holding the reload lock: every later reload waited behind it, and
    ``/dev/zero`` grew the gateway's memory until it was killed."""
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO without a writer: no wait
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{p}: not a regular file (a device, a pipe or a socket): "
                              "a configuration file is a YAML file")
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB: not a "
                          "configuration file")
    return raw.decode("utf-8")


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate the YAML file; relative artifact paths resolve against its folder."""
    p = Path(path)
    try:
        text = read_config_text(p)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the configuration file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); a "
                          "configuration file is UTF-8 YAML") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    cfg = parse_config(data, str(p))
    base = p.resolve().parent
    for pol in cfg.policies:
        if pol.artifact is not None and not pol.artifact.is_absolute():
            pol.artifact = base / pol.artifact
        if pol.guard is not None and not pol.guard.artifact.is_absolute():
            pol.guard.artifact = base / pol.guard.artifact
        cand = pol.candidate
        if cand is not None and cand.artifact is not None and not cand.artifact.is_absolute():
            cand.artifact = base / cand.artifact
    return resolve_embedder(cfg)  # once artifact paths are resolved against the file
