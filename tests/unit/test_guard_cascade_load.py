"""A two-stage guard artifact whose ``cascade.json`` was edited by hand: the gateway refuses
it with a ConfigError naming the file, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.pipeline import _load_guard
from routers.base import RouterError
from routers.guard_cascade import GuardCascade, save_cascade
from tests.unit.test_guard_cascade import BACK, BACK_SPEC, FRONT, _guard


@pytest.mark.parametrize("options", [{"dimension": 256}, ["dim", 256], {"dim": "wide"}])
def test_bad_back_embedder_options_are_a_config_error(options: object,
                                                      tmp_path: Path) -> None:
    # a misspelt option of the back embedder escaped as a TypeError: `serve` stopped with a
    # traceback instead of the one-line error every other bad artifact gets
    pytest.importorskip("skops")
    c = GuardCascade(_guard(FRONT), _guard(BACK), back_embedder=BACK, back_spec=BACK_SPEC)
    art = save_cascade(c, tmp_path / "cascade", front_embedder=FRONT.name)
    m = json.loads((art / "cascade.json").read_text())
    m["back_embedder"]["options"] = options
    (art / "cascade.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match=r"cannot load two-stage guard .*back embedder"):
        _load_guard(art, FRONT, "policy 'p' guard")


def test_saving_over_a_users_folder_is_refused_and_keeps_it(tmp_path: Path) -> None:
    # save_cascade removed whatever folder it was given (shutil.rmtree): `eval guard
    # --save-cascade ~/models` (or --save-selected, when the two-stage guard is selected)
    # deleted the user's folder with everything in it
    pytest.importorskip("skops")
    c = GuardCascade(_guard(FRONT), _guard(BACK), back_embedder=BACK, back_spec=BACK_SPEC)
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RouterError, match="is not a guard artifact"):
        save_cascade(c, mine, front_embedder=FRONT.name)
    assert (mine / "notes.txt").read_text() == "keep me"
    # an earlier two-stage guard there is replaced, as is a single guard's folder
    art = save_cascade(c, tmp_path / "g", front_embedder=FRONT.name)
    assert save_cascade(c, art, front_embedder=FRONT.name) == art
    single = _guard(FRONT).save(tmp_path / "single", embedder=FRONT.name)
    assert (save_cascade(c, single, front_embedder=FRONT.name) / "cascade.json").is_file()


def test_a_single_guard_saved_over_an_earlier_two_stage_one_replaces_it(
        tmp_path: Path) -> None:
    # eval guard --save-selected DIR where an earlier run had saved its two-stage guard: the
    # pre-run check let it through, then the single guard's save refused the folder after
    # the whole evaluation ("it holds subfolders")
    pytest.importorskip("skops")
    from evals.guard_eval import _GuardMethod, save_guard

    c = GuardCascade(_guard(FRONT), _guard(BACK), back_embedder=BACK, back_spec=BACK_SPEC)
    art = save_cascade(c, tmp_path / "g", front_embedder=FRONT.name)
    m = _GuardMethod()
    m.router = _guard(FRONT)
    m.val_scores = m.router.ood_scores(FRONT.embed(["fix my code"]), ["fix my code"])
    m.val_unsafe = m.val_scores < -1
    saved = save_guard(m, {"method": "guard-knn", "target_frr": 0.25, "gqr_score": 0.5}, art,
                       FRONT.name, "t", 0)
    assert saved["format"] == "guard" and (art / "router.json").is_file()
    assert not (art / "cascade.json").exists()
