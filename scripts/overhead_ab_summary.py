"""Medians and ranges of an overhead A/B folder (docs/results/pipeline/session*/): files named
``<kind>-<base|head>-<commit>-run<N>.json`` written by ``expertgate bench overhead --json``.

    .venv/bin/python scripts/overhead_ab_summary.py docs/results/pipeline/session20
"""

from __future__ import annotations

import glob
import json
import statistics
import sys
from pathlib import Path
from typing import Any

FIGURES = [("hit", "paths.passthrough.c1.added_p50_ms"),
           ("hit", "paths.routed_hit.c1.added_p50_ms"),
           ("stream", "streams.passthrough.added_ttfb_p50_ms"),
           ("miss", "paths.routed_miss.c1.added_p50_ms"),
           ("miss", "paths.routed_miss.c1.added_p99_ms")]


def _get(d: Any, path: str) -> float:
    for k in path.split("."):
        d = d[k]
    return float(d)


def main(folder: str) -> int:
    print("| figure (JSON path) | runs | base | head |")
    print("|---|---|---|---|")
    for kind, path in FIGURES:
        cells, runs = [], []
        for tag in ("base", "head"):
            files = sorted(glob.glob(f"{folder}/{kind}-{tag}-*.json"))
            vals = [_get(json.loads(Path(f).read_text()), path) for f in files]
            commit = files[0].rsplit("-", 2)[-2] if files else "?"
            runs.append(str(len(vals)))
            cells.append(f"{commit}: {statistics.median(vals):.3f} ms "
                         f"({min(vals):.3f}-{max(vals):.3f})" if vals else "none")
        print(f"| `{path}` | {' + '.join(runs)} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
