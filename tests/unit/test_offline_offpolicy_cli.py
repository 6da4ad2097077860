"""``expertgate eval offpolicy`` given what a user mistypes: a --summarise file that is
missing, not JSON, or the result of a --logs run (not of --simulate), and a router spec whose
value has the wrong type. Each ended in 'error: FileNotFoundError / JSONDecodeError / KeyError /
ValueError: invalid literal for int()' with exit 1, the crash path; each is now the usage
error it is (exit 2) naming the file or the spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertgate.cli import main
from tests.unit.test_offline_auto_embedders import maths_poems_table


@pytest.mark.parametrize("content,says", [
    (None, "no such file"),
    ("not json\n", "not JSON"),
    (json.dumps({"mode": "logs", "estimates": {}}), "not the result of --simulate"),
    (json.dumps({"mode": "simulate"}), "not the result of --simulate"),
])
def test_summarise_names_the_file_it_cannot_read(tmp_path: Path, capsys, content: str | None,
                                                 says: str) -> None:
    src = tmp_path / "res.json"
    if content is not None:
        src.write_text(content)
    rc = main(["eval", "offpolicy", "--summarise", str(src), "--out",
               str(tmp_path / "s.md")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(src) in err and says in err and "Error:" not in err
    assert not (tmp_path / "s.md").exists()


@pytest.mark.parametrize("flag", ["--candidate", "--logging"])
def test_a_router_spec_of_the_wrong_type_is_a_usage_error(tmp_path: Path, capsys,
                                                          flag: str) -> None:
    rc = main(["eval", "offpolicy", "--simulate", str(maths_poems_table(tmp_path)), "--embedder",
               "hashing", "--n", "40", "--repeats", "1", "--boot", "50", flag, "knn:k=abc",
               "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "abc" in err and "Error:" not in err


def test_summarise_out_naming_a_folder_is_refused_before_reading(tmp_path: Path,
                                                                 capsys) -> None:
    """--out is the Markdown file: a folder there ended in 'IsADirectoryError' (exit 1)."""
    folder = tmp_path / "reports"
    folder.mkdir()
    rc = main(["eval", "offpolicy", "--summarise", str(tmp_path / "missing.json"), "--out",
               str(folder)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--out" in err and "it is a folder" in err


@pytest.mark.parametrize("spec", ["knn:temperature=Infinity", "knn:threshold=2",
                                  "classifier:success_threshold=2"])
def test_a_router_spec_outside_the_familys_range_is_refused(tmp_path: Path, capsys,
                                                            spec: str) -> None:
    """The ranges a gateway policy's params: and train --param are held to (they simulated
    a router no policy could serve, with exit 0)."""
    rc = main(["eval", "offpolicy", "--simulate", str(maths_poems_table(tmp_path)), "--embedder",
               "hashing", "--n", "40", "--repeats", "1", "--boot", "50", "--candidate", spec,
               "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert spec.split(":")[1].split("=")[0] in err
