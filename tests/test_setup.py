"""What the README's setup leaves behind: `santi` on PATH, pointing at this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_santi_is_on_path_and_is_this_checkout() -> None:
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    if not {"/usr/local/bin", str(Path.home() / ".local" / "bin")} & set(dirs):
        pytest.skip("neither /usr/local/bin nor ~/.local/bin is on PATH: bootstrap says so and cannot link santi")
    found = shutil.which("santi")
    assert found is not None, "run scripts/bootstrap.sh (./run-tests does): it links santi onto PATH"
    assert Path(found).resolve() == (ROOT / ".venv" / "bin" / "santi").resolve()
    result = subprocess.run([found, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("santi ")


def test_bootstrap_prints_nothing_on_stdout_when_installed() -> None:
    result = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh")], capture_output=True, text=True,
                            check=True, stdin=subprocess.DEVNULL)
    assert result.stdout == ""
