"""The package as a user gets it: built, installed into a fresh venv, run from outside the checkout.

``python -m build`` (the ``build`` package, in the test extra) builds the sdist
from a copy of the source tree, then the wheel from that sdist, as a release
would: a module or static file that the sdist leaves out is missing from the
wheel too. The wheel goes into a new virtual environment in a temporary
directory (never the repository's ``.venv``; pip fetches its dependencies
through its cache and the configured index), and ``rusty-ws serve`` from that
venv, started with its working directory outside the checkout and no
``PYTHONPATH``, must serve ``/``, ``/healthz`` and every file of
``rusty_ws/static/`` under ``/rusty_ws/``.

About 25 s: the build ~10 s (its isolated environment installs setuptools), the
venv and the install ~10 s, the hub a second. Every subprocess has a deadline.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import rusty_ws
from support import MS, WAIT, ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rusty_ws"
#: What the copy of the source leaves out: what a fresh clone does not have either.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "node_modules", "__pycache__", "*.pyc", "build", "dist",
                                    "*.egg-info", ".pytest_cache", "test-output", "bench-results")
BUILD_TIMEOUT = 300_000 * MS
INSTALL_TIMEOUT = 300_000 * MS
#: Folders under docs/, tests/ and scripts/ that the sdist leaves out (MANIFEST.in).
NOT_IN_SDIST = {"node_modules", "__pycache__", ".pytest_cache", "test-output"}


@dataclass
class Built:
    sdist: Path
    wheel: Path
    work: Path


def package_files() -> set[str]:
    """Every file of the package in the checkout, as ``rusty_ws/...`` paths."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would point Python at the checkout."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(extra)
    return env


def run(command: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=cwd, env=clean_env(), capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    run([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(source)], BUILD_TIMEOUT, work)
    [sdist] = (work / "dist").glob("*.tar.gz")
    [wheel] = (work / "dist").glob("*.whl")
    return Built(sdist, wheel, work)


@pytest.fixture(scope="module")
def venv(built: Built) -> Path:
    """A new venv with the wheel and its redis extra installed; returns its directory."""
    venv = built.work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], INSTALL_TIMEOUT, built.work)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"{built.wheel}[redis]"], INSTALL_TIMEOUT, built.work)
    return venv


@pytest.fixture
def outside(built: Built) -> Path:
    """A working directory outside the checkout, with nothing in it."""
    path = built.work / "elsewhere"
    path.mkdir(exist_ok=True)
    assert ROOT not in path.parents
    return path


class TestDistributions:
    def test_names_carry_the_one_version(self, built: Built) -> None:
        assert built.wheel.name == f"rusty_ws-{rusty_ws.__version__}-py3-none-any.whl"
        assert built.sdist.name == f"rusty_ws-{rusty_ws.__version__}.tar.gz"

    def test_wheel_holds_every_module_and_static_file(self, built: Built) -> None:
        with zipfile.ZipFile(built.wheel) as wheel:
            names = set(wheel.namelist())
        in_package = {name for name in names if name.startswith("rusty_ws/")}
        assert in_package == package_files()
        for subpackage in ("server", "client", "brokers"):
            assert f"rusty_ws/{subpackage}/__init__.py" in in_package
        assert {"rusty_ws/static/index.html", "rusty_ws/static/rusty_ws.js"} <= in_package

    def test_sdist_holds_the_package_and_the_metadata_files(self, built: Built) -> None:
        top = built.sdist.name[: -len(".tar.gz")]
        with tarfile.open(built.sdist) as sdist:
            names = {member.name[len(top) + 1:] for member in sdist.getmembers() if member.isfile()}
        assert package_files() <= names
        assert {"setup.cfg", "setup.py", "README.md", "LICENSE", "PKG-INFO"} <= names

    def test_sdist_holds_the_docs_tests_and_scripts(self, built: Built) -> None:
        top = built.sdist.name[: -len(".tar.gz")]
        with tarfile.open(built.sdist) as sdist:
            names = {member.name[len(top) + 1:] for member in sdist.getmembers() if member.isfile()}
        for folder in ("docs", "tests", "scripts"):
            wanted = {path.relative_to(ROOT).as_posix() for path in (ROOT / folder).rglob("*")
                      if path.is_file() and path.suffix != ".pyc"
                      and not set(path.relative_to(ROOT).parts) & NOT_IN_SDIST}
            assert wanted, folder
            assert wanted <= names, f"{folder}: missing from the sdist: {sorted(wanted - names)[:5]}"
        assert "CHANGELOG.md" in names
        assert not any("node_modules" in name or "__pycache__" in name for name in names)

    def test_metadata(self, built: Built) -> None:
        with zipfile.ZipFile(built.wheel) as wheel:
            info = f"rusty_ws-{rusty_ws.__version__}.dist-info/"
            metadata = email.message_from_bytes(wheel.read(info + "METADATA"))
            licenses = [name for name in wheel.namelist() if name.startswith(info) and name.endswith("LICENSE")]
            entry_points = wheel.read(info + "entry_points.txt").decode()
        assert metadata["Version"] == rusty_ws.__version__
        assert metadata["License"] == "MIT" and licenses
        assert "redis" in metadata.get_all("Provides-Extra")
        assert any(line.startswith("PyJWT") for line in metadata.get_all("Requires-Dist"))
        assert "rusty-ws = rusty_ws.cli:main" in entry_points


