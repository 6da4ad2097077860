"""Router artifacts: a folder with ``router.json`` + ``arrays.npz`` (+ ``*.skops``). Never pickle.

Layout of an artifact folder::

    router.json   {format: "expertgate-router", format_version: 1, type, version, params,
                   json_state, data_hash, embedder, [embedder_spec], dim, metrics, created,
                   [provenance], files: {name: sha256}}
    arrays.npz    the router's ``_array_attrs`` (loaded with ``allow_pickle=False``), and
                  what its ``_extra_arrays()`` adds (a quality router's cost model, as
                  ``cost_model.*``; ``_restore_arrays`` reads it back, and an artifact
                  without one trades mean costs, whatever its ``cost_model``)
    <attr>.skops  one file per ``_skops_attrs`` entry (scikit-learn parts), loaded with an
                  explicit list of trusted types

Loading never executes code from the artifact: the class comes from the registry by the
recorded ``type``; JSON and npz hold data only; skops files are checked against
:data:`TRUSTED_SKOPS_TYPES` before anything is built from them. Every problem (missing file,
wrong format or type or version, checksum mismatch, unknown parameter, missing state) is a
:class:`~routers.base.RouterError` naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import Router, RouterError, get_router_class

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "TRUSTED_SKOPS_TYPES",
    "artifact_version",
    "check_artifact_target",
    "load_router",
    "not_an_artifact",
    "read_manifest",
    "save_router",
]

FORMAT = "expertgate-router"
FORMAT_VERSION = 1
MANIFEST = "router.json"
ARRAYS = "arrays.npz"

#: The only non-default types a skops file may contain. Extend deliberately, one class at a
#: time, when a family starts saving a new scikit-learn estimator.
TRUSTED_SKOPS_TYPES: frozenset[str] = frozenset({
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.isotonic.IsotonicRegression",
    "sklearn.preprocessing._label.LabelBinarizer",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.pipeline.Pipeline",
    "sklearn.cluster._kmeans.KMeans",
    "sklearn.utils._bunch.Bunch",
    "sklearn.frozen._frozen.FrozenEstimator",
    "sklearn.model_selection._split.StratifiedKFold",
    "numpy.dtype",
    "builtins.slice",
})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(x: Any) -> Any:
    """Turn numpy scalars/arrays and tuples into plain JSON; NaN/inf become None."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating | float):
        f = float(x)
        return f if math.isfinite(f) else None
    if x is None or isinstance(x, str | int):
        return x
    raise RouterError(f"cannot store value of type {type(x).__name__} in router.json")


