"""A missing optional dependency is one clear error naming the pip extra; a broken installed one is not hidden."""

from __future__ import annotations

import sys

import pytest

from lmlab.core.kernel.errors import LmlabError, require


def test_a_missing_package_names_its_distribution_and_extra() -> None:
    with pytest.raises(LmlabError) as info:
        require("lmlab_no_such_module", "The thing", "retrieve", package="no-such-dist")
    assert info.value.message == "The thing needs no-such-dist, which is not installed."
    assert info.value.hint == "pip install 'lmlab[retrieve]'"
    assert require("json", "x", "y") is sys.modules["json"]


def test_an_import_error_inside_an_installed_package_is_raised_as_it_is(tmp_path, monkeypatch) -> None:
    (tmp_path / "lmlab_broken_pkg.py").write_text("import lmlab_missing_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as info:
        require("lmlab_broken_pkg", "The thing", "retrieve")
    assert info.value.name == "lmlab_missing_dependency_of_it"
