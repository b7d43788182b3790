"""The core's own plugin: what lmlab itself implements, registered through the same hooks as any plugin's and
before every plugin (so no plugin can take these names, and `LMLAB_PLUGINS` cannot leave them out): multi-head
attention `mha`, the `gpt` architecture, and the offline model presets and `hf` backend of
`lmlab.core.models.presets`."""

from __future__ import annotations

from typing import Any

from lmlab.core.kernel.hookspecs import hookimpl
from lmlab.core.models.presets import register_backends, register_models

__all__ = ["register_architectures", "register_attention", "register_backends", "register_models"]


@hookimpl
def register_attention(register: Any) -> None:
    from lmlab.core.models.transformer import MHA_SPEC

    register(MHA_SPEC)


@hookimpl
def register_architectures(register: Any) -> None:
    from lmlab.core.models.gpt import GPT_ARCH

    register(GPT_ARCH)
