"""Router protocol, the Decision, the routing table and the name -> class registry.

Every router follows scikit-learn estimator conventions:

* ``__init__`` stores keyword parameters only (no learning, no I/O);
* ``fit(X, table)`` learns from prompt embeddings ``X`` (n, d) and a :class:`RoutingTable`
  with the same n prompts, and sets attributes ending in ``_``;
* ``decide(X, texts)`` is batched and returns one :class:`Decision` per row;
* ``save(dir)`` / ``load(dir)`` go through :mod:`routers.artifacts` (JSON + npz, never pickle).

Learned routers that estimate per-expert quality also implement ``predict_quality`` so that
offline evaluation can sweep their cost/quality knob without refitting.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

__all__ = [
    "MIN_EXPERT_SCORES",
    "Decision",
    "GuardVerdict",
    "Mode",
    "Num",
    "Router",
    "RouterError",
    "RoutingTable",
    "Target",
    "example_texts",
    "examples_table",
    "expert_columns",
    "get_router_class",
    "normalise_text",
    "register",
    "registered_names",
    "without_thin_models",
]

Mode = Literal["single", "chain", "ensemble", "reject"]


class RouterError(ValueError):
    """Bad input to a router: empty table, wrong shapes, unknown names, bad artifacts."""


# --------------------------------------------------------------------------- Decision


@dataclass(slots=True)
class Target:
    """One expert a decision may send the request to, in order of preference."""

    expert: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"expert": self.expert, "score": _finite(self.score)}


@dataclass(slots=True)
class GuardVerdict:
    """What the guard said about a query.

    ``label`` is the in-domain label (route, domain, category) the guard assigned;
    ``ood_score`` is larger for more out-of-distribution queries and is compared with
    ``threshold``; ``rejected`` with ``reject_reason`` (``ood`` | ``unsafe``) says whether the
    query is refused; ``unsafe_score`` is the unsafe detector's score where one ran;
    ``stage`` says which guard of a two-stage guard (:mod:`routers.guard_cascade`) decided
    (``front`` | ``back``; None for a single guard).
    """

    label: str | None = None
    ood_score: float | None = None
    threshold: float | None = None
    rejected: bool = False
    reject_reason: str | None = None
    unsafe_score: float | None = None
    skipped: bool = False
    stage: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # by hand, not dataclasses.asdict (which deep-copies): it runs for every routed
        # request's log record
        return {"label": self.label, "ood_score": _finite(self.ood_score),
                "threshold": _finite(self.threshold), "rejected": self.rejected,
                "reject_reason": self.reject_reason, "unsafe_score": _finite(self.unsafe_score),
                "skipped": self.skipped, "stage": self.stage}


@dataclass(slots=True)
class Decision:
    """The outcome of routing one query.

    The same object is returned by ``/v1/route``, summarised in response headers and stored in
    the routing log.
    """

    mode: Mode
    targets: list[Target]
    reason: str
    policy: str = ""
    policy_version: str = ""
    router: str = ""
    aggregator: str | None = None
    guard: GuardVerdict | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    @property
    def expert(self) -> str | None:
        """The first-choice expert, or None for a rejection."""
        return self.targets[0].expert if self.targets and self.mode != "reject" else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "policy_version": self.policy_version,
            "router": self.router,
            "mode": self.mode,
            "targets": [t.to_dict() for t in self.targets],
            "aggregator": self.aggregator,
            "reason": self.reason,
            "guard": self.guard.to_dict() if self.guard is not None else None,
            "timings_ms": {k: round(v, 4) for k, v in self.timings_ms.items()},
            "cached": self.cached,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        g = d.get("guard")
        return cls(
            mode=d["mode"],
            targets=[Target(t["expert"], float(t["score"] if t["score"] is not None else "nan"))
                     for t in d.get("targets", [])],
            reason=d.get("reason", ""),
            policy=d.get("policy", ""),
            policy_version=d.get("policy_version", ""),
            router=d.get("router", ""),
            aggregator=d.get("aggregator"),
            guard=GuardVerdict(**g) if g else None,
            timings_ms=dict(d.get("timings_ms", {})),
            cached=bool(d.get("cached", False)),
        )


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


# --------------------------------------------------------------------------- RoutingTable


@dataclass
class RoutingTable:
    """Wide view of the long-format routing table.

    Long format (ARCHITECTURE.md): one row per (prompt, model) with columns
    ``prompt_id, prompt, model, score (0..1), cost, [category]``. Here it is pivoted to
    ``scores`` and ``costs`` of shape (n_prompts, n_models); NaN marks a prompt a model was
    not evaluated on. ``categories`` is one label per prompt or None.
    """

    prompt_ids: list[str]
    prompts: list[str]
    models: list[str]
    scores: np.ndarray
    costs: np.ndarray
    categories: list[str] | None = None

    def __post_init__(self) -> None:
        n, m = len(self.prompts), len(self.models)
        if len(self.prompt_ids) != n:
            raise RouterError("prompt_ids and prompts differ in length")
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.costs = np.asarray(self.costs, dtype=np.float64)
        if self.scores.shape != (n, m) or self.costs.shape != (n, m):
            raise RouterError(
                f"scores/costs must have shape ({n}, {m}), got {self.scores.shape} and "
                f"{self.costs.shape}"
            )
        if self.categories is not None and len(self.categories) != n:
            raise RouterError("categories must have one label per prompt")
        finite = self.scores[np.isfinite(self.scores)]
        if finite.size and (finite.min() < -1e-9 or finite.max() > 1 + 1e-9):
            with np.errstate(invalid="ignore"):
                out = np.argwhere((self.scores < -1e-9) | (self.scores > 1 + 1e-9))
            i, j = (int(v) for v in out[0])
            raise RouterError(f"scores must lie in [0, 1]; {len(out)} cell(s) do not, the "
                              f"first prompt {self.prompt_ids[i]!r}, model "
                              f"{self.models[j]!r}: {self.scores[i, j]:g}")

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_long(
        cls,
        rows: Iterable[Mapping[str, Any]] | Any,
        *,
        require_cost: bool = False,
    ) -> RoutingTable:
        """Build from long-format rows (an iterable of mappings or a pandas DataFrame)."""
        import pandas as pd

        df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if df.empty:
            raise RouterError("routing table is empty")
        missing = {"prompt", "model", "score"} - set(df.columns)
        if missing:
            raise RouterError(f"routing table lacks column(s): {', '.join(sorted(missing))}")
        df = df.copy()
        if "prompt_id" not in df.columns:
            df["prompt_id"] = [
                hashlib.sha1(str(p).encode()).hexdigest()[:16] for p in df["prompt"]
            ]
        df["prompt_id"] = df["prompt_id"].astype(str)
        df["model"] = df["model"].astype(str)
        df["score"] = pd.to_numeric(df["score"], errors="coerce")
        n_bad = int(df["score"].isna().sum())
        if n_bad:
            raise RouterError(f"{n_bad} row(s) have a missing or non-numeric score")
        if "cost" not in df.columns:
            if require_cost:
                raise RouterError("routing table lacks column: cost")
            df["cost"] = 0.0
        df["cost"] = pd.to_numeric(df["cost"], errors="coerce")
        if df["cost"].isna().any():
            raise RouterError("cost column has missing or non-numeric values")
        dup = df.duplicated(["prompt_id", "model"])
        if dup.any():
            df = df.groupby(["prompt_id", "model"], as_index=False, sort=False).agg(
                {c: ("mean" if c in ("score", "cost") else "first") for c in df.columns
                 if c not in ("prompt_id", "model")}
            )
        first = df.drop_duplicates("prompt_id")
        pids = first["prompt_id"].tolist()
        prompts = first["prompt"].astype(str).tolist()
        cats = first["category"].astype(str).tolist() if "category" in df.columns else None
        models = sorted(df["model"].unique().tolist())
        scores = df.pivot(index="prompt_id", columns="model", values="score").reindex(
            index=pids, columns=models)
        costs = df.pivot(index="prompt_id", columns="model", values="cost").reindex(
            index=pids, columns=models)
        return cls(pids, prompts, models, scores.to_numpy(), costs.to_numpy(), cats)

    def to_long(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, pid in enumerate(self.prompt_ids):
            for j, m in enumerate(self.models):
                if np.isfinite(self.scores[i, j]):
                    row = {"prompt_id": pid, "prompt": self.prompts[i], "model": m,
                           "score": float(self.scores[i, j]), "cost": float(self.costs[i, j])}
                    if self.categories is not None:
                        row["category"] = self.categories[i]
                    out.append(row)
        return out

    def subset(self, idx: Sequence[int] | np.ndarray) -> RoutingTable:
        idx = np.asarray(idx, dtype=np.int64)
        return RoutingTable(
            [self.prompt_ids[i] for i in idx],
            [self.prompts[i] for i in idx],
            list(self.models),
            self.scores[idx],
            self.costs[idx],
            [self.categories[i] for i in idx] if self.categories is not None else None,
        )

    def mean_costs(self) -> np.ndarray:
        """Per-model mean cost over the prompts where the model was evaluated (0 for a model
        evaluated on none of them, as in a small held-out part of a log table)."""
        seen = np.isfinite(self.scores)
        total = np.where(seen, self.costs, 0.0).sum(axis=0)
        return total / np.maximum(seen.sum(axis=0), 1)

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for s in (self.prompt_ids, self.prompts, self.models, self.categories or []):
            h.update("\x1f".join(s).encode())
            h.update(b"\x1e")
        h.update(np.ascontiguousarray(np.nan_to_num(self.scores, nan=-1.0)).tobytes())
        h.update(np.ascontiguousarray(self.costs).tobytes())
        return h.hexdigest()[:16]

    def split(
        self, *, seed: int = 0, val: float = 0.1, test: float = 0.2
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Split prompt indices into train / validation / test with a seed, by *text*.

        Prompts whose normalised text (:func:`normalise_text`) is the same form one group and
        always land in the same part: a duplicate question (MMLU has 105) never sits in train
        and test at once. Groups are shuffled and taken in turn until each part reaches its
        share of prompts (``round(n * test)``, then ``round(n * val)``).
        """
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(self.prompts):
            groups.setdefault(normalise_text(t), []).append(i)
        members = list(groups.values())
        order = np.random.default_rng(seed).permutation(len(members))
        n = len(self)
        n_test, n_val = round(n * test), round(n * val)
        parts: tuple[list[int], list[int], list[int]] = ([], [], [])
        for g in order:
            k = 2 if len(parts[2]) < n_test else 1 if len(parts[1]) < n_val else 0
            parts[k].extend(members[g])
        tr, va, te = (np.sort(np.asarray(p, dtype=np.int64)) for p in parts)
        return tr, va, te


