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

Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evals import metrics as M

__all__ = ["cli_register", "main", "render_guard", "render_routing", "write_report"]

GUARD_COLS = ("in_domain_accuracy", "ood_accuracy", "gqr_score", "false_rejection_rate",
              "latency_p50_ms", "latency_p99_ms")


def _num(v: Any, std: Any = None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if not isinstance(v, int | float):
        return str(v)
    # costs in USD per query are tiny numbers: significant digits keep them readable
    small = v != 0 and abs(v) < 0.01
    s = f"{v:.{digits}g}" if small else f"{v:.{digits}f}"
    if isinstance(std, int | float) and std > 0:
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
    cols = (["apgr", "cpt20", "cpt50", "cpt80", "auc"] if two else []) + [
        "aiq", "quality", "cost", "cost_at_best_single_quality",
        "cost_at_best_single_quality_val", "quality_gap_val"]
    lines.append("| router | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    rows = sorted(run["routers"].items(),
                  key=lambda kv: -(kv[1].get("apgr" if two else "aiq") or -1.0))
    rows += [(f"*{k}* (baseline)", v) for k, v in run["baselines"].items()]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(_num(r.get(c), r.get(f"{c}_std"))
                                                 for c in cols) + " |")
    lines += ["", "Mean ± std over seeds on the test split; `quality`, `cost`, "
              "`cost_at_best_single_quality_val` and `quality_gap_val` at the knob chosen on "
              "validation; cost ratios are fractions of the best single expert's cost; CPT "
              "is a strong-call share.", ""]
    if run.get("skipped"):
        lines += ["Skipped: " + "; ".join(f"`{k}` ({v})" for k, v in run["skipped"].items()),
                  ""]
    figures[f"{stem}.table"] = {name: {c: r.get(c) for c in cols} for name, r in rows}
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
                    label=f"{name} (APGR {_num(r.get('apgr'))})")
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
        (ln,) = ax.plot(hx, hy, style, label=f"{name} (AIQ {_num(r.get('aiq'))})")
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
    lines.append("| method | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    table: dict[str, Any] = {}
    for name, r in methods.items():
        vals = [r.get(c) for c in GUARD_COLS] + [r.get("ood_accuracy_by_set", {}).get(k)
                                                 for k in ood_sets]
        table[name] = dict(zip(cols, vals, strict=True))
        lines.append(f"| {name} | " + " | ".join(
            _num(v, digits=2 if c.startswith("latency") else 3)
            for c, v in zip(cols, vals, strict=True)) + " |")
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


def _machine(run: Mapping[str, Any]) -> str:
    m = run.get("machine") or {}
    cpus = m.get("cpus", m.get("cpu_count", "?"))
    return f"{m.get('platform', '?')}, {cpus} CPUs"


# --------------------------------------------------------------------------- driver


def write_report(runs: Path, out: Path) -> tuple[Path, list[str]]:
    """Render every run under ``runs`` into ``out``; returns (report path, skipped files)."""
    files = sorted(runs.glob("*.json")) if runs.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no run JSON files in {runs}")
    out.mkdir(parents=True, exist_ok=True)
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
        elif "routers" in run and "baselines" in run:
            sections.append(render_routing(run, _stem(f), out, figures))
        elif "methods" in run:
            sections.append(render_guard(run, _stem(f), out, figures))
        elif f.name != "figures.json":
            skipped.append(f"{f.name}: neither a routing nor a guard run")
    head = ["# expertgate evaluation report", "",
            f"Generated by `expertgate eval report --runs {runs} --out {out}` from "
            f"{len(sections)} run file(s). Every table names the command that produced it.",
            ""]
    report = out / "report.md"
    report.write_text("\n".join(head + sections) + "\n")
    (out / "figures.json").write_text(json.dumps(figures, indent=1, allow_nan=False,
                                                 default=_jsonable))
    return report, skipped


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def cli_register(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``expertgate eval report`` and its handler."""
    parser.add_argument("--runs", default="docs/results/runs",
                        help="folder of JSON files from `eval routing` / `eval guard`")
    parser.add_argument("--out", default="docs/results", help="where report.md and PNGs go")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        report, skipped = write_report(Path(args.runs), Path(args.out))
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"expertgate eval report: {e}", file=sys.stderr)
        return 2
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    print(f"wrote {report}")
    return 0
