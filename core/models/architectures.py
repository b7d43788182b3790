"""What `pretrain --arch` and `--attn` choose from, and what every registered architecture and attention provides
(docs/plugins.md, "Architectures", shows a worked plugin).

Config. Every model is built from one `ArchConfig`: the shared shape, `arch`, `attn`, and the parsed
`attn_options` and `arch_options`. `parse_options(raw, shape)` turns the `--arch-opt KEY=VALUE` pairs and the
model's shape (an `AttentionConfig`: the vocabulary is unknown until the corpus is tokenised) into
JSON-serialisable options, defaults filled in, or raises LmlabError (`reject_unknown` gives the standard one).
`check_model_choice` runs both parsers and builds nothing, so a trainer calls it before any slow work.

Model. `build(config, attention)` returns a `LanguageModel`: an `nn.Module` with
    config: ArchConfig                          what it was built from (saved as config.json)
    forward(idx, targets=None, reduction="mean", return_logits=True) -> (logits, loss)
        idx [B, T], T ≤ config.block_size. With targets [B, T] (-1 = ignored): logits [B, T, V] (None when
        return_logits is False) and the cross-entropy ("mean", "sum", or [B, T] with "none"). Without targets:
        (logits whose last position predicts the next token, None).
    num_params() -> int, get_input_embeddings() -> nn.Embedding (what TEV monitors), save(folder)
and optionally `prefill` / `decode` (the generation interface, lmlab.core.serving.generation) and
`prepare_batch(batch, generator)` (a training batch rewritten before the loss; targets it does not predict -1).
`load(folder, config, attention)` rebuilds a saved model; without one, `load_model_folder` builds it from
config.json's "arch" and reads model.safetensors into it (`load_weights`; nothing unpickled).

Attention. A registered attention is causal self-attention [B, T, C] → [B, T, C] whose output projection is
called `c_proj` (the model scales its init by 1/√(2·n_layer), nanoGPT's residual rule); its `--attn-opt`
settings arrive as `options`, validated by its own `parse_options`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lmlab.core.kernel.errors import LmlabError, ModelError
from lmlab.core.kernel.plugins import collect, not_registered

if TYPE_CHECKING:
    from torch import Tensor, nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_HINT = "pass a model folder written by `lmlab pretrain` (config.json + model.safetensors)"


@dataclass
class AttentionConfig:
    """The model's shape as an attention (or an architecture's option parser) sees it, plus attention options."""

    n_embd: int
    n_head: int
    n_layer: int
    block_size: int
    dropout: float = 0.0
    bias: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttentionSpec:
    """`build(config)` returns the attention module; `parse_options(raw, config)` turns `--attn-opt` pairs into
    its options (defaults filled in) or raises LmlabError; None means the attention takes no options."""

    name: str
    description: str
    build: Callable[[AttentionConfig], nn.Module]
    parse_options: Callable[[dict[str, str], AttentionConfig], dict[str, Any]] | None = None


def attention_types() -> dict[str, AttentionSpec]:
    return collect("register_attention", "attention", key=lambda spec: spec.name)


@dataclass
class ArchConfig:
    """What every architecture builds from; config.json holds exactly these fields."""

    vocab_size: int
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    arch: str = "gpt"
    attn: str = "mha"
    attn_options: dict[str, Any] = field(default_factory=dict)  # parsed by the attention's parse_options
    arch_options: dict[str, Any] = field(default_factory=dict)  # parsed by the architecture's parse_options

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise LmlabError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}).",
                             hint="e.g. n_embd=128 with n_head=4")

    def attention_config(self) -> AttentionConfig:
        return AttentionConfig(self.n_embd, self.n_head, self.n_layer, self.block_size, self.dropout, self.bias,
                               dict(self.attn_options))


class LanguageModel(Protocol):
    """What `build` returns (an nn.Module besides); the module docstring gives each member's contract."""

    config: ArchConfig

    def forward(self, idx: Tensor, targets: Tensor | None = None, reduction: str = "mean",
                return_logits: bool = True) -> tuple[Tensor | None, Tensor | None]: ...

    def num_params(self) -> int: ...

    def get_input_embeddings(self) -> nn.Embedding: ...

    def save(self, folder: str | Path) -> None: ...


