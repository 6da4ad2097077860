"""README: `make setup` "installs torch 2.13.0 (CPU)" on a fresh Debian machine. It ran
`pip install torch==2.13.0`, which from PyPI is the CUDA build on Linux (with several GB of
nvidia-* packages the gateway never uses); only a machine with a local +cpu wheel got the CPU
build. setup.sh asks for the CPU build by its local version: a wheel pip already finds (a
local mirror, find-links), else from PyTorch's CPU index, as docker/Dockerfile does."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _torch_installs(text: str) -> list[str]:
    return [ln for ln in text.replace("\\\n", " ").splitlines()
            if re.search(r"(?i)pip install .*\btorch==", ln) and not ln.lstrip().startswith("#")]


def test_setup_installs_the_cpu_build_of_the_version_the_readme_names() -> None:
    version = re.search(r"installs torch ([\d.]+) \(CPU\)",
                        (ROOT / "README.md").read_text().replace("\n", " "))
    assert version, "README no longer says which torch make setup installs"
    lines = _torch_installs((ROOT / "scripts" / "setup.sh").read_text())
    # a +cpu wheel pip finds without another index first (this machine's find-links: no
    # request to an index it cannot reach), else PyTorch's CPU index; never PyPI's CUDA build
    assert lines and all(f"torch=={version.group(1)}+cpu" in ln for ln in lines)
    assert any(CPU_INDEX in ln for ln in lines)


def test_the_image_installs_the_same_torch_from_the_same_index() -> None:
    [line] = _torch_installs((ROOT / "docker" / "Dockerfile").read_text())
    setup = _torch_installs((ROOT / "scripts" / "setup.sh").read_text())
    assert CPU_INDEX in line
    pin = re.search(r"torch==([\d.]+)", line)
    assert pin and all(f"torch=={pin.group(1)}+cpu" in ln for ln in setup)
