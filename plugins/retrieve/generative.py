"""Generative retrieval (GENRE, De Cao et al. 2021; Re3val, Song et al. 2024): a causal LM writes the title of
the page that answers a query, decoded by beam search constrained to a prefix trie of the corpus's titles, so
that every output names a real page. `retrieve index` builds the trie; `retrieve train` teaches the model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmlab.core.errors import LmlabError
from lmlab.core.models import load_model, replace_dir
from lmlab.core.retrievers import Corpus, Ranked, RetrievalIndex
from lmlab.plugins.retrieve.options import DEFAULT_GENERATOR
from lmlab.plugins.retrieve.prompts import prompt_ids, title_ids, tokenizer_fingerprint
from lmlab.plugins.retrieve.trie import TitleTrie

TRIE_FILE = "trie.safetensors"
MAX_PROMPT_TOKENS = 256


def build_trie(tokenizer: Any, titles: Sequence[str]) -> TitleTrie:
    return TitleTrie.build(title_ids(tokenizer, titles))


def build(corpus: Corpus, folder: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The title trie, with the tokenizer of `--generator-model`."""
    model_name = options.get("generator_model", DEFAULT_GENERATOR)
    _, tokenizer = load_model(model_name)
    trie = build_trie(tokenizer, [d.title for d in corpus.documents])
    replace_dir(folder, lambda tmp: trie.save(tmp / TRIE_FILE))
    return {"tokenizer_of": model_name, "tokenizer": tokenizer_fingerprint(tokenizer), "titles": len(trie)}


def generator_folder(spec: str) -> str:
    """A `retrieve train` run folder means its model/ sub-folder."""
    path = Path(spec).expanduser()
    return str(path / "model") if (path / "model" / "config.json").is_file() else spec


class GenerativeRetriever:
    def __init__(self, index: RetrievalIndex, generator: str, num_beams: int, batch_size: int) -> None:
        import torch

        self.model, self.tokenizer = load_model(generator_folder(generator))
        self.model.eval()
        self.num_beams, self.batch_size, self.torch = num_beams, batch_size, torch
        titles = [d.title for d in index.corpus.documents]
        settings = index.built["generative"]
        if settings.get("tokenizer") == tokenizer_fingerprint(self.tokenizer):
            self.trie = TitleTrie.load(index.folder / "generative" / TRIE_FILE)
        else:  # a generator with another tokenizer: the trie is cheap to rebuild for it
            self.trie = build_trie(self.tokenizer, titles)
        self.by_tokens = {tuple(ids[:-1]): index.corpus.by_title[t].id
                          for ids, t in zip(title_ids(self.tokenizer, titles), titles, strict=True)}

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        """At most `num_beams` titles per query, by the beam search's score (the sum of token log-probabilities
        under the trie constraint)."""
        from lmlab.plugins.retrieve.beam import constrained_beam_search

        prompts = prompt_ids(self.tokenizer, queries, MAX_PROMPT_TOKENS)
        with self.torch.inference_mode():
            found = constrained_beam_search(self.model, prompts, self.trie, num_beams=self.num_beams,
                                            eos_token_id=self.tokenizer.eos_token_id,
                                            pad_token_id=self.tokenizer.pad_token_id, batch_size=self.batch_size)
        return [[Ranked(self.by_tokens[h.tokens], h.score) for h in hyps[:k]] for hyps in found]


def known_generator(index: RetrievalIndex, options: dict[str, Any]) -> str | None:
    return options.get("generator") or index.built.get("generative", {}).get("generator")


def open_generative(index: RetrievalIndex, options: dict[str, Any]) -> GenerativeRetriever:
    generator = known_generator(index, options)
    if generator is None:
        raise LmlabError(f"Generative retrieval needs a trained title generator, and {index.folder} records none.",
                         hint=f"train one with `lmlab retrieve train --index {index.folder}`, or pass --generator")
    return GenerativeRetriever(index, generator, int(options.get("num_beams", 10)),
                               int(options.get("batch_size", 16)))


def record_generator(index: RetrievalIndex, model_dir: Path) -> None:
    """Note a trained generator in index.json, so that search and eval use it by default."""
    index.built.setdefault("generative", {})["generator"] = str(Path(model_dir).resolve())
    index.write_info()

