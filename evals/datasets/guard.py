"""Guard tables and the offline guard suites (GQR-Bench protocol).

A *guard table* has the columns ``text, label, split`` (ARCHITECTURE.md, "Data formats"):

* ``split`` is ``train``, ``validation`` or ``test``;
* ``label`` is an in-domain label (a route, domain or intent) or an out-of-distribution marker:
  ``oos`` / ``ood`` / ``unsafe``, or the name of an OOD set (a label of a ``test`` row that
  does not occur among the ``train`` labels: these are named on stderr and in
  ``meta["unseen_test_labels"]``; ``unseen_labels="drop"`` drops such rows instead, and
  ``"error"`` refuses the file). OOD rows are allowed in ``test`` and in ``validation``,
  never in ``train``: validation OOD rows (``val_ood``) only ever *select* a method or an
  operating point; no guard learns or calibrates on an OOD example;
* an optional column ``kind`` (``in_domain`` | ``ood`` | ``accept``) overrides the inference
  above; ``accept`` marks a test set that should *not* be rejected but has no in-domain label
  (e.g. HateCheck's non-hateful cases), reported separately as false rejections.

:class:`GuardData` is the parsed form: the training part as texts + labels (and as a
:class:`~routers.base.RoutingTable` through :meth:`GuardData.train_table`), the validation
part (in-domain; carved from train with a seed when the file has none), the validation OOD
sets (``val_ood``, for selection only), the in-domain test part, the OOD test sets by name and
the "should accept" sets by name. :func:`leave_labels_out` makes pseudo-OOD validation sets
from whole in-domain labels when the data has no validation OOD rows.

Suites built from ``shared/data`` (:func:`load_suite`):

* ``clinc150-gqr``: CLINC150's 10 domains as routes (``data_full.json`` + ``domains.json``);
  train/val/test from CLINC150's in-scope splits; OOD test sets ``clinc_oos`` (``oos_test``),
  ``webquestions`` (``test.json``) and ``hatecheck_hateful`` (unsafe); HateCheck's
  non-hateful cases as the accept set ``hatecheck_nonhateful``;
* ``clinc150-intents``: the 150 intents + ``oos`` protocol of Larson et al. (2019): OOD test
  set ``oos`` (``oos_test``); ``oos_val`` is the validation OOD set (selection only, in both
  CLINC150 suites); ``oos_train`` is never used;
* ``banking77``: BANKING77's 77 intents as routes (validation = 10 % of train, stratified,
  seed 0) with the same OOD and accept sets as ``clinc150-gqr``;
  ``banking77-domain``: the same data as one route ``banking``.

GQR-Bench itself (Šléher et al. 2025, package ``gqr``, github.com/williambrach/gqr) builds its
data from Hugging Face at run time, which cannot happen here. :func:`load_gqr_bench` reads
that data once exported to a folder (see its doc for the assumed layout).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evals.datasets import data_dir
from routers.base import RouterError, RoutingTable
from routers.guard import stratified_split

__all__ = [
    "OOD_LABELS",
    "SUITES",
    "GuardData",
    "GuardDataError",
    "guard_table_from_labels",
    "leave_groups_out",
    "leave_labels_out",
    "load_gqr_bench",
    "load_guard_data",
    "load_guard_table",
    "load_suite",
    "pseudo_ood",
    "stratified_split",
    "suite_files",
]

#: labels that always mean "reject" in a guard table
OOD_LABELS = frozenset({"oos", "ood", "unsafe", "out_of_scope", "out-of-scope"})

SUITES: dict[str, str] = {
    "clinc150-gqr": "CLINC150 10 domains as routes; OOD: CLINC oos, WebQuestions, HateCheck",
    "clinc150-intents": "CLINC150 150 intents + oos (Larson et al. 2019 protocol)",
    "banking77": "BANKING77 77 intents as routes; OOD: CLINC oos, WebQuestions, HateCheck",
    "banking77-domain": "BANKING77 as one route 'banking'; same OOD sets",
}

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation",
                  "valid": "validation", "dev": "validation", "eval": "validation",
                  "test": "test"}


class GuardDataError(RouterError):
    """A guard table or suite could not be read or is malformed."""


@dataclass
class GuardData:
    """A guard evaluation set: in-domain train/validation/test plus named OOD test sets."""

    name: str
    train_texts: list[str]
    train_labels: list[str]
    val_texts: list[str]
    val_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]
    ood: dict[str, list[str]] = field(default_factory=dict)
    accept: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    val_ood: dict[str, list[str]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The in-domain labels, sorted."""
        return sorted(set(self.train_labels))

    def train_table(self, routes: dict[str, str] | None = None) -> RoutingTable:
        """The training part as a RoutingTable with ``categories`` = labels."""
        return guard_table_from_labels(self.train_texts, self.train_labels, routes=routes,
                                       id_prefix="train")

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_labels": len(self.labels),
            "n_train": len(self.train_texts),
            "n_validation": len(self.val_texts),
            "n_test_in_domain": len(self.test_texts),
            "ood_sets": {k: len(v) for k, v in self.ood.items()},
            "accept_sets": {k: len(v) for k, v in self.accept.items()},
            "validation_ood_sets": {k: len(v) for k, v in self.val_ood.items()},
            **self.meta,
        }


