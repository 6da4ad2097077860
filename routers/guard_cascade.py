"""A two-stage guard: a cheap front guard settles the queries it is sure of, and only the
others are embedded again by a stronger (slower) encoder and judged by the back guard, whose
verdict is then taken whole (label, OOD and unsafe).

The front is unsure when its OOD score lies within ``band`` of its threshold (the accept /
reject call could go either way) or when its top label's probability is below ``min_proba``
(the label could be wrong). Both are chosen on validation by :meth:`GuardCascade.fit_rule`,
under a latency budget: at most ``cap`` (0.4) of the in-domain validation queries and of each
validation OOD set escalated, so the median query does not pay for the back stage; within it,
the rule whose verdicts agree most with the back guard's alone (agreement rather than
validation GQR: GQR on a small validation OOD set is too noisy to rank close rules).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import GuardVerdict, RouterError
from routers.guard import GuardRouter

log = logging.getLogger("expertgate.guard")

__all__ = ["BACK_FAILED", "CASCADE_FILE", "GuardCascade", "cascade_gqr", "is_cascade",
           "load_cascade", "read_cascade_manifest", "save_cascade"]

#: the manifest of a cascade artifact folder (beside ``front/`` and ``back/``, each a guard
#: artifact of :mod:`routers.artifacts`)
CASCADE_FILE = "cascade.json"
CASCADE_FORMAT = "expertgate-guard-cascade"

#: a verdict's stage when the front was unsure but the back stage failed: the front's
#: verdict stands (a degraded path, named ``guard-back`` in the gateway's degraded header)
BACK_FAILED = "front-fallback"

#: back-stage embeddings of ``texts[idx]`` (the escalated queries), given (texts, idx)
BackEmbed = Callable[[Sequence[str], np.ndarray], np.ndarray]


def cascade_gqr(id_ok: np.ndarray, ood_rejected: Sequence[np.ndarray]) -> float:
    """GQR (harmonic mean of in-domain accuracy and the mean OOD rejection rate)."""
    a = float(np.mean(id_ok)) if id_ok.size else 0.0
    o = float(np.mean([r.mean() for r in ood_rejected])) if ood_rejected else 0.0
    return 0.0 if a + o == 0 else 2.0 * a * o / (a + o)


def _log_back_error(e: Exception) -> None:
    log.error("two-stage guard: the back stage failed (%s: %s); the front guard's verdicts "
              "stand for the escalated queries", type(e).__name__, e)


class GuardCascade:
    """Front guard first; the back guard's verdict where the front is unsure.

    Served like a guard (:meth:`verdict`, :meth:`reject_text`): the caller's vectors are the
    front embedder's; ``back_embedder`` (built from ``back_spec``, ``{"kind", "options"}`` of
    :func:`routers.embed.make_embedder`) embeds the escalated queries. Each verdict's
    ``stage`` says which guard decided."""

    name = "guard-cascade"

    def __init__(self, front: GuardRouter, back: GuardRouter, band: float = 0.0,
                 min_proba: float = 0.0, back_embedder: Any = None,
                 back_spec: Mapping[str, Any] | None = None) -> None:
        if list(front.labels_) != list(back.labels_):
            raise RouterError("guard cascade: the front and back guards must have the same "
                              "labels")
        self.front = front
        self.back = back
        self.band = float(band)
        self.min_proba = float(min_proba)
        self.back_embedder = back_embedder
        self.back_spec = dict(back_spec) if back_spec is not None else None
        self.selection_: dict[str, Any] = {}
        self.dim_ = front.dim_

    def _embed_back(self, texts: Sequence[str], idx: np.ndarray) -> np.ndarray:
        if self.back_embedder is None:
            raise RouterError("guard cascade: no back embedder (give back_embedder)")
        return np.asarray(self.back_embedder.embed([texts[i] for i in idx]))

    def verdict(self, X: np.ndarray, texts: Sequence[str]) -> list[GuardVerdict]:
        """The verdict per query (the gateway's guard call); ``X``: front embeddings.

        Should the back stage fail (its encoder or guard raising), the escalated queries
        keep the front's verdicts with stage :data:`BACK_FAILED`, logged here; the gateway
        names it in the response's degraded header, the routing log and /metrics."""
        return self.cascade_verdict(X, texts, self._embed_back,
                                    on_back_error=_log_back_error)[0]

    @property
    def unsafe_layers_(self) -> list[str]:
        """The unsafe layers that run: the front guard's (the back guard's verdict, taken
        whole for an escalated query, runs its own: :meth:`serve_lexicon` gives both the
        lexicon)."""
        return list(self.front.unsafe_layers_)

    def serve_lexicon(self) -> bool:
        """:meth:`GuardRouter.serve_lexicon` on both guards (the back stage's verdict
        replaces the front's); True when either had no lexicon."""
        added = self.front.serve_lexicon()
        return self.back.serve_lexicon() or added

    @property
    def lexicon_served(self) -> bool:
        """Whether :meth:`serve_lexicon` gave either guard the lexicon it was fitted
        without."""
        return bool(getattr(self.front, "lexicon_served", False)
                    or getattr(self.back, "lexicon_served", False))

    def text_verdict(self, texts: Sequence[str]) -> list[GuardVerdict]:
        """The front guard's :meth:`GuardRouter.text_verdict` (no embedding at hand)."""
        return self.front.text_verdict(texts)

    def warm(self) -> bool:
        """Run the back stage once on a short text, its encoder and its guard, so the first
        escalated request pays neither's first run: an ONNX session's first call allocates
        and plans (several times a warm call), and a fitted back guard builds its int8
        search bank (:class:`routers.simsearch.Int8Bank`, an onnxruntime graph: tens of
        milliseconds) on its first single query (a loaded one builds it at load). A failure
        is logged, not raised: the request path has its own fallback (:data:`BACK_FAILED`).
        True when the back stage answered."""
        text = ["warm up"]
        try:
            Xb = self._embed_back(text, np.zeros(1, np.intp))
            self.back._verdict(self.back.check_X(Xb, text), text)
        except Exception as e:
            log.warning("two-stage guard: the back stage failed its warm-up (%s: %s); "
                        "escalated queries will keep the front's verdicts while it fails",
                        type(e).__name__, e)
            return False
        return True

    def reject_text(self, v: GuardVerdict) -> str:
        """Why ``v`` was rejected, by the guard that decided it."""
        g = self.back if v.stage == "back" else self.front
        return f"{g.reject_text(v)} ({v.stage or 'front'} stage of a two-stage guard)"

    @property
    def shares_lexical(self) -> bool:
        """Both guards hold the same lexical SVM (same train texts, labels and seed): the
        back stage reuses the front's margins instead of computing them again."""
        f, b = self.front, self.back
        return bool(f.reads_lexical and b.reads_lexical
                    and f.lex_terms_ == b.lex_terms_
                    and np.array_equal(f.lex_coef_, b.lex_coef_)
                    and np.array_equal(f.lex_bias_, b.lex_bias_))

    def _lex(self, texts: Sequence[str]) -> np.ndarray | None:
        f = self.front
        return f.lex_margins(texts) if f.reads_lexical else None

    def escalate(self, verdicts: Sequence[GuardVerdict], proba: np.ndarray) -> np.ndarray:
        """Which of the front's verdicts go to the back stage."""
        if not verdicts:
            return np.zeros(0, bool)
        ood = np.array([v.ood_score for v in verdicts], np.float64)
        thr = float(self.front.threshold_)
        return (np.abs(ood - thr) <= self.band) | (proba.max(axis=1) < self.min_proba)

    def cascade_verdict(self, X: np.ndarray, texts: Sequence[str], back_embed: BackEmbed,
                        on_back_error: Callable[[Exception], None] | None = None
                        ) -> tuple[list[GuardVerdict], np.ndarray]:
        """The verdict per query and which queries were escalated. ``X``: the front
        embedder's vectors; ``back_embed`` embeds only the escalated queries. A failing back
        stage raises, unless ``on_back_error`` is given: it is called with the error and the
        escalated queries keep the front's verdicts, with stage :data:`BACK_FAILED`."""
        texts = list(texts)
        lex = self._lex(texts)
        fv, proba = self.front._verdict(self.front.check_X(X, texts), texts, lex)
        for v in fv:
            v.stage = "front"
        esc = self.escalate(fv, proba)
        if not esc.any():
            return fv, esc
        idx = np.flatnonzero(esc)
        sub = [texts[i] for i in idx]
        out = list(fv)
        try:
            Xb = self.back.check_X(back_embed(texts, idx), sub)
            blex = lex[idx] if lex is not None and self._shared_lex else None
            bv, _ = self.back._verdict(Xb, sub, blex)
        except Exception as e:
            if on_back_error is None:
                raise
            on_back_error(e)
            for i in idx:
                out[i] = dataclasses.replace(fv[i], stage=BACK_FAILED)
            return out, esc
        for j, i in enumerate(idx):
            out[i] = dataclasses.replace(bv[j], stage="back")
        return out, esc

    @property
    def _shared_lex(self) -> bool:
        cached = getattr(self, "_shared", None)
        if cached is None or cached[0] is not self.back.lex_coef_:
            cached = self._shared = (self.back.lex_coef_, self.shares_lexical)
        return cached[1]

    def fit_rule(self, val: tuple[np.ndarray, Sequence[str], Sequence[str], np.ndarray],
                 val_ood: Mapping[str, tuple[np.ndarray, Sequence[str], np.ndarray]], *,
                 agree: float = 0.995, cap: float = 0.4) -> dict[str, Any]:
        """Choose ``band`` and ``min_proba`` on validation. ``val`` = (front embeddings,
        texts, labels, back embeddings) of the in-domain validation queries; ``val_ood``:
        per OOD validation set, (front embeddings, texts, back embeddings).

        Each part (the in-domain queries, each OOD set) counts on its own, so the rule does
        not lean on the validation mix of in-domain and OOD queries (traffic has its own):
        a rule's share is its largest escalation rate over the parts and its agreement its
        smallest rate of verdicts (accept/reject and label) equal to the back guard's alone.
        The choice: the smallest share whose agreement reaches ``agree``, among the rules
        with share <= ``cap``; when none reaches it, the highest agreement under the cap
        (then the smaller share). Returns (and keeps in ``selection_``) the choice and the
        figures it was made on, validation GQR of front, back and cascade included."""
        if not val_ood:
            raise RouterError("guard cascade: choosing the escalation rule needs validation "
                              "OOD queries")
        parts = [(val[0], list(val[1]), val[3])] + [(Xf, list(t), Xb)
                                                    for Xf, t, Xb in val_ood.values()]
        fronts, backs = [], []
        for Xf, t, Xb in parts:
            lex = self._lex(t)
            fv, proba = self.front._verdict(self.front.check_X(Xf, t), t, lex)
            bv, _ = self.back._verdict(self.back.check_X(Xb, t), t,
                                       lex if self._shared_lex else None)
            fronts.append((np.array([v.ood_score for v in fv], np.float64),
                           proba.max(axis=1), np.array([v.rejected for v in fv]),
                           [v.label for v in fv]))
            backs.append((np.array([v.rejected for v in bv]), [v.label for v in bv]))
        same = [(f[2] == b[0]) & (f[2] | np.array([x == y for x, y in
                                                   zip(f[3], b[1], strict=True)]))
                for f, b in zip(fronts, backs, strict=True)]
        labels = [str(x) for x in val[2]]
        f_ok = np.array([a == b for a, b in zip(fronts[0][3], labels, strict=True)])
        b_ok = np.array([a == b for a, b in zip(backs[0][1], labels, strict=True)])
        thr = float(self.front.threshold_)

        def figures(band: float, pmin: float) -> tuple[float, float, float]:
            escs = [(np.abs(f[0] - thr) <= band) | (f[1] < pmin) for f in fronts]
            rej = [np.where(e, b[0], f[2]) for e, f, b in zip(escs, fronts, backs, strict=True)]
            id_ok = np.where(escs[0], b_ok, f_ok) & ~rej[0]
            share = max(float(e.mean()) for e in escs)
            agreement = min(float(np.mean(s | e)) for s, e in zip(same, escs, strict=True))
            return share, agreement, cascade_gqr(id_ok, rej[1:])

        dist = np.abs(fronts[0][0] - thr)
        bands = sorted({0.0, *np.quantile(dist, np.linspace(0.01, 0.6, 60)).tolist()})
        pmins = [0.0, 0.2, 0.3, 0.4]
        grid = [(b, p, *figures(b, p)) for b in bands for p in pmins]
        under = [g for g in grid if g[2] <= cap]
        close = [g for g in under if g[3] >= agree]
        if close:
            pick = min(close, key=lambda g: (g[2], -g[3]))
            how = f"the smallest escalation share with agreement >= {agree:g}"
        else:
            pick = max(under, key=lambda g: (g[3], -g[2]))
            how = (f"no rule reaches agreement {agree:g} escalating <= {cap:g} of each part: "
                   "the highest agreement under the cap")
        self.band, self.min_proba = float(pick[0]), float(pick[1])
        names = ["in_domain", *val_ood]
        escs = [(np.abs(f[0] - thr) <= self.band) | (f[1] < self.min_proba) for f in fronts]
        self.selection_ = {
            "band": self.band, "min_proba": self.min_proba, "rule": how,
            "agreement_target": agree, "cap": cap, "grid_size": len(grid),
            "validation_escalation_share": float(pick[2]),
            "validation_escalation_by_part": {n: float(e.mean())
                                              for n, e in zip(names, escs, strict=True)},
            "validation_agreement_with_back": float(pick[3]),
            "validation_gqr": float(pick[4]), "validation_gqr_front": figures(-1.0, 0.0)[2],
            "validation_gqr_back": figures(np.inf, 2.0)[2],
            "validation_queries": {n: len(p[1]) for n, p in zip(names, parts, strict=True)}}
        return dict(self.selection_)


def is_cascade(path: str | Path) -> bool:
    """Whether the folder ``path`` holds a cascade artifact (:func:`save_cascade`)."""
    return (Path(path) / CASCADE_FILE).is_file()


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "router.json").read_bytes()).hexdigest()


