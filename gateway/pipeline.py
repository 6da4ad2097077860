"""Policies at run time and their decisions: ``Pipeline.decide(policy, text)`` -> Decision by
cache -> embed -> guard -> router (the plan stage, ``gateway/request/plan.py``, calls it).

``PolicySet`` holds every policy's runtime (router, optional guard, version). It is built
whole and swapped atomically on reload: a request keeps the PolicySet it started with, so a
reload never drops or mixes in-flight requests. The policy version (config digest + artifact
hashes) is part of the decision-cache key, so a new artifact never serves old decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from gateway.cache import CacheUnavailable, DecisionCache, decision_key
from gateway.cache import text_hash as _hash
from gateway.canary import CanaryMonitor
from gateway.canary_sync import candidate_identity, candidate_key
from gateway.config import ConfigError, GatewayConfig, PolicyConfig
from gateway.errors import DeadlineExceeded, InvalidRequest
from gateway.messages import MessageTexts
from gateway.metrics import Metrics
from routers.base import Decision, GuardVerdict, Router, Target
from routers.embed import Embedder
from routers.explore import Exploration, exploration_probs
from routers.guard import unsafe_text
from routers.guard_cascade import BACK_FAILED

__all__ = ["LEXICON_ONLY", "ROUTING_HEAD_CHARS", "ROUTING_TAIL_CHARS", "WARM_TEXT",
           "CandidateRuntime",
           "Pipeline", "PolicyRuntime", "PolicySet", "RoutedText", "ShadowOf", "bounded_text",
           "build_embedder", "build_policy_set", "carry_canary_state", "routing_text"]

log = logging.getLogger("expertgate.pipeline")

#: the query every policy decides once at start-up and before a reloaded set serves
#: (:meth:`Pipeline.warm`)
WARM_TEXT = "Warm-up query: how do I sort a list of numbers in Python?"


@dataclass
class PolicyRuntime:
    config: PolicyConfig
    version: str
    router: Router
    guard: Router | None = None
    explore: Exploration | None = None
    candidate: CandidateRuntime | None = None
    #: online updates applied from feedback; part of the decision-cache key so that
    #: decisions made before an update are not served after it
    updates: int = 0

    @property
    def cache_version(self) -> str:
        return self.version if self.updates == 0 else f"{self.version}.{self.updates}"


@dataclass
class CandidateRuntime:
    """A policy's candidate router in shadow or canary mode. ``runtime`` decides with the
    policy's guard, exploration and fallbacks but the candidate's router, under its own
    version (its own decision-cache keys)."""

    mode: str
    share: float
    runtime: PolicyRuntime
    monitor: CanaryMonitor | None
    #: the candidate itself (artifact, family, parameters, mode, revert settings), whatever
    #: the incumbent policy around it: what a reload must keep for the canary's state to
    #: carry over
    identity: str = ""

    @property
    def serving(self) -> bool:
        """A canary that has not reverted itself."""
        return self.mode == "canary" and (self.monitor is None or self.monitor.reverted is None)

    def state(self) -> dict[str, Any]:
        """What /admin/state and the dashboard show: mode, share, version, serving, and the
        canary monitor's per-arm counts and revert reason."""
        out: dict[str, Any] = {"mode": self.mode, "share": self.share,
                               "version": self.runtime.version, "serving": self.serving,
                               "reverted": None}
        if self.monitor is not None:
            out.update(self.monitor.snapshot())
        return out


@dataclass
class PolicySet:
    config: GatewayConfig
    policies: dict[str, PolicyRuntime]
    loaded_at: float

    def __post_init__(self) -> None:
        #: the configuration's expert names (what a cached decision may name)
        self.expert_names = frozenset(e.name for e in self.config.experts)


def _policy_version(pol: PolicyConfig, extra: Sequence[str]) -> str:
    h = hashlib.sha256(orjson.dumps(pol.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS))
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:12]


def _load_artifact(path: Any, expected: str | None, embedder: Embedder | None, where: str
                   ) -> tuple[Router, str]:
    from routers.artifacts import artifact_version, load_router, read_manifest
    from routers.base import RouterError
    from routers.embed import names_of

    try:
        router = load_router(path, expected_type=expected)
        version = artifact_version(path)
        emb_name = read_manifest(path).get("embedder")
    except (RouterError, OSError) as e:
        raise ConfigError(f"{where}: cannot load artifact {path}: {e}") from None
    if embedder is not None and emb_name and emb_name not in names_of(embedder):
        raise ConfigError(f"{where}: artifact {path} was trained with embedder {emb_name!r} "
                          f"but the gateway embeds with {embedder.name!r}")
    dim = getattr(router, "dim_", None)
    if embedder is not None and dim is not None and dim != embedder.dim:
        raise ConfigError(f"{where}: artifact {path} expects {dim}-d embeddings, the gateway's "
                          f"embedder gives {embedder.dim}")
    if hasattr(router, "serve_lexicon") and _serve_lexicon(router, where):
        version += "+lexicon"  # a guard artifact (guard:, router: guard) given the lexicon
    return router, version


