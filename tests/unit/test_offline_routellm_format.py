"""``--format routellm`` (or routellm-gsm8k) on a path that is not RouteLLM's data folder (a
user's own CSV, the wrong folder) said 'no such file or folder: <the file's folder>/mmlu', a
path the user never typed. It now names the path given and what the format reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.datasets.routing import load_routellm
from routers.base import RouterError


@pytest.mark.parametrize("benchmark", ["mmlu", "gsm8k"])
def test_a_path_that_is_not_routellms_folder_is_named(tmp_path: Path, benchmark: str) -> None:
    own = tmp_path / "mine.csv"
    own.write_text("prompt_id,prompt,model,score,cost\n1,hi,a,1,0.1\n")
    for given in (own, tmp_path):
        with pytest.raises(RouterError) as e:
            load_routellm(given, benchmark)
        msg = str(e.value)
        assert str(given) in msg and "RouteLLM" in msg and f"{benchmark}/" in msg
        assert f"no such file or folder: {tmp_path / benchmark}" not in msg
