"""The Python versions the project claims: every module imports on the oldest one."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _oldest_claimed() -> tuple[int, int]:
    # (tomllib is 3.11+; the line is simple enough to read without it)
    spec = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    major, minor = spec.groups()
    return int(major), int(minor)


def test_the_readme_promises_the_python_that_pyproject_requires():
    major, minor = _oldest_claimed()
    assert f"Python ≥ {major}.{minor}" in (ROOT / "README.md").read_text()


def _interpreter(major: int, minor: int) -> str | None:
    found = shutil.which(f"python{major}.{minor}")
    pyenv = sorted(Path.home().glob(f".pyenv/versions/{major}.{minor}.*/bin/python{major}.{minor}"))
    for exe in ([found] if found else []) + [str(p) for p in pyenv]:
        if subprocess.run([exe, "-c", "pass"], capture_output=True).returncode == 0:  # pyenv shims may refuse
            return exe
    return None


@pytest.mark.slow
def test_every_module_imports_on_the_oldest_python_the_project_claims(tmp_path):
    # A 3.11-only import (`typing.Self`) once stopped every command on 3.10, which the README
    # promised. The modules import their heavy libraries (torch, llama.cpp, transformers) lazily,
    # so a venv with the light ones is enough to find such a line in any module.
    major, minor = _oldest_claimed()
    if sys.version_info[:2] == (major, minor):
        exe = sys.executable
    elif (exe := _interpreter(major, minor)) is None:
        pytest.skip(f"no Python {major}.{minor} on this machine")
    venv = tmp_path / "venv"
    subprocess.run([exe, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = subprocess.run([py, "-m", "pip", "install", "-q", "click", "rich", "pyyaml", "numpy", "jinja2"],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        pytest.skip(f"could not install the light dependencies for Python {major}.{minor}: {pip.stderr[-300:]}")
    modules = sorted(p.stem for p in (ROOT / "humpback_lite").glob("*.py") if p.stem != "__main__")
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module('humpback_lite.' + m)\n"
    out = subprocess.run([py, "-c", code, *modules], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    cli = subprocess.run([py, "-m", "humpback_lite", "--help"], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert cli.returncode == 0 and "segment" in cli.stdout, cli.stderr[-2000:]