def _load_guard(path: Any, embedder: Embedder | None, where: str) -> tuple[Any, str]:
    """A guard artifact, or a two-stage one (routers.guard_cascade: its front guard reads the
    gateway's embeddings, its back stage embeds the escalated queries with its own encoder)."""
    from routers.guard_cascade import is_cascade, load_cascade, read_cascade_manifest

    if not is_cascade(path):
        return _load_artifact(path, "guard", embedder, where)
    from routers.base import RouterError
    from routers.embed import EmbedderError, names_of

    try:
        m = read_cascade_manifest(path)
        if embedder is not None and m.get("front_embedder") not in names_of(embedder):
            raise ConfigError(f"{where}: two-stage guard {path}: its front guard was trained "
                              f"with embedder {m.get('front_embedder')!r} but the gateway "
                              f"embeds with {embedder.name!r}")
        guard = load_cascade(path, manifest=m)
        digest = hashlib.sha256(orjson.dumps(m, option=orjson.OPT_SORT_KEYS)).hexdigest()
    except (RouterError, EmbedderError, OSError) as e:
        raise ConfigError(f"{where}: cannot load two-stage guard {path}: {e}") from None
    if embedder is not None and guard.dim_ != embedder.dim:
        raise ConfigError(f"{where}: two-stage guard {path} expects {guard.dim_}-d "
                          f"embeddings, the gateway's embedder gives {embedder.dim}")
    return guard, digest[:12] + ("+lexicon" if _serve_lexicon(guard, where) else "")


def build_embedder(cfg: GatewayConfig, threads: int = 1) -> Embedder:
    """The config's embedder, as the gateway builds it (``threads`` for the encoder
    kinds); a bad ``embedder.options`` is a :class:`ConfigError` naming the file and key."""
    from routers.embed import EmbedderError, make_embedder

    ec = cfg.embedder
    opts = dict(ec.options)
    if ec.kind in ("minilm", "onnx"):
        opts.setdefault("threads", threads)
    try:
        return make_embedder(ec.kind, **opts)
    except (TypeError, ValueError, EmbedderError, OSError) as e:
        raise ConfigError(f"{cfg.source or '<config>'}: embedder.options (kind {ec.kind}): "
                          f"{e}") from None


def build_policy_set(cfg: GatewayConfig, embedder: Embedder | None) -> PolicySet:
    """Build every policy's router and guard (fit semantic routes, load artifacts)."""
    from routers.base import RouterError, make_router
    from routers.semantic import routes_to_table

    out: dict[str, PolicyRuntime] = {}
    known = {e.name for e in cfg.experts}
    for pol in cfg.policies:
        where = f"{cfg.source or '<config>'}: policy {pol.name!r}"
        extra: list[str] = [embedder.name if embedder is not None else "none"]
        if pol.artifact is not None:
            # `router: auto` serves whichever family `expertgate train --router auto` chose
            router, v = _load_artifact(pol.artifact, None if pol.router == "auto" else pol.router,
                                       embedder, where)
            extra.append(v)
            if pol.params:
                try:
                    router.set_params(**pol.params)  # range-checked (Router.check_params)
                except RouterError as e:
                    raise ConfigError(f"{where}: params: {e}") from None
        else:
            if embedder is None:
                raise ConfigError(f"{where}: semantic routes need an embedder")
            try:
                router = make_router(pol.router, **pol.params)
                router.check_params()
            except RouterError as e:
                raise ConfigError(f"{where}: params: {e}") from None
            try:
                table = routes_to_table([r.model_dump() for r in pol.routes])
                router.fit(embedder.embed(table.prompts), table)
            except RouterError as e:
                raise ConfigError(f"{where}: {e}") from None
        table_models = list(getattr(router, "experts_", []))
        stray = sorted(set(pol.models) - set(table_models)) if table_models else []
        if stray:
            raise ConfigError(f"{where}: models maps {', '.join(stray)}, which the router "
                              f"does not know (its models: {', '.join(table_models)})")
        unknown = sorted(m for m in table_models if pol.models.get(m, m) not in known)
        if unknown:
            raise ConfigError(
                f"{where}: the router names expert(s) not in the config: "
                f"{', '.join(unknown)}. A learned router decides between the models of its "
                f"training table: map each to one of your experts in the policy, e.g. "
                f"models: {{{unknown[0]}: <expert name>}} (`expertgate train` writes this "
                f"snippet to policy.yaml beside the artifact)")
        guard = None
        if pol.guard is not None and pol.guard.enabled:
            guard, gv = _load_guard(pol.guard.artifact, embedder, where + " guard")
            extra.append(gv)
        ex = pol.explore
        explore = (Exploration(ex.rate, ex.method, ex.temperature)
                   if ex is not None and ex.rate > 0 else None)
        if pol.online and type(router).partial_fit is Router.partial_fit:
            raise ConfigError(f"{where}: online: true needs a router that learns online "
                              f"(partial_fit: cluster), not {pol.router!r}")
        rt = PolicyRuntime(pol, _policy_version(pol, extra), router, guard, explore)
        if pol.candidate is not None:
            rt.candidate = _candidate(pol, rt, embedder, known, where)
        out[pol.name] = rt
    return PolicySet(cfg, out, time.time())


def _serve_lexicon(guard: Any, where: str) -> bool:
    """Every guard the gateway serves runs the unsafe lexicon (``serve_lexicon``), on the
    whole request (:meth:`Pipeline.decide`); which unsafe layers run is logged at load. True
    when the lexicon was added: the policy version (the decision-cache key) then changes,
    so no decision cached by a gateway that served the guard without it is served again."""
    added = bool(guard.serve_lexicon())
    if added:
        log.warning("%s: the guard artifact was fitted without an unsafe check (unsafe=False, "
                    "e.g. eval guard's baseline-lr-knn): the gateway runs the unsafe lexicon "
                    "for it (each response says x-expertgate-degraded: %s); its "
                    "seed-similarity layer needs a refit with unsafe=True and the embedder",
                    where, LEXICON_ONLY)
    log.info("%s: unsafe layers: %s", where, ", ".join(guard.unsafe_layers_))
    # every response of its policy says so too (x-expertgate-degraded, the routing log's
    # degraded, expertgate_degraded_total): Pipeline.decide, LEXICON_ONLY
    return added