def guard_table_from_labels(texts: Sequence[str], labels: Sequence[str],
                            routes: dict[str, str] | None = None,
                            id_prefix: str = "row") -> RoutingTable:
    """Texts with in-domain labels -> RoutingTable (categories = labels, one-hot scores).

    Each label maps to the expert ``routes[label]`` (default: an expert named after the
    label); the expert of a row scores 1, the others 0.
    """
    if len(texts) != len(labels):
        raise GuardDataError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise GuardDataError("guard table has no training rows")
    routes = routes or {}
    expert_of = {lab: str(routes.get(lab, lab)) for lab in sorted(set(labels))}
    experts = sorted(set(expert_of.values()))
    col = {e: j for j, e in enumerate(experts)}
    scores = np.zeros((len(texts), len(experts)))
    for i, lab in enumerate(labels):
        scores[i, col[expert_of[lab]]] = 1.0
    ids = [f"{id_prefix}:{i}" for i in range(len(texts))]
    return RoutingTable(ids, [str(t) for t in texts], experts, scores, np.zeros_like(scores),
                        [str(c) for c in labels])


# --------------------------------------------------------------------------- generic files


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        return _read_rows_utf8(path)
    except UnicodeDecodeError as first:
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:  # where in the file (the first error is in a chunk)
            line = data.count(b"\n", 0, e.start) + 1
            raise GuardDataError(f"{path}: line {line} is not UTF-8 (byte "
                                 f"{data[e.start:e.start + 1]!r}); save the table as UTF-8"
                                 ) from None
        raise first


#: the guard table's columns: a header's spaces, capitals and byte-order mark aside
COLUMNS = ("text", "label", "split", "kind")
#: the longest CSV field read (the csv module's default, 131,072 characters, refused a
#: pasted document as a text: the embedders bound what they read of it)
_MAX_CSV_FIELD = 1 << 30


def _csv_rows(path: Path, delimiter: str) -> list[dict[str, Any]]:
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, _MAX_CSV_FIELD))
    # utf-8-sig: a spreadsheet's "CSV UTF-8" begins with a byte-order mark, which would
    # otherwise be part of the first column's name
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            return list(reader)
        except csv.Error as e:
            raise GuardDataError(f"{path}: line {reader.line_num}: {e}") from None
        finally:
            csv.field_size_limit(limit)


