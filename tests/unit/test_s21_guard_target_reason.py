"""``eval guard --save-selected`` / ``--save-cascade`` into a folder that is no guard artifact:
the refusal said "(it is neither absent nor a guard artifact)", repeating itself; it now says
what is there, as a router artifact's refusal does."""

from __future__ import annotations

from pathlib import Path

import pytest

from routers.base import RouterError
from routers.guard_cascade import check_guard_target


def test_a_users_folder_is_refused_naming_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RouterError, match=r"not a guard artifact \(it has no expertgate "
                                          r"router\.json\)"):
        check_guard_target(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(RouterError, match=r"\(it holds subfolders or links\)"):
        check_guard_target(tmp_path)


def test_a_file_and_a_missing_parent_folder_are_named(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(RouterError, match=r"\(it is not a folder\)"):
        check_guard_target(f)
    with pytest.raises(RouterError, match=r"is not a folder"):
        check_guard_target(f / "out")
    assert check_guard_target(tmp_path / "new") == (tmp_path / "new").absolute()
