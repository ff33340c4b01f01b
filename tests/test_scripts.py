"""scripts/setup-env.sh and scripts/serve.sh, run from a temporary copy of scripts/.

No test here installs anything: a half-made venv is made with
``python3 -m venv --without-pip`` (or is a bare folder), and the healthy case
uses a stand-in ``.venv`` whose ``python`` and ``rusty-ws`` only record how
they were called. Every run has a deadline.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import WAIT

ROOT = Path(__file__).resolve().parent.parent
SETTING_UP = "setting up .venv (first run installs packages)..."


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A folder with a copy of serve.sh and setup-env.sh in scripts/, and no .venv."""
    (tmp_path / "scripts").mkdir()
    for name in ("serve.sh", "setup-env.sh"):
        shutil.copy2(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    return tmp_path


def run(repo: Path, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(repo / "scripts" / script), *args], cwd=repo, capture_output=True, text=True,
                          timeout=WAIT * 20, stdin=subprocess.DEVNULL, env={**os.environ, **env})


def assert_half_made(result: subprocess.CompletedProcess[str], repo: Path) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert "This .venv is half-made. Delete it, then run the command again:" in lines, result.stderr
    assert lines[-1].strip() == f"rm -rf {shlex.quote(str(repo / '.venv'))}", result.stderr
    assert "Traceback" not in result.stderr


def make_without_pip(repo: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo / ".venv")], check=True,
                   timeout=WAIT * 10)
    assert (repo / ".venv" / "bin" / "python").exists()


class TestHalfMadeVenv:
    def test_a_venv_without_pip_is_reported_with_what_to_delete(self, repo: Path) -> None:
        make_without_pip(repo)
        result = run(repo, "setup-env.sh", "test")
        assert_half_made(result, repo)
        assert "has no pip" in result.stderr
        assert (repo / ".venv").exists(), "the script must not delete anything itself"

    def test_serve_sh_says_what_it_does_then_reports_it(self, repo: Path) -> None:
        make_without_pip(repo)
        result = run(repo, "serve.sh")
        assert_half_made(result, repo)
        assert result.stderr.splitlines()[0] == SETTING_UP

    def test_a_venv_folder_without_python(self, repo: Path) -> None:
        (repo / ".venv" / "bin").mkdir(parents=True)
        result = run(repo, "setup-env.sh")
        assert_half_made(result, repo)
        assert ".venv/bin/python does not run" in result.stderr

    def test_venv_creation_that_fails_half_way(self, repo: Path) -> None:
        # What Debian's python3 does without python3-venv: the folder and its python, then an error.
        fake = repo / "python-without-ensurepip"
        fake.write_text(f"#!/bin/sh\n{shlex.quote(sys.executable)} -m venv --without-pip \"$3\"\n"
                        "echo 'The virtual environment was not created successfully because ensurepip is not "
                        "available.' >&2\nexit 1\n")
        fake.chmod(0o755)
        result = run(repo, "setup-env.sh", PYTHON=str(fake))
        assert_half_made(result, repo)
        assert "python3-venv" in result.stderr


class TestStandInVenv:
    """A .venv whose python and rusty-ws record their arguments: the scripts' flow, without installing."""

    @pytest.fixture
    def venv(self, repo: Path) -> Path:
        bin_dir = repo / ".venv" / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("python", "rusty-ws"):
            stand_in = bin_dir / name
            stand_in.write_text(f'#!/bin/sh\necho "{name} $*" >> "$(dirname "$0")/../calls"\necho "{name} ran"\n')
            stand_in.chmod(0o755)
        return repo / ".venv"

    def test_serve_sh_installs_then_serves_with_the_extra_arguments(self, repo: Path, venv: Path) -> None:
        result = run(repo, "serve.sh", "--port", "9000")
        assert result.returncode == 0, result.stderr
        assert result.stderr.splitlines()[0] == SETTING_UP
        assert (venv / "calls").read_text().splitlines() == [
            "python -m pip --version",
            "python -m pip install --quiet --disable-pip-version-check -e .",
            "python -m compileall -q rusty_ws",  # the .pyc an editable install never writes
            "rusty-ws serve --host 127.0.0.1 --port 8081 --port 9000",
        ]

    def test_setup_env_passes_the_extras(self, repo: Path, venv: Path) -> None:
        assert run(repo, "setup-env.sh", "test,bench").returncode == 0
        assert (venv / "calls").read_text().splitlines()[-2:] == [
            "python -m pip install --quiet --disable-pip-version-check -e .[test,bench]",
            "python -m compileall -q rusty_ws",
        ]