def _text_guard(rt: PolicyRuntime) -> Any:
    """What reads a policy's request text for unsafe content: its guard, or its router when
    that is a guard artifact (``router: guard``); None for an unguarded policy."""
    if rt.guard is not None:
        return rt.guard
    return rt.router if hasattr(rt.router, "text_verdict") else None


def _attach_guard(d: Decision, verdict: GuardVerdict | None) -> None:
    """Put the policy's guard verdict on ``d``. A router's own verdict (semantic routes')
    stays only when it explains the router's own rejection: the guard's (its scores, its
    threshold, which stage of a two-stage guard accepted the query) is what the header and
    the log must show for a query it let through."""
    if verdict is not None and (d.guard is None or d.mode != "reject"):
        d.guard = verdict


def _to_experts(pol: PolicyConfig, d: Decision) -> None:
    """Rename a learned router's table models to the experts the policy maps them to."""
    m = pol.models
    if d.mode != "reject" and d.targets and \
            m.get(d.targets[0].expert, d.targets[0].expert) != d.targets[0].expert:
        first = d.targets[0].expert  # the reason speaks the table's names: say who serves it
        d.reason = f"{d.reason}; {first} is served by {m[first]}"
    # several table models (a guard's labels) may map to one expert: it keeps its best
    # place, once, so a failed expert is not tried again further down the chain
    served: dict[str, Target] = {}
    for t in d.targets:
        served.setdefault(m.get(t.expert, t.expert), Target(m.get(t.expert, t.expert), t.score))
    d.targets = list(served.values())
    if d.aggregator is not None:
        d.aggregator = m.get(d.aggregator, d.aggregator)


def _candidate(pol: PolicyConfig, rt: PolicyRuntime, embedder: Embedder | None,
               known: set[str], where: str) -> CandidateRuntime:
    from routers.base import RouterError

    cand = pol.candidate
    assert cand is not None and cand.artifact is not None
    router, v = _load_artifact(cand.artifact, cand.router, embedder, where + " candidate")
    if cand.params:
        try:
            router.set_params(**cand.params)
        except RouterError as e:
            raise ConfigError(f"{where} candidate: params: {e}") from None
    # the candidate shares the policy's models map (table model -> expert)
    unknown = sorted(m for m in getattr(router, "experts_", [])
                     if pol.models.get(m, m) not in known)
    if unknown:
        raise ConfigError(f"{where} candidate: the router names expert(s) not in the config: "
                          f"{', '.join(unknown)} (map them with the policy's models:)")
    own = f"{v}:{cand.router}:".encode() + orjson.dumps(cand.params,
                                                          option=orjson.OPT_SORT_KEYS)
    version = hashlib.sha256(f"{rt.version}:candidate:".encode() + own).hexdigest()[:12]
    ar = cand.auto_revert
    monitor = (CanaryMonitor(ar.margin, ar.alpha, ar.min_samples)
               if cand.mode == "canary" and ar.enabled else None)
    # the names `expertgate policy` gives the candidate in Redis (gateway/canary_sync.py)
    identity = candidate_identity(cand, v)
    if monitor is not None:  # its shared counts and revert
        monitor.key = candidate_key(pol.name, identity)
    return CandidateRuntime(cand.mode, cand.share,
                            PolicyRuntime(pol, version, router, rt.guard, rt.explore), monitor,
                            identity)


def carry_canary_state(old: PolicySet, new: PolicySet) -> None:
    """Keep a canary's monitor (its counts, and a revert) across a reload that leaves the
    candidate unchanged (its artifact, family, parameters and mode; an edit elsewhere in the
    policy does not count), so a reload never silently re-enables a reverted canary."""
    for name, rt in new.policies.items():
        prev = old.policies.get(name)
        if (prev is not None and prev.candidate is not None and rt.candidate is not None
                and prev.candidate.identity == rt.candidate.identity
                and prev.candidate.monitor is not None and rt.candidate.monitor is not None):
            rt.candidate.monitor = prev.candidate.monitor


#: a long routing text keeps its first and last characters only: its start (the
#: instruction, a conversation's system prompt) and its end (the question after a pasted
#: document, the latest turns). The embedders read little more (MiniLM 128 tokens), but
#: they tokenise all they get: a megabyte's prompt took 1.5 s of MiniLM (0.5 s of the
#: distilled embedder) on the one embedding thread that every other decision waits for.
#: The expert always gets the whole request; the routing log's ``text`` is this text
ROUTING_HEAD_CHARS, ROUTING_TAIL_CHARS = 6144, 2048
#: a text first cut to this many characters (each end 4x its share) before its whitespace
#: is collapsed, which costs ~20 ms a megabyte
_RAW_HEAD, _RAW_TAIL = 4 * ROUTING_HEAD_CHARS, 4 * ROUTING_TAIL_CHARS


