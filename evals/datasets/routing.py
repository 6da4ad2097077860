"""Routing-table loaders: shared data sets and exported gateway logs -> :class:`RoutingTable`.

Every loader returns the wide table of :mod:`routers.base` (one row per prompt, one column
per model, NaN where a model was not evaluated). Formats, by :func:`load_table` name:

``long``
    CSV, JSONL or Parquet with columns ``prompt_id, prompt, model, score, cost, [category]``
    (RouterBench's ``eval_name`` is the category when there is no ``category`` column).
    Checked row by row before anything is embedded (:func:`clean_long`): a missing or
    non-numeric score, a score outside [0, 1], a missing, negative, infinite or non-numeric
    cost or one above :data:`MAX_COST`, an empty prompt, a prompt id with two texts or two
    categories are errors that name the rows; numeric prompt ids and categories (``7`` and
    ``7.0`` alike) become strings; an optional ``category`` column that is empty is dropped,
    a prompt's empty category cells take the one its other rows give, and prompts without any
    become ``(none)``, with a note on stderr; rows repeating a (prompt, model) pair are
    averaged into one cell, with a note on stderr.
    A JSON prompt given as a list of texts or chat messages (``{"role", "content"}``) is its
    turns joined by blank lines; another list or object in a prompt, prompt id, model or
    category is an error naming the rows.
    Spaces after a CSV's commas are not part of the fields (``a, "b, c"`` is ``a`` and
    ``b, c``), and a model name's surrounding spaces are not part of the name.
    CSV fields may hold line breaks and commas (quoted); rows one field longer than the
    header (a comma left unquoted in every prompt: pandas would read the first field as an
    index and shift the rest) are an error, unless that field is empty on every row (a
    delimiter ending each row, as a spreadsheet exports: read as no field), as is a file
    that is not UTF-8 (its line named).
``routellm`` / ``routellm-mmlu`` / ``routellm-gsm8k``
    RouteLLM's cached evaluations (``shared/data/routellm``): per-question correctness of
    ``gpt-4-1106-preview`` (strong) and ``mistralai/Mixtral-8x7B-Instruct-v0.1`` (weak).
    MMLU's category is the subject (file name). Costs are in USD per query from the prices
    the RouteLLM paper uses, :data:`ROUTELLM_PRICES_PER_1M` (GPT-4 $24.7 and Mixtral $0.24 per
    1M tokens, a blend of input and output prices), times an estimate of the tokens:
    ``ceil(chars / 4)`` of the prompt plus the output (GSM8K: the model's recorded response,
    same estimate; MMLU: one answer token). Prompts RouteLLM lists as contaminated are
    dropped, as RouteLLM does, unless ``drop_contaminated=False``.
``llmrouter``
    LLMRouter's NQ table (``shared/data/llmrouter_nq``): 500 queries x 6 models with score and
    cost given (the source's cost units).
``wide`` (alias ``routerbench``)
    One row per prompt (CSV, JSONL, JSON or Parquet), as RouterBench publishes its tables
    (11 models, per-query costs in USD): a ``prompt`` column, for every model a score column
    named by the model and its cost column ``<model>|total_cost`` (or ``<model>|cost``); the
    models are the columns that have such a cost column; a score column with a
    ``<model>|model_response`` beside it but no cost column, or a cost column without its
    score column, is an error naming them (that model would be left out unseen); another
    column of numbers in [0, 1] without a cost column is named in a note on stderr and read
    as no model. Optional: ``sample_id`` or
    ``prompt_id`` (else the row number), ``eval_name`` or ``category``; other columns
    (``<model>|model_response``, ``oracle_model_to_route_to``) are ignored. An empty score is
    a model not evaluated on that prompt (a model with none is left out, named on stderr); a
    prompt given as a list of turns (texts or chat messages) is read as the turns' texts
    joined by blank lines. Then checked as ``long`` is. Pickles are refused (loading one runs
    code from the file): convert RouterBench's ``.pkl`` first, e.g.
    ``pandas.read_pickle(src).to_parquet(dst)`` on a file you trust.
``logs``
    Exported gateway routing logs (Parquet or JSONL) joined with feedback: ``text`` ->
    prompt, ``expert`` -> model, ``feedback_score`` -> score, ``cost_usd`` -> cost (0 where
    none was logged; an infinite, negative or non-numeric cost is an error, :func:`log_costs`;
    so is a ``feedback_score`` written as words or outside [0, 1]). Rows without text or
    without feedback, and rated requests that no expert served (``expert`` null or empty, or
    ``status`` not ``ok``) and ensemble answers (``mode`` ``ensemble``: a rating of several
    experts' combined answer, the record naming the aggregator and costing them all), are
    dropped, with a count printed to stderr. A log that
    mixes policies (or router versions) is said so with a count per policy; ``policy=``
    (``train --policy``) keeps one policy's records. A record repeating the ``request_id`` of
    an earlier one (the same request logged twice) is left out, with a count on stderr.
    Records of the same text are one prompt (scores of repeated (text, expert) pairs are
    averaged).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import RouterError, RoutingTable
from routers.logrecord import (
    TRAINING_COLUMNS,
    UNSERVED_ENDPOINTS,
    policy_groups,
    policy_mix_warning,
    repeated_requests,
    repeated_requests_note,
)

__all__ = [
    "FORMATS",
    "MAX_COST",
    "MISSING_CATEGORY",
    "ROUTELLM_PRICES_PER_1M",
    "ROUTELLM_STRONG",
    "ROUTELLM_WEAK",
    "clean_long",
    "given",
    "load_llmrouter",
    "load_logs",
    "load_long",
    "load_routellm",
    "load_table",
    "load_wide",
    "log_costs",
    "log_ratings",
    "read_log_export",
]

ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
#: USD per 1M tokens used by the RouteLLM paper (Ong et al. 2024, section 5): GPT-4 at $24.7
#: and Mixtral-8x7B at $0.24 (each a blend of the input and output list prices of the time).
ROUTELLM_PRICES_PER_1M: dict[str, float] = {ROUTELLM_STRONG: 24.7, ROUTELLM_WEAK: 0.24}

FORMATS = ("long", "wide", "routerbench", "routellm", "routellm-mmlu", "routellm-gsm8k",
           "llmrouter", "logs")
#: a wide table's cost column of model ``m``: ``m`` + one of these (RouterBench's first)
WIDE_COST_SUFFIXES = ("|total_cost", "|cost")
#: the category given to prompts whose optional category cell is empty
MISSING_CATEGORY = "(none)"
#: the largest cost per query a table may hold (USD or tokens): far above any price or
#: token count, and far below where the evaluation's sums of squares overflow to infinity
MAX_COST = 1e15


def _need(path: Path) -> Path:
    if not path.exists():
        raise RouterError(f"no such file or folder: {path}")
    return path


def _read_frame(path: Path) -> Any:
    import pandas as pd

    _need(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        if suffix == ".json":
            return pd.DataFrame(json.loads(path.read_text()))
        if suffix in (".csv", ".tsv"):
            # skipinitialspace: a table typed as 'a, "b, c", d' has its columns and quoted
            # texts without the space (else ' prompt' is no prompt column)
            sep = "\t" if suffix == ".tsv" else ","
            df = pd.read_csv(path, sep=sep, skipinitialspace=True)
            if (not isinstance(df.index, pd.RangeIndex) and df.index.nlevels == 1
                    and len(df.columns) and df.iloc[:, -1].isna().all()):
                # a delimiter at the end of every row but the header's (a spreadsheet's
                # export): the extra field is empty, not a shifted column
                df = pd.read_csv(path, sep=sep, skipinitialspace=True, index_col=False)
            names = [c.strip() if isinstance(c, str) else c for c in df.columns]
            if len(set(names)) == len(names):  # never two columns of one name
                df.columns = names
            if not isinstance(df.index, pd.RangeIndex):
                # every row one field longer than the header: pandas takes the first field
                # as an index, and each column then reads its left neighbour's field
                raise RouterError(
                    f"{path}: the header names {len(df.columns)} columns but the rows hold "
                    f"{len(df.columns) + df.index.nlevels} fields (an unquoted "
                    f"{'tab' if suffix == '.tsv' else 'comma'} in a text, as in "
                    f"{_plain(df.index[0])!r} of the first row?): quote every field that "
                    'holds one ("Hello, world"), as a CSV writer does')
            return df
    except UnicodeDecodeError as e:
        raise RouterError(_not_utf8(path, e)) from None
    except ValueError as e:
        raise RouterError(_unreadable(path, e)) from None
    raise RouterError(f"{path}: unknown file type {suffix!r} (use .csv, .jsonl, .json or "
                      ".parquet)")


def _unreadable(path: Path, e: Exception) -> str:
    """Why a table file could not be read; for JSONL the first line that is not a JSON
    object (pandas' own message gives a character offset into the file)."""
    if path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for k, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    ok = isinstance(json.loads(line), dict)
                except ValueError:
                    ok = False
                if not ok:
                    return (f"{path}: line {k} is not a JSON object (cut short, or edited?): "
                            f"{line.strip()[:60]!r}; a JSONL table holds one object per line, "
                            f"and the {k - 1} line(s) before it read")
    return f"{path}: cannot read: {e}"


def _not_utf8(path: Path, e: UnicodeDecodeError) -> str:
    """A table file that is not UTF-8 (Latin-1 from a spreadsheet, UTF-16): the line of its
    first such byte, and how to convert it (the decoder's own position is a buffer's)."""
    data = path.read_bytes()
    where = ""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as u:
        line = data.count(b"\n", 0, u.start) + 1
        where = f" (line {line} holds byte 0x{data[u.start:u.start + 1].hex()})"
    enc, what = (("utf-16", "UTF-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else
                 ("latin1", "Latin-1"))
    return (f"{path}: not UTF-8 text{where}; save it as UTF-8, e.g. `iconv -f {enc} -t "
            f"utf-8 {path.name} > utf8-{path.name}` for {what} (a spreadsheet's 'CSV UTF-8' "
            f"export writes UTF-8; the reader said: {e.reason})")


def load_long(path: str | Path) -> RoutingTable:
    """Long-format table: ``prompt_id, prompt, model, score, cost, [category]``."""
    df = _read_frame(Path(path))
    return RoutingTable.from_long(clean_long(df, str(path)))


def _rows(mask: Any, df: Any, cols: tuple[str, ...] = ("prompt_id", "model")) -> str:
    """'rows 2, 5, 9 (...)': 1-based data rows (a CSV's header is line 1, so row r is line
    r + 1), at most five, with the named columns."""
    idx = [int(i) for i in np.flatnonzero(np.asarray(mask, dtype=bool))]
    shown = []
    for i in idx[:5]:
        vals = ", ".join(f"{c}={_plain(df.iloc[i][c])!r}" for c in cols if c in df.columns)
        shown.append(f"{i + 1} ({vals})")
    more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
    return f"row{'s' if len(idx) > 1 else ''} {', '.join(shown)}{more}"


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _id_text(v: Any) -> str:
    """A prompt id as text: numbers without a spurious '.0' (7, 7.0 and '7' are one id)."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


#: the columns a long table's rows are read from
LONG_COLUMNS = ("prompt_id", "prompt", "model", "score", "cost", "category")


def clean_long(df: Any, source: str = "table") -> Any:
    """Check and normalise a long-format frame; errors name the offending rows.

    Returns a frame :meth:`RoutingTable.from_long` accepts (see the module doc for the rules).
    """
    import pandas as pd

    if df.empty:
        raise RouterError(f"{source}: the table has no rows")
    missing = {"prompt", "model", "score"} - set(df.columns)
    if missing:
        cased = sorted(str(c) for c in df.columns if str(c).strip().lower() in missing)
        hint = (f" (the table has {', '.join(map(repr, cased))}: column names are lower case)"
                if cased else "")
        raise RouterError(f"{source}: lacks column(s) {', '.join(sorted(missing))}; a long "
                          "table has prompt_id, prompt, model, score, cost[, category]" + hint)
    twice = [c for c in LONG_COLUMNS if f"{c}.1" in df.columns]
    if twice:  # a CSV header naming a column twice: pandas keeps the second as 'score.1'
        raise RouterError(f"{source}: the header names {', '.join(map(repr, twice))} more "
                          "than once; keep one column of each name")
    df = df.reset_index(drop=True).copy()
    if "category" not in df.columns and "eval_name" in df.columns:
        df = df.rename(columns={"eval_name": "category"})  # RouterBench's name, as in wide
    _check_plain_cells(df, source)
    empty = lambda col: df[col].isna() | (df[col].astype(str).str.strip() == "")  # noqa: E731
    bad = empty("prompt")
    if bad.any():
        raise RouterError(f"{source}: empty prompt in {_rows(bad, df)}")
    bad = empty("model")
    if bad.any():
        raise RouterError(f"{source}: empty model name in {_rows(bad, df)}")
    # 'big ' on some rows is the model 'big', not a model of its own
    df["model"] = [v.strip() if isinstance(v, str) else v for v in df["model"]]
    if "prompt_id" in df.columns:
        bad = empty("prompt_id")
        if bad.any():
            raise RouterError(f"{source}: empty prompt_id in {_rows(bad, df)}")
        df["prompt_id"] = [_id_text(v) for v in df["prompt_id"]]
        texts = df.groupby("prompt_id", sort=False)["prompt"].nunique()
        clash = texts[texts > 1]
        if len(clash):
            ids = ", ".join(repr(i) for i in clash.index[:5])
            raise RouterError(f"{source}: prompt_id {ids} carr{'y' if len(clash) > 1 else 'ies'}"
                              " more than one prompt text; one id must name one prompt")
    score = pd.to_numeric(df["score"], errors="coerce")
    bad = score.isna()
    if bad.any():
        raise RouterError(f"{source}: missing or non-numeric score in "
                          f"{_rows(bad, df, ('prompt_id', 'model', 'score'))}"
                          + _verdict_hint(df["score"][bad]))
    bad = (score < 0) | (score > 1)
    if bad.any():
        raise RouterError(f"{source}: scores must lie in [0, 1]; out of range in "
                          f"{_rows(bad, df, ('prompt_id', 'model', 'score'))} (rescale them, "
                          "e.g. divide by the maximum possible score)")
    df["score"] = score
    if "cost" in df.columns:
        cost = pd.to_numeric(df["cost"], errors="coerce")
        bad = cost.isna() | (cost < 0) | np.isinf(cost)
        if bad.any():
            raise RouterError(f"{source}: missing, negative, infinite or non-numeric cost in "
                              f"{_rows(bad, df, ('prompt_id', 'model', 'cost'))}")
        bad = cost > MAX_COST
        if bad.any():
            raise RouterError(f"{source}: {_too_dear()} in "
                              f"{_rows(bad, df, ('prompt_id', 'model', 'cost'))}")
        df["cost"] = cost
    key = df["prompt_id"] if "prompt_id" in df.columns else df["prompt"].astype(str)
    dup = pd.DataFrame({"k": key, "m": df["model"]}).duplicated(keep=False)
    if dup.any():
        # two runs of one model on a prompt (a table concatenated twice, a rerun): the
        # table keeps one cell per pair, their mean
        print(f"{source}: {int(dup.sum())} rows repeat a (prompt, model) pair "
              f"({_rows(dup, df)}); each pair's scores and costs are averaged",
              file=sys.stderr)
    if "category" in df.columns:
        bad = empty("category")
        if bad.all():
            print(f"{source}: the category column is empty; ignoring it", file=sys.stderr)
            return df.drop(columns=["category"])
        # read as written (1, not the 1.0 of a column pandas made floats by an empty cell)
        cat = pd.Series([None if b else _id_text(v) for v, b in zip(df["category"], bad,
                                                                     strict=True)],
                        index=df.index, dtype=object)
        per = cat.groupby(key, sort=False).nunique()
        clash = per[per > 1]
        if len(clash):
            ids = ", ".join(repr(i) for i in clash.index[:5])
            what = "prompt_id" if "prompt_id" in df.columns else "prompt"
            raise RouterError(f"{source}: {what} {ids} carr{'y' if len(clash) > 1 else 'ies'}"
                              " more than one category; one prompt has one category")
        # a prompt's rows that leave it empty take the category its other rows give
        cat = cat.groupby(key, sort=False).transform("first")
        still = cat.isna()
        if still.any():
            print(f"{source}: {int(still.sum())} of {len(df)} rows have no category; they get "
                  f"the category {MISSING_CATEGORY!r}", file=sys.stderr)
        df["category"] = cat.where(~still, MISSING_CATEGORY).astype(str)
    return df


_CONTAINERS = (list, tuple, dict, set, np.ndarray)


def _containers(values: Any) -> Any:
    """Which cells of a column are lists or objects (None when none is: the common case,
    told from the set of the cells' types, fast on a table of millions of rows)."""
    cells = values.to_numpy(dtype=object)
    if not any(issubclass(t, _CONTAINERS) for t in set(map(type, cells))):
        return None
    return np.fromiter((isinstance(v, _CONTAINERS) for v in cells), dtype=bool,
                       count=len(cells))


def _check_plain_cells(df: Any, source: str) -> None:
    """Cells of a JSON table that are lists or objects: a prompt given as a list of texts is
    its turns joined by blank lines (as a wide table's); any other list or object in the
    prompt, its id, the model or the category is an error naming the rows (pandas would fail
    on it with 'unhashable type', or an id ``["x"]`` become the prompt id "['x']")."""
    if _containers(df["prompt"]) is not None:
        df["prompt"] = [_turns(v) for v in df["prompt"]]
    for col, what in (("prompt", "a text (or a list of turns: texts or chat messages with a "
                                 "text content)"),
                      ("prompt_id", "a text or a number"), ("model", "a text"),
                      ("category", "a text or a number")):
        if col not in df.columns:
            continue
        bad = _containers(df[col])
        if bad is not None:
            kinds = " or ".join(sorted({type(v).__name__ for v in df[col][bad]}))
            named = ("prompt_id", "model") if col == "prompt" else (col,)
            raise RouterError(f"{source}: {col} must be {what}, not {kinds}, in "
                              f"{_rows(bad, df, named)}")


#: scores a person or a spreadsheet writes as words
VERDICT_WORDS = frozenset({"true", "false", "yes", "no", "correct", "incorrect", "wrong",
                           "right", "pass", "fail"})


def _verdict_hint(values: Any) -> str:
    """What to write for a score given as a verdict word ('' for other bad scores)."""
    if any(str(v).strip().lower() in VERDICT_WORDS for v in values):
        return " (a verdict written as a word: write 1 for a right answer and 0 for a wrong one)"
    return ""


def _too_dear() -> str:
    return (f"cost above {MAX_COST:g} per query (a price in USD or a count of tokens never "
            "is; another column pasted as the cost?)")


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _contaminated(folder: Path) -> set[str]:
    p = folder / "contaminated_prompts.jsonl"
    if not p.exists():
        return set()
    out = set()
    for line in p.read_text().splitlines():
        if line.strip():
            out.add(str(json.loads(line)["eval_prompt"]).strip())
    return out


def load_routellm(path: str | Path, benchmark: str = "mmlu", *,
                  drop_contaminated: bool = True) -> RoutingTable:
    """RouteLLM's MMLU or GSM8K correctness table; ``path`` is the ``routellm`` folder."""
    import pandas as pd

    given = _need(Path(path))
    root = given
    if root.is_file():  # a file in the folder (mmlu/responses/mmlu_x.csv, gsm8k/...csv)
        root = next((d for d in list(given.parents)[:3] if (d / benchmark).is_dir()),
                    given.parent)
    if (root / "routellm").is_dir() and not (root / "mmlu").is_dir():
        root = root / "routellm"
    if benchmark in ("mmlu", "gsm8k") and not (root / benchmark).is_dir():
        raise RouterError(f"{given}: not RouteLLM's data folder (it has no {benchmark}/ "
                          "folder); --format routellm and routellm-gsm8k read the folder "
                          "`expertgate data fetch routellm` writes, or a file in it (--format "
                          "long reads a table of your own)")
    models = (ROUTELLM_WEAK, ROUTELLM_STRONG)
    rows: list[dict[str, Any]] = []
    if benchmark == "mmlu":
        folder = _need(root / "mmlu")
        files = sorted((folder / "responses").glob("mmlu_*.csv"))
        if not files:
            raise RouterError(f"no mmlu_*.csv files under {folder / 'responses'}")
        skip = _contaminated(folder) if drop_contaminated else set()
        for f in files:
            subject = f.stem.removeprefix("mmlu_")
            df = _routellm_csv(f, 3)
            for i, rec in enumerate(df.itertuples(index=False)):
                prompt = str(rec[0])
                if prompt.strip() in skip:
                    continue
                for j, m in enumerate(models):
                    toks = _tokens(prompt) + 1
                    rows.append({"prompt_id": f"mmlu/{subject}/{i}", "prompt": prompt,
                                 "model": m, "score": float(bool(rec[1 + j])),
                                 "cost": ROUTELLM_PRICES_PER_1M[m] * toks / 1e6,
                                 "category": subject})
    elif benchmark == "gsm8k":
        folder = _need(root / "gsm8k")
        df = _routellm_csv(_need(folder / "gsm8k_responses.csv"), 3, ("prompt", *models))
        skip = _contaminated(folder) if drop_contaminated else set()
        for i, rec in enumerate(df.to_dict("records")):
            prompt = str(rec["prompt"])
            if prompt.strip() in skip:
                continue
            for m in models:
                resp = rec.get(f"{m}_response")
                out_toks = _tokens(str(resp)) if isinstance(resp, str) else 1
                rows.append({"prompt_id": f"gsm8k/{i}", "prompt": prompt, "model": m,
                             "score": float(bool(rec[m])),
                             "cost": ROUTELLM_PRICES_PER_1M[m] * (_tokens(prompt) + out_toks)
                             / 1e6, "category": "gsm8k"})
    else:
        raise RouterError(f"unknown RouteLLM benchmark {benchmark!r}; use mmlu or gsm8k")
    return RoutingTable.from_long(pd.DataFrame(rows))


def _routellm_csv(path: Path, min_columns: int, columns: tuple[str, ...] = ()) -> Any:
    """One of RouteLLM's CSVs: a prompt column, then each model's correctness (and, in
    GSM8K's, their responses); anything else is an error naming the file."""
    import pandas as pd

    shape = (f"prompt, {ROUTELLM_WEAK}, {ROUTELLM_STRONG} (each model's correctness)")
    try:
        df = pd.read_csv(path)
    except (ValueError, OSError) as e:  # pandas' EmptyDataError and ParserError among them
        raise RouterError(f"{path}: not a RouteLLM CSV ({e}); it has columns {shape}") from None
    lacks = [c for c in columns if c not in df.columns]
    if lacks or len(df.columns) < min_columns:
        raise RouterError(f"{path}: not a RouteLLM CSV (columns: "
                          f"{', '.join(map(str, df.columns))}); it has columns {shape}")
    return df


def load_llmrouter(path: str | Path) -> RoutingTable:
    """LLMRouter NQ: a JSON array of queries with per-position model names, scores, costs."""
    import pandas as pd

    p = Path(path)
    if p.is_dir():
        p = p / "router_train_data_nq.json"
    try:
        data = json.loads(_need(p).read_text())
    except json.JSONDecodeError as e:
        raise RouterError(f"{p}: not valid JSON: {e}") from None
    need = ("query", "llm_name_list", "perf_list", "cost_list")
    if not isinstance(data, list):
        raise RouterError(f"{p}: an LLMRouter table is a JSON array of queries (objects with "
                          f"{', '.join(need)}); this file holds a {type(data).__name__}")
    rows = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise RouterError(f"{p}: entry {i} is not an object with {', '.join(need)}")
        lacks = [k for k in need if k not in rec]
        if lacks:
            raise RouterError(f"{p}: entry {i} lacks {', '.join(lacks)}")
        names, perf, cost = rec["llm_name_list"], rec["perf_list"], rec["cost_list"]
        if not all(isinstance(v, list) for v in (names, perf, cost)) \
                or not len(names) == len(perf) == len(cost):
            raise RouterError(f"{p}: entry {i}: llm_name_list, perf_list and cost_list must be "
                              "lists of one length (a model, its score, its cost)")
        qid = rec.get("q_id", i)
        for m, sc, c in zip(names, perf, cost, strict=True):
            rows.append({"prompt_id": f"nq/{qid}", "prompt": rec["query"], "model": m,
                         "score": sc, "cost": c, "category": str(rec.get("source") or "nq")})
    if not rows:
        raise RouterError(f"{p}: the table has no rows")
    # the long format's checks: scores in [0, 1], costs finite and >= 0, named by row
    return RoutingTable.from_long(clean_long(pd.DataFrame(rows), str(p)))


def _turn_text(t: Any) -> str | None:
    """A turn's text: the turn itself, or a chat message's ``content`` (None for neither)."""
    if isinstance(t, str):
        return t
    if isinstance(t, dict) and isinstance(t.get("content"), str):
        return str(t["content"])
    return None


def _turns(v: Any) -> Any:
    """A prompt given as a list of turns (a JSON array, a Parquet list) or of chat messages
    (``{"role": ..., "content": TEXT}``) as one text, the turns joined by blank lines; left
    as it is when a turn has no text (the long table's check names it)."""
    if isinstance(v, list | tuple | np.ndarray):
        texts = [_turn_text(t) for t in v]
        if all(x is not None for x in texts):
            return "\n\n".join(x for x in texts if x is not None)
    return v


def _check_wide_cells(df: Any, model: str, cost_col: str, id_col: str | None, p: Path
                      ) -> None:
    """A model's scored cells, checked where the file holds them: the errors name the file's
    data rows and columns (the long table :func:`clean_long` checks stacks the models, so its
    row numbers are not the file's)."""
    import pandas as pd

    cols = (id_col,) if id_col else ()
    scored = df[model].notna()
    score = pd.to_numeric(df[model], errors="coerce")
    bad = scored & (score.isna() | (score < 0) | (score > 1))
    if bad.any():
        raise RouterError(f"{p}: score column {model!r}: non-numeric or outside [0, 1] in "
                          f"{_rows(bad, df, (*cols, model))}; scores must lie in [0, 1] "
                          "(rescale them, e.g. divide by the maximum possible score)"
                          + _verdict_hint(df[model][bad]))
    cost = pd.to_numeric(df[cost_col], errors="coerce")
    bad = scored & (cost.isna() | (cost < 0) | np.isinf(cost))
    if bad.any():
        raise RouterError(f"{p}: cost column {cost_col!r}: missing, negative, infinite or "
                          f"non-numeric cost where {model!r} has a score, in "
                          f"{_rows(bad, df, (*cols, cost_col))}")
    bad = scored & (cost > MAX_COST)
    if bad.any():
        raise RouterError(f"{p}: cost column {cost_col!r}: {_too_dear()} in "
                          f"{_rows(bad, df, (*cols, cost_col))}")


#: a wide table's columns that are never a model's scores (RouterBench's and ours)
WIDE_META_COLUMNS = ("prompt", "sample_id", "prompt_id", "eval_name", "category",
                     "oracle_model_to_route_to")


def _unpaired_model_columns(df: Any, models: list[str]) -> tuple[str, str]:
    """The columns that are half a model, as (error, note); '' when none is. Certainly a
    model (the error): a cost column without its score column, or a score column with a
    ``|model_response`` beside it but no cost column. Perhaps a model (the note, said on
    stderr, the table still read: another tool's extra column of numbers in [0, 1], a
    difficulty or a flag, must not stop a table that is otherwise whole): any other column of
    numbers in [0, 1] without a cost column. Each would otherwise be left out unseen (a model
    is its score column beside its cost column)."""
    import pandas as pd

    cols = [str(c) for c in df.columns]
    have = set(cols)
    cost_only = [c for c in cols for sfx in WIDE_COST_SUFFIXES
                 if c.endswith(sfx) and c[:-len(sfx)] not in have]
    answered, numeric = [], []
    for c, col in zip(cols, df.columns, strict=True):
        if "|" in c or c in models or c in WIDE_META_COLUMNS or c.startswith("Unnamed:"):
            continue
        if c + "|model_response" in have:
            answered.append(c)
            continue
        vals = df[col].dropna()
        num = pd.to_numeric(vals, errors="coerce")
        if len(vals) and num.notna().all() and bool(((num >= 0) & (num <= 1)).all()):
            numeric.append(c)

    def scores_without_costs(names: list[str], what: str) -> str:
        costs = ", ".join(repr(c + WIDE_COST_SUFFIXES[0]) for c in names)
        return (f"column{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))} "
                f"{what} but no cost column ({costs}): give every model its cost column (0 "
                "for a free model)")

    parts = []
    if answered:
        parts.append(scores_without_costs(
            answered, "hold" + ("" if len(answered) > 1 else "s") + " a model's answers"))
    for c in cost_only:
        m = next(c[:-len(sfx)] for sfx in WIDE_COST_SUFFIXES if c.endswith(sfx))
        parts.append(f"cost column {c!r} has no score column {m!r} (name the score column "
                     "exactly as the model in its cost column)")
    note = ""
    if numeric:
        note = (scores_without_costs(numeric, "hold" + ("" if len(numeric) > 1 else "s")
                                     + " numbers in [0, 1] like scores")
                + "; read as no model (drop the column to silence this note)")
    return "; ".join(parts), note


def load_wide(path: str | Path) -> RoutingTable:
    """One row per prompt, a score and a ``|total_cost`` column per model (module doc)."""
    import pandas as pd

    p = Path(path)
    if p.suffix.lower() in (".pkl", ".pickle"):
        raise RouterError(f"{p}: pickles are not read (loading one runs code from the file); "
                          "convert it to Parquet first, e.g. pandas.read_pickle(src)"
                          ".to_parquet(dst), on a file you trust")
    df = _read_frame(p)
    if df.empty:
        raise RouterError(f"{p}: the table has no rows")
    if "prompt" not in df.columns:
        raise RouterError(f"{p}: lacks a prompt column; a wide table has prompt, a score "
                          "column per model and its cost column '<model>|total_cost'")
    cols = {str(c) for c in df.columns}
    models = [str(c) for c in df.columns if "|" not in str(c)
              and any(str(c) + sfx in cols for sfx in WIDE_COST_SUFFIXES)]
    unpaired, maybe = _unpaired_model_columns(df, models)
    if not models:
        unpaired = "; ".join(x for x in (unpaired, maybe) if x)
        if {"model", "score"} <= cols:
            raise RouterError(f"{p}: no model columns, and the table looks like a long table "
                              "(one row per prompt and model, with model and score columns): "
                              "read it with --format long")
        raise RouterError(f"{p}: no model columns; a wide table has, for every model, a score "
                          "column named by the model and its cost column "
                          "'<model>|total_cost' (or '<model>|cost')"
                          + (f" ({unpaired})" if unpaired else ""))
    if unpaired:  # a model with half its columns would be left out unseen
        raise RouterError(f"{p}: {unpaired}")
    if maybe:
        print(f"{p}: note: {maybe}", file=sys.stderr)
    df = df.reset_index(drop=True)
    id_col = next((c for c in ("sample_id", "prompt_id") if c in df.columns), None)
    ids = df[id_col] if id_col else pd.Series(range(len(df)), dtype=object)
    cat_col = next((c for c in ("eval_name", "category") if c in df.columns), None)
    prompts = df["prompt"].map(_turns)
    parts = []
    for m in models:
        cost_col = next(m + sfx for sfx in WIDE_COST_SUFFIXES if m + sfx in cols)
        _check_wide_cells(df, m, cost_col, id_col, p)
        part = pd.DataFrame({"prompt_id": ids, "prompt": prompts, "model": m,
                             "score": df[m], "cost": df[cost_col]})
        if cat_col:
            part["category"] = df[cat_col]
        parts.append(part[df[m].notna()])  # an empty score: not evaluated on that prompt
    long = pd.concat(parts, ignore_index=True)
    if long.empty:
        raise RouterError(f"{p}: no model has a score on any prompt")
    unscored = [m for m in models if not df[m].notna().any()]
    if unscored:  # nothing to learn about them: left out, never silently
        print(f"{p}: left out model(s) with no score on any prompt: "
              + ", ".join(map(repr, unscored)), file=sys.stderr)
    return RoutingTable.from_long(clean_long(long, str(p)))


#: the columns of a log export that training and off-policy evaluation read
LOG_COLUMNS = (*TRAINING_COLUMNS, "endpoint", "policy", "router_version", "status", "mode",
               "cost_usd", "fallback", "arm", "candidates", "action_probs", "propensity")
#: JSONL rows parsed at a time by :func:`read_log_export`
EXPORT_READ_ROWS = 20_000


def read_log_export(path: str | Path, columns: tuple[str, ...] = LOG_COLUMNS) -> Any:
    """The ``columns`` (those it has) of a log export, Parquet or JSONL: only what the loaders
    use is held (an export carries 37 columns), and JSONL is parsed
    :data:`EXPORT_READ_ROWS` lines at a time, its strings kept as written (pandas would turn
    an all-digit column, an expert named ``007``, into numbers)."""
    import pandas as pd
    import pyarrow.parquet as pq

    p = _need(Path(path))
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            have = set(pq.read_schema(p).names)
            return pd.read_parquet(p, columns=[c for c in columns if c in have])
        if suffix == ".jsonl":
            parts = [chunk[[c for c in columns if c in chunk.columns]]
                     for chunk in pd.read_json(p, lines=True, dtype=False,
                                               chunksize=EXPORT_READ_ROWS)]
            return (pd.concat(parts, ignore_index=True) if parts else
                    pd.DataFrame(columns=list(columns)))
    except UnicodeDecodeError as e:
        raise RouterError(_not_utf8(p, e)) from None
    except (ValueError, OSError) as e:
        raise RouterError(_unreadable(p, e)) from None
    df = _read_frame(p)  # a table of the same columns made otherwise (CSV, JSON)
    return df[[c for c in columns if c in df.columns]]


def _first_columns(path: str | Path) -> set[str]:
    """The columns of a log file as its schema or first JSON line names them (for a hint;
    empty when it cannot tell)."""
    p = Path(path)
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return set(pq.read_schema(p).names)
        with open(p, encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
        return set(first) if isinstance(first, dict) else set()
    except (OSError, ValueError):
        return set()


def load_logs(path: str | Path, *, policy: str | None = None) -> RoutingTable:
    """Exported routing logs with feedback (Parquet or JSONL); see the module doc. With
    ``policy``, only the records that policy routed."""
    import pandas as pd

    df = read_log_export(path)
    missing = set(TRAINING_COLUMNS) - set(df.columns)
    if missing:
        hint = (" (the gateway's routing log itself? Its ratings are in the feedback file "
                f"beside it: join them with `expertgate logs export --log-path {path} --out "
                "FILE.parquet` and train on FILE.parquet)"
                if missing == {"feedback_score"} else "")
        if {"text", "expert"} & missing and {"request_id", "score"} <= _first_columns(path):
            name = Path(path).name
            log = Path(path).with_name(name.removesuffix(".feedback.jsonl") + ".jsonl"
                                       if name.endswith(".feedback.jsonl") else "LOG.jsonl")
            hint = (" (the gateway's feedback file? It holds the ratings alone, by "
                    "request_id: join them with the requests of the routing log beside it, "
                    f"`expertgate logs export --log-path {log} --out FILE.parquet`, and train "
                    "on FILE.parquet)")
        raise RouterError(f"{path}: log export lacks column(s): {', '.join(sorted(missing))}"
                          + hint)
    if "endpoint" in df.columns:  # shadow decisions and canary events were never served
        df = df[~df["endpoint"].isin(UNSERVED_ENDPOINTS)]
    df = _policy_records(df, policy, path)
    again = np.asarray(repeated_requests(df["request_id"]), dtype=bool)
    if again.any():
        print(f"logs: {repeated_requests_note(int(again.sum()))}", file=sys.stderr)
        df = df[~again]
    n0 = len(df)
    no_text = df["text"].isna() | (df["text"].astype(str).str.strip() == "")
    fb = log_ratings(df, path)
    no_fb = fb.isna()
    # a request no expert served (every expert failed: status error, expert null) can still
    # be rated; its rating scores no expert
    failed = ~given(df["expert"])  # null, or an empty name a merged export wrote
    if "status" in df.columns:
        failed |= df["status"].notna() & (df["status"] != "ok")
    # an ensemble's answer combines several experts' (the record names its aggregator and
    # costs them all): its rating is no one expert's score
    ensemble = (df["mode"] == "ensemble") if "mode" in df.columns else no_fb & False
    keep = ~no_text & ~no_fb & ~failed & ~ensemble
    rated = ~no_fb & ~no_text
    n_failed = int((failed & rated).sum())
    n_ensemble = int((ensemble & ~failed & rated).sum())
    more = [f"{n} {what}" for n, what in (
        (n_failed, "rated failed request(s) that no expert served"),
        (n_ensemble, ENSEMBLE_NOTE)) if n]
    parts = [f"{int(no_text.sum())} without text",
             f"{int((no_fb & ~no_text).sum())} more without feedback", *more]
    print(f"logs: {n0} records; dropped " + ", ".join(parts[:-1]) + f" and {parts[-1]}"
          + f"; {int(keep.sum())} kept", file=sys.stderr)
    df = df[keep]
    if df.empty:
        why = ("none has its prompt text: the gateway logs a prompt only for policies with "
               "'log_prompts: true' (off by default); set it on the policies whose traffic "
               "should train routers, then export again" if no_text.all() else
               "the rated records with text are ensemble answers or failed requests that no "
               "expert served" if rated.any() else
               "the records with text have no feedback: send ratings to POST /v1/feedback")
        raise RouterError(f"{path}: no log record has both text and feedback ({n0} "
                          f"record(s); {why})")
    served = sorted(df["expert"].astype(str).unique())
    if len(served) < 2:
        raise RouterError(f"{path}: every rated record was served by {served[0]!r}: a router "
                          "learns to choose between experts from rated answers of each; let "
                          "the policy explore (explore: {rate: 0.05}) so the logs hold others' "
                          "answers, then export again")
    mix = policy_mix_warning(policy_groups(
        df["policy"] if "policy" in df.columns else [None] * len(df),
        df["router_version"] if "router_version" in df.columns else None))
    if mix:
        print(f"logs: {mix}", file=sys.stderr)
    fbk = fb[keep]
    out = ((fbk < 0) | (fbk > 1)).to_numpy()
    if out.any():
        raise RouterError(f"{path}: feedback_score must lie in [0, 1]; "
                          f"{_bad_records(df, out, fbk.to_numpy(dtype=np.float64))}")
    texts = df["text"].astype(str)
    long = pd.DataFrame({
        "prompt_id": [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts],
        "prompt": texts.to_numpy(),
        "model": df["expert"].astype(str).to_numpy(),
        "score": fbk.to_numpy(dtype=np.float64),
        "cost": log_costs(df, path),
    })
    return RoutingTable.from_long(long)


def log_costs(df: Any, path: str | Path) -> np.ndarray:
    """The ``cost_usd`` of the log records ``df`` (0 where none was logged: an expert
    without a price); an infinite or negative cost (logs edited, or merged from another
    tool) is an error naming the records, as a feedback_score outside [0, 1] is: the
    reward models and the routers' cost knob read it as a price."""
    import pandas as pd

    if "cost_usd" not in df.columns:
        return np.zeros(len(df))
    raw = df["cost_usd"]
    num = pd.to_numeric(raw, errors="coerce")
    # a cost written as text ('abc', '$0.01') is no missing cost: read as 0 it made a dear
    # expert free
    words = (num.isna() & given(raw)).to_numpy()
    if words.any():
        raise RouterError(f"{path}: cost_usd must be a number (USD); "
                          f"{_bad_records(df, words, raw)}")
    cost = num.fillna(0.0).to_numpy(dtype=np.float64)
    bad = ~np.isfinite(cost) | (cost < 0)
    if bad.any():
        raise RouterError(f"{path}: cost_usd must be a finite number >= 0; "
                          f"{_bad_records(df, bad, cost)}")
    bad = cost > MAX_COST
    if bad.any():
        raise RouterError(f"{path}: cost_usd: {_too_dear()}; {_bad_records(df, bad, cost)}")
    return cost


def log_ratings(df: Any, path: str | Path) -> Any:
    """The ``feedback_score`` of the log records ``df`` as numbers (NaN where none was
    given); a rating written as words ('true', 'good') is no missing rating but an error
    naming the records."""
    import pandas as pd

    fb = pd.to_numeric(df["feedback_score"], errors="coerce")
    words = (fb.isna() & given(df["feedback_score"])).to_numpy()
    if words.any():
        raise RouterError(f"{path}: feedback_score must be a number in [0, 1] (1 the best "
                          f"answer); {_bad_records(df, words, df['feedback_score'])}")
    return fb


def given(values: Any) -> Any:
    """Where a log column holds a value (not null, not an empty or blank string)."""
    return values.notna() & (values.astype(str).str.strip() != "")


def _bad_records(df: Any, bad: Any, values: Any) -> str:
    """'3 record(s) have 'abc', -1, the first request_id r7': a count, up to three of the
    values as written and the first record's request_id, for a log value's error."""
    bad = np.asarray(bad, dtype=bool)
    vals = list(dict.fromkeys(
        (f"{v:g}" if isinstance(v, float) else repr(v))
        for v in np.asarray(values, dtype=object)[bad].tolist()))
    first = (f", the first request_id {df['request_id'].astype(str).to_numpy()[bad][0]}"
             if "request_id" in df.columns else "")
    return f"{int(bad.sum())} record(s) have {', '.join(vals[:3])}{first}"


#: how a loader counts the rated ensemble answers it leaves out
ENSEMBLE_NOTE = ("rated ensemble answer(s) (several experts' combined answer: no one "
                 "expert's score or cost)")


def _policy_records(df: Any, policy: str | None, path: str | Path) -> Any:
    """The records ``policy`` routed (all of them without one); a policy the log does not
    hold is an error naming the policies it does."""
    if policy is None:
        return df
    pol = df["policy"] if "policy" in df.columns else None
    if pol is None or not (pol == policy).any():
        held = policy_groups(pol if pol is not None else [None] * len(df))
        raise RouterError(f"{path}: no record of policy {policy!r} (records by policy: "
                          + ", ".join(f"{p} {sum(v.values())}" for p, v in held.items())
                          + ")")
    print(f"logs: {int((pol == policy).sum())} of {len(df)} records from policy {policy!r}",
          file=sys.stderr)
    return df[pol == policy]


def load_table(path: str | Path, format: str = "long", *, policy: str | None = None
               ) -> RoutingTable:
    """Load any routing-table format by name: one of :data:`FORMATS`; ``policy`` keeps one
    policy's records of a ``logs`` table."""
    if policy is not None and format != "logs":
        raise RouterError("a policy selects records of routing logs only (--format logs)")
    if format == "long":
        return load_long(path)
    if format in ("wide", "routerbench"):
        return load_wide(path)
    if format in ("routellm", "routellm-mmlu"):
        return load_routellm(path, "mmlu")
    if format == "routellm-gsm8k":
        return load_routellm(path, "gsm8k")
    if format == "llmrouter":
        return load_llmrouter(path)
    if format == "logs":
        return load_logs(path, policy=policy)
    raise RouterError(f"unknown table format {format!r}; use one of {', '.join(FORMATS)}")
