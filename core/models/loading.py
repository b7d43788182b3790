"""Resolve a model spec (an alias, a local directory, or a Hub id) into a causal LM and its tokenizer."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.core.files.atomic import atomic_dir, rename_into_place
from lmlab.core.kernel.errors import ModelError
from lmlab.core.kernel.plugins import collect


@dataclass
class ModelAlias:
    """An offline model preset: `build(seed)` returns (model, tokenizer) without touching the network."""

    name: str
    description: str
    build: Callable[[int], tuple[Any, Any]]


def cache_dir() -> Path:
    """Where converted models live: $LMLAB_HOME, else ~/.cache/lmlab."""
    return Path(os.environ.get("LMLAB_HOME") or Path.home() / ".cache" / "lmlab")


def model_aliases() -> dict[str, ModelAlias]:
    return collect("register_models", "models", key=lambda alias: alias.name)


def replace_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Like atomic_dir, but the new folder replaces an existing one (a rerun's final model, a grown vector
    store): the old folder stays whole until the new one is written, then is moved aside and removed."""
    if not target.exists():
        return atomic_dir(target, write)
    staged = atomic_dir(target.with_name(f".{target.name}-new-{os.getpid()}"), write)
    old = target.with_name(f".{target.name}-old-{os.getpid()}")
    os.replace(target, old)
    rename_into_place(staged, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def save_model(target: Path, model: Any, tokenizer: Any) -> Path:
    """A model and its tokenizer as one HF folder (safetensors), replacing `target` only once it is written."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return replace_dir(target, write)


def complete_model_folder(folder: Path, tokenizer: Any) -> Path:
    """Give a model folder lmlab converted its tokenizer (and chat template) when it has none, so that it is a whole
    HF folder any tool loads alone (lm-evaluation-harness's tokenizer=FOLDER, vLLM, AutoTokenizer): for a folder
    converted before lmlab wrote the tokenizer at conversion. Each file is renamed in whole, tokenizer_config.json
    (what this checks for) last."""
    if (folder / "tokenizer_config.json").is_file():
        return folder
    staged = atomic_dir(folder.with_name(f".{folder.name}-tokenizer-{os.getpid()}"), tokenizer.save_pretrained)
    for file in sorted(staged.iterdir(), key=lambda f: f.name == "tokenizer_config.json"):
        rename_into_place(file, folder / file.name)
    shutil.rmtree(staged, ignore_errors=True)
    return folder


def finish_tokenizer(tokenizer: Any) -> Any:
    """Make sure padding works: fall back to EOS as the pad token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, *, seed: int = 0, trust_remote_code: bool = False, dtype: Any = None) -> tuple[Any, Any]:
    """Return (model, tokenizer) for an alias, a local HF directory, or a Hub id (in that order). A folder or Hub
    model is read in `dtype` (default float32); an alias is built in float32 (`core.commands.devices.place` casts)."""
    import torch

    aliases = model_aliases()
    if spec in aliases:
        model, tokenizer = aliases[spec].build(seed)
        return model, finish_tokenizer(tokenizer)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec).expanduser()
    names = ", ".join(sorted(aliases))
    if path.exists() and not (path / "config.json").exists():
        raise ModelError(f"{spec}: directory has no config.json, so it is not a Hugging Face model folder.",
                         hint=f"pass a folder written by save_pretrained, or one of the aliases: {names}")
    if not path.exists() and spec.count("/") != 1:
        raise ModelError(f"Unknown model '{spec}': not an alias, a local folder, or a Hub id (owner/name).",
                         hint=f"aliases: {names}; `lmlab plugins` shows where they come from")
    source = str(path) if path.exists() else spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                     dtype=dtype or torch.float32)
    except OSError as exc:
        raise ModelError(f"Could not load model '{spec}' ({str(exc).splitlines()[0]}).", hint="no network here? "
                         "use a local folder or an offline alias such as smollm2-135m or tiny-llama") from exc
    return model, finish_tokenizer(tokenizer)
