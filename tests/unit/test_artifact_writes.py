"""Writing a router artifact over an earlier one: never a half artifact, never none, and a
crashed earlier save does not block the next."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from routers.artifacts import artifact_version, load_router, save_router
from routers.base import Router, make_router
from tests.unit.test_router_contract import synthetic_table


def _fitted(k: int) -> Router:
    X, table = synthetic_table(40)
    return make_router("knn", k=k).fit(X, table)


def test_a_crashed_replacement_leaves_no_folder_that_blocks_the_next_save(
        tmp_path: Path) -> None:
    # save_router moved the old artifact aside under .NAME.old.<pid>; a save killed after that
    # move left the folder there, and a later save by a process of the same pid (PID 1 in a
    # container, every time) failed on it ('Directory not empty') after all the training
    out = save_router(_fitted(3), tmp_path / "art", embedder="hashing-16")
    stale = tmp_path / f".art.old.{os.getpid()}"
    stale.mkdir()
    (stale / "router.json").write_text("{}")
    save_router(_fitted(5), out, embedder="hashing-16")
    assert load_router(out).k == 5


def test_a_replacement_that_fails_keeps_the_old_artifact_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the old artifact was moved aside, then the new one moved in; when that second move
    # failed, the folder the gateway serves from was gone (the old one hidden beside it)
    out = save_router(_fitted(3), tmp_path / "art", embedder="hashing-16")
    before = artifact_version(out)
    real = os.replace
    calls = []

    def failing(src: object, dst: object) -> None:
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        save_router(_fitted(5), out, embedder="hashing-16")
    monkeypatch.setattr(os, "replace", real)
    assert artifact_version(out) == before and load_router(out).k == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