class RoutedText(str):
    """The text a policy routes on (the string: :func:`bounded_text`), carrying ``whole``:
    the request text its guard's unsafe lexicon must read when that is more than the
    string (a long prompt's middle, the earlier user turns), and ``scope``, which names it
    (``the whole text``, ``the earlier user turns``, ``every user turn``, ``the whole
    conversation``).

    The embedder and the guard's other checks read the bounded string (their cost grows
    with the text); the lexicon is a regular expression, so it reads everything the expert
    will answer (:meth:`Pipeline.decide`, before the decision cache: a cached decision was
    made on the bounded string, which requests with different middles share). The first
    decision drops ``whole`` (the request's plan keeps this string for the routing log,
    whose queue must not hold megabytes a record) and keeps the lexicon's answer in
    ``flagged`` for a second decision on the same text (the dry run's canary)."""

    whole: str
    scope: str
    #: len(whole), kept for the rejection's reason once ``whole`` is dropped
    chars: int
    #: the lexicon's answer on ``whole``, once read; None before
    flagged: bool | None

    def __new__(cls, text: str, whole: str, scope: str) -> RoutedText:
        self = super().__new__(cls, text)
        self.whole = whole
        self.scope = scope
        self.chars = len(whole)
        self.flagged = None
        return self

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        # a copy or a pickle (anything that leaves this request) is the bounded text alone
        return (str, (str(self),))


def bounded_text(text: str, scope: str = "the whole text") -> str:
    """``text`` with its whitespace runs collapsed to single spaces and, when longer than
    :data:`ROUTING_HEAD_CHARS` + :data:`ROUTING_TAIL_CHARS`, only its head and tail, joined
    by a space: what a policy routes on, whatever the prompt's length. A text cut so is a
    :class:`RoutedText` whose ``whole`` is ``text`` (named ``scope``)."""
    raw = text
    if len(text) > _RAW_HEAD + _RAW_TAIL:
        text = f"{text[:_RAW_HEAD]} {text[-_RAW_TAIL:]}"
    text = " ".join(text.split())
    if len(text) > ROUTING_HEAD_CHARS + 1 + ROUTING_TAIL_CHARS:
        return RoutedText(f"{text[:ROUTING_HEAD_CHARS]} {text[-ROUTING_TAIL_CHARS:]}", raw,
                          scope)
    return text


def routing_text(texts: MessageTexts, mode: str) -> str:
    """The text the router sees: the last user turn, or the whole conversation (``texts``:
    the messages' :func:`~gateway.messages.message_texts`), :func:`bounded_text`.

    What the guard's unsafe lexicon reads besides (:class:`RoutedText`): all of it, and in
    ``last_user`` mode every user turn, since the expert answers the last turn in the light
    of the earlier ones ("how do I make a pipe bomb", then "go on"). Not the system message
    (the operator's own instructions may name what to refuse) nor the assistant's turns."""
    if mode == "last_user":
        users = [t for role, t in texts if role == "user" and t and not t.isspace()]
        if not users:
            raise InvalidRequest("no user message with text to route on", param="messages")
        text = bounded_text(users[-1])
        if len(users) > 1 and isinstance(text, RoutedText):  # the last turn was cut too
            return RoutedText(text, "\n".join(users), "every user turn")
        if len(users) > 1:  # the guard's verdict reads the last turn (label, scores) itself
            return RoutedText(text, "\n".join(users[:-1]), "the earlier user turns")
        return text
    text = bounded_text(" ".join(f"{role}: {t}" for role, t in texts if role is not None),
                        "the whole conversation")
    if not text:
        raise InvalidRequest("no text to route on", param="messages")
    return text


#: the degraded component of every response of a policy whose guard artifact was fitted
#: without an unsafe check: the unsafe lexicon the gateway added is its only one
#: (:func:`_serve_lexicon`)
LEXICON_ONLY = "guard-unsafe-lexicon-only"
#: a request's whole text (RoutedText.whole) up to this long is scanned on the event loop
#: (a millisecond or two); a longer one in a worker thread, so other requests wait one
#: chunk of it at most (routers.guard.UNSAFE_CHUNK)
_SCAN_INLINE_CHARS = 2048

EmbedFn = Callable[[str], Awaitable[np.ndarray]]
#: the served request a shadow decision shadows, as its log record names it (request_id,
#: tenant, text_hash): the shadow's record repeats them, so that the two (and the request's
#: rating) join
ShadowOf = dict[str, Any]