#: a model scored on fewer training prompts than this, and on fewer than a quarter as many as
#: the best-scored model, is left out of a fitted router (:func:`without_thin_models`)
MIN_EXPERT_SCORES = 10


def without_thin_models(table: RoutingTable, min_scores: int = MIN_EXPERT_SCORES
                        ) -> tuple[RoutingTable, dict[str, int]]:
    """``table`` without the models too thinly scored to learn anything about (a new expert
    explored once in the logs): their few scores would stand for every prompt (its one good
    rating made every family send it all the traffic). Returns the table and the left-out
    models with their score counts; a table whose models are all thin is returned whole (the
    families' own checks speak for it)."""
    counts = np.isfinite(table.scores).sum(axis=0)
    top = int(counts.max()) if counts.size else 0
    thin = {m: int(c) for m, c in zip(table.models, counts, strict=True)
            if c < min_scores and c < 0.25 * top}
    keep = [j for j, m in enumerate(table.models) if m not in thin]
    if not thin or len(keep) < 2:
        return table, {}
    return RoutingTable(list(table.prompt_ids), list(table.prompts),
                        [table.models[j] for j in keep], table.scores[:, keep],
                        table.costs[:, keep], table.categories), thin


def expert_columns(P: np.ndarray, experts: Sequence[str], models: Sequence[str]
                   ) -> np.ndarray:
    """A router's per-expert columns ``P`` (n, len(experts)) put in a table's ``models``
    order, (n, len(models)); a model the router does not know gets zeros."""
    col = {e: j for j, e in enumerate(experts)}
    out = np.zeros((P.shape[0], len(models)))
    for j, mname in enumerate(models):
        if mname in col:
            out[:, j] = P[:, col[mname]]
    return out