def check_guard_target(path: str | Path) -> Path:
    """The folder a guard artifact (a two-stage guard's, or a single guard's) may be written
    to: absent, or such an artifact already, which the save replaces. Anything else there
    (a file, a folder of the user's) is refused with a RouterError rather than removed.
    Returns the path made absolute."""
    from routers.artifacts import check_artifact_target, not_an_artifact

    out = Path(path).expanduser().absolute()
    if out.is_dir() and not out.is_symlink() and is_cascade(out):
        extra = sorted(f.name for f in out.iterdir()
                       if f.name not in (CASCADE_FILE, "front", "back"))
        if not extra:
            return out
        why = f"it holds {', '.join(extra[:3])} beside a two-stage guard"
    else:
        try:
            return check_artifact_target(out)
        except RouterError:
            if not out.exists() and not out.is_symlink():
                raise  # a parent that is no folder, in check_artifact_target's words
            why = not_an_artifact(out) or "it is neither absent nor a guard artifact"
    raise RouterError(f"{out} exists and is not a guard artifact ({why}): it would be "
                      "replaced; choose another output folder or remove it")


def save_cascade(cascade: GuardCascade, path: str | Path, *, front_embedder: str,
                 front_embedder_spec: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``cascade`` to the folder ``path``: ``front/`` and ``back/`` (guard artifacts,
    each naming its embedder; ``front/`` also how to build it, given ``front_embedder_spec``:
    the gateway's embedder, which a config without ``embedder:`` takes from it) and
    ``cascade.json`` (the escalation rule, the back embedder's spec and name, the two
    guards' manifest digests). Written beside and moved into place."""
    from routers.artifacts import save_router

    if cascade.back_spec is None or cascade.back_embedder is None:
        raise RouterError("guard cascade: saving needs the back embedder and its spec")
    out = check_guard_target(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_router(cascade.front, tmp / "front", embedder=front_embedder,
                    embedder_spec=front_embedder_spec)
        save_router(cascade.back, tmp / "back", embedder=cascade.back_embedder.name)
        manifest = {
            "format": CASCADE_FORMAT, "format_version": 1,
            "band": cascade.band, "min_proba": cascade.min_proba,
            "front_embedder": front_embedder,
            "back_embedder": {**cascade.back_spec, "name": cascade.back_embedder.name,
                              "dim": int(cascade.back_embedder.dim)},
            "selection": cascade.selection_, "metrics": dict(metrics or {}),
            "files": {"front/router.json": _digest(tmp / "front"),
                      "back/router.json": _digest(tmp / "back")}}
        (tmp / CASCADE_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True,
                                                   default=float) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def read_cascade_manifest(path: str | Path) -> dict[str, Any]:
    """``cascade.json`` of a cascade folder, checked (format, the guards' digests)."""
    folder = Path(path)
    try:
        m = json.loads((folder / CASCADE_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RouterError(f"guard cascade {folder}: cannot read {CASCADE_FILE}: {e}") from None
    if not isinstance(m, dict) or m.get("format") != CASCADE_FORMAT \
            or m.get("format_version") != 1:
        raise RouterError(f"guard cascade {folder}: {CASCADE_FILE} is not a version-1 "
                          f"{CASCADE_FORMAT} manifest")
    spec = m.get("back_embedder")
    if not isinstance(spec, dict) or not {"kind", "name", "dim"} <= set(spec) \
            or not all(isinstance(m.get(k), int | float) for k in ("band", "min_proba")) \
            or set(m.get("files") or {}) != {"front/router.json", "back/router.json"}:
        raise RouterError(f"guard cascade {folder}: {CASCADE_FILE} lacks the escalation rule, "
                          "the back embedder (kind, name, dim) or the two guards' digests")
    for rel, digest in m["files"].items():
        sub = folder / Path(rel).parent
        if not (sub / "router.json").is_file() or _digest(sub) != digest:
            raise RouterError(f"guard cascade {folder}: {rel} is missing or was modified "
                              "after saving")
    return m


def load_cascade(path: str | Path, *, back_embedder: Any = None,
                 manifest: Mapping[str, Any] | None = None) -> GuardCascade:
    """Load a folder written by :func:`save_cascade`; the back embedder is built from its
    recorded spec (or given) and must have the recorded name and size. ``manifest``: the
    folder's :func:`read_cascade_manifest`, when the caller has read (and checked) it."""
    from routers.artifacts import load_router
    from routers.embed import make_embedder, names_of

    folder = Path(path)
    m = read_cascade_manifest(folder) if manifest is None else manifest
    front = load_router(folder / "front", expected_type="guard")
    back = load_router(folder / "back", expected_type="guard")
    spec = dict(m["back_embedder"])
    name, dim = spec.pop("name"), int(spec.pop("dim"))
    if back_embedder is None:
        opts = spec.get("options") or {}
        try:
            if not isinstance(opts, dict):
                raise TypeError(f"options must be a mapping, got {opts!r}")
            back_embedder = make_embedder(spec["kind"], **opts)
        except (TypeError, ValueError) as e:  # a hand-edited cascade.json
            raise RouterError(f"guard cascade {folder}: cannot build the back embedder "
                              f"{spec['kind']!r} from {CASCADE_FILE}: {e}") from None
    if name not in names_of(back_embedder) or int(back_embedder.dim) != dim:
        raise RouterError(f"guard cascade {folder}: the back embedder is {back_embedder.name!r}"
                          f" ({back_embedder.dim}-d), the artifact was made with {name!r} "
                          f"({dim}-d)")
    c = GuardCascade(front, back, m["band"], m["min_proba"],  # type: ignore[arg-type]
                     back_embedder=back_embedder, back_spec=spec)
    c.selection_ = dict(m.get("selection") or {})
    c.warm()
    return c
