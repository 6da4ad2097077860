"""``expertgate eval report``: Markdown + PNG plots from the JSON of the evaluation runs.

Reads every ``*.json`` under ``--runs``: files written by ``expertgate eval routing`` (they
carry ``routers`` and ``baselines``) and by ``expertgate eval guard`` (they carry
``methods``); anything else is listed as skipped. Writes to ``--out``:

* ``report.md`` — one section per run: the command that produced it, seeds, machine, a table
  of every router / method, and the plots;
* ``<run>-deferral.png`` (two-expert routing: PGR vs. strong-call share, RouteLLM style),
  ``<run>-pareto.png`` (quality vs. cost: router curves, their upper hulls, single experts),
  ``<run>-guard-hist.png`` (guard score histograms, when the guard JSON carries them under
  ``methods.<name>.score_histogram = {edges, in_domain, ood}``);
* ``figures.json`` — the numbers behind every figure and table, keyed by file name.

Every table puts the row ``selected`` on validation first (marked) and the others after it,
ordered by name: no row is ranked or bolded by a test figure. Figures that a seed may lack
carry ``(reached k/n)``.

Generated blocks in the docs (``--docs``): every figure table in README.md and docs/ lives
between markers and is rewritten from a committed result JSON, so no figure is typed by hand::

    <!-- BEGIN GENERATED routing-table docs/results/runs/mmlu.json -->
    ... (replaced on every run) ...
    <!-- END GENERATED -->

Kinds: ``routing-table`` (every router and baseline of a routing run), ``routing-headline``
(the selected router with the headline figures), ``guard-table`` (every method and operating
point of a guard run), ``guard-headline`` (the selected candidate), ``guard-cascade`` (a
guard run's two-stage guards: escalation rule, escalation shares, latency per stage, beside
the run's TF-IDF + SVM baseline), ``guard-bar FILE...`` (per guard run, the selected method
against its TF-IDF + SVM baseline: GQR, p50 / p99, issue 21's bar met or not),
``routing-bar FILE...`` (per routing run, the selected router's headline figure against
the better of the run's simple baselines, frozen-embedding LR and kNN on mean costs: issue
21's bar, >= 0.10 of the best single model's cost cheaper on N-model tables),
``cost-models FILE...`` (per routing run and router, what ``cost_model`` gave in each seed:
the experts traded with per-query costs and the range of every expert's cross-validated R^2
of log cost), ``routing-validation FILE...`` (per routing run and router, the mean
validation score a choice between two settings is made on, with the run's ``--params``),
``guard-validation FILE...`` (per guard run and method, the validation GQR a choice is made
on, with the seed and a two-stage guard's back encoder; test GQR and latency beside it),
``guard-typos FILE...`` / ``routing-typos FILE...`` (runs read with ``--typos``: clean and
misspelt figures side by side, and how many outcomes / choices held),
``compare OLD
NEW`` (the
headline figures of an older run beside a newer one), ``provenance`` (commit, data sha256,
encoder and command of a run), ``offpolicy-table FILE...`` / ``offpolicy-dr FILE...`` (the
off-policy simulator's figures, every estimator or DR and clipped DR only), ``embedder-table FILE``
(a ``bench router`` JSON: decision latency by prompt length and throughput per embedder),
``train-time FILE...`` (``expertgate train --metrics-json`` files: embedding and fit time),
``overhead-miss FILE...`` (``bench overhead`` JSONs: the routed cache miss's and the bare
pass-through floor's added latency at c=1, with the prompt length of the run),
``overhead-table PATH [PATHS]`` (one ``bench overhead`` JSON: every path and concurrency,
streams, in-process costs and the summary ratios; ``PATHS`` a comma list of paths to keep),
``overhead-targets PATH`` (that run's targets, met or not), ``router-bench FILE`` (a
``bench router`` JSON: embedders at batch 1 / 32, router families, decision cache,
micro-batching), ``soak FILE...`` (``bench soak`` JSONs) and ``faults FILE...`` (the fault
tests' counts, written with ``EXPERTGATE_FAULTS_JSON_DIR``), ``startup FILE...``
(``bench startup`` JSONs: start-up time and the first decisions with and without the
start-up warm-up), ``auto-choices FILE...``
(routing runs with ``auto``: the family it chose in each seed, "+ predicted costs" where it
chose per-query costs, its test figure and time beside ``stack``'s). A ``PATH`` may be a folder: the
newest ``bench overhead`` JSON in it (by its run date) is used, so a rerun that writes a new
file there needs only ``expertgate eval report``. Every bench block names its file, commit,
dirty flag, date, machine and command.
Paths are relative
to the working directory (the repository root). ``--check`` only reports blocks that are
out of date (exit 1), for CI.

Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from evals import metrics as M

__all__ = ["DEFAULT_DOCS", "cli_register", "main", "render_block", "render_guard",
           "render_routing", "update_docs", "write_report"]

#: the documents whose figure tables are generated blocks
DEFAULT_DOCS = ("README.md", "docs/guard.md", "docs/performance.md", "docs/reliability.md",
                "docs/routers.md", "docs/results/README.md")

GUARD_COLS = ("in_domain_accuracy", "ood_accuracy", "gqr_score", "false_rejection_rate",
              "latency_p50_ms", "latency_p99_ms")


def figure(v: Any, std: Any = None, digits: int = 3) -> str:
    """A figure (and its spread over the seeds) as the tables print it, on screen and in the
    generated blocks of README and docs/."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if not isinstance(v, int | float):
        return str(v)
    if abs(v) < 1e-12:  # rounding noise of a difference of equal figures (-2.2e-16 is 0)
        v = 0.0
    # costs in USD per query are tiny numbers: significant digits keep them readable
    small = v != 0 and abs(v) < 0.01
    s = f"{v:.{digits}g}" if small else f"{v:.{digits}f}"
    if isinstance(std, int | float) and std > 1e-12:
        s += f" ± {std:.{digits}g}" if small else f" ± {std:.{digits}f}"
    return s




def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stem(path: Path) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in path.stem)


# --------------------------------------------------------------------------- routing


