"""A RouteLLM folder whose CSVs are not RouteLLM's (a GSM8K file without the models' columns,
an empty or one-column MMLU file): 'KeyError: 'mistralai/Mixtral-8x7B-Instruct-v0.1'' (exit 1,
the crash path) or 'EmptyDataError: No columns to parse from file'. Each is now one line
naming the file and the columns the format reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.datasets.routing import ROUTELLM_STRONG, ROUTELLM_WEAK, load_routellm
from routers.base import RouterError


def test_a_gsm8k_file_without_the_models_columns(tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    f = tmp_path / "gsm8k" / "gsm8k_responses.csv"
    f.write_text("prompt,x\nhi,1\n")
    with pytest.raises(RouterError) as e:
        load_routellm(tmp_path, "gsm8k")
    assert str(f) in str(e.value) and ROUTELLM_WEAK in str(e.value)


@pytest.mark.parametrize("content", ["", "a\nb\n"])
def test_an_mmlu_file_that_is_not_routellms(tmp_path: Path, content: str) -> None:
    (tmp_path / "mmlu" / "responses").mkdir(parents=True)
    f = tmp_path / "mmlu" / "responses" / "mmlu_x.csv"
    f.write_text(content)
    with pytest.raises(RouterError) as e:
        load_routellm(tmp_path, "mmlu")
    assert str(f) in str(e.value) and "prompt" in str(e.value)


def test_routellms_own_shape_loads(tmp_path: Path) -> None:
    (tmp_path / "mmlu" / "responses").mkdir(parents=True)
    (tmp_path / "mmlu" / "responses" / "mmlu_x.csv").write_text(
        f"prompt,{ROUTELLM_WEAK},{ROUTELLM_STRONG}\nq1,True,False\nq2,False,True\n")
    t = load_routellm(tmp_path, "mmlu")
    w, st = t.models.index(ROUTELLM_WEAK), t.models.index(ROUTELLM_STRONG)
    assert len(t) == 2 and t.scores[:, w].tolist() == [1.0, 0.0]
    assert t.scores[:, st].tolist() == [0.0, 1.0]