class Pipeline:
    """Stateless apart from the cache, the embedder and the current PolicySet."""

    def __init__(self, policies: PolicySet, embedder: Embedder | None, cache: DecisionCache,
                 metrics: Metrics, embed_fn: EmbedFn | None = None) -> None:
        self.policies = policies
        self.embedder = embedder
        self.cache = cache
        self.metrics = metrics
        self._executor: ThreadPoolExecutor | None = None
        #: a shadow candidate's batched guard and router run here, off the event loop
        self._shadow_executor: ThreadPoolExecutor | None = None
        self._embed_fn = embed_fn or self._embed_in_thread
        self._rng = random.Random()
        #: called with (candidate runtime, shadow decision, served decision, the served
        #: request's log fields: request_id, tenant, text_hash); set by the app
        self.on_shadow: Callable[[PolicyRuntime, Decision, Decision, ShadowOf], None] | None \
            = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._shadow_queue: list[tuple[PolicyRuntime, str, np.ndarray | None, Decision,
                                       ShadowOf]] = []
        #: how long shadow requests gather before they are decided as one batch
        self.shadow_linger_s = 0.02
        self._stage = metrics.stage
        self._obs_cache = metrics.stage.labels("cache")
        self._obs_embed = metrics.stage.labels("embed")
        self._obs_guard = metrics.stage.labels("guard")
        self._obs_route = metrics.stage.labels("route")
        #: the unsafe lexicon on a request's whole text (RoutedText.whole)
        self._obs_scan = metrics.stage.labels("unsafe-scan")
        #: a long whole text is scanned here, off the event loop (UNSAFE_CHUNK)
        self._scan_executor: ThreadPoolExecutor | None = None

    async def _embed_in_thread(self, text: str) -> np.ndarray:
        # One dedicated thread: the forward pass runs off the event loop, one at a time.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="embed")
        assert self.embedder is not None
        loop = asyncio.get_running_loop()
        X = await loop.run_in_executor(self._executor, self.embedder.embed, [text])
        return X[0]

    async def warm(self, policies: PolicySet | None = None, timeout_s: float = 30.0
                   ) -> dict[str, str]:
        """One decision's work for every policy of ``policies`` (default: the served set) and
        its canary or shadow candidate, before they serve: :data:`WARM_TEXT` embedded through
        the request path (the embedding thread or the micro-batcher), then each guard's
        verdict and router's decision on it, so the first request does not pay first-use
        costs (lazy loads, the embedding thread's start, a router's first run: ~0.1 s for a
        learned router's first decision against ~1 ms after it, docs/performance.md). The
        decision cache, the routing log and the metrics are not touched. Returns the
        policies whose guard or router (or candidate's) failed its decision, with the error:
        every request of theirs would fail the same way, so start-up and reload refuse them
        (:meth:`gateway.app.Gateway.start`, ``reload``). An embedder that fails or takes
        longer than ``timeout_s`` (a hung encoder) ends the warm-up with a warning and no
        verdict on the policies: the request path has its own fallback for it."""
        pset = self.policies if policies is None else policies
        if self.embedder is None or not pset.policies:
            return {}
        try:
            async with asyncio.timeout(timeout_s):
                X = np.asarray(await self._embed_fn(WARM_TEXT)).reshape(1, -1)
        except Exception as e:  # TimeoutError included
            log.warning("warm-up: the embedder failed (%s: %s); the first requests pay its "
                        "first run", type(e).__name__, e)
            return {}
        failed: dict[str, str] = {}
        for name, rt in pset.policies.items():
            runtimes = [rt] if rt.candidate is None else [rt, rt.candidate.runtime]
            try:
                for r in runtimes:
                    # on the event loop's thread, where requests run the guard and router
                    # (warmed in a worker thread instead, the steady decisions after it
                    # were slower: docs/performance.md); one decision at a time, as a
                    # request's, so a reload's warm-up holds the loop no longer than one
                    _warm_one(r, X)
                    await asyncio.sleep(0)
            except Exception as e:
                log.warning("warm-up: policy %s failed its warm-up decision (%s: %s)", name,
                            type(e).__name__, e)
                failed[name] = f"{type(e).__name__}: {e}"
        return failed

    def explore(self, rt: PolicyRuntime, d: Decision) -> tuple[Decision, dict[str, Any]]:
        """Apply the policy's exploration to a (possibly cached) greedy decision.

        Returns the decision to serve and the routing-log fields of :mod:`routers.explore`:
        the chosen expert's propensity, every candidate's probability, whether it explored,
        the greedy expert, the candidate set and the router version. Candidates are the
        decision's own targets, so exploration never reaches an expert the router, the guard
        or the policy left out; rejections and fallback decisions do not explore. A policy
        without exploration logs propensity 1.
        """
        cands = [t.expert for t in d.targets]
        greedy = d.expert
        info: dict[str, Any] = {"router_version": rt.version, "candidates": cands,
                                "greedy_expert": greedy, "explored": False}
        if greedy is None or d.mode != "single" or d.router == "fallback":
            info["propensity"] = None if greedy is None else 1.0
            info["action_probs"] = None if greedy is None else {greedy: 1.0}
            return d, info
        ex = rt.explore
        if ex is None or len(set(cands)) < 2:
            info["propensity"] = 1.0
            info["action_probs"] = {greedy: 1.0}
            return d, info
        probs = exploration_probs(greedy, {t.expert: t.score for t in d.targets},
                                  list(dict.fromkeys(cands)), ex)
        names = list(probs)
        pick = self._rng.choices(names, weights=[probs[n] for n in names])[0]
        info["propensity"] = probs[pick]
        info["action_probs"] = probs
        if pick != greedy:
            info["explored"] = True
            first = next(t for t in d.targets if t.expert == pick)
            d = Decision(d.mode, [first, *(t for t in d.targets if t.expert != pick)],
                         f"explored ({ex.method}, p={probs[pick]:.4f}) instead of {greedy}: "
                         f"{d.reason}", d.policy, d.policy_version, d.router, d.aggregator,
                         d.guard, d.timings_ms, d.cached)
            self.metrics.child(self.metrics.explored, rt.config.name, pick).inc()
        return d, info

    def close(self) -> None:
        for ex in (self._executor, self._shadow_executor, self._scan_executor):
            if ex is not None:
                ex.shutdown(wait=False, cancel_futures=True)

    async def embed(self, text: str) -> np.ndarray:
        """One text's embedding through the same path as requests (micro-batched)."""
        return await self._embed_fn(text)

    async def route(self, rt: PolicyRuntime, text: str, degraded: list[str], *,
                    text_hash: str | None = None, deadline: float | None = None,
                    shadow_out: list[Callable[[ShadowOf], None]] | None = None
                    ) -> tuple[Decision, Literal["canary", "incumbent"] | None]:
        """The served decision and its arm: ``canary`` for the share a canary serves,
        ``incumbent`` beside a serving canary, None without one. A shadow candidate's
        decision is only logged: with ``shadow_out`` the caller gets a starter to call once
        the response is sent (so the shadow's CPU never delays the served request), without
        it the shadow starts in a background task at once. The starter takes the served
        request's log fields, which the shadow's record repeats so the two join."""
        cand = rt.candidate
        if cand is not None and cand.serving:
            if cand.monitor is not None and cand.monitor.degraded:
                degraded.append("canary-local")  # its test reads this process's counts only
            if self._rng.random() < cand.share:
                return await self.decide(cand.runtime, text, degraded, text_hash=text_hash,
                                         deadline=deadline), "canary"
            return await self.decide(rt, text, degraded, text_hash=text_hash,
                                     deadline=deadline), "incumbent"
        got: list[np.ndarray] = []
        d = await self.decide(rt, text, degraded, emb_out=got, text_hash=text_hash,
                              deadline=deadline)
        if cand is not None and cand.mode == "shadow" and self.on_shadow is not None:
            crt, x = cand.runtime, got[0] if got else None
            text = str(text)  # the bounded text only (not a RoutedText's whole) waits

            def start(of: ShadowOf | None = None) -> None:
                self._shadow_queue.append((crt, text, x, d, of or {}))
                if not self._shadow_tasks:
                    task = asyncio.get_running_loop().create_task(self._shadow_flush())
                    self._shadow_tasks.add(task)
                    task.add_done_callback(self._shadow_tasks.discard)

            if shadow_out is None:
                start()
            else:
                shadow_out.append(start)
        return d, None

    async def _shadow_flush(self) -> None:
        """Decide every queued shadow request in batches, one batch per candidate. A router
        decides a batch of 32 for about the price of two single decisions, so batching keeps
        the shadow's share of the event loop (which the served requests need) small.
        Requests queued while a batch is decided are this task's next batch: no new task is
        started for them, and they must not wait for another request to be decided."""
        while True:
            await asyncio.sleep(self.shadow_linger_s)
            queue, self._shadow_queue = self._shadow_queue, []
            if not queue:
                # out of the set now, not in a done callback later: a request queued in
                # between would find this task there and start none
                task = asyncio.current_task()
                if task is not None:
                    self._shadow_tasks.discard(task)
                return
            groups: dict[int, list[tuple[PolicyRuntime, str, np.ndarray | None, Decision,
                                         ShadowOf]]] = {}
            for item in queue:
                groups.setdefault(id(item[0]), []).append(item)
            for items in groups.values():
                try:
                    await self._shadow_batch(items)
                except Exception as e:  # a shadow failure must never reach served requests
                    log.warning("shadow decisions of policy %s failed: %s: %s",
                                items[0][0].config.name, type(e).__name__, e)
                    m = self.metrics  # counted per decision, beside agree/disagree
                    m.child(m.shadow, items[0][0].config.name, "failed").inc(len(items))

    async def finish_shadow(self, timeout_s: float = 5.0) -> None:
        """Decide (and log) the shadow requests still queued, for at most ``timeout_s``: a
        gateway that stops (a deploy, a worker replaced after a reload) must not drop the
        last ones."""
        if not self._shadow_tasks:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*self._shadow_tasks, return_exceptions=True)

    async def _shadow_batch(self, items: list[tuple[PolicyRuntime, str, np.ndarray | None,
                                                    Decision, ShadowOf]]) -> None:
        crt = items[0][0]
        texts = [it[1] for it in items]
        t0 = time.perf_counter()
        # a served decision from the cache computed no embedding: embed those (micro-batched)
        missing = [i for i, it in enumerate(items) if it[2] is None]
        got = await asyncio.gather(*(self._embed_fn(texts[i]) for i in missing))
        xs = [it[2] for it in items]
        for i, x in zip(missing, got, strict=True):
            xs[i] = x
        X = np.vstack([np.asarray(x).reshape(1, -1) for x in xs])

        def decide() -> tuple[list[GuardVerdict | None], list[Decision]]:
            verdicts: list[GuardVerdict | None] = [None] * len(items)
            if crt.guard is not None:
                verdicts = list(crt.guard.verdict(X, texts))  # type: ignore[attr-defined]
            return verdicts, crt.router.decide(X, texts)

        # in a worker thread: the guard's and router's numpy work (which releases the GIL)
        # runs beside the event loop instead of on it, where served requests wait under load
        if self._shadow_executor is None:
            self._shadow_executor = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        verdicts, decided = await asyncio.get_running_loop().run_in_executor(
            self._shadow_executor, decide)
        share_ms = (time.perf_counter() - t0) * 1000 / len(items)
        assert self.on_shadow is not None
        for (_, _, _, served, of), verdict, d in zip(items, verdicts, decided, strict=True):
            if verdict is not None and verdict.rejected:
                d = Decision("reject", [], "guard rejected the query: "
                             f"{crt.guard.reject_text(verdict)}",  # type: ignore[union-attr]
                             router="guard", guard=verdict)
            else:
                if crt.config.models:
                    _to_experts(crt.config, d)
                _attach_guard(d, verdict)  # as on the served path (decide)
            d.policy, d.policy_version = crt.config.name, crt.version
            d.timings_ms = {"total": share_ms}
            self.on_shadow(crt, d, served, of)

    async def decide(self, rt: PolicyRuntime, text: str, degraded: list[str], *,
                     embedding: np.ndarray | None = None,
                     emb_out: list[np.ndarray] | None = None,
                     text_hash: str | None = None, deadline: float | None = None) -> Decision:
        """The decision for ``text`` (``text_hash``: its :func:`gateway.cache.text_hash`, when
        the caller has it already); past ``deadline`` (``time.monotonic()``) a 504. A
        :class:`RoutedText`'s ``whole`` is read by the guard's unsafe lexicon first."""
        pol = rt.config
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if getattr(_text_guard(rt), "lexicon_served", False):
            # its artifact has no unsafe check: the gateway's lexicon is all there is
            degraded.append(LEXICON_ONLY)
        if isinstance(text, RoutedText):
            rejected = await self._scan_whole(rt, text, timings, t0, deadline)
            text = str(text)
            if rejected is not None:
                return rejected
        key = decision_key(pol.name, rt.cache_version, text_hash or _hash(text))
        try:
            hit = await self.cache.get(key)
        except CacheUnavailable:
            hit = None
            degraded.append("cache")  # counted in expertgate_degraded_total per response
            self.metrics.cache.labels("unavailable").inc()
        else:
            if hit is None:
                m = self.metrics
                m.child(m.cache, "miss").inc()
        t1 = time.perf_counter()
        timings["cache"] = (t1 - t0) * 1000
        self._obs_cache.observe(t1 - t0)
        if hit is not None:
            d = _cached_decision(hit, self.policies.expert_names)
            if d is not None:
                m = self.metrics
                m.child(m.cache, "hit").inc()
                d.cached = True
                d.timings_ms = timings
                return d
            # an entry this code cannot use (written by another version, or damaged):
            # decided afresh, which overwrites it; said in the log and in /metrics
            log.warning("decision cache: ignoring an unusable entry for policy %s", pol.name)
            self.metrics.cache.labels("invalid").inc()
        try:
            if embedding is not None:
                x = embedding
            elif deadline is None:
                x = await self._embed_fn(text)
            else:
                # the request's deadline covers the decision; a cache hit (above) needs no
                # timer, only the embedding can take long
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    x = await self._embed_fn(text)
            if emb_out is not None:
                emb_out.append(x)
        except TimeoutError:
            raise DeadlineExceeded("the request deadline passed while routing "
                                   "(embedding the query)") from None
        except Exception as e:  # embedder failure degrades to the fallback chain, loudly
            log.error("embedder failed (%s: %s); using the policy's fallback", type(e).__name__, e)
            degraded.append("embedder")
            why = f"embedder unavailable ({type(e).__name__})"
            # the guard's text checks need no embedding: what they refuse stays refused (the
            # policy's guard, or its router when that is a guard artifact)
            guard: Any = _text_guard(rt)
            if guard is None:
                return self._fallback_decision(rt, why, timings)
            tv = guard.text_verdict([text])[0]
            if tv.rejected:
                d = Decision("reject", [], "guard rejected the query: "
                             f"{guard.reject_text(tv)}",
                             router="guard", guard=tv, policy=pol.name,
                             policy_version=rt.version, timings_ms=timings)
            else:
                d = self._fallback_decision(rt, f"{why}; the guard read the text only",
                                            timings)
                d.guard = tv
            return d  # not cached: the guard's other checks did not run
        t2 = time.perf_counter()
        timings["embed"] = (t2 - t1) * 1000
        self._obs_embed.observe(t2 - t1)
        X = x.reshape(1, -1)
        # the embedder knew none of the text's tokens (a script its vocabulary lacks, a word
        # past its length limit): guard and router see nothing but their priors; said, never
        # silent (the header, the log, expertgate_degraded_total), so never cached either: a
        # hit would serve it again without a word (as a two-stage guard's front-only verdict)
        cacheable = bool(X.any())
        if not cacheable:
            degraded.append("embedding-empty")
        verdict: GuardVerdict | None = None
        cache = True
        if rt.guard is not None:
            try:
                verdict = rt.guard.verdict(X, [text])[0]  # type: ignore[attr-defined]
            except Exception as e:  # a broken guard degrades, loudly, to its text check
                log.error("guard of policy %s failed (%s: %s); its text check only",
                          pol.name, type(e).__name__, e)
                degraded.append("guard-failed")
                verdict = rt.guard.text_verdict([text])[0]  # type: ignore[attr-defined]
                cache = False  # the guard's own checks did not run
            t3 = time.perf_counter()
            timings["guard"] = (t3 - t2) * 1000
            self._obs_guard.observe(t3 - t2)
            if verdict.stage is not None:  # a two-stage guard: which stage decided
                m = self.metrics
                m.child(m.guard_stage, pol.name, verdict.stage).inc()
                if verdict.stage == BACK_FAILED:  # its back stage failed (logged)
                    degraded.append("guard-back")
                    cacheable = False
            t2 = t3
            if verdict.rejected:
                # the score of the check that rejected it (the unsafe score for "unsafe")
                d = Decision("reject", [], "guard rejected the query: "
                             f"{rt.guard.reject_text(verdict)}",  # type: ignore[attr-defined]
                             router="guard", guard=verdict)
                return await self._finish(rt, d, key, timings, t0,
                                          cache=cache and cacheable)
        try:
            d = rt.router.decide(X, [text])[0]
        except Exception as e:  # a broken router degrades to the fallback chain, loudly
            log.error("router of policy %s failed (%s: %s); using the policy's fallback",
                      pol.name, type(e).__name__, e)
            degraded.append("router-failed")
            d = self._fallback_decision(rt, f"router failed ({type(e).__name__})", timings)
            d.guard = verdict
            return d
        if pol.models:
            _to_experts(pol, d)
        t3 = time.perf_counter()
        timings["route"] = (t3 - t2) * 1000
        self._obs_route.observe(t3 - t2)
        if cache:
            _attach_guard(d, verdict)
        else:  # the failed guard's verdict (skipped) shows, whatever the router's own
            d.guard = verdict
        return await self._finish(rt, d, key, timings, t0, cache=cache and cacheable)

    async def _scan_whole(self, rt: PolicyRuntime, text: RoutedText,
                          timings: dict[str, float], t0: float,
                          deadline: float | None = None) -> Decision | None:
        """The policy's guard's unsafe lexicon on ``text.whole``: a rejection (never
        cached: its key is the bounded text's, which a request with a harmless middle
        shares), or None. A long text is scanned in a worker thread, chunk by chunk
        (:func:`routers.guard.unsafe_text`), so the event loop waits one chunk at most; the
        time is ``expertgate_stage_seconds{stage="unsafe-scan"}``; past ``deadline`` a 504
        (the request's deadline covers the decision). ``whole`` is dropped here whatever
        the policy (see :class:`RoutedText`)."""
        whole, text.whole = text.whole, ""
        guard = _text_guard(rt)
        if guard is None or "lexicon" not in guard.unsafe_layers_:
            return None
        if text.flagged is None:
            if len(whole) <= _SCAN_INLINE_CHARS:
                text.flagged = unsafe_text(whole)
            else:
                if self._scan_executor is None:
                    self._scan_executor = ThreadPoolExecutor(
                        1, thread_name_prefix="unsafe-scan")
                # the thread stops within a chunk once the request is answered (504) or
                # gone (cancelled): it would otherwise read on, the next long text waiting
                stop = threading.Event()
                scan = asyncio.get_running_loop().run_in_executor(
                    self._scan_executor,
                    functools.partial(unsafe_text, whole, deadline=deadline, stop=stop))
                try:
                    async with asyncio.timeout(None if deadline is None else
                                               max(0.0, deadline - time.monotonic())):
                        text.flagged = await scan
                except TimeoutError:  # asyncio's, or the scan's own (UnsafeScanStopped)
                    raise DeadlineExceeded("the request deadline passed while routing "
                                           "(the guard reading the whole text)") from None
                finally:
                    stop.set()
            self._obs_scan.observe(time.perf_counter() - t0)
        dt = time.perf_counter() - t0
        if not text.flagged:
            return None
        timings["guard"] = timings["total"] = dt * 1000
        # the label and OOD checks did not run (skipped): unsafe takes precedence anyway
        v = GuardVerdict(rejected=True, reject_reason="unsafe", unsafe_score=1.0,
                         skipped=True)
        return Decision("reject", [], "guard rejected the query: unsafe content (score "
                        f"1.000, lexicon on {text.scope}: {text.chars:,} characters; the "
                        f"router reads {len(text):,})", rt.config.name, rt.version,
                        router="guard", guard=v, timings_ms=timings)

    async def _finish(self, rt: PolicyRuntime, d: Decision, key: str,
                      timings: dict[str, float], t0: float, *, cache: bool = True) -> Decision:
        d.policy = rt.config.name
        d.policy_version = rt.version
        d.timings_ms = timings
        timings["total"] = (time.perf_counter() - t0) * 1000
        if cache:
            with contextlib.suppress(CacheUnavailable):  # already counted on the get
                await self.cache.set(key, d.to_dict(), rt.config.cache_ttl_s)
        return d

    def _fallback_decision(self, rt: PolicyRuntime, reason: str, timings: dict[str, float]
                           ) -> Decision:
        pol = rt.config
        chain = list(pol.fallback) or ([pol.on_reject.expert] if pol.on_reject.expert else [])
        if not chain:
            chain = [pol.models.get(m, m) for m in getattr(rt.router, "experts_", [])][:1]
        d = Decision("chain" if len(chain) > 1 else "single",
                     [Target(e, float("nan")) for e in chain],
                     f"{reason}: fallback chain", policy=pol.name, policy_version=rt.version,
                     router="fallback", timings_ms=timings)
        return d


def _cached_decision(hit: Any, names: frozenset[str]) -> Decision | None:
    """A decision read from the cache, or None when it is not one this configuration can
    serve (not a decision, or naming an expert the configuration lacks)."""
    try:
        d = Decision.from_dict(hit)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if any(t.expert not in names for t in d.targets) or (
            d.aggregator is not None and d.aggregator not in names):
        return None
    return d


def _warm_one(rt: PolicyRuntime, X: np.ndarray) -> None:
    """:meth:`Pipeline.warm`'s work for one runtime: its guard's verdict and its router's
    decision on the warm-up query's embedding ``X`` (1, d)."""
    if rt.guard is not None:
        rt.guard.verdict(X, [WARM_TEXT])  # type: ignore[attr-defined]
    rt.router.decide(X, [WARM_TEXT])
