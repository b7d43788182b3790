"""Two plugins registering the same name: the first keeps it, the second is refused, noted and warned about once."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from lmlab.core.kernel import plugins
from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.kernel.plugins import load_plugins, plugin_infos, pm
from lmlab.core.models.architectures import attention_types


class FakePlugin:
    """Registers attention types named `names`, each tagged with this plugin's name."""

    def __init__(self, name: str, names: tuple[str, ...]) -> None:
        self.name, self.names = name, names

    @hookimpl
    def register_attention(self, register: object) -> None:
        for name in self.names:
            register(SimpleNamespace(name=name, owner=self.name))


@pytest.fixture
def two_plugins() -> Iterator[None]:
    load_plugins()
    first = FakePlugin("clash-a", ("clash-mha", "clash-only-a"))
    second = FakePlugin("clash-b", ("clash-mha", "clash-only-b"))
    pm.register(first, name="clash-a")  # registered first: pluggy would call it last, collect asks it first
    pm.register(second, name="clash-b")
    try:
        yield
    finally:
        for plugin in (first, second):
            pm.unregister(plugin)
            plugins._infos.pop(plugin.name, None)


def test_the_first_registration_wins_and_the_second_is_refused_with_one_warning(
        two_plugins: None, capsys: pytest.CaptureFixture[str]) -> None:
    found = attention_types()
    assert found["clash-mha"].owner == "clash-a"
    assert found["clash-only-a"].owner == "clash-a" and found["clash-only-b"].owner == "clash-b"

    infos = {info.name: info for info in plugin_infos()}
    assert infos["clash-a"].registered["attention"] == ["clash-mha", "clash-only-a"]
    assert infos["clash-b"].registered["attention"] == ["clash-only-b"]
    message = ("plugin 'clash-b' registers attention 'clash-mha', already registered by plugin 'clash-a'; "
               "kept 'clash-a''s")
    assert infos["clash-b"].clashes == [message] and infos["clash-a"].clashes == []
    assert infos["clash-a"].error is None and infos["clash-b"].error is None

    stderr = capsys.readouterr().err
    assert "warning:" in stderr and message in stderr.replace("\n", " ")
    assert stderr.count("warning:") == 1

    for _ in range(3):  # collect runs many times per process: the warning does not repeat
        assert attention_types()["clash-mha"].owner == "clash-a"
    assert "warning" not in capsys.readouterr().err
    assert infos["clash-b"].clashes == [message]