def not_an_artifact(out: Path) -> str | None:
    """Why the existing path ``out`` is no router artifact a save may replace ("it is not a
    folder", "it holds subfolders or links", "it has no expertgate router.json"), or None."""
    if out.is_symlink() or not out.is_dir():
        return "it is not a folder"
    if any(not f.is_file() or f.is_symlink() for f in out.iterdir()):
        return "it holds subfolders or links"
    try:
        fmt = json.loads((out / MANIFEST).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    return None if fmt == FORMAT else f"it has no expertgate {MANIFEST}"


def check_artifact_target(path: str | Path) -> Path:
    """The folder :func:`save_router` may write: absent, or an expertgate router artifact
    (a folder of plain files with this format's ``router.json``), which it replaces. Anything
    else at ``path`` (a file, a folder of the user's) is refused with a RouterError rather
    than replaced. Returns the path made absolute."""
    out = Path(path).expanduser().absolute()
    if out.name in ("", ".", ".."):
        out = out.resolve()
    if not out.exists() and not out.is_symlink():
        if out.parent.exists() and not out.parent.is_dir():
            raise RouterError(f"cannot write the artifact {out}: {out.parent} is not a folder")
        return out
    why = not_an_artifact(out)
    if why is not None:
        raise RouterError(f"{out} exists and is not a router artifact ({why}): it would be "
                          "replaced; choose another output folder or remove it")
    return out


def save_router(router: Router, path: str | Path, *, metrics: Mapping[str, Any] | None = None,
                data_hash: str | None = None, embedder: str | None = None,
                embedder_spec: Mapping[str, Any] | None = None,
                provenance: Mapping[str, Any] | None = None) -> Path:
    """Write ``router`` (fitted) to the folder ``path`` and return the folder.

    ``embedder`` is the name of the embedder the router was trained with (the gateway refuses
    the artifact with another); ``embedder_spec`` (``{"kind": ..., "options": {...}}``, as a
    gateway config's ``embedder:``) how to build it, so a config without ``embedder:``
    serves the artifact with it (:func:`gateway.config.resolve_embedder`). ``provenance``
    (what ``expertgate train`` knows of the run: commit, dirty tree, command line, data
    sha256; :func:`evals.provenance.provenance`) is recorded as it is, and left out of the
    version (:func:`artifact_version`) as the metrics are.

    The folder is written in a temporary sibling and moved into place, so a reader never
    sees half an artifact. An existing artifact at ``path`` is replaced (put back if the new
    one cannot be moved in); anything else there is refused (:func:`check_artifact_target`).
    """
    router.check_fitted()
    params = router.get_params()
    bad = [k for k, v in params.items() if _jsonable(v) is None and v is not None]
    if bad:  # NaN / infinity: stored as null, the artifact would not reload as trained
        got = ", ".join(f"{k}={params[k]!r}" for k in sorted(bad))
        raise RouterError(f"{router.name}: parameters must be finite to be saved, got {got}")
    out = check_artifact_target(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files: dict[str, str] = {}
        arrays: dict[str, np.ndarray] = {}
        for name in router._array_attrs:
            if not hasattr(router, name):
                raise RouterError(f"{router.name}: fitted state {name!r} is missing")
            arr = np.asarray(getattr(router, name))
            if arr.dtype == object:
                raise RouterError(f"{router.name}: array {name!r} has dtype object")
            arrays[name] = arr
        extra = getattr(router, "_extra_arrays", None)
        if callable(extra):  # state beside the family's own (a QualityRouter's cost model)
            arrays.update(extra())
        np.savez(tmp / ARRAYS, allow_pickle=False, **arrays)
        files[ARRAYS] = _sha256(tmp / ARRAYS)
        if router._skops_attrs:
            import skops.io as sio

            for name in router._skops_attrs:
                fname = f"{name.rstrip('_')}.skops"
                (tmp / fname).write_bytes(_canonical_skops(sio.dumps(getattr(router, name))))
                files[fname] = _sha256(tmp / fname)
        json_state = {k: _jsonable(getattr(router, k)) for k in router._json_attrs
                      if hasattr(router, k)}
        missing = [k for k in router._json_attrs if k not in json_state]
        if missing:
            raise RouterError(f"{router.name}: fitted state missing: {', '.join(missing)}")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "type": router.name,
            "version": int(router.version),
            "params": _jsonable(router.get_params()),
            "json_state": json_state,
            "data_hash": data_hash,
            "embedder": embedder,
            **({"embedder_spec": _jsonable(dict(embedder_spec))} if embedder_spec else {}),
            "dim": _jsonable(getattr(router, "dim_", None)),
            "metrics": _jsonable(dict(metrics or {})),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **({"provenance": _jsonable(dict(provenance))} if provenance else {}),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True,
                                               allow_nan=False) + "\n")
        if out.exists():
            # aside under a fresh name (an empty folder the rename may replace): a folder
            # left by a save that was killed here never blocks this one
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)  # the earlier artifact stays where it is served from
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    return out


