"""README tells the truth about set-up: every Debian package scripts/setup.sh installs is
listed, and pyproject's licence is an SPDX expression (the TOML-table form is deprecated)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_debian_package_setup_installs() -> None:
    pkgs = re.findall(r"need_apt\+=\(([\w.+-]+)\)", (ROOT / "scripts" / "setup.sh").read_text())
    assert {"redis-server", "chromium"} <= set(pkgs)
    readme = (ROOT / "README.md").read_text()
    missing = [p for p in pkgs if f"`{p}`" not in readme]
    assert not missing, f"README does not list {missing}"


def test_license_is_an_spdx_string_and_the_page_ships() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    data = meta["tool"]["setuptools"]["package-data"]
    assert "static/dashboard/*" in data["gateway"]
    assert any("playwright" in d for d in meta["project"]["optional-dependencies"]["dev"])