PROTOCOL_MEMBERS = ("config", "forward", "num_params", "get_input_embeddings", "save")


@dataclass
class ArchitectureSpec:
    name: str
    description: str
    build: Callable[[ArchConfig, AttentionSpec], LanguageModel]
    parse_options: Callable[[dict[str, str], AttentionConfig], dict[str, Any]] | None = None
    load: Callable[[Path, ArchConfig, AttentionSpec], LanguageModel] | None = None


def architectures() -> dict[str, ArchitectureSpec]:
    return collect("register_architectures", "architectures", key=lambda spec: spec.name)


def parse_key_values(pairs: Iterable[str], flag: str) -> dict[str, str]:
    """['rank=32', 'targets=q,k,v'] → {'rank': '32', 'targets': 'q,k,v'}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LmlabError(f"{flag} expects KEY=VALUE, got '{pair}'.", hint=f"e.g. {flag} rank=32")
        out[key.strip()] = value.strip()
    return out


def reject_unknown(raw: dict[str, str], valid: Iterable[str], *, flag: str, owner: str) -> None:
    """LmlabError naming the keys of `raw` that are not in `valid`, with the valid keys as the hint."""
    valid = sorted(valid)
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        hint = f"{owner} takes {', '.join(valid)}" if valid else f"{owner} takes no options: leave {flag} out"
        raise LmlabError(f"Unknown {flag} key(s) for {owner}: {', '.join(unknown)}.", hint=hint)


def _parse(parse: Callable[[dict[str, str], AttentionConfig], dict[str, Any]] | None, pairs: Iterable[str],
           flag: str, owner: str, shape: AttentionConfig) -> dict[str, Any]:
    raw = parse_key_values(pairs, flag)
    if parse is None:
        reject_unknown(raw, (), flag=flag, owner=owner)
        return {}
    return parse(raw, shape)


def check_model_choice(arch: str, attn: str, *, block_size: int, n_layer: int, n_head: int, n_embd: int,
                       dropout: float = 0.0, attn_opt: Iterable[str] = (),
                       arch_opt: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """(attn_options, arch_options) for `--arch/--attn/--attn-opt/--arch-opt`, or LmlabError: registered names,
    a width divisible by the heads, and each option parsed by its owner. Builds nothing: call it early."""
    attentions, archs = attention_types(), architectures()
    if attn not in attentions:
        raise not_registered("register_attention", attn, f"Unknown --attn '{attn}'.",
                             hint=f"registered: {', '.join(sorted(attentions))}")
    if arch not in archs:
        raise not_registered("register_architectures", arch, f"Unknown --arch '{arch}'.",
                             hint=f"registered: {', '.join(sorted(archs))}")
    if n_embd % n_head:
        raise LmlabError(f"--n-embd {n_embd} is not divisible by --n-head {n_head}.",
                         hint="pick a width that is a multiple of the number of heads")
    shape = AttentionConfig(n_embd, n_head, n_layer, block_size, dropout)
    shape.options = _parse(attentions[attn].parse_options, attn_opt, "--attn-opt", f"--attn {attn}", shape)
    return shape.options, _parse(archs[arch].parse_options, arch_opt, "--arch-opt", f"--arch {arch}", shape)


def build_model(arch: str, attn: str, *, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                dropout: float = 0.0, attn_opt: Iterable[str] = (),
                arch_opt: Iterable[str] = ()) -> tuple[LanguageModel, ArchConfig]:
    """The registered architecture `arch` with the registered attention `attn`, every option validated."""
    shape = {"block_size": block_size, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "dropout": dropout}
    attn_options, arch_options = check_model_choice(arch, attn, **shape, attn_opt=attn_opt, arch_opt=arch_opt)
    config = ArchConfig(vocab_size=vocab_size, **shape, arch=arch, attn=attn, attn_options=attn_options,
                        arch_options=arch_options)
    return _checked(architectures()[arch].build(config, attention_types()[attn]), arch), config


def _checked(model: Any, arch: str) -> LanguageModel:
    missing = [name for name in PROTOCOL_MEMBERS if not hasattr(model, name)]
    if missing:
        raise ModelError(f"Architecture '{arch}' built a {type(model).__name__} without {', '.join(missing)}.",
                         hint="a registered architecture must build a LanguageModel (see core.models.architectures)")
    return model


def save_model_folder(model: LanguageModel, folder: str | Path) -> None:
    """config.json (the model's ArchConfig) + model.safetensors (a tied weight stored once)."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2), encoding="utf-8")
    save_model(model, str(folder / WEIGHTS_FILE))


def saved_model_folder(path: str | Path, weights: tuple[str, ...] = (WEIGHTS_FILE,)) -> Path | None:
    """`path` or a run directory's model/ folder, whichever holds config.json and one of `weights` (a run's own
    config.json is its options); None: neither does."""
    path = Path(path)
    return next((c for c in (path, path / "model")
                 if (c / CONFIG_FILE).is_file() and any((c / w).is_file() for w in weights)), None)


def find_model_folder(path: str | Path) -> Path:
    """A model folder, or a run directory's model/ folder."""
    found = saved_model_folder(path)
    if found is not None:
        return found
    raise ModelError(f"{path}: no saved model here (config.json + model.safetensors).",
                     hint="pass the run directory printed by `lmlab pretrain`, or its model/ folder")


def read_model_config(folder: str | Path) -> ArchConfig:
    path = Path(folder) / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{folder}: no config.json.", hint=MODEL_HINT) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc}).", hint=MODEL_HINT) from None
    if not isinstance(data, dict) or "arch" not in data:
        raise ModelError(f"{path}: not a model config (no \"arch\" field).", hint=MODEL_HINT)
    try:
        return ArchConfig(**data)
    except TypeError as exc:
        raise ModelError(f"{path}: not a model config ({exc}).", hint=MODEL_HINT) from None