def normalise_text(text: str) -> str:
    """The form prompts are compared in for duplicates: case-folded, whitespace collapsed."""
    return " ".join(str(text).casefold().split())


# --------------------------------------------------------------------------- Router


R = TypeVar("R", bound="Router")



def example_texts(entry: Mapping[str, Any]) -> list[str]:
    """A config entry's ``examples`` plus its ``description``, as strings."""
    texts = [str(t) for t in entry.get("examples") or []]
    if entry.get("description"):
        texts.append(str(entry["description"]))
    return texts


def examples_table(groups: Sequence[tuple[str, str, Sequence[str]]],
                   models: Sequence[str]) -> RoutingTable:
    """``(category, model, texts)`` groups -> a RoutingTable with one row per text, its
    category, score 1 for ``model`` and 0 for the others, no costs."""
    models = list(models)
    prompts: list[str] = []
    cats: list[str] = []
    rows: list[np.ndarray] = []
    for cat, model, texts in groups:
        onehot = np.zeros(len(models))
        onehot[models.index(model)] = 1.0
        for t in texts:
            prompts.append(t)
            cats.append(cat)
            rows.append(onehot)
    scores = np.stack(rows)
    ids = [f"{c}:{i}" for i, c in enumerate(cats)]
    return RoutingTable(ids, prompts, models, scores, np.zeros_like(scores), cats)


