"""The integration tier's real components: missing under CI is a failure, never a skip."""

from __future__ import annotations

import pytest

from tests.integration import conftest


def test_a_missing_component_fails_under_ci_and_skips_elsewhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="never skips"):
        conftest.require_redis()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        conftest.require_redis()


def test_missing_llama_models_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise conftest.LocalExpertError(f"{name} is not installed")

    monkeypatch.setattr(conftest, "model_path", missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"llama\.cpp experts are not installed"):
        conftest.require_llama("smollm2")