def _named_columns(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with a header's ``" Label"`` or ``"Text"`` read as the column it names."""
    out = {}
    for k, v in row.items():
        name = k.strip().lower() if isinstance(k, str) else k
        out[name if name in COLUMNS and name not in row else k] = v
    return out


def _read_rows_utf8(path: Path) -> list[dict[str, Any]]:
    suf = path.suffix.lower()
    if suf in (".jsonl", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8-sig") as f:
            for ln, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise GuardDataError(f"{path}:{ln}: bad JSON: {e}") from None
        return rows
    if suf == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise GuardDataError(f"{path}: not JSON: {e}") from None
        if not isinstance(data, list):
            raise GuardDataError(f"{path}: expected a JSON array of rows")
        return data
    if suf in (".csv", ".tsv"):
        return _csv_rows(path, "\t" if suf == ".tsv" else ",")
    if suf == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    raise GuardDataError(f"{path}: unknown guard table format {suf!r} "
                         "(use .jsonl, .json, .csv, .tsv or .parquet)")


def load_guard_data(path: str | Path, *, val_fraction: float = 0.1, seed: int = 0,
                    unseen_labels: str = "ood", log: Any = None) -> GuardData:
    """Read a guard table file (JSONL / JSON / CSV / TSV / Parquet) into :class:`GuardData`.

    Without in-domain ``validation`` rows, ``val_fraction`` of the train rows (stratified by
    label, ``seed``) become the validation part. Rows without a ``split`` are train rows if
    their label is in-domain. OOD rows in ``train`` are an error; in ``validation`` they form
    the validation OOD sets. Test labels that never occur in train become OOD sets
    (``unseen_labels="ood"``, named through ``log``, default stderr), are dropped
    (``"drop"``) or refuse the file (``"error"``).
    """
    if unseen_labels not in ("ood", "drop", "error"):
        raise GuardDataError(f"unseen_labels must be ood, drop or error, not {unseen_labels!r}")
    say = log if log is not None else (lambda s: print(s, file=sys.stderr))
    p = Path(path)
    if not p.is_file():
        raise GuardDataError(f"guard table not found: {p}")
    rows = _read_rows(p)
    if not rows:
        raise GuardDataError(f"{p}: guard table is empty")
    odd = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if odd is not None:
        raise GuardDataError(f"{p}: row {odd + 1} is not an object with text and label "
                             f"(it is {json.dumps(rows[odd], default=str)[:60]})")
    rows = [_named_columns(r) for r in rows]
    missing = {"text", "label"} - set(rows[0])
    if missing:
        found = ", ".join(repr(str(k)) for k in list(rows[0])[:6])
        raise GuardDataError(f"{p}: guard table lacks column(s): {', '.join(sorted(missing))} "
                             f"(its columns: {found or 'none'})")
    parsed: list[tuple[str, str, str, str | None]] = []
    for i, r in enumerate(rows):
        text, label = r.get("text"), r.get("label")
        for col, v in (("text", text), ("label", label)):
            if isinstance(v, list | dict):  # JSON: str() would make "['a', 'b']" a text
                raise GuardDataError(f"{p}: row {i + 1}: {col} is "
                                     f"{'a list' if isinstance(v, list) else 'an object'}, "
                                     "not a string")
            # an empty CSV cell is "", a Parquet or JSON gap None or NaN: none is a label
            if v is None or (isinstance(v, float) and v != v) or str(v).strip() == "":
                raise GuardDataError(f"{p}: row {i + 1} has no {col}")
        raw_split = str(r.get("split") or "train").strip().lower()
        split = _SPLIT_ALIASES.get(raw_split)
        if split is None:
            raise GuardDataError(f"{p}: row {i + 1}: unknown split {raw_split!r}")
        kind = r.get("kind")
        parsed.append((str(text), str(label).strip(), split,
                       str(kind).strip().lower() if kind not in (None, "") else None))

    def is_ood(label: str, kind: str | None, in_domain: set[str]) -> bool:
        if kind is not None:
            if kind not in ("in_domain", "ood", "accept"):
                raise GuardDataError(f"{p}: unknown kind {kind!r}")
            return kind == "ood"
        return label.lower() in OOD_LABELS or label not in in_domain

    in_domain = {lab for _, lab, s, k in parsed
                 if s == "train" and k in (None, "in_domain") and lab.lower() not in OOD_LABELS}
    if not in_domain:
        raise GuardDataError(f"{p}: no in-domain train rows")
    unseen = sorted({lab for _, lab, s, k in parsed
                     if k is None and s != "train" and lab not in in_domain
                     and lab.lower() not in OOD_LABELS})
    if unseen:
        listed = ", ".join(repr(u) for u in unseen[:20]) + (" ..." if len(unseen) > 20 else "")
        if unseen_labels == "error":
            raise GuardDataError(f"{p}: label(s) {listed} occur outside train but never in "
                                 "train; add train rows for them, mark them with a kind "
                                 "column, or let them become OOD sets")
        say(f"{p}: {len(unseen)} label(s) never occur in train: {listed}; "
            + ("they become OOD sets (opt out with --unseen-labels drop|error)"
               if unseen_labels == "ood" else "their rows are dropped"))
    data = GuardData(p.stem, [], [], [], [], [], [],
                     meta={"source": str(p), "unseen_test_labels": unseen,
                           "unseen_labels": unseen_labels})
    for n, (text, lab, split, kind) in enumerate(parsed, 1):
        if kind is None and lab in unseen and unseen_labels == "drop":
            continue
        if kind == "accept":
            if split != "test":
                raise GuardDataError(f"{p}: row {n}: accept rows belong to the test split")
            data.accept.setdefault(lab, []).append(text)
        elif is_ood(lab, kind, in_domain):
            if split == "train":
                raise GuardDataError(
                    f"{p}: row {n}: OOD label {lab!r} in split 'train'; a guard learns from "
                    "in-domain rows only (OOD rows belong to validation, for selection, or "
                    "to test)")
            (data.ood if split == "test" else data.val_ood).setdefault(lab, []).append(text)
        elif split == "train":
            data.train_texts.append(text)
            data.train_labels.append(lab)
        elif split == "validation":
            data.val_texts.append(text)
            data.val_labels.append(lab)
        else:
            data.test_texts.append(text)
            data.test_labels.append(lab)
    _say_seen_test_rows(data, p, say)
    if not data.val_texts and val_fraction > 0:
        keep, held = stratified_split(data.train_labels, val_fraction, seed)
        data.val_texts = [data.train_texts[i] for i in held]
        data.val_labels = [data.train_labels[i] for i in held]
        data.train_texts = [data.train_texts[i] for i in keep]
        data.train_labels = [data.train_labels[i] for i in keep]
        data.meta["validation"] = f"{val_fraction:g} of train, stratified, seed {seed}"
    if not data.train_texts:
        raise GuardDataError(f"{p}: no in-domain train rows: a guard learns from them")
    return data


def _say_seen_test_rows(data: GuardData, path: Path, say: Any) -> None:
    """A note when test rows repeat a training text (case and spaces aside): queries the
    guard has seen, which the test figures count as new ones."""
    def norm(t: str) -> str:
        return " ".join(t.lower().split())

    seen = {norm(t) for t in data.train_texts}
    ood = [t for v in data.ood.values() for t in v]
    n_id = sum(norm(t) in seen for t in data.test_texts)
    n_ood = sum(norm(t) in seen for t in ood)
    if n_id or n_ood:
        say(f"note: {path}: {n_id} of {len(data.test_texts)} in-domain test rows and {n_ood} "
            f"of {len(ood)} OOD test rows repeat a training text (case and spaces aside): the "
            "test figures count them as unseen queries; drop them from the test split for a "
            "measure on new queries")


def load_guard_table(path: str | Path) -> RoutingTable:
    """The train split of a guard table file as a RoutingTable (categories = labels).

    This is what ``expertgate train --router guard --format guard`` fits on; the guard then
    holds out its own validation part (param ``val_fraction``, ``seed``) to calibrate. Rows of
    the file's validation split are *not* included (use :func:`load_guard_data` for them).
    """
    return load_guard_data(path, val_fraction=0.0).train_table()


# --------------------------------------------------------------------------- GQR-Bench

#: GQR-Bench's integer labels (gqr/core/dataloader.py ``label2domain``)
GQR_LABELS = {0: "law", 1: "finance", 2: "healthcare", 3: "ood"}


def load_gqr_bench(folder: str | Path, *, log: Any = None) -> GuardData:
    """GQR-Bench data exported from the ``gqr`` package to ``folder``.

    The package returns pandas DataFrames: ``load_train_dataset()`` -> (train, eval) and
    ``load_id_test_dataset()`` with columns ``text, domain, label`` (label 0 law, 1 finance,
    2 healthcare), and ``load_ood_test_dataset()`` with ``text, label (3), domain ('ood'),
    dataset`` (jigsaw, olid, hate_xplain, hate_speech_slovak, dkhate, web_questions,
    ml_questions). Assumed layout: those frames written as ``train``, ``eval``, ``test`` and
    ``ood_test`` with extension ``.parquet``, ``.csv`` or ``.jsonl``, e.g.
    ``train.to_parquet(folder / "train.parquet")``. ``eval`` is the validation part.
    OOD rows without a text are left out, and counted through ``log`` (default stderr).
    """
    say = log if log is not None else (lambda s: print(s, file=sys.stderr))
    root = Path(folder)

    def find(stem: str) -> Path:
        for ext in (".parquet", ".jsonl", ".csv", ".json"):
            f = root / f"{stem}{ext}"
            if f.is_file():
                return f
        raise GuardDataError(f"GQR-Bench folder {root} has no {stem}.parquet/.jsonl/.csv")

    def domain_of(r: dict[str, Any], where: str) -> str:
        d = r.get("domain")
        if d not in (None, ""):
            return str(d)
        lab = r.get("label")
        try:
            return GQR_LABELS[int(lab)]  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            raise GuardDataError(
                f"{where} has no domain and label {lab!r}: GQR-Bench's labels are "
                + ", ".join(f"{k} ({v})" for k, v in GQR_LABELS.items())
                + "; give a 'domain' column for other domains") from None

    parts: dict[str, tuple[list[str], list[str]]] = {}
    for stem in ("train", "eval", "test"):
        f = find(stem)
        rows = _read_rows(f)
        texts, labs = [], []
        for i, r in enumerate(rows, 1):
            where = f"{f}: row {i}"
            d = domain_of(r, where)
            if d == "ood":
                raise GuardDataError(f"GQR-Bench {stem}: OOD row in an in-domain split")
            if r.get("text") is None or str(r["text"]).strip() == "":
                raise GuardDataError(f"{where} has no text")
            texts.append(str(r["text"]))
            labs.append(d)
        parts[stem] = (texts, labs)
    ood: dict[str, list[str]] = {}
    blank = 0
    ood_file = find("ood_test")
    for r in _read_rows(ood_file):
        if r.get("text") is None or str(r["text"]).strip() == "":
            blank += 1
            continue
        ood.setdefault(str(r.get("dataset") or "ood").strip(), []).append(str(r["text"]))
    if blank:
        say(f"note: {blank} rows of {ood_file} have no text: left out of the OOD sets")
    return GuardData("gqr-bench", *parts["train"], *parts["eval"], *parts["test"], ood=ood,
                     meta={"source": str(root), "protocol": "GQR-Bench (Šléher et al. 2025)",
                           "files": [str(find(s)) for s in ("train", "eval", "test",
                                                           "ood_test")]})


# --------------------------------------------------------------------------- shared/data suites


def _need(path: Path) -> Path:
    if not path.exists():
        raise GuardDataError(f"data file not found: {path} (set EXPERTGATE_DATA_DIR to the "
                             "shared data folder)")
    return path


def _clinc(root: Path) -> dict[str, list[list[str]]]:
    data: dict[str, list[list[str]]] = json.loads(
        _need(root / "clinc150" / "data_full.json").read_text(encoding="utf-8"))
    return data


def _webquestions(root: Path) -> list[str]:
    rows = json.loads(_need(root / "webquestions" / "test.json").read_text(encoding="utf-8"))
    return [str(r["qText"]) for r in rows]


def _hatecheck(root: Path) -> tuple[list[str], list[str]]:
    hateful: list[str] = []
    non: list[str] = []
    with _need(root / "hatecheck" / "test_suite_cases.csv").open(encoding="utf-8",
                                                                 newline="") as f:
        for r in csv.DictReader(f):
            text = r["test_case"].strip()
            (hateful if r["label_gold"] == "hateful" else non).append(text)
    return hateful, non


def _shared_ood(root: Path, clinc: dict[str, list[list[str]]]) -> tuple[dict[str, list[str]],
                                                                         dict[str, list[str]]]:
    hateful, non = _hatecheck(root)
    ood = {"clinc_oos": [t for t, _ in clinc["oos_test"]],
           "webquestions": _webquestions(root),
           "hatecheck_hateful": hateful}
    return ood, {"hatecheck_nonhateful": non}


def load_suite(name: str, root: str | Path | None = None) -> GuardData:
    """One of :data:`SUITES`, read from the shared data folder (``data_dir()`` by default)."""
    base = Path(root) if root is not None else data_dir()
    if name not in SUITES:
        raise GuardDataError(f"unknown guard suite {name!r}; known: {', '.join(SUITES)}")
    if name.startswith("clinc150"):
        clinc = _clinc(base)
        val_ood = {"oos_val": [t for t, _ in clinc["oos_val"]]}
        if name == "clinc150-intents":
            parts = [([t for t, _ in clinc[s]], [lab for _, lab in clinc[s]])
                     for s in ("train", "val", "test")]
            return GuardData(name, *parts[0], *parts[1], *parts[2],
                             ood={"oos": [t for t, _ in clinc["oos_test"]]},
                             val_ood=val_ood,
                             meta={"protocol": "Larson et al. 2019: in-scope accuracy, OOS "
                                   "recall; oos_val for selection only; oos_train unused"})
        domains = json.loads(_need(base / "clinc150" / "domains.json").read_text("utf-8"))
        dom_of = {intent: d for d, intents in domains.items() for intent in intents}
        parts = [([t for t, _ in clinc[s]], [dom_of[lab] for _, lab in clinc[s]])
                 for s in ("train", "val", "test")]
        ood, accept = _shared_ood(base, clinc)
        return GuardData(name, *parts[0], *parts[1], *parts[2], ood=ood, accept=accept,
                         val_ood=val_ood,
                         meta={"protocol": "GQR-style: 10 CLINC150 domains as routes; "
                               "oos_val for selection only"})
    # banking77
    def read(split: str) -> tuple[list[str], list[str]]:
        with _need(base / "banking77" / f"{split}.csv").open(encoding="utf-8",
                                                            newline="") as f:
            rows = list(csv.DictReader(f))
        return [r["text"] for r in rows], [r["category"] for r in rows]

    tr_t, tr_l = read("train")
    te_t, te_l = read("test")
    keep, held = stratified_split(tr_l, 0.1, 0)
    if name == "banking77-domain":
        tr_l = ["banking"] * len(tr_l)
        te_l = ["banking"] * len(te_l)
    ood, accept = _shared_ood(base, _clinc(base))
    return GuardData(name, [tr_t[i] for i in keep], [tr_l[i] for i in keep],
                     [tr_t[i] for i in held], [tr_l[i] for i in held], te_t, te_l,
                     ood=ood, accept=accept,
                     meta={"validation": "0.1 of BANKING77 train, stratified, seed 0"})


def suite_files(name: str, root: str | Path | None = None) -> list[Path]:
    """The shared-data files a suite reads (for the provenance of a result)."""
    base = Path(root) if root is not None else data_dir()
    shared = [base / "clinc150" / "data_full.json", base / "webquestions" / "test.json",
              base / "hatecheck" / "test_suite_cases.csv"]
    if name == "clinc150-intents":
        return [base / "clinc150" / "data_full.json"]
    if name == "clinc150-gqr":
        return [*shared, base / "clinc150" / "domains.json"]
    if name.startswith("banking77"):
        return [base / "banking77" / "train.csv", base / "banking77" / "test.csv", *shared]
    raise GuardDataError(f"unknown guard suite {name!r}; known: {', '.join(SUITES)}")


def leave_labels_out(data: GuardData, fraction: float = 0.2, seed: int = 0
                     ) -> tuple[GuardData, dict[str, Any]]:
    """Pseudo-OOD for selection when the data has no validation OOD rows.

    Whole in-domain labels (``fraction`` of them, at least one, seeded) are taken out of
    train and validation; the rest is a smaller in-domain problem (its own train and
    validation), and the held-out labels' *validation* rows are its OOD set
    ``held_out_labels``. Test rows are never touched. Needs at least three labels (two stay
    in-domain).
    """
    labels = data.labels
    if len(labels) < 3:
        raise GuardDataError(f"{data.name}: leave-labels-out needs at least 3 in-domain labels "
                             f"(has {len(labels)}); give validation OOD rows instead")
    k = min(max(1, round(len(labels) * fraction)), len(labels) - 2)
    held = sorted(np.random.default_rng(seed).choice(labels, size=k, replace=False).tolist())
    out = set(held)
    tr = [(t, lab) for t, lab in zip(data.train_texts, data.train_labels, strict=True)
          if lab not in out]
    va = [(t, lab) for t, lab in zip(data.val_texts, data.val_labels, strict=True)
          if lab not in out]
    pseudo = [t for t, lab in zip(data.val_texts, data.val_labels, strict=True) if lab in out]
    if not pseudo:
        raise GuardDataError(f"{data.name}: the held-out labels have no validation rows")
    reduced = GuardData(f"{data.name}[leave-labels-out]", [t for t, _ in tr],
                        [lab for _, lab in tr], [t for t, _ in va], [lab for _, lab in va],
                        [], [], val_ood={"held_out_labels": pseudo})
    info = {"source": "leave-labels-out", "held_out_labels": held, "fraction": fraction,
            "seed": seed, "n_pseudo_ood": len(pseudo)}
    return reduced, info


def leave_groups_out(data: GuardData, fraction: float = 0.2, seed: int = 0, groups: int = 10
                     ) -> tuple[GuardData, dict[str, Any]]:
    """Pseudo-OOD for selection when the data has no validation OOD rows and too few labels
    to hold whole ones out (one route, e.g. "banking"): the in-domain train and validation
    texts are split into ``groups`` topic groups (:func:`routers.guard_auto.topic_groups`:
    k-means on a TF-IDF, seeded), and ``fraction`` of the groups (at least one) are held out
    like labels in :func:`leave_labels_out`: out of train and validation, their validation
    rows the OOD set ``held_out_groups``. Near-domain pseudo-OOD, as held-out intents are;
    test rows are never touched. Decided on the texts alone, before any embedding."""
    from routers.guard_auto import held_out_groups, topic_groups

    if len(data.val_texts) < 2 * groups:
        raise GuardDataError(f"{data.name}: too few validation rows ({len(data.val_texts)}) to "
                             f"hold {groups} topic groups out (at least {2 * groups}); give "
                             "validation rows labelled oos to select on, more in-domain "
                             "validation rows, or one method with --methods")
    group = topic_groups([*data.train_texts, *data.val_texts], groups=groups, seed=seed)
    held = held_out_groups(groups, fraction, seed)
    out = np.isin(group, held)
    n = len(data.train_texts)
    tr_out, va_out = out[:n], out[n:]
    pseudo = [t for t, o in zip(data.val_texts, va_out, strict=True) if o]
    if not pseudo or va_out.all() or tr_out.all():
        raise GuardDataError(f"{data.name}: the held-out topic groups leave no validation "
                             "OOD rows or no in-domain rows")
    keep = lambda xs, o: [x for x, h in zip(xs, o, strict=True) if not h]  # noqa: E731
    reduced = GuardData(f"{data.name}[leave-groups-out]", keep(data.train_texts, tr_out),
                        keep(data.train_labels, tr_out), keep(data.val_texts, va_out),
                        keep(data.val_labels, va_out), [], [],
                        val_ood={"held_out_groups": pseudo})
    info = {"source": "leave-groups-out", "groups": groups, "held_out_groups": held,
            "fraction": fraction, "seed": seed, "n_pseudo_ood": len(pseudo),
            "why": f"{len(data.labels)} in-domain label(s): too few to hold whole labels out"}
    return reduced, info


def pseudo_ood(data: GuardData, fraction: float = 0.2, seed: int = 0
               ) -> tuple[GuardData, dict[str, Any]]:
    """Selection's pseudo-OOD for data without validation OOD rows: whole labels held out
    (:func:`leave_labels_out`) when there are three or more, else topic groups
    (:func:`leave_groups_out`)."""
    if len(data.labels) >= 3:
        return leave_labels_out(data, fraction=fraction, seed=seed)
    return leave_groups_out(data, fraction=fraction, seed=seed)