@dataclass(frozen=True)
class Num:
    """The range of a numeric router parameter (:attr:`Router.param_ranges`): ``integer``
    or any real number, bounds ``lo``/``hi`` (open with ``lo_open``/``hi_open``), and
    whether None is allowed. Booleans and strings are never numbers."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False
    hi_open: bool = False
    none_ok: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.none_ok else "must be set"
        kind = "an integer" if self.integer else "a number"
        ok_type = isinstance(value, int | np.integer) if self.integer else \
            isinstance(value, int | float | np.integer | np.floating)
        if isinstance(value, bool | np.bool_) or not ok_type or not math.isfinite(value):
            return f"must be {kind}{self._range()}"
        if (self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)) \
                or (self.hi is not None and
                    (value >= self.hi if self.hi_open else value > self.hi)):
            return f"must be {kind}{self._range()}"
        return None

    def _range(self) -> str:
        if self.lo is not None and self.hi is not None:
            return (f" in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f" {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f" {'<' if self.hi_open else '<='} {self.hi:g}"
        return ""


class Router:
    """Base class of every router. Subclasses set ``name`` and implement ``fit``/``decide``.

    The constructor's keyword parameters are stored verbatim as attributes;
    ``param_names()`` reads them from ``__init__``'s signature and ``get_params`` reads them
    back (artifacts store them in ``router.json``).
    Learned state is in attributes ending in ``_``; ``_array_attrs`` names the numpy arrays
    saved to ``arrays.npz`` and ``_json_attrs`` the JSON-serialisable learned attributes.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    _array_attrs: ClassVar[tuple[str, ...]] = ()
    _json_attrs: ClassVar[tuple[str, ...]] = ()
    _skops_attrs: ClassVar[tuple[str, ...]] = ()
    #: whether ``fit`` needs per-model scores (False for routers that learn from categories)
    needs_scores: ClassVar[bool] = True
    #: whether the family trades cost against quality: the offline evaluation's default set.
    #: Label and adapter routers (semantic, guard, lora) say False; a user may still name them
    trades_cost: ClassVar[bool] = True
    #: constructor arguments the family cannot work without and a synthetic routing table
    #: cannot supply; the contract tests and the router benchmark pass them
    example_params: ClassVar[dict[str, Any]] = {}
    #: what ``expertgate train`` needs to fit this family (one line of its help)
    train_input: ClassVar[str] = "a routing table: prompt_id, prompt, model, score (0..1), cost"

    #: the ranges of the family's numeric parameters, checked by :meth:`check_params` (a
    #: subclass lists its own; those of its bases apply too)
    param_ranges: ClassVar[dict[str, Num]] = {}

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """The constructor's keyword parameters, in order (read from ``__init__``)."""
        return _init_params(cls)

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_names()}

    def set_params(self: R, **params: Any) -> R:
        """Set parameters by name, then :meth:`check_params` (a failed check restores the
        old values): a gateway policy's ``params:`` on a loaded artifact, which never runs
        ``fit``'s checks, is refused here with the key and the valid range."""
        names = self.param_names()
        for k in params:
            if k not in names:
                raise RouterError(f"{self.name}: unknown parameter {k!r}")
        old = {k: getattr(self, k) for k in params if hasattr(self, k)}
        for k, v in params.items():
            setattr(self, k, v)
        try:
            self.check_params()
        except RouterError:
            for k, v in old.items():
                setattr(self, k, v)
            raise
        return self

    def check_params(self) -> None:
        """Raise :class:`RouterError` naming the first parameter outside its range
        (:attr:`param_ranges` of the class and its bases); only constructor parameters
        are checked."""
        rules: dict[str, Num] = {}
        for klass in reversed(type(self).__mro__):
            rules.update(vars(klass).get("param_ranges", {}))
        names = self.param_names()
        for k in names:
            if k in rules:
                why = rules[k].problem(getattr(self, k, None))
                if why is not None:
                    raise RouterError(f"{self.name}: {k} {why}, got {getattr(self, k, None)!r}")

    # -- learning ----------------------------------------------------------------------
    def fit(self: R, X: np.ndarray, table: RoutingTable) -> R:  # pragma: no cover - abstract
        raise NotImplementedError

    def partial_fit(self, X: np.ndarray, experts: Sequence[str], rewards: Sequence[float]) -> None:
        """Online update from observed rewards; only routers that learn online support it."""
        raise RouterError(f"router {self.name!r} does not learn online")

    # -- inference ---------------------------------------------------------------------
    def decide(self, X: np.ndarray, texts: Sequence[str]) -> list[Decision]:  # pragma: no cover
        raise NotImplementedError

    def predict_quality(self, X: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """Estimated quality in [0, 1] of each expert it scores for each query, shape
        (n, len(:meth:`quality_experts`)).

        Only routers that estimate per-expert quality implement it; offline evaluation uses
        it to sweep the cost/quality trade-off.
        """
        raise RouterError(f"router {self.name!r} does not estimate per-expert quality")

    def quality_experts(self) -> list[str]:
        """The experts :meth:`predict_quality`'s columns follow: ``experts_``, but for a
        family whose decisions also name an expert it does not score (lora's base model)."""
        return list(self.experts_)

    #: fitted routers set ``experts_``: the expert names their decisions can name
    experts_: list[str]

    # -- checks ------------------------------------------------------------------------
    def check_fitted(self) -> None:
        learned = [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]
        if not learned:
            raise RouterError(f"router {self.name!r} is not fitted: call fit() or load()")

    def check_X(self, X: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise RouterError(f"embeddings must be 2-D (n, d), got shape {X.shape}")
        dim = getattr(self, "dim_", None)
        if dim is not None and X.shape[1] != dim:
            raise RouterError(
                f"embedding dimension {X.shape[1]} does not match the router's {dim} "
                "(was it trained with another embedder?)"
            )
        if texts is not None and len(texts) != X.shape[0]:
            raise RouterError(f"{X.shape[0]} embeddings but {len(texts)} texts")
        if not np.all(np.isfinite(X)):
            raise RouterError("embeddings contain NaN or infinity")
        return X

    @staticmethod
    def check_table(X: np.ndarray, table: RoutingTable, *, min_prompts: int = 2,
                    min_models: int = 2, need_scores: bool = True) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[0] != len(table):
            raise RouterError(
                f"need one embedding per prompt: {len(table)} prompts, X of shape {X.shape}")
        if len(table) < min_prompts:
            raise RouterError(f"routing table has {len(table)} prompt(s); need at least "
                              f"{min_prompts}")
        if need_scores and len(table.models) < min_models:
            raise RouterError(
                f"routing table has {len(table.models)} model(s) ({', '.join(table.models)}); "
                f"routing needs at least {min_models}")
        if not np.all(np.isfinite(X)):
            raise RouterError("embeddings contain NaN or infinity")
        return X

    # -- persistence -------------------------------------------------------------------
    def save(self, path: str | Path, *, metrics: Mapping[str, Any] | None = None,
             data_hash: str | None = None, embedder: str | None = None,
             embedder_spec: Mapping[str, Any] | None = None) -> Path:
        from routers.artifacts import save_router

        return save_router(self, path, metrics=metrics, data_hash=data_hash, embedder=embedder,
                           embedder_spec=embedder_spec)

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        from routers.artifacts import load_router

        r = load_router(path, expected_type=cls.name or None)
        assert isinstance(r, cls)
        return r


def _init_params(cls: type[Router]) -> tuple[str, ...]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # after self
    return tuple(p.name for p in params if p.kind in kinds)


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Router]] = {}


def register(cls: type[R]) -> type[R]:
    """Class decorator: make a router available by its ``name``."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"router name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_families() -> None:
    # Importing the family modules registers them; done lazily so `routers.base` stays light.
    from routers.families import load_families

    load_families()


def get_router_class(name: str) -> type[Router]:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RouterError(
            f"unknown router {name!r}; registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def registered_names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def make_router(name: str, **params: Any) -> Router:
    """A ``name`` router built with ``params``; a parameter it does not take is a
    RouterError naming it and the ones it takes (Python's own words named the class's
    ``__init__``, which no config or CLI user wrote)."""
    cls = get_router_class(name)
    sig = inspect.signature(cls.__init__).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig):
        known = _init_params(cls)
        if unknown := sorted(set(params) - set(known)):
            import difflib

            hints = [f"{u!r} (did you mean {close[0]!r}?)"
                     if (close := difflib.get_close_matches(u, known, n=1)) else repr(u)
                     for u in unknown]
            raise RouterError(f"router {name!r}: bad parameters: unknown "
                              f"parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)}"
                              f" (known: {', '.join(known)})")
    try:
        return cls(**params)
    except TypeError as e:
        raise RouterError(f"router {name!r}: bad parameters: {e}") from None
