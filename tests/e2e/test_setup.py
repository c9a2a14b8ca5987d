"""The README's setup on a new user's machine: no uv on PATH, a python3 that refuses pip installs.

scripts/setup_venv.sh runs in a copy of the project with a PATH holding only a python3.10 and a
stand-in for the user's python3 (a throwaway virtualenv behind a wrapper that refuses `pip install`
the way a PEP 668 interpreter does). Passing means: `.venv` holds every package of the lock at its
pinned version, the stamp is there, and the user's python3 has the same packages as before.
uv's download cache (warm after the outer `make`) keeps this to tens of seconds.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOT = Path(REPO)

REFUSING_PYTHON3 = """#!/bin/sh
# The user's python3: a PEP 668 interpreter refuses to install packages with pip.
if [ "$1" = "-m" ] && [ "$2" = "pip" ] && [ "$3" = "install" ]; then
  echo "error: externally-managed-environment" >&2
  exit 1
fi
exec "{python}" "$@"
"""


def _copy_project(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def _freeze(python: Path) -> list[str]:
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], check=True, capture_output=True, text=True)
    return sorted(out.stdout.splitlines())


def _locked_pins() -> set[str]:
    pins = set()
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", line.strip())
        if m:
            pins.add(f"{re.sub(r'[-_.]+', '-', m.group(1)).lower()}=={m.group(2)}")
    return pins


def _installed(venv: Path) -> set[str]:
    # Read from the distributions' metadata, not through the script's own uv.
    out = subprocess.run(
        [str(venv / "bin/python"), "-c",
         "import importlib.metadata as m\n"
         "for d in m.distributions(): print(d.metadata['Name'] + '==' + d.version)"],
        check=True, capture_output=True, text=True)
    return {re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() + "==" + line.split("==")[1]
            for line in out.stdout.splitlines()}


@pytest.fixture(scope="module")
def new_machine(tmp_path_factory):
    base = tmp_path_factory.mktemp("new_machine")
    project = base / "project"
    _copy_project(project)
    user_python = base / "user_python"
    python310 = os.path.realpath(sys._base_executable)
    subprocess.run([python310, "-m", "venv", str(user_python)], check=True)
    bin_dir = base / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(REFUSING_PYTHON3.format(python=user_python / "bin/python"))
    (bin_dir / "python3").chmod(0o755)
    (bin_dir / "python3.10").symlink_to(python310)
    path = f"{bin_dir}:/usr/bin:/bin"
    assert shutil.which("uv", path=path) is None, "the test PATH must not hold uv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYENV", "UV_", "CONDA"))}
    env["PATH"] = path
    return project, user_python, env


def _setup(project: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/setup_venv.sh"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=900)


def test_setup_installs_the_lock_into_dot_venv_only(new_machine):
    project, user_python, env = new_machine
    before = _freeze(user_python / "bin/python")
    result = _setup(project, env)
    assert result.returncode == 0, result.stderr
    venv = project / ".venv"
    assert (venv / ".installed").exists()
    missing = _locked_pins() - _installed(venv)
    assert not missing, f"not installed at the locked version: {sorted(missing)[:10]}"
    assert _freeze(user_python / "bin/python") == before


def test_a_broken_venv_fails_with_one_line_and_no_stamp(new_machine):
    project, _, env = new_machine
    site = next((project / ".venv/lib").glob("python3.10/site-packages"))
    shutil.rmtree(site / "tfx")  # the metadata stays, so uv believes tfx is installed
    result = _setup(project, env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: .venv cannot import tfx"), result.stderr
    assert not (project / ".venv/.installed").exists()


def test_a_half_made_venv_is_repaired(new_machine):
    project, user_python, env = new_machine
    before = _freeze(user_python / "bin/python")
    venv = project / ".venv"
    site = next((venv / "lib").glob("python3.10/site-packages"))
    for p in [site / "tfx", *site.glob("tfx-*.dist-info"), venv / "bin/uv"]:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    (venv / ".installed").unlink(missing_ok=True)
    result = _setup(project, env)
    assert result.returncode == 0, result.stderr
    assert (venv / ".installed").exists()
    subprocess.run([str(venv / "bin/python"), "-c", "import tfx"], check=True)
    assert _freeze(user_python / "bin/python") == before