def render_routing(run: Mapping[str, Any], stem: str, out: Path,
                   figures: dict[str, Any]) -> str:
    """The Markdown section of one routing run; writes its PNGs into ``out``."""
    table = run["table"]
    two = len(table["models"]) == 2
    lines = [f"## Routing: {stem} (`{run.get('data', '?')}`, format "
             f"`{run.get('format', '?')}`)", ""]
    lines += [f"Command: `{run.get('command', '?')}`", "",
              f"Seeds: {run.get('seeds')}; split {run.get('split')}; embedder "
              f"{run.get('embedder', '?')}; {table['n_prompts']} prompts x "
              f"{len(table['models'])} models; strong `{table['strong']}`; "
              f"machine: {_machine(run)}; created {run.get('created', '?')}; "
              f"wall time {run.get('timing_s', {}).get('total', '?')} s.", ""]
    cols = _routing_cols(two, full=True)
    lines += _selected_line(run)
    lines += _routing_rows(run, cols)
    lines += ["", "Mean ± std over seeds on the test split (`val_*`: validation); `quality`, "
              "`cost`, `cost_at_best_single_quality_val` and `quality_gap_val` at the knob "
              "chosen on validation; cost ratios are fractions of the best single expert's "
              "cost; CPT is a strong-call share; `(reached k/n)`: in how many of the n seeds "
              "the figure exists (the mean is over those k).", ""]
    rows = _ordered(run)
    if run.get("skipped"):
        lines += ["Skipped: " + "; ".join(f"`{k}` ({v})" for k, v in run["skipped"].items()),
                  ""]
    figures[f"{stem}.table"] = {name: {c: r.get(c) for c in cols} for _, name, r in rows}
    plt = _plt()
    if two:
        fig, ax = plt.subplots(figsize=(7, 5))
        data: dict[str, Any] = {}
        for name, r in [*run["routers"].items(),
                        *((k, v) for k, v in run["baselines"].items()
                          if k in ("random", "oracle", "category"))]:
            c = r.get("curve")
            if not c or "pgr" not in c:
                continue
            style = "--" if name in ("random", "oracle", "category") else "-"
            ax.plot(c["share"], c["pgr"], style, marker=".",
                    label=f"{name} (APGR {figure(r.get('apgr'))})")
            data[name] = c
        ax.set_xlabel("strong-model call share")
        ax.set_ylabel("PGR (performance gap recovered)")
        top = max((max(c["pgr"]) for c in data.values()), default=1.0)
        ax.set_ylim(-0.1, max(1.1, top + 0.05))
        ax.set_title(f"Deferral curves: {stem}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        name = f"{stem}-deferral.png"
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        figures[name] = data
        lines += [f"![deferral curves]({name})", ""]
    fig, ax = plt.subplots(figsize=(7, 5))
    data = {}
    for name, r in [*run["routers"].items(),
                    *((f"{k} (baseline)", run["baselines"].get(k, {}))
                      for k in ("oracle", "random", "category"))]:
        c = r.get("qc_curve")
        if not c or not c.get("cost"):
            continue
        hx, hy = M.upper_hull(c["cost"], c["quality"])
        style = "--" if name.endswith("(baseline)") else "-"
        (ln,) = ax.plot(hx, hy, style, label=f"{name} (AIQ {figure(r.get('aiq'))})")
        ax.scatter(c["cost"], c["quality"], s=6, color=ln.get_color(), alpha=0.4)
        data[name] = {"cost": c["cost"], "quality": c["quality"],
                      "hull_cost": hx.tolist(), "hull_quality": hy.tolist()}
    for j, model in enumerate(table["models"]):
        b = run["baselines"].get(model, {})
        if b.get("cost") is not None:
            ax.scatter([b["cost"]], [b["quality"]], marker="s", color="black", s=25)
            ax.annotate(model.split("/")[-1], (b["cost"], b["quality"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
            data[model] = {"cost": b["cost"], "quality": b["quality"], "index": j}
    ax.set_xlabel("mean cost per query")
    ax.set_ylabel("mean quality")
    ax.set_title(f"Quality vs. cost (upper hulls): {stem}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    name = f"{stem}-pareto.png"
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    figures[name] = data
    lines += [f"![quality-cost fronts]({name})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- guard


def render_guard(run: Mapping[str, Any], stem: str, out: Path,
                 figures: dict[str, Any]) -> str:
    """The Markdown section of one guard run; writes a histogram PNG when scores travel."""
    methods: Mapping[str, Any] = run["methods"]
    lines = [f"## Guard: {run.get('suite', stem)}", "",
             f"Command: `{run.get('command', '?')}`", "",
             f"Seeds: {run.get('seeds', run.get('seed'))}; embedder "
             f"{run.get('embedder', '?')}; target FRR {run.get('target_frr', '?')}; "
             f"machine: {_machine(run)}; created {run.get('created', '?')}.", ""]
    ood_sets = sorted({k for r in methods.values() for k in r.get("ood_accuracy_by_set", {})})
    cols = [*GUARD_COLS, *(f"ood:{k}" for k in ood_sets)]
    sel = run.get("selected") or {}
    if sel:
        lines += [f"Selected on validation: **{sel.get('method')}** ({sel.get('criterion')}: "
                  f"{figure(sel.get('validation_score'))}); validation OOD: "
                  f"{(sel.get('validation_ood') or {}).get('source', '?')}.", ""]
    lines += _guard_rows(run)
    table: dict[str, Any] = {}
    for name, r in methods.items():
        vals = [r.get(c) for c in GUARD_COLS] + [r.get("ood_accuracy_by_set", {}).get(k)
                                                 for k in ood_sets]
        table[name] = {**dict(zip(cols, vals, strict=True)),
                       "validation_gqr": r.get("validation", {}).get("gqr_score")}
    lines.append("")
    figures[f"{stem}.table"] = table
    hists = {n: r["score_histogram"] for n, r in methods.items()
             if isinstance(r.get("score_histogram"), Mapping)}
    if hists:
        plt = _plt()
        fig, axes = plt.subplots(len(hists), 1, figsize=(7, 2.4 * len(hists)), squeeze=False)
        for ax, (n, h) in zip(axes[:, 0], hists.items(), strict=True):
            edges = h["edges"]
            for key in ("in_domain", "ood"):
                if key in h:
                    ax.stairs(h[key], edges, label=key, fill=False)
            ax.set_title(n, fontsize=9)
            ax.legend(fontsize=7)
        name = f"{stem}-guard-hist.png"
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        figures[name] = hists
        lines += [f"![guard score histograms]({name})", ""]
    return "\n".join(lines)


def _routing_cols(two: bool, full: bool) -> list[str]:
    if two:
        head = ["val_apgr", "apgr", "cpt20", "cpt50", "cpt80", "auc"] if full else \
            ["val_apgr", "apgr", "cpt50", "cpt80"]
    else:
        head = ["val_aiq"]
    return head + ["aiq", "cost_at_best_single_quality_val", "quality_gap_val",
                   "cost_at_best_single_quality"] + (["quality", "cost"] if full else [])


def _ordered(run: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(label, name, figures): the selected router first (marked), the other routers by
    name, then the baselines."""
    sel = str((run.get("selected") or {}).get("method"))
    rows: list[tuple[str, str, Mapping[str, Any]]] = []
    if sel in run["routers"]:
        rows.append((f"**{sel}** (selected on validation)", sel, run["routers"][sel]))
    rows += [(k, k, v) for k, v in sorted(run["routers"].items()) if k != sel]
    rows += [(f"*{k}* (baseline)", k, v) for k, v in run["baselines"].items()]
    return rows


def _cell(r: Mapping[str, Any], c: str) -> str:
    s = figure(r.get(c), r.get(f"{c}_std"))
    if f"{c}_reached" in r and r.get("n_seeds"):
        k = r[f"{c}_reached"]
        if isinstance(k, float):  # runs before issue 15 stored the share of seeds
            k = round(k * r["n_seeds"])
        s += f" (reached {k}/{r['n_seeds']})"
    return s


def _routing_rows(run: Mapping[str, Any], cols: Sequence[str],
                  keep: Sequence[str] | None = None) -> list[str]:
    lines = ["| router | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    sel = (run.get("selected") or {}).get("method")
    for label, name, r in _ordered(run):
        if keep is None or name == sel or name in keep:
            lines.append(f"| {label} | " + " | ".join(_cell(r, c) for c in cols) + " |")
    return lines


def _selected_line(run: Mapping[str, Any]) -> list[str]:
    sel = run.get("selected")
    if not sel:
        return ["No router could be selected (none has a validation score).", ""]
    score = sel.get("validation_score")
    line = (f"Selected on validation: **{sel['method']}** ({sel.get('criterion')}: "
            f"{figure(score)}). Seeds {run.get('seeds')} ({run.get('seed_set', 'dev')} seeds).")
    line += _refit_sentence(run)
    return [line, ""]


def _refit_sentence(run: Mapping[str, Any]) -> str:
    """What ``selected.refit`` says (evals.routing_eval._refit_reading), in one sentence."""
    ref = (run.get("selected") or {}).get("refit")
    if not ref:
        return ""
    lc = ref.get("learning_curve")
    curve = "" if not lc else (f" (validation score {figure(lc['val_fraction'])} fitted on "
                               f"{lc['fraction']:g} of train, {figure(lc['val_full'])} on all "
                               "of it)")
    if not ref.get("applied"):
        why = ref.get("why") or ("--refit never" if ref.get("mode") == "never" else
                                 "its learning curve on validation has levelled off")
        return f" Not refitted on train + validation: {why}{curve}."
    key = "apgr" if len(run["table"]["models"]) == 2 else "aiq"
    return (f" Refitted on train + validation ({ref.get('mode')}{curve}), read on test at the "
            f"knob its train fit set: {key.upper()} {_cell(ref.get('test') or {}, key)}; the "
            "rows below are fitted on train.")


def _guard_rows(run: Mapping[str, Any]) -> list[str]:
    """Every candidate: the selected one first (marked), the others by name."""
    methods: Mapping[str, Any] = run["methods"]
    sel = str((run.get("selected") or {}).get("method"))
    first = next(iter(methods.values()))
    ood_sets = list(first.get("ood_accuracy_by_set", {}))
    acc_sets = list(first.get("accept_rejection_by_set", {}))
    intents = "oos_recall" in first
    cols = ["val ID acc", "val OOD acc", "val GQR", "target FRR"]
    cols += ["in-scope acc", "FRR", "OOS recall"] if intents else \
        ["ID acc", "FRR", *ood_sets, "OOD mean"]
    cols += ["GQR", *(f"{a} rejected" for a in acc_sets), "p50 / p99 ms"]
    lines = ["| method | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols)]
    names = [*([sel] if sel in methods else []), *sorted(k for k in methods if k != sel)]
    for n in names:
        r = methods[n]
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
        v = r.get("validation", {})
        vals = [pct(v.get("in_domain_accuracy")), pct(v.get("ood_accuracy")),
                figure(v.get("gqr_score")), f"{r.get('target_frr', run.get('target_frr'))}"]
        if intents:
            vals += [pct(r.get("in_scope_accuracy")), pct(r.get("false_rejection_rate")),
                     pct(r.get("oos_recall"))]
        else:
            vals += [pct(r.get("in_domain_accuracy")), pct(r.get("false_rejection_rate")),
                     *(pct(r["ood_accuracy_by_set"].get(k)) for k in ood_sets),
                     pct(r.get("ood_accuracy"))]
        vals += [figure(r.get("gqr_score")),
                 *(pct(r.get("accept_rejection_by_set", {}).get(a)) for a in acc_sets)]
        lat = r.get("latency_p50_ms")
        vals.append("-" if lat is None else
                    f"{lat:.1f} / {r.get('latency_p99_ms', float('nan')):.1f}"
                    + ("" if r.get("latency_includes_embedding", True) else " (no embedding)"))
        label = f"**{n}** (selected on validation)" if n == sel else n
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    return lines


def _ms_pair(row: Mapping[str, Any] | None, key: str = "latency") -> str:
    """``row``'s ``{key}_p50_ms`` / ``{key}_p99_ms`` as "p50 / p99" (ms), "-" without them."""
    if row is None or row.get(f"{key}_p50_ms") is None:
        return "-"
    return f"{row[f'{key}_p50_ms']:.2f} / {row[f'{key}_p99_ms']:.2f}"


def _tfidf_baseline(run: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The TF-IDF + linear SVM row of a guard run (its first, when encoder variants repeat
    it: it reads no embedding, so every copy is the same fit)."""
    return next((r for k, r in run["methods"].items()
                 if str(r.get("method", k)) == "baseline-tfidf-svm"), None)


#: issue 21's guard bar: the selected method's GQR at least this far above TF-IDF + SVM's
GUARD_BAR = 0.03


def _guard_bar_rows(files: Sequence[str]) -> str:
    """Per guard run: the selected method against the same run's TF-IDF + SVM baseline, GQR
    and latency (p50 and p99, one query at a time), and whether it clears issue 21's bar
    (:data:`GUARD_BAR` more GQR at no more latency, read at p50 and, apart, at p99)."""
    lines = ["| file | suite | selected on validation | GQR: selected / baseline (diff) | "
             "p50 / p99 ms: selected | p50 / p99 ms: baseline | +0.03 GQR at <= baseline p50 | "
             "... and at <= baseline p99 |", "|---|---|---|---|---|---|---|---|"]
    for a in files:
        run = _load(a)
        name = str((run.get("selected") or {}).get("method"))
        sel, base = run["methods"].get(name), _tfidf_baseline(run)
        if sel is None or base is None:
            raise ValueError(f"{a}: no selected method or no baseline-tfidf-svm row")
        diff = float(sel["gqr_score"]) - float(base["gqr_score"])
        met = [diff >= GUARD_BAR - 1e-12 and sel[k] <= base[k]
               for k in ("latency_p50_ms", "latency_p99_ms")]
        lines.append(
            f"| `{a}` | {run.get('suite') or run.get('data', {}).get('name')} | {name} | "
            f"{figure(sel['gqr_score'])} / {figure(base['gqr_score'])} ({diff:+.3f}) | "
            f"{_ms_pair(sel)} | {_ms_pair(base)} | "
            + " | ".join("yes" if m else "**no**" for m in met) + " |")
    return "\n".join(lines)


def _guard_typo_rows(files: Sequence[str]) -> str:
    """Per guard run read with ``--typos``: the selected method and the TF-IDF + SVM
    baseline, GQR and in-domain accuracy on the clean and on the misspelt test sets, and the
    share of in-domain test queries whose outcome did not change (``--augment-typos``: the
    rate its training part was augmented with)."""
    lines = ["| file | suite | typos (augmented) | method | val GQR clean / typos | "
             "GQR clean / typos | ID acc clean / typos | same outcome |",
             "|---|---|---|---|---|---|---|---|"]
    for a in files:
        run = _load(a)
        name = str((run.get("selected") or {}).get("method"))
        sel, base = run["methods"].get(name), _tfidf_baseline(run)
        if sel is None or "typos" not in sel:
            raise ValueError(f"{a}: no selected method read with --typos")
        aug = (run.get("augment_typos") or {}).get("rate")
        for label, r in ((f"{name} (selected)", sel), ("baseline-tfidf-svm", base)):
            if r is None:
                continue
            t, v = r["typos"], r.get("validation") or {}
            lines.append(
                f"| `{a}` | {run.get('suite')} | {t['rate']:g} ({aug if aug else 'no'}) | "
                f"{label} | {figure(v.get('gqr_score'))} / "
                f"{figure((v.get('typos') or {}).get('gqr_score'))} | "
                f"{figure(r['gqr_score'])} / {figure(t['gqr_score'])} | "
                f"{figure(r['in_domain_accuracy'])} / {figure(t['in_domain_accuracy'])} | "
                f"{figure(t['in_domain_same_outcome'])} |")
    return "\n".join(lines)


def _routing_typo_rows(files: Sequence[str]) -> str:
    """Per routing run read with ``--typos``: each router's and simple baseline's headline
    figure (APGR with two experts, AIQ with more) on the clean and on the misspelt test
    prompts at the clean validation's knob, and the share of prompts whose choice held."""
    lines = ["| file | typos | router | figure | clean | typos | same choice |",
             "|---|---|---|---|---|---|---|"]
    for a in files:
        run = _load(a)
        two = len(run["table"]["models"]) == 2
        key = "apgr" if two else "aiq"
        rows = {**run["routers"], **{k: v for k, v in run["baselines"].items()
                                     if k.startswith("simple-")}}
        sel = (run.get("selected") or {}).get("method")
        for n, r in rows.items():
            t = r.get("typos")
            if t is None:
                continue
            lines.append(
                f"| `{a}` | {t['rate']:g} | {n}{' (selected)' if n == sel else ''} | "
                f"{key.upper()} | {figure(r.get(key), r.get(f'{key}_std'))} | "
                f"{figure(t.get(key), t.get(f'{key}_std'))} | {figure(t.get('same_choice'))} |")
    return "\n".join(lines)


def _cascade_rows(run: Mapping[str, Any]) -> str:
    """The two-stage guards of a guard run (method ``guard-cascade``): the escalation rule
    chosen on validation, how often the back stage ran, and the latency of the queries the
    front settled and of those it escalated, beside the run's TF-IDF + SVM baseline."""
    lines = ["| method | escalation rule (validation) | escalated: validation by part | "
             "escalated: test / latency sample | GQR (baseline) | p50 / p99 ms (baseline) | "
             "front only p50 / p99 ms | escalated p50 / p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    base = _tfidf_baseline(run)
    for n, r in sorted(run["methods"].items()):
        c = r.get("cascade")
        if c is None:
            continue
        e = (r.get("fit") or {}).get("escalation") or {}
        parts = ", ".join(f"{k} {v:.2f}" for k, v in
                          (e.get("validation_escalation_by_part") or {}).items())
        b_gqr = figure(base.get("gqr_score")) if base else "-"
        lines.append(
            f"| {n} | band {figure(e.get('band'))}, min p {e.get('min_proba')} "
            f"(cap {e.get('cap')}; agreement with the back guard "
            f"{figure(e.get('validation_agreement_with_back'))}) | {parts} | "
            f"{figure(c.get('test_escalation_share'), digits=2)} / "
            f"{figure(c.get('latency_sample_escalation_share'), digits=2)} | "
            f"{figure(r.get('gqr_score'))} ({b_gqr}) | "
            f"{_ms_pair(r)} ({_ms_pair(base)}) | {_ms_pair(c, 'latency_front_only')} | "
            f"{_ms_pair(c, 'latency_escalated')} |")
    return "\n".join(lines)


def _machine(run: Mapping[str, Any]) -> str:
    m = run.get("machine") or {}
    cpus = m.get("cpus", m.get("cpu_count", "?"))
    return f"{m.get('platform', '?')}, {cpus} CPUs"


# --------------------------------------------------------------------------- driver


def _run_shape_problem(run: Mapping[str, Any], kind: str) -> str | None:
    """Why a routing or guard run's top-level fields cannot be rendered (a hand-edited or
    foreign file: ``routers`` a list, a router's figures a string), or None."""
    keys = ("routers", "baselines") if kind == "routing" else ("methods",)
    for key in keys:
        v = run.get(key)
        if not isinstance(v, Mapping):
            return f"{key} is not an object"
        wrong = [str(k) for k, r in v.items() if not isinstance(r, Mapping)]
        if wrong:
            return f"{key}: {', '.join(wrong[:3])} not an object"
    if kind == "routing":
        t = run.get("table")
        if not isinstance(t, Mapping) or not isinstance(t.get("models"), list):
            return "table is not an object with a models list"
    for key in ("selected", "skipped"):
        if run.get(key) is not None and not isinstance(run.get(key), Mapping):
            return f"{key} is not an object"
    return None


def write_report(runs: Path | Sequence[Path], out: Path) -> tuple[Path, list[str]]:
    """Render every run under the folder(s) ``runs`` into ``out``; returns (report path,
    skipped files)."""
    folders = [runs] if isinstance(runs, Path) else list(runs)
    files = [f for d in folders if d.is_dir() for f in sorted(d.glob("*.json"))]
    if not files:
        raise FileNotFoundError(f"no run JSON files in {', '.join(map(str, folders))}")
    figures: dict[str, Any] = {}
    sections: list[str] = []
    skipped: list[str] = []
    for f in files:
        try:
            run = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            skipped.append(f"{f.name}: {e}")
            continue
        if not isinstance(run, dict):
            skipped.append(f"{f.name}: not a JSON object")
            continue
        if "routers" in run and "baselines" in run:
            render, kind = render_routing, "routing"
        elif "methods" in run:
            render, kind = render_guard, "guard"
        else:
            if f.name != "figures.json":
                skipped.append(f"{f.name}: neither a routing nor a guard run")
            continue
        bad = _run_shape_problem(run, kind)
        if bad:
            skipped.append(f"{f.name}: {bad}")
            continue
        before = dict(figures)
        out.mkdir(parents=True, exist_ok=True)
        try:
            sections.append(render(run, _stem(f), out, figures))
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
            # a field of the wrong type deeper down: this run is left out, the others render
            figures.clear()
            figures.update(before)
            _plt().close("all")
            skipped.append(f"{f.name}: a {kind} run with a field of the wrong type or "
                           f"missing ({type(e).__name__}: {e})")
    if not sections:  # an empty report, exit 0, read as "the runs rendered"
        why = f"; the first: {skipped[0]}" if skipped else ""
        raise ValueError(f"none of the {len(files)} JSON file(s) in "
                         f"{', '.join(map(str, folders))} is a routing or guard run{why}; "
                         "nothing written")
    head = ["# expertgate evaluation report", "",
            f"Generated by `expertgate eval report --runs {' '.join(map(str, folders))} "
            f"--out {out}` from "
            f"{len(sections)} run file(s). Every table names the command that produced it.",
            ""]
    report = out / "report.md"
    report.write_text("\n".join(head + sections) + "\n")
    (out / "figures.json").write_text(json.dumps(figures, indent=1, allow_nan=False,
                                                 default=_jsonable))
    return report, skipped


# --------------------------------------------------------------------------- doc blocks

_BLOCK = re.compile(r"(<!-- BEGIN GENERATED (?P<spec>[^>]*?) -->\n)(?P<body>.*?)"
                    r"(<!-- END GENERATED -->)", re.S)


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"generated block names {path}, which does not exist")
    run: dict[str, Any] = json.loads(p.read_text())
    return run


def _headline_routing(run: Mapping[str, Any]) -> dict[str, Any]:
    sel = (run.get("selected") or {}).get("method")
    r = run["routers"].get(sel, {})
    two = len(run["table"]["models"]) == 2
    keys = ["val_apgr", "apgr", "cpt50", "cpt80"] if two else \
        ["val_aiq", "aiq", "cost_at_best_single_quality_val", "quality_gap_val",
         "cost_at_best_single_quality"]
    out = {"method": sel, **{k: _cell(r, k) for k in keys}}
    ref = (run.get("selected") or {}).get("refit") or {}
    if ref.get("applied"):
        main = "apgr" if two else "aiq"
        out[f"{main} (train + validation)"] = _cell(ref.get("test") or {}, main)
    return out


def _headline_guard(run: Mapping[str, Any]) -> dict[str, Any]:
    sel = (run.get("selected") or {}).get("method")
    if sel is None:  # runs written before selection existed: no headline can be claimed
        return {"method": "(none selected)"}
    r = run["methods"][sel]
    out = {"method": sel, "target FRR": r.get("target_frr", run.get("target_frr")),
           "val GQR": figure(r.get("validation", {}).get("gqr_score")),
           "GQR": figure(r.get("gqr_score")),
           "ID acc %": f"{100 * r['in_domain_accuracy']:.2f}",
           "FRR %": f"{100 * r['false_rejection_rate']:.2f}"}
    if "oos_recall" in r:
        out["OOS recall %"] = f"{100 * r['oos_recall']:.2f}"
    else:
        out["OOD mean %"] = f"{100 * r['ood_accuracy']:.2f}"
    return out


def _old_headline_guard(run: Mapping[str, Any]) -> dict[str, Any]:
    """An old guard run had no selection: its best *test* GQR row was the headline."""
    if run.get("selected"):
        return _headline_guard(run)
    name, r = max(run["methods"].items(), key=lambda kv: kv[1].get("gqr_score") or -1)
    return _headline_guard({"selected": {"method": name},
                            "methods": {name: {"target_frr": run.get("target_frr"), **r}}})


def _old_headline_routing(run: Mapping[str, Any]) -> dict[str, Any]:
    """An old routing run had no selection: the row ranked first by test APGR / AIQ."""
    if run.get("selected"):
        return _headline_routing(run)
    two = len(run["table"]["models"]) == 2
    name = max(run["routers"], key=lambda k: run["routers"][k].get("apgr" if two else "aiq")
               or -1)
    return _headline_routing({**run, "selected": {"method": name}})


#: issue 21's bar on N-model tables: the selected router this much (of the best single
#: model's cost) cheaper than the best simple baseline at the best single model's quality
ROUTING_BAR = 0.10


def _routing_bar_rows(files: Sequence[str]) -> str:
    """Per routing run: the selected router's ``vs_simple`` (evals.routing_eval.vs_simple)."""
    lines = ["| file | models | selected | fitted on | figure | its value | best simple baseline "
             "| margin | bar met |", "|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        run = _load(f)
        sel = run.get("selected") or {}
        vs = sel.get("vs_simple")
        if not vs:
            raise ValueError(f"{f}: no vs_simple in its selection (a run before simple "
                             "baselines, or no finite figure)")
        n = len(run["table"]["models"])
        met = "-" if n == 2 else ("yes" if vs["margin"] >= ROUTING_BAR - 1e-12 else "**no**")
        fitted = str(vs.get("fitted_on", "train")).replace("+", " + ")
        lines.append(f"| `{f}` | {n} | {sel.get('method')} | {fitted} | {vs['metric']} | "
                     f"{figure(vs['selected'])} | "
                     f"{vs['baseline']} {figure(vs['baseline_value'])} | "
                     f"{vs['margin']:+.3f} | {met} |")
    return "\n".join(lines)


def _validation_rows(files: Sequence[str]) -> str:
    """Per routing run and router: the validation score a choice between settings is made
    on (mean validation APGR with two experts, validation AIQ with more), the seeds, and the
    run's ``--params`` (the setting compared)."""
    import shlex

    lines = ["| file | data | seeds | params | router | validation score (mean) |",
             "|---|---|---|---|---|---|"]
    for f in files:
        run = _load(f)
        argv = shlex.split(str(run.get("command", "")))
        params = argv[argv.index("--params") + 1] if "--params" in argv[:-1] else "defaults"
        two = len(run["table"]["models"]) == 2
        key = "val_apgr" if two else "val_aiq"
        seeds = f"{run.get('seed_set', 'dev')} {','.join(map(str, run.get('seeds', [])))}"
        for name, row in run["routers"].items():
            lines.append(f"| `{f}` | {run.get('data')} | {seeds} | `{params}` | {name} | "
                         f"{key} {figure(row.get(key))} |")
    return "\n".join(lines)


def _guard_validation_rows(files: Sequence[str]) -> str:
    """Per guard run and method: the validation GQR a choice between settings is made on,
    with the run's seed and, for a two-stage guard, its back encoder (``fit.back_spec``);
    the test GQR and p50 / p99 beside it, read after the choice."""
    lines = ["| file | suite | seed | method | back encoder | validation GQR | test GQR | "
             "p50 / p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for f in files:
        run = _load(f)
        seed = f"{run.get('seed_set', 'dev')} {run.get('seed')}"
        suite = run.get("suite") or (run.get("data") or {}).get("name")
        for name, r in sorted(run["methods"].items()):
            spec = (r.get("fit") or {}).get("back_spec")
            back = "-"
            if spec:
                o = spec.get("options") or {}
                back = (f"{spec.get('kind')}{' int8' if o.get('quantize') else ''}, "
                        f"{'layers ' + str(o['layers']) if o.get('layers') else 'all layers'}")
            lines.append(f"| `{f}` | {suite} | {seed} | {name} | {back} | "
                         f"{figure((r.get('validation') or {}).get('gqr_score'))} | "
                         f"{figure(r.get('gqr_score'))} | {_ms_pair(r)} |")
    return "\n".join(lines)


def _span(v: Sequence[float]) -> str:
    return f"{min(v):.2f} to {max(v):.2f}" if v else "-"


def _cost_model_rows(files: Sequence[str]) -> str:
    """Per routing run and router: the ``cost_model`` parameter (per seed where it differs:
    ``auto``'s choice), how many experts traded
    per-query costs in each seed, and the range over seeds of each expert's R^2 (lowest
    expert's and highest expert's)."""
    lines = ["| file | router | cost_model | experts with per-query costs, per seed | "
             "R^2 of log cost, lowest expert | highest expert |", "|---|---|---|---|---|---|"]
    for f in files:
        run = _load(f)
        m = len(run["table"]["models"])
        for name, row in run["routers"].items():
            sums = [x for x in row.get("cost_model_summaries") or [] if x]
            if not sums:
                continue
            lo = [min(x["cv_r2"].values()) for x in sums if x.get("cv_r2")]
            hi = [max(x["cv_r2"].values()) for x in sums if x.get("cv_r2")]
            per_seed = ", ".join(f"{len(x['predicted'])}/{m}" for x in sums)
            modes = [str(x["cost_model"]) for x in sums]  # auto's choice differs per seed
            mode = modes[0] if len(set(modes)) == 1 else ", ".join(modes)
            lines.append(f"| `{f}` | {name} | {mode} | {per_seed} | "
                         f"{_span(lo)} | {_span(hi)} |")
    return "\n".join(lines)


def render_block(spec: str) -> str:
    """The Markdown of one generated block (see the module doc for the kinds)."""
    kind, *args = spec.split()
    if kind in _FILE_LIST_BLOCKS and args:
        return _FILE_LIST_BLOCKS[kind](args)
    if kind == "routing-table" and args:
        run = _load(args[0])
        keep = args[1].split(",") if len(args) > 1 else None
        two = len(run["table"]["models"]) == 2
        return "\n".join([*_selected_line(run),
                          *_routing_rows(run, _routing_cols(two, full=False), keep)])
    if kind == "routing-headline" and args:
        h = _headline_routing(_load(args[0]))
        return "| " + " | ".join(h) + " |\n|" + "---|" * len(h) + "\n| " + \
            " | ".join(str(v) for v in h.values()) + " |"
    if kind == "guard-table" and args:
        run = _load(args[0])
        sel = run.get("selected") or {}
        return "\n".join([f"Selected on validation: **{sel.get('method')}** "
                          f"({sel.get('criterion')}: {figure(sel.get('validation_score'))}; "
                          f"validation OOD: {(sel.get('validation_ood') or {}).get('source')})."
                          f" Seed {run.get('seed')} ({run.get('seed_set', 'dev')}).", "",
                          *_guard_rows(run)])
    if kind == "guard-cascade" and args:
        return _cascade_rows(_load(args[0]))
    if kind == "guard-headline" and args:
        h = _headline_guard(_load(args[0]))
        return "| " + " | ".join(h) + " |\n|" + "---|" * len(h) + "\n| " + \
            " | ".join(str(v) for v in h.values()) + " |"
    if kind == "compare" and len(args) == 2:
        old, new = _load(args[0]), _load(args[1])
        guard = "methods" in new
        ho = (_old_headline_guard if guard else _old_headline_routing)(old)
        hn = (_headline_guard if guard else _headline_routing)(new)
        keys = [k for k in hn if k in ho]
        lines = ["| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        lines.append(f"| before (`{args[0]}`, headline = best test row) | "
                     + " | ".join(str(ho[k]) for k in keys) + " |")
        lines.append(f"| now (`{args[1]}`, selected on validation) | "
                     + " | ".join(str(hn[k]) for k in keys) + " |")
        return "\n".join(lines)
    if kind == "provenance" and args:
        run = _load(args[0])
        pv = run.get("provenance") or {}
        git = pv.get("git") or {}
        enc = pv.get("encoder") or {}
        data = "; ".join(f"`{d.get('path')}` {str(d.get('sha256') or d.get('sha256_tree'))[:12]}"
                         for d in pv.get("data", []))
        wall = (run.get("timing_s") or {}).get("total")
        return (f"Run `{args[0]}`: commit {str(git.get('commit'))[:10]}"
                f"{' (dirty tree)' if git.get('dirty') else ''}; data {data or '-'}; encoder "
                f"{enc.get('name')} (weights {str(enc.get('weights_sha256'))[:12]}); seeds "
                f"{(pv.get('seeds') or {}).get('used')}; created {run.get('created')}"
                + (f"; wall time {wall:.0f} s" if isinstance(wall, int | float) else "")
                + f"; command `{pv.get('command')}`.")
    if kind in ("offpolicy-table", "offpolicy-dr") and args:
        from evals.offpolicy import summary_markdown

        runs = [_load(a) for a in args]
        if kind == "offpolicy-dr":
            return summary_markdown(runs, ("dr", "dr_clip"), training=True,
                                    clip_grid=False).rstrip("\n")
        return summary_markdown(runs).rstrip("\n")
    if kind == "embedder-table" and args:
        return _embedder_rows(_load(args[0]))
    if kind == "train-time" and args:
        lines = ["| file | router | embedder | prompts (train) | embedding s | fit s | "
                 "embedding + fit + evaluation s | decision ms, batch 1: p50 / p99 "
                 "(`--latency`) |", "|---|---|---|---|---|---|---|---|"]
        for a in args:
            r = _load(a)
            b1 = (r.get("latency") or {}).get("batch_1") or {}
            lat = f"{figure(b1.get('p50_ms'))} / {figure(b1.get('p99_ms'))}" if b1 else "-"
            lines.append(f"| `{a}` | {r.get('router')} | {r.get('embedder')} | "
                         f"{r.get('n_train')} | {figure(r.get('embed_seconds'))} | "
                         f"{figure(r.get('fit_seconds'))} | {figure(r.get('train_seconds_total'))} "
                         f"| {lat} |")
        return "\n".join(lines)
    if kind == "overhead-table" and args:
        path, run = _bench_run(args[0], "overhead")
        return _overhead_table(path, run, args[1].split(",") if len(args) > 1 else None)
    if kind == "overhead-targets" and args:
        path, run = _bench_run(args[0], "overhead")
        lines = [f"Targets of `{path}`:", "", "| target | goal | this run | met? |",
                 "|---|---|---|---|"]
        lines += [f"| {t['target']} | {t['goal']} | {figure(t.get('value'))} | "
                  f"{'met' if t.get('met') else '**not met**'} |"
                  for t in run.get("targets") or []]
        per_round = run.get("per_round") or {}
        if per_round:
            concs = sorted({c for by in per_round.values() for c in by}, key=lambda c: int(c[1:]))
            lines += ["", "Round by round (a target on p99 holds only if it holds in every "
                      "round):", "", "| ratio | " + " | ".join(concs) + " |",
                      "|---|" + "---|" * len(concs)]
            lines += [f"| {name} | " + " | ".join(", ".join(f"{v:.2f}" for v in by.get(c, []))
                                                 or "-" for c in concs) + " |"
                      for name, by in per_round.items()]
        return "\n".join(lines)
    if kind == "router-bench" and args:
        path, run = _bench_run(args[0], "router")
        return _router_bench(path, run)
    raise ValueError(f"unknown generated block {spec!r}")


def _auto_rows(files: Sequence[str]) -> str:
    """Per routing run with ``auto``: its choice in each seed (the best-mean candidate where
    the one-standard-error rule kept a simpler one), its test APGR (two experts) or AIQ and
    fit time per seed beside ``stack``'s."""
    lines = ["| file | auto's choice per seed | test figure: auto | stack | "
             "s per seed: auto | stack |", "|---|---|---|---|---|---|"]
    for a in files:
        r = _load(a)
        key = "apgr" if len(r["table"]["models"]) == 2 else "aiq"
        auto, stack = r["routers"].get("auto") or {}, r["routers"].get("stack") or {}
        picks = []
        for c in auto.get("auto_choices") or []:
            best = (c or {}).get("best_mean") or {}
            pick = f"{c['family']}" if c else "-"
            if best and best.get("family") != (c or {}).get("family"):
                pick += f" (best mean {best['family']})"
            if ((c or {}).get("params") or {}).get("cost_model") == "predicted":
                pick += " + predicted costs"
            picks.append(pick)
        lines.append(f"| `{a}` | {', '.join(picks) or '-'} | "
                     f"{key.upper()} {figure(auto.get(key), auto.get(f'{key}_std'))} | "
                     f"{figure(stack.get(key), stack.get(f'{key}_std'))} | "
                     f"{figure(auto.get('seconds_per_seed'), digits=1)} | "
                     f"{figure(stack.get('seconds_per_seed'), digits=1)} |")
    return "\n".join(lines)


def _overhead_rows(files: Sequence[str]) -> str:
    """Per ``bench overhead`` JSON: added p50 / p99 (ms, vs direct, same round) at c=1 of the
    routed cache miss (the ``semantic`` policy, and a trained artifact's with ``--artifact``),
    the floor and the pass-through, with the run's prompt length."""
    paths = ("routed_miss", "routed_learned", "floor", "passthrough")
    lines = ["| file | embedder | routed prompt tokens | rounds | "
             + " | ".join(f"{p} added p50 / p99 ms (c=1)" for p in paths) + " |",
             "|---|---|---|---|" + "---|" * len(paths)]
    for a in files:
        r = _load(a)
        prm = r.get("params") or {}
        toks = prm.get("prompt_tokens_sample") or "15-30 (short questions)"
        cells = []
        for p in paths:
            c1 = ((r.get("paths") or {}).get(p) or {}).get("c1") or {}
            cells.append(f"{figure(c1.get('added_p50_ms'))} / {figure(c1.get('added_p99_ms'))}"
                         if c1 else "-")
        lines.append(f"| `{a}` | {prm.get('embedder')} | {toks} | {prm.get('rounds')} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bench_run(path: str, benchmark: str) -> tuple[str, dict[str, Any]]:
    """``path`` itself, or the newest ``benchmark`` JSON in the folder ``path``."""
    p = Path(path)
    if not p.is_dir():
        return path, _load(path)
    found = []
    for f in sorted(p.glob("*.json")):
        run = json.loads(f.read_text())
        if isinstance(run, dict) and run.get("benchmark") == benchmark:
            found.append(((run.get("machine") or {}).get("date_utc") or "", f.as_posix(), run))
    if not found:
        raise FileNotFoundError(f"generated block names {path}: no {benchmark} JSON in it")
    _, name, run = max(found, key=lambda t: (t[0], t[1]))
    return name, run


def _source(path: str, run: Mapping[str, Any]) -> str:
    """Where a bench figure comes from: file, commit, dirty flag, date, machine, command."""
    git = run.get("git") or (run.get("provenance") or {}).get("git") or {}
    m = run.get("machine")
    if isinstance(m, Mapping):
        load = [round(x, 1) for x in m.get("loadavg_start") or []][:1] + \
            [round(x, 1) for x in m.get("loadavg_end") or []][:1]
        where = (f"{m.get('date_utc')} on {m.get('cpu')} ({m.get('cores')} cores, load "
                 f"average {' -> '.join(map(str, load)) or '?'})")
    else:
        where = f"{run.get('created')} on {m or '?'}"
    commit = (f"commit {str(git['commit'])[:10]}{' (dirty tree)' if git.get('dirty') else ''}"
              if git.get("commit") else "commit not recorded")
    return f"Run `{path}`: {commit}; {where}; command `{run.get('command')}`."


def _overhead_table(path: str, run: Mapping[str, Any], keep: Sequence[str] | None) -> str:
    """Every path x concurrency of a ``bench overhead`` run (added = path - direct, same round,
    median over rounds), then streams, in-process costs and the summary ratios."""
    prm = run.get("params") or {}
    paths: Mapping[str, Any] = run.get("paths") or {}
    # explore / shadow are judged against the plain routed miss of the same run
    ratio = keep is not None and "routed_miss" in keep and "routed_miss" in paths
    lines = [_source(path, run), "",
             f"Embedder {prm.get('embedder')}; {prm.get('rounds')} round(s); requests per path "
             f"and concurrency per round: {prm.get('requests')} (routed misses "
             f"{prm.get('miss_requests')}"
             + (f", LiteLLM {prm.get('litellm_requests')}" if "litellm" in paths else "")
             + "). Latencies in ms; *added* = the path's percentile minus `direct`'s in the "
             "same round" + ("; *vs miss* = added p50 / `routed_miss`'s" if ratio else "")
             + ".", "",
             "| path | conc | p50 | p99 | added p50 | added p90 | added p99 | "
             + ("vs miss | " if ratio else "") + "req/s | errors | CPU ms/req | RSS MiB |",
             "|---|" + "---:|" * (11 if ratio else 10)]
    for name, by in paths.items():
        if keep is not None and name not in keep:
            continue
        for c, r in by.items():
            vals = [figure(r.get(k)) for k in ("p50_ms", "p99_ms", "added_p50_ms", "added_p90_ms",
                                              "added_p99_ms")]
            if ratio:
                miss = paths["routed_miss"].get(c, {}).get("added_p50_ms")
                vals.append(f"{r['added_p50_ms'] / miss:.2f}x" if miss else "-")
            rps = r.get("rps")
            vals += ["-" if rps is None else f"{rps:,.0f}", str(r.get("errors")),
                     figure(r.get("cpu_ms_per_req")), f"{r.get('rss_mib', 0):.0f}"]
            lines.append(f"| {name} | {c.lstrip('c')} | " + " | ".join(vals) + " |")
    streams = {k: v for k, v in (run.get("streams") or {}).items()
               if k != "direct" and keep is None}
    if streams:
        lines += ["", "Streams at c=1, added time to first byte p50 / p99 (ms): " + "; ".join(
            f"{k} {figure(v.get('added_ttfb_p50_ms'))} / {figure(v.get('added_ttfb_p99_ms'))} "
            f"({v.get('errors')} errors)" for k, v in streams.items()) + "."]
    costs = run.get("learnloop_costs")
    if costs and (keep is None or "routed_explore" in keep or "routed_shadow" in keep):
        lines += ["", f"In process (same code as the gateway, no network), p50 per request: "
                  f"cache-miss decision {figure(costs.get('decide_miss_us_p50'), digits=1)} µs, "
                  f"exploration {figure(costs.get('explore_us_p50'), digits=1)} µs, shadow "
                  f"decision and log record {figure(costs.get('shadow_us_p50'), digits=1)} µs."]
    if run.get("summary") and keep is None:
        lines += ["", "```", *run["summary"], "```"]
    return "\n".join(lines)


def _router_bench(path: str, run: Mapping[str, Any]) -> str:
    """Embedders (batch 1 and 32), router families' ``decide()``, the decision cache and
    micro-batching of a ``bench router`` run."""
    t = run.get("table") or {}
    lines = [_source(path, run), "",
             f"Fitted on a synthetic table of {t.get('prompts')} prompts "
             f"({len(t.get('categories') or [])} categories, {len(t.get('experts') or [])} "
             f"experts), embedded with {t.get('embedder')}; ms per call.", "",
             "| embedder | batch 1 p50 / p99 | batch 32 p50 | per text in batch 32 | "
             "min cosine to onnx |", "|---|---:|---:|---:|---:|"]
    for name, e in (run.get("embedders") or {}).items():
        if "b1" not in e:
            lines.append(f"| {name} | skipped: {e.get('skipped', '?')} | | | |")
            continue
        lines.append(f"| {name} | {figure(e['b1']['p50_ms'])} / {figure(e['b1']['p99_ms'])} | "
                     f"{figure(e['b32']['p50_ms'])} | {figure(e['b32'].get('per_text_ms'))} | "
                     f"{figure(e.get('cosine_to_onnx_min'), digits=4)} |")
    lines += ["", "| family | batch 1 p50 | batch 1 p99 | batch 32 p50 | per query in batch 32 |",
              "|---|---:|---:|---:|---:|"]
    for name, f in sorted((run.get("families") or {}).items()):
        if "b1" not in f:
            lines.append(f"| {name} | skipped: {f.get('skipped', '?')} | | | |")
            continue
        lines.append(f"| {name} | {figure(f['b1']['p50_ms'])} | {figure(f['b1']['p99_ms'])} | "
                     f"{figure(f['b32']['p50_ms'])} | {figure(f['b32'].get('per_query_ms'))} |")
    cache = run.get("cache") or {}
    parts = [f"{k} " + (f"skipped ({v['skipped']})" if "skipped" in v else
                        f"{figure(v.get('p50_ms'))} p50 / {figure(v.get('p99_ms'))} p99")
             for k, v in cache.items()]
    lines += ["", "Decision cache, hit (ms): " + "; ".join(parts) + "."]
    b = run.get("batching") or {}
    if b:
        d = b.get("c1_dispatch") or {}
        lines += ["", f"Micro-batching, {b.get('concurrency')} closed-loop callers, one worker "
                  f"thread: one text per pass {b['one_per_pass']['texts_per_s']} texts/s, "
                  f"micro-batched {b['micro_batched']['texts_per_s']} texts/s (mean batch "
                  f"{b['micro_batched']['mean_batch']}): x{b.get('speedup')}. At concurrency 1 "
                  f"a call through the batcher took {d.get('batcher_p50_us')} µs p50 against "
                  f"{d.get('executor_p50_us')} µs for a plain executor call."]
    return "\n".join(lines)


def _soak_rows(files: Sequence[str]) -> str:
    lines = ["| file | minutes | Redis | requests (req/s) | outcomes | RSS after warm-up -> "
             "end MiB | fds | not pooled fds | most pooled connections (bound) | verdict |",
             "|---|---:|---|---|---|---|---|---|---|---|"]
    for a in files:
        r = _load(a)
        rss0, rss1 = r["rss_kib_after_warmup"] / 1024, r["rss_kib_end"] / 1024
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.get("counts", {}).items()))
        # runs before the fd breakdown have no pooled/other split
        other = (f"{r['other_fds_after_warmup']:g} -> {r['other_fds_end']:g}"
                 if "other_fds_end" in r else "-")
        bound = r.get("pooled_connections_bound", {})
        pooled = ", ".join(f"{k} {v} ({bound.get(k, '-')})"
                           for k, v in r.get("pooled_connections_max", {}).items()) or "-"
        lines.append(f"| `{a}` | {r['minutes']:g} | {'yes' if r.get('with_redis') else 'no'} | "
                     f"{r['requests']:,} ({r['req_per_s']}) | {outcomes} | {rss0:.1f} -> "
                     f"{rss1:.1f} ({100 * r['rss_growth']:+.2f}%) | {r['fds_after_warmup']:g} "
                     f"-> {r['fds_end']:g} | {other} | {pooled} | "
                     f"{'PASS' if r.get('ok') else 'FAIL'} |")
    lines += ["", *(_source(a, _load(a)) for a in files)]
    return "\n".join(lines)


def _startup_rows(files: Sequence[str]) -> str:
    """``bench startup`` JSONs: per file and variant (start-up warm-up on / off), the median
    over its fresh processes of the start-up time, the first decision, the worst of the
    first ones and the steady p50."""
    lines = ["| file | config | variant | start-up s | first decision ms | worst of first "
             "decisions ms | steady p50 ms |", "|---|---|---|---:|---:|---:|---:|"]
    runs = {a: _load(a) for a in files}
    for a, r in runs.items():
        for v, label in (("warm", "warm-up (default)"), ("cold", "no warm-up")):
            m = r["median"][v]
            # null: a run with --steady 0 measured no steady decisions
            steady = "n/a" if m["steady_p50_ms"] is None else f"{m['steady_p50_ms']:.3f}"
            lines.append(f"| `{a}` | `{r['config']}` | {label} | {m['start_s']:.3f} | "
                         f"{m['first_decision_ms']:.2f} | {m['worst_of_first_ms']:.2f} "
                         f"(first {r['first']}) | {steady} |")
    lines += ["", *(_source(a, r) for a, r in runs.items())]
    return "\n".join(lines)


def _fault_rows(files: Sequence[str]) -> str:
    lines = ["| file | faults | sent (concurrency) | answered | failed cleanly | lost | "
             "answered twice by an upstream | wall s |", "|---|---|---|---:|---|---:|---:|---:|"]
    for a in files:
        r = _load(a)
        errs = ", ".join(f"{v} `{k}`" for k, v in sorted(r.get("errors", {}).items()))
        twice = r.get("answered_twice")
        lines.append(f"| `{a}` | {', '.join(r.get('faults') or [])} | {r['sent']} "
                     f"({r.get('concurrency')}) | {r['answered']} | {r['failed_cleanly']}"
                     f"{f' ({errs})' if errs else ''} | {r['lost']} | "
                     f"{'not countable' if twice is None else twice} | {r.get('wall_s')} |")
    lines += ["", *(_source(a, _load(a)) for a in files)]
    return "\n".join(lines)


def _embedder_rows(run: Mapping[str, Any]) -> str:
    """``bench router`` figures per embedder: decision p50/p99 (embed + irt) by prompt length
    and embedding throughput at batch 64 (one thread / every core)."""
    lengths = run.get("lengths") or {}
    tput = run.get("throughput") or {}
    ns = sorted({int(n) for by in lengths.values() for n in by})
    head = ["embedder", *[f"decision p50 / p99 ms at {n} tokens" for n in ns],
            "prompts/s (batch 64, 128 tokens): 1 thread", "all cores"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in sorted(set(lengths) | set(tput)):
        by = lengths.get(name, {})
        cells = [f"{figure(by[str(n)]['decision']['p50_ms'])} / "
                 f"{figure(by[str(n)]['decision']['p99_ms'])}" if str(n) in by else "-"
                 for n in ns]
        t = tput.get(name, {})
        cells += [str(round(t[k]["prompts_per_s"])) if k in t else "-"
                  for k in ("one_thread", "all_cores")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    m = run.get("machine") or {}
    lines.append("")
    lines.append(f"Machine: {m.get('cpu')} ({m.get('cores')} cores), load average at start "
                 f"{m.get('loadavg_start')}; command `{run.get('command')}`.")
    return "\n".join(lines)


def update_docs(docs: Sequence[str | Path], check: bool = False) -> list[str]:
    """Rewrite every generated block in ``docs``; returns the blocks changed (or, with
    ``check``, out of date) as ``file: spec``."""
    changed: list[str] = []
    for doc in docs:
        p = Path(doc)
        if not p.is_file():
            continue
        text = p.read_text()

        def sub(m: re.Match[str], doc: Path = p) -> str:
            body = render_block(m.group("spec").strip()) + "\n"
            if body != m.group("body"):
                changed.append(f"{doc}: {m.group('spec').strip()}")
            return m.group(1) + body + m.group(4)

        new = _BLOCK.sub(sub, text)
        if new != text and not check:
            p.write_text(new)
    return changed


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


RUNS_DEFAULT = ["docs/results/runs", "docs/results/guard"]
OUT_DEFAULT = "docs/results"


def cli_register(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``expertgate eval report`` and its handler."""
    parser.add_argument("--runs", nargs="+", default=list(RUNS_DEFAULT),
                        help="folders of JSON files from `eval routing` / `eval guard`")
    parser.add_argument("--out", default=OUT_DEFAULT, help="where report.md and PNGs go")
    parser.add_argument("--docs", nargs="*", default=None,
                        help="documents whose generated blocks are rewritten from the run "
                             "JSONs they name (default: README and docs/)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a generated block is out of date")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    # a document named but missing was passed over silently (its blocks never rewritten)
    missing = [d for d in args.docs or () if not Path(d).is_file()]
    if missing:
        print(f"expertgate eval report: --docs {missing[0]}: no such file", file=sys.stderr)
        return 2
    # a misspelt folder beside a good one was passed over (its runs silently not reported)
    gone = [r for r in args.runs if not Path(r).is_dir()]
    if gone and not args.check:
        print(f"expertgate eval report: --runs {gone[0]}: no such folder", file=sys.stderr)
        return 2
    if args.check and (args.runs != RUNS_DEFAULT or args.out != OUT_DEFAULT):
        # --check reads only the documents' blocks and the run files each names
        print("expertgate eval report: --check compares the generated blocks of --docs with "
              "the run JSONs each block names; --runs and --out are not read with it",
              file=sys.stderr)
        return 2
    docs = DEFAULT_DOCS if args.docs is None else args.docs
    try:
        if not args.check:
            report, skipped = write_report([Path(r) for r in args.runs], Path(args.out))
            for s in skipped:
                print(f"skipped {s}", file=sys.stderr)
            print(f"wrote {report}")
        changed = update_docs(docs, check=args.check)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"expertgate eval report: {e}", file=sys.stderr)
        return 2
    for c in changed:
        print(f"{'out of date' if args.check else 'regenerated'}: {c}")
    return 1 if args.check and changed else 0


#: the kinds whose rows come from a list of run files, one renderer each
_FILE_LIST_BLOCKS: dict[str, Callable[[Sequence[str]], str]] = {
    "guard-bar": _guard_bar_rows,
    "guard-typos": _guard_typo_rows,
    "routing-typos": _routing_typo_rows,
    "cost-models": _cost_model_rows,
    "routing-bar": _routing_bar_rows,
    "routing-validation": _validation_rows,
    "guard-validation": _guard_validation_rows,
    "overhead-miss": _overhead_rows,
    "soak": _soak_rows,
    "faults": _fault_rows,
    "auto-choices": _auto_rows,
    "startup": _startup_rows,
}
