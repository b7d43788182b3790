"""The repository root is the `lmlab` package (cli/, core/, plugins/ are lmlab.cli, lmlab.core, lmlab.plugins),
a layout pyproject's `packages.find` cannot prefix; everything else about the build is in pyproject.toml."""

from setuptools import find_packages, setup

setup(package_dir={"lmlab": "."},
      packages=[f"lmlab.{name}" for name in find_packages(include=["cli", "cli.*", "core", "core.*", "plugins",
                                                                   "plugins.*"])])
