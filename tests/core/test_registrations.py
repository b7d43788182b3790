"""What the core registers itself (MHA, GPT) whatever LMLAB_PLUGINS loads, and what a user is told when a name
comes from a plugin that is not loaded, or from one whose register hook raised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmlab.cli.app import main
from lmlab.core.kernel import plugins
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.kernel.plugins import load_plugins, plugin_infos, pm
from lmlab.core.models.architectures import AttentionSpec, architectures, attention_types, check_model_choice
from lmlab.core.models.gpt import GPT_ARCH
from lmlab.core.models.transformer import MHA_SPEC
from tests.conftest import run_cli

TINY = ("--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
        "--vocab-size", "300", "--max-steps", "2")


def words(text: str) -> str:
    """`text` with Rich's line wrapping undone."""
    return " ".join(text.split())


def refused_with(plugins_env: str, *args: str) -> str:
    """Run `lmlab ARGS` with LMLAB_PLUGINS=plugins_env; assert exit 2 and return stderr unwrapped."""
    proc = run_cli(*args, env={"LMLAB_PLUGINS": plugins_env})
    assert proc.returncode == 2, proc.stderr
    return words(proc.stderr)


def test_pretrain_with_only_block_loaded_exits_2_naming_the_pretrain_plugin(tmp_path: Path) -> None:
    err = refused_with("block", "pretrain", "--arch", "block", *TINY, "-o", str(tmp_path / "run"))
    assert "The command `lmlab pretrain` comes from plugin 'pretrain', which LMLAB_PLUGINS=block leaves out." in err
    assert "hint: load it too: LMLAB_PLUGINS=block,pretrain, or unset LMLAB_PLUGINS" in err
    assert "Traceback" not in err and "No such command" not in err
    assert not (tmp_path / "run").exists()


def test_the_core_registers_mha_and_gpt_when_pretrain_is_not_loaded() -> None:
    proc = run_cli("plugins", "--json", env={"LMLAB_PLUGINS": "block"})
    assert proc.returncode == 0, proc.stderr
    infos = {info["name"]: info for info in json.loads(proc.stdout)}
    assert set(infos) == {"core", "block"}
    assert infos["core"]["registered"]["attention"] == ["mha"]
    assert infos["core"]["registered"]["architectures"] == ["gpt"]
    assert infos["block"]["registered"]["architectures"] == ["block"]


def test_the_core_owns_mha_and_gpt_in_process() -> None:
    assert attention_types()["mha"] is MHA_SPEC and architectures()["gpt"] is GPT_ARCH
    core = {info.name: info for info in plugin_infos()}["core"]
    assert core.registered["attention"] == ["mha"] and core.registered["architectures"] == ["gpt"]


def test_an_attention_whose_plugin_is_left_out_names_that_plugin(tmp_path: Path) -> None:
    err = refused_with("block,pretrain", "pretrain", "--attn", "mlra", *TINY, "-o", str(tmp_path / "run"))
    assert "The attention 'mlra' comes from plugin 'mlra', which LMLAB_PLUGINS=block,pretrain leaves out." in err
    assert "LMLAB_PLUGINS=block,pretrain,mlra, or unset LMLAB_PLUGINS" in err and "Traceback" not in err


def test_rerank_without_retrieve_names_retrieve_for_its_retrievers_and_commands() -> None:
    code = ("from lmlab.core.kernel.errors import LmlabError\n"
            "from lmlab.core.retrieval.retrievers import retriever_spec\n"
            "try:\n    retriever_spec('bm25')\nexcept LmlabError as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LMLAB_PLUGINS": "rerank"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("The retriever 'bm25' comes from plugin 'retrieve', which LMLAB_PLUGINS=rerank "
                                   "leaves out. (hint: load it too: LMLAB_PLUGINS=rerank,retrieve, or unset "
                                   "LMLAB_PLUGINS)")
    assert "The command `lmlab retrieve index` comes from plugin 'retrieve'" in refused_with("rerank", "retrieve",
                                                                                            "index")


class RaisingPlugin:
    """Registers one attention type, then raises, as a plugin with a missing dependency would."""

    @hookimpl
    def register_attention(self, register: Any) -> None:
        register(AttentionSpec("raising-kept", "registered before the error", build=MHA_SPEC.build))
        raise RuntimeError("needs the missing package frobnicate")


@pytest.fixture
def raising_plugin() -> Iterator[None]:
    load_plugins()
    plugin = RaisingPlugin()
    pm.register(plugin, name="raising-test")
    try:
        yield
    finally:
        pm.unregister(plugin)
        plugins._infos.pop("raising-test", None)
        attention_types()  # collected again without it: its failure is forgotten


def test_a_register_hook_that_raises_is_named_at_lookup(raising_plugin: None, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    found = attention_types()  # loading went on: the others' and what it registered before raising are there
    assert {"mha", "raising-kept"} <= found.keys()
    check_model_choice("gpt", "raising-kept", block_size=16, n_layer=1, n_head=2, n_embd=32)
    failed = "plugin 'raising-test' failed to register: RuntimeError: needs the missing package frobnicate."
    with pytest.raises(LmlabError) as info:
        check_model_choice("gpt", "foo", block_size=16, n_layer=1, n_head=2, n_embd=32)
    assert info.value.message == failed and "'foo'" in (info.value.hint or "")

    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--attn", "foo", *TINY, "-o", str(tmp_path / "run")])
    err = words(capsys.readouterr().err)
    assert exit_info.value.code == 2 and failed in err
    assert "Unknown --attn" not in err and "Traceback" not in err
    assert {info.name: info for info in plugin_infos()}["raising-test"].error == (
        "register_attention: RuntimeError: needs the missing package frobnicate")
