"""Provenance of a result file: what code, data, encoder, seeds and command made it.

Every result JSON written by ``expertgate eval routing`` and ``expertgate eval guard`` carries
:func:`provenance` under the key ``provenance``, so a figure in the docs can be traced to the
exact commit (and whether the tree had uncommitted changes), the package versions, the bytes
of the data (sha256), the encoder's weights, the seeds and the command line.

Seeds: :data:`DEVELOPMENT_SEEDS` are the ones used while the methods were designed and tuned
(splits, fits); :data:`REPORT_SEEDS` were never used during development and are the only ones
behind published figures. Both lists are written into every result.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "DEVELOPMENT_SEEDS",
    "PACKAGES",
    "REPORT_SEEDS",
    "encoder_info",
    "git_state",
    "package_versions",
    "path_sha256",
    "provenance",
    "seed_list",
]

#: seeds used while the routers, guards and their defaults were developed (issue 9 onwards)
DEVELOPMENT_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
#: seeds kept away from development; published figures use these only
REPORT_SEEDS: tuple[int, ...] = (1009, 2017, 3041, 4057, 5081)
#: distributions whose versions change figures
PACKAGES = ("expertgate", "numpy", "scipy", "scikit-learn", "pandas", "torch",
            "sentence-transformers", "transformers", "onnxruntime", "tokenizers", "model2vec")

_REPO = Path(__file__).resolve().parents[1]


def seed_list(kind: str, n: int) -> list[int]:
    """The first ``n`` seeds of a kind: ``report`` (:data:`REPORT_SEEDS`, extended by a fixed
    rule past its length) or ``dev`` (0, 1, 2, ...)."""
    if n < 1:
        raise ValueError("need at least one seed")
    if kind == "dev":
        return list(range(n))
    if kind != "report":
        raise ValueError(f"unknown seed set {kind!r}; use dev or report")
    base = list(REPORT_SEEDS)
    while len(base) < n:
        base.append(base[-1] + 1013)
    return base[:n]


def git_state(repo: str | Path = _REPO) -> dict[str, Any]:
    """``{"commit", "dirty", "changed"}`` of the tree: ``dirty`` is true when a tracked file
    that is not documentation (``*.md``, ``docs/``) differs from the commit, i.e. when the
    code that made a figure may not be the committed code; ``changed`` lists every tracked
    file that differs (documents included)."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                               text=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is None:
        return {"commit": commit.strip() if commit else None, "dirty": None, "changed": None}
    changed = [ln[3:].split(" -> ")[-1] for ln in status.splitlines() if ln.strip()]
    code = [f for f in changed if not (f.startswith("docs/") or f.endswith(".md"))]
    return {"commit": commit.strip() if commit else None, "dirty": bool(code),
            "changed": changed}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def path_sha256(path: str | Path) -> dict[str, Any]:
    """sha256 of a file; of a folder, the sha256 of its sorted ``relative-path\\0sha256\\n``
    lines (every file under it), with the file count."""
    p = Path(path)
    if p.is_file():
        return {"path": str(p), "sha256": _file_sha256(p), "bytes": p.stat().st_size}
    if p.is_dir():
        h = hashlib.sha256()
        files = sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            h.update(f"{f.relative_to(p).as_posix()}\0{_file_sha256(f)}\n".encode())
        return {"path": str(p), "sha256_tree": h.hexdigest(), "files": len(files)}
    return {"path": str(p), "sha256": None, "note": "not a local file (generated or missing)"}


def _model_folder(embedder: Any) -> Path | None:
    for attr in ("model_dir", "model_path"):
        v = getattr(embedder, attr, None)
        if v:
            return Path(v)
    return None


def encoder_info(embedder: Any, finetune: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Name, class and weights hash of the encoder; for a fine-tuned one also what made it
    (training-data hash, epochs, seed, command)."""
    out: dict[str, Any] = {"name": getattr(embedder, "name", None),
                           "class": type(embedder).__name__,
                           "dim": getattr(embedder, "dim", None)}
    if getattr(embedder, "quantize", False):
        out["quantized"] = "dynamic int8 weights (onnxruntime), MatMul only, per channel"
    folder = _model_folder(embedder)
    if folder is not None and folder.is_dir():
        h = hashlib.sha256()
        for fname in ("config.json", "model.safetensors", "pytorch_model.bin", "model.onnx"):
            f = folder / fname
            if f.is_file():
                h.update(fname.encode())
                h.update(_file_sha256(f).encode())
        out["weights_folder"] = str(folder)
        out["weights_sha256"] = h.hexdigest()
    elif out["class"] == "DistilledEmbedder":
        # static vectors distilled from an encoder: the table file and its recipe
        out["weights_folder"] = str(embedder.path)
        out["weights_sha256"] = _file_sha256(Path(embedder.path) / "embeddings.npz")
        out["distilled_from"] = dict(embedder.config)
    elif out["class"] == "HashingEmbedder":
        out["weights_sha256"] = None
        out["note"] = "hashing embedder: no weights (hashed character n-grams)"
    if finetune is not None:
        out["finetune"] = {k: finetune.get(k) for k in
                           ("training_data_sha256", "epochs", "seed", "base", "objective",
                            "margin", "scale", "lr", "batch_size", "n_rows", "n_labels",
                            "val_accuracy", "command") if k in finetune}
    return out


def provenance(*, data: Sequence[str | Path], embedder: Any = None, seeds: Mapping[str, Any],
               command: str | None = None, finetune: Mapping[str, Any] | None = None,
               git: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``provenance`` block of a result JSON (see the module doc). ``command`` is the
    command line rebuilt from the parsed arguments (every flag that matters, in a fixed
    order); ``argv`` is the process's own, as typed. ``git`` is :func:`git_state` taken when
    the run *started* (the code that ran), else now."""
    argv = "expertgate " + shlex.join(sys.argv[1:])
    return {
        "git": dict(git) if git is not None else git_state(),
        "packages": package_versions(),
        "data": [path_sha256(d) for d in data],
        "encoder": encoder_info(embedder, finetune) if embedder is not None else None,
        "seeds": {"development": list(DEVELOPMENT_SEEDS), "report": list(REPORT_SEEDS),
                  **seeds},
        "command": command or argv,
        "argv": argv,
    }