def _missing_hint(kind: str, registered: Iterable[str]) -> str:
    names = ", ".join(sorted(registered)) or "none"
    restricted = "; LMLAB_PLUGINS is set and may leave its plugin out" if "LMLAB_PLUGINS" in os.environ else ""
    return (f"install the plugin that provides it (registered {kind}: {names}; `lmlab plugins` shows which plugin "
            f"registers what){restricted}")


def load_model_folder(folder: str | Path) -> LanguageModel:
    """The model saved in `folder`, rebuilt by the architecture its config.json names."""
    folder = Path(folder)
    config = read_model_config(folder)
    archs, attentions = architectures(), attention_types()
    if config.arch not in archs:
        raise not_registered("register_architectures", config.arch, f"{folder}: architecture '{config.arch}' is not "
                             "installed.", hint=_missing_hint("architectures", archs), error=ModelError)
    if config.attn not in attentions:
        raise not_registered("register_attention", config.attn, f"{folder}: attention type '{config.attn}' is not "
                             "installed.", hint=_missing_hint("attention types", attentions), error=ModelError)
    spec, attention = archs[config.arch], attentions[config.attn]
    if spec.load is not None:
        return _checked(spec.load(folder, config, attention), config.arch)
    model = _checked(spec.build(config, attention), config.arch)
    load_weights(model, folder)
    return model


def load_weights(model: LanguageModel, folder: str | Path) -> None:
    """Read folder/model.safetensors into `model` (strict: every tensor present, every shape matching)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(folder) / WEIGHTS_FILE
    try:
        load_model(model, str(path))
    except FileNotFoundError:
        raise ModelError(f"{folder}: no model.safetensors.", hint=MODEL_HINT) from None
    except (RuntimeError, SafetensorError) as exc:
        raise ModelError(f"{path}: weights do not fit config.json ({exc}).", hint=MODEL_HINT) from None

