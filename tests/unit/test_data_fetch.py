"""`expertgate data fetch`: downloads from the recorded source at the pinned commit, checks
sha256, places files where every command looks. Against a local HTTP server on 127.0.0.1
serving files this test writes; nothing here reaches the internet."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from evals.datasets import data_dir
from evals.datasets.registry import (
    DataFile,
    DataSet,
    FetchError,
    fetch,
    get,
    raw_url,
    resolve_table,
)
from expertgate.cli import main as cli


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    handler = partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _publish(root: Path, ds: DataSet, contents: dict[str, bytes]) -> None:
    """Lay out files as a raw-file host does: {owner}/{repo}/{commit}/{path}."""
    slug = ds.repo.removeprefix("https://github.com/")
    for f in ds.files:
        if f.source_path is not None and f.local in contents:
            p = root / slug / ds.commit / f.source_path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(contents[f.local])


def _toy() -> tuple[DataSet, dict[str, bytes]]:
    contents = {"a.csv": b"prompt,score\nhi,1\n", "sub/b.json": b'{"x": 1}\n'}
    files = tuple(DataFile(k, f"data/{k}", len(v), hashlib.sha256(v).hexdigest())
                  for k, v in contents.items())
    return DataSet("toy", "https://github.com/example/toy", "0" * 40, "MIT", files), contents


def test_fetch_places_verified_files_and_refuses_wrong_bytes(tmp_path: Path) -> None:
    ds, contents = _toy()
    site = tmp_path / "site"
    _publish(site, ds, contents)
    with serve(site) as base:
        assert raw_url(ds, ds.files[0], base) == f"{base}/example/toy/{'0' * 40}/data/a.csv"
        lines = fetch("toy", tmp_path / "data", source=base, registry=[ds])
        assert [ln.split()[0] for ln in lines] == ["fetched", "fetched"]
        assert (tmp_path / "data/toy/sub/b.json").read_bytes() == contents["sub/b.json"]
        # a second run keeps what is already right
        again = fetch("toy", tmp_path / "data", source=base, registry=[ds])
        assert [ln.split()[0] for ln in again] == ["kept", "kept"]
        # the source changed under the pinned commit: refused, nothing placed, no partial file
        (tmp_path / "data/toy/a.csv").unlink()
        _publish(site, ds, {"a.csv": b"prompt,score\nhi,0\n"})
        with pytest.raises(FetchError, match="not placed"):
            fetch("toy", tmp_path / "data", source=base, registry=[ds])
        assert not (tmp_path / "data/toy/a.csv").exists()
        assert list((tmp_path / "data/toy").glob("*.part")) == []
        blocked = tmp_path / "file-not-folder"
        blocked.write_text("")
        with pytest.raises(FetchError, match="cannot write into"):
            fetch("toy", blocked, source=base, registry=[ds])
        (site / "example/toy" / ("0" * 40) / "data/a.csv").unlink()
        with pytest.raises(FetchError, match="HTTP 404"):
            fetch("toy", tmp_path / "data", source=base, registry=[ds])


def test_cli_fetches_registered_sets_then_train_reads_them_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = data_dir()
    if not (shared / "llmrouter_nq").is_dir() or not (shared / "webquestions").is_dir():
        pytest.skip(f"the reference bytes are not in {shared}")
    site = tmp_path / "site"
    for name in ("llmrouter_nq", "webquestions"):
        ds = get(name)
        _publish(site, ds, {f.local: (shared / name / f.local).read_bytes()
                            for f in ds.files if f.source_path is not None})
    root = tmp_path / "data"
    monkeypatch.setenv("EXPERTGATE_DATA_DIR", str(root))
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    with serve(site) as base:
        monkeypatch.setenv("EXPERTGATE_DATA_SOURCE", base)
        assert cli(["data", "fetch", "llmrouter_nq"]) == 0
        assert cli(["data", "fetch", "webquestions"]) == 0
    out = capsys.readouterr().out
    assert "composed webquestions/LICENSE" in out and "llmrouter_nq: ok" in out
    assert cli(["data", "verify", "llmrouter_nq"]) == 0
    assert cli(["data", "verify", "webquestions"]) == 0
    assert cli(["data", "fetch"]) == 2  # a name or --all

    assert resolve_table("llmrouter_nq") == (root / "llmrouter_nq", "llmrouter")
    with pytest.raises(KeyError, match="expertgate data fetch routellm"):
        resolve_table("routellm:gsm8k")
    with pytest.raises(KeyError, match="not a registry table name"):
        resolve_table("routellm:nope")
    assert resolve_table(str(root / "llmrouter_nq"), "llmrouter")[1] == "llmrouter"
    assert resolve_table(str(root), "routellm")[1] == "routellm-mmlu"  # the part, explicit

    art = tmp_path / "art"
    assert cli(["train", "--router", "knn", "--data", "llmrouter_nq", "--embedder", "hashing",
                "--out", str(art)]) == 0
    out = capsys.readouterr().out
    assert "models:" in out and (art / "policy.yaml").read_text() in out
