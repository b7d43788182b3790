"""examples/plugin-hello installs with pip like any third-party plugin and adds `lmlab hello`.

It is installed with `pip install --target` into a temporary folder put on PYTHONPATH of the `lmlab`
subprocesses, not into the venv: the same wheel build and entry-point metadata, but nothing in the shared
environment changes, so tests running beside this one (or after it crashed) never see `hello`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN_SRC = Path(__file__).resolve().parents[2] / "examples" / "plugin-hello"


@pytest.fixture(scope="module")
def hello_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin pip-installed (offline, no deps) into a private folder; returns that folder."""
    base = tmp_path_factory.mktemp("plugin-hello")
    src = base / "src"  # build from a copy: setuptools leaves build/ and *.egg-info next to the sources
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = base / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return site


def lmlab(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LMLAB_PLUGINS", "LMLAB_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "lmlab.cli", *args], capture_output=True, text=True,
                          env=env, cwd=site.parent, timeout=300)


def test_hello_greets(hello_site: Path) -> None:
    proc = lmlab(hello_site, "hello", "--name", "Ada")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Hello, Ada!\n"
    assert "warning" not in proc.stderr


def test_hello_json(hello_site: Path) -> None:
    proc = lmlab(hello_site, "hello", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"greeting": "Hello, world!"}


def test_hello_listed_with_its_distribution(hello_site: Path) -> None:
    proc = lmlab(hello_site, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    infos = {info["name"]: info for info in json.loads(proc.stdout)}
    hello = infos["hello"]
    assert hello["distribution"] == "lmlab-plugin-hello"
    assert hello["version"] == "0.1.0"
    assert hello["registered"] == {"commands": ["hello"]}
    assert hello["error"] is None
    assert "orpo" in infos


def test_hello_not_in_the_shared_environment() -> None:
    """Guard for the isolation above: nothing installed the plugin into the venv itself."""
    from importlib.metadata import PackageNotFoundError, distribution

    with pytest.raises(PackageNotFoundError):
        distribution("lmlab-plugin-hello")
