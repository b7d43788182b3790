"""`lmlab plugins`, LMLAB_PLUGINS, and third-party plugins that fail: each run is a fresh `lmlab` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def lmlab(*args: str, cwd: Path, pythonpath: Path | None = None, plugins: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LMLAB_PLUGINS", "LMLAB_DEBUG")}
    if plugins is not None:
        env["LMLAB_PLUGINS"] = plugins
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "lmlab.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def fake_distribution(site: Path, name: str, module: str, source: str) -> Path:
    """A minimal installed distribution on `site`: one module plus a dist-info with an `lmlab` entry point."""
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lmlab]\n{module.removesuffix('_plugin')} = {module}\n")
    return site


def by_name(stdout: str) -> dict[str, dict]:
    infos = json.loads(stdout)
    assert isinstance(infos, list)
    return {info["name"]: info for info in infos}


def test_plugins_json_lists_core_and_orpo(tmp_path: Path) -> None:
    proc = lmlab("plugins", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    infos = by_name(proc.stdout)
    assert {"core", "orpo"} <= infos.keys()
    assert infos["core"]["distribution"] == "lmlab"
    assert infos["orpo"]["distribution"] == "lmlab"
    assert "train-orpo" in infos["orpo"]["registered"]["commands"]
    assert "register_commands" in infos["orpo"]["hooks"]
    assert all(info["error"] is None for info in infos.values())


def test_help_lists_plugin_commands(tmp_path: Path) -> None:
    proc = lmlab("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train-orpo" in proc.stdout
    assert "plugins" in proc.stdout


def test_empty_lmlab_plugins_loads_no_entry_points(tmp_path: Path) -> None:
    proc = lmlab("--help", cwd=tmp_path, plugins="")
    assert proc.returncode == 0, proc.stderr
    assert "train-orpo" not in proc.stdout
    proc = lmlab("plugins", "--json", cwd=tmp_path, plugins="")
    assert proc.returncode == 0, proc.stderr
    assert set(by_name(proc.stdout)) == {"core"}


def test_lmlab_plugins_selects_by_name(tmp_path: Path) -> None:
    proc = lmlab("--help", cwd=tmp_path, plugins="orpo")
    assert proc.returncode == 0, proc.stderr
    assert "train-orpo" in proc.stdout


def test_plugin_that_fails_to_import_is_reported_and_skipped(tmp_path: Path) -> None:
    site = fake_distribution(tmp_path / "site", "broken-plugin", "broken_plugin",
                             'raise ImportError("needs the missing package frobnicate")\n')
    proc = lmlab("--help", cwd=tmp_path, pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert "train-orpo" in proc.stdout
    assert "warning" in proc.stderr and "'broken'" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = lmlab("plugins", "--json", cwd=tmp_path, pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    infos = by_name(proc.stdout)
    assert infos["broken"]["distribution"] == "broken-plugin"
    assert infos["broken"]["version"] == "0.1"
    assert infos["broken"]["error"] == "ImportError: needs the missing package frobnicate"
    assert infos["orpo"]["error"] is None


RAISING_PLUGIN = '''
from lmlab.core.kernel.hookspecs import hookimpl


@hookimpl
def register_commands(app):
    raise RuntimeError("boom")
'''


def test_plugin_whose_register_commands_raises_is_reported_and_skipped(tmp_path: Path) -> None:
    site = fake_distribution(tmp_path / "site", "raising-plugin", "raising_plugin", RAISING_PLUGIN)
    proc = lmlab("--help", cwd=tmp_path, pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert "train-orpo" in proc.stdout
    assert "'raising'" in proc.stderr and "boom" in proc.stderr

    proc = lmlab("plugins", "--json", cwd=tmp_path, pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    infos = by_name(proc.stdout)
    assert infos["raising"]["distribution"] == "raising-plugin"
    assert infos["raising"]["error"] == "register_commands: RuntimeError: boom"
    assert "train-orpo" in infos["orpo"]["registered"]["commands"]


HALF_DONE_PLUGIN = '''
from lmlab.core.kernel.hookspecs import hookimpl


def half_done():
    """Registered just before the hook raises."""


@hookimpl
def register_commands(app):
    app.command("half-done")(half_done)
    raise RuntimeError("boom")
'''


def test_commands_from_a_raising_register_commands_are_dropped(tmp_path: Path) -> None:
    site = fake_distribution(tmp_path / "site", "half-plugin", "half_plugin", HALF_DONE_PLUGIN)
    proc = lmlab("--help", cwd=tmp_path, pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert "half-done" not in proc.stdout


@pytest.mark.parametrize("args", [["nosuch"], ["train-orpo", "--bogus"], ["train-orpo", "--max-steps", "abc"]])
def test_usage_errors_exit_2_without_a_traceback(tmp_path: Path, args: list[str]) -> None:
    proc = lmlab(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Error" in proc.stderr