class TestInstalledWheel:
    def test_import_resolves_to_the_installed_wheel(self, venv: Path, outside: Path) -> None:
        code = "import redis, rusty_ws; print(rusty_ws.__file__); print(rusty_ws.__version__)"
        found, version = run([str(venv / "bin" / "python"), "-c", code], WAIT * 10, outside).stdout.split()
        assert Path(found).is_relative_to(venv / "lib"), found
        assert not Path(found).is_relative_to(ROOT), found
        assert version == rusty_ws.__version__

    def test_console_script_prints_the_version(self, venv: Path, outside: Path) -> None:
        output = run([str(venv / "bin" / "rusty-ws"), "--version"], WAIT * 10, outside).stdout
        assert output.splitlines()[0] == f"rusty_ws {rusty_ws.__version__}"

    def test_a_clone_folder_beside_a_script(self, venv: Path, tmp_path: Path) -> None:
        """The README's trap, as it says: the checkout's .venv (setup-env.sh: pip install -e) is fooled, the wheel is not."""
        clone = tmp_path / "rusty_ws"  # what `git clone` makes, holding the package folder
        (clone / "rusty_ws").mkdir(parents=True)
        (clone / "rusty_ws" / "__init__.py").write_text("raise AssertionError('imported the clone')\n")
        script = tmp_path / "script.py"
        script.write_text("from rusty_ws import WsClient\nimport rusty_ws\nprint(rusty_ws.__file__)\n")

        installed = subprocess.run([str(venv / "bin" / "python"), str(script)], cwd=tmp_path, env=clean_env(),
                                   capture_output=True, text=True, timeout=WAIT * 10)
        assert installed.returncode == 0, installed.stderr
        assert Path(installed.stdout.strip()).is_relative_to(venv), installed.stdout

        editable = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=clean_env(),
                                  capture_output=True, text=True, timeout=WAIT * 10)
        assert "ImportError: cannot import name 'WsClient' from 'rusty_ws' (unknown location)" in editable.stderr
        assert "ImportError: cannot import name 'WsClient' from 'rusty_ws' (unknown location)" in \
            (ROOT / "README.md").read_text()

    def test_serves_the_page_healthz_and_every_module(self, venv: Path, outside: Path) -> None:
        port = free_port()
        command = [str(venv / "bin" / "rusty-ws"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        with ServerProcess(command, port=port, cwd=str(outside), env=clean_env(JWT_SECRET_KEY="x" * 48)) as hub:
            base = hub.base
            status, headers, body = get(base + "/")
            assert status == 200 and headers["Content-Type"].startswith("text/html")
            assert b"page.js" in body and b"<html" in body.lower()

            status, _, body = get(base + "/healthz")
            assert status == 200 and b'"status":"ok"' in body.replace(b" ", b"")

            served = []
            for path in sorted((PACKAGE / "static").iterdir()):
                if path.name == "index.html":
                    continue
                status, headers, body = get(f"{base}/rusty_ws/{path.name}")
                assert status == 200, path.name
                assert body == path.read_bytes(), f"{path.name} differs from the checkout's"
                if path.suffix == ".js":
                    assert "javascript" in headers["Content-Type"], (path.name, headers["Content-Type"])
                served.append(path.name)
            assert "rusty_ws.js" in served and "jwt_utils.js" in served


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