def _canonical_skops(raw: bytes) -> bytes:
    """A skops file whose bytes follow its content only. skops names each object by its
    ``id()`` (``__id__`` in the schema, ``<id>.npy`` members) and stamps every member with the
    time: two identical fits gave two files, so two versions of one router. Here the ids become
    ordinals in schema order (from 1: skops memoises only a truthy id), member files are
    named after them, and every member gets one fixed timestamp."""
    ids: dict[int, int] = {}
    names: dict[str, str] = {}

    def canon(node: Any) -> Any:
        if isinstance(node, list):
            return [canon(v) for v in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k == "__id__" and isinstance(v, int) and not isinstance(v, bool):
                out[k] = ids.setdefault(v, len(ids) + 1)
            elif k == "file" and isinstance(v, str):
                out[k] = names.setdefault(v, f"{len(names) + 1}{Path(v).suffix}")
            else:
                out[k] = canon(v)
        return out

    with zipfile.ZipFile(io.BytesIO(raw)) as zin:
        schema = canon(json.loads(zin.read("schema.json")))
        members = {new: zin.read(old) for old, new in names.items()}
        unnamed = set(zin.namelist()) - set(names) - {"schema.json"}
    if unnamed:  # a member the schema does not name: keep skops' own bytes
        return raw
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zout:
        for fname, data in [("schema.json", json.dumps(schema, indent=2).encode()),
                            *sorted(members.items())]:
            info = zipfile.ZipInfo(fname, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zout.writestr(info, data)
    return buf.getvalue()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check ``router.json`` of an artifact folder (format, files, checksums)."""
    folder = Path(path)
    mpath = folder / MANIFEST
    if not folder.exists():
        raise RouterError(f"router artifact {folder} does not exist")
    if not folder.is_dir():
        raise RouterError(f"router artifact {folder} is a file, not a folder (an artifact is "
                          f"the folder that holds {MANIFEST})")
    if not mpath.is_file():
        raise RouterError(f"router artifact {folder} has no {MANIFEST} (not a router "
                          "artifact folder)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RouterError(f"{mpath}: not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RouterError(f"{mpath}: not an expertgate router artifact (format "
                          f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RouterError(f"{mpath}: artifact format version {manifest.get('format_version')!r}"
                          f" is not supported (this build reads {FORMAT_VERSION})")
    files = manifest.get("files")
    if not isinstance(files, dict) or ARRAYS not in files:
        raise RouterError(f"{mpath}: 'files' with checksums is missing")
    for fname, digest in files.items():
        if "/" in fname or "\\" in fname or fname.startswith("."):
            raise RouterError(f"{mpath}: bad file name {fname!r}")
        fp = folder / fname
        if not fp.exists():
            raise RouterError(f"router artifact {folder}: file {fname} is missing")
        if _sha256(fp) != digest:
            raise RouterError(f"router artifact {folder}: checksum mismatch for {fname} "
                              "(the file was modified after saving)")
    return manifest


#: manifest entries that describe a training run rather than the router it produced (its
#: wall-clock creation time, the metrics with their timings, the provenance: the commit, the
#: command line, where the data lay): left out of the version, so the same data, seed and
#: parameters give the same version however long training took, and whoever ran it how
_UNVERSIONED = frozenset({"created", "metrics", "provenance"})


def artifact_version(path: str | Path) -> str:
    """A short content hash of an artifact: its manifest without :data:`_UNVERSIONED`
    (the type, parameters, JSON state, data hash, embedder and every file's sha256).

    The gateway uses it as the policy version in its decision-cache key (and logs it as the
    router version), so a retrained router never serves decisions cached for the previous
    one, and a re-run that reproduces the same router keeps its version.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    content = {k: v for k, v in manifest.items() if k not in _UNVERSIONED}
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _load_skops(fp: Path) -> Any:
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=fp)
    bad = sorted(set(untrusted) - TRUSTED_SKOPS_TYPES)
    if bad:
        raise RouterError(f"{fp.name}: refusing to load untrusted type(s): {', '.join(bad)}")
    return sio.load(fp, trusted=list(untrusted))


def load_router(path: str | Path, expected_type: str | None = None) -> Router:
    """Load an artifact folder written by :func:`save_router`; see the module doc."""
    folder = Path(path)
    manifest = read_manifest(folder)
    rtype = manifest.get("type")
    if expected_type is not None and rtype != expected_type:
        raise RouterError(f"router artifact {folder} holds a {rtype!r} router, expected "
                          f"{expected_type!r}")
    cls = get_router_class(str(rtype))
    if manifest.get("version") != cls.version:
        raise RouterError(f"router artifact {folder}: {rtype} version {manifest.get('version')}"
                          f" does not match this build's version {cls.version}; retrain it")
    params = manifest.get("params") or {}
    unknown = sorted(set(params) - set(cls.param_names()))
    if unknown:
        raise RouterError(f"router artifact {folder}: unknown parameter(s) for {rtype}: "
                          f"{', '.join(unknown)}")
    router = cls(**params)
    state = manifest.get("json_state") or {}
    missing = [k for k in cls._json_attrs if k not in state]
    if missing:
        raise RouterError(f"router artifact {folder}: state missing: {', '.join(missing)}")
    for k in cls._json_attrs:
        setattr(router, k, state[k])
    try:
        with np.load(folder / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        raise RouterError(f"router artifact {folder}: bad {ARRAYS}: {e}") from None
    missing = [k for k in cls._array_attrs if k not in arrays]
    if missing:
        raise RouterError(f"router artifact {folder}: arrays missing: {', '.join(missing)}")
    for k in cls._array_attrs:
        setattr(router, k, arrays[k])
    restore = getattr(router, "_restore_arrays", None)
    if callable(restore):
        restore(arrays)
    for k in cls._skops_attrs:
        fname = f"{k.rstrip('_')}.skops"
        if fname not in manifest["files"]:
            raise RouterError(f"router artifact {folder}: {fname} is not listed in {MANIFEST}")
        setattr(router, k, _load_skops(folder / fname))
    hook = getattr(router, "_after_load", None)
    if callable(hook):
        hook()
    return router
