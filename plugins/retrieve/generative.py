"""Generative retrieval (GENRE, De Cao et al. 2021; Re3val, Song et al. 2024): a causal LM writes the title of
the page that answers a query, decoded by beam search constrained to a prefix trie of the corpus's titles, so
that every output names a real page. `retrieve index` builds the trie; `retrieve train` teaches the model.

`generative-rerank` is Re3val's generative reranking: the decoded titles are rescored by the same generator given
the query's top dense-retrieved contexts before it (query + DPR contexts + candidate title), log p(title |
contexts, query); the generator learns that prompt too when trained with `--contexts N`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmlab.core.commands.devices import place
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.models.loading import load_model, replace_dir
from lmlab.core.retrieval.retrievers import Corpus, Ranked, RetrievalIndex, Retriever, placement
from lmlab.plugins.retrieve.options import DEFAULT_GENERATOR
from lmlab.plugins.retrieve.prompts import context_prompt_ids, prompt_ids, title_ids, tokenizer_fingerprint
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
    def __init__(self, index: RetrievalIndex, generator: str, num_beams: int, batch_size: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        model, self.tokenizer = load_model(generator_folder(generator))
        self.model = place(model, device, dtype)
        self.num_beams, self.batch_size = num_beams, batch_size
        titles = [d.title for d in index.corpus.documents]
        settings = index.built["generative"]
        if settings.get("tokenizer") == tokenizer_fingerprint(self.tokenizer):
            self.trie = TitleTrie.load(index.folder / "generative" / TRIE_FILE)
        else:  # a generator with another tokenizer: the trie is cheap to rebuild for it
            self.trie = build_trie(self.tokenizer, titles)
        self.trie = self.trie.to(self.model.device)  # once, not per search
        self.title_tokens = {index.corpus.by_title[t].id: tuple(ids) for ids, t in
                             zip(title_ids(self.tokenizer, titles), titles, strict=True)}
        self.by_tokens = {ids[:-1]: page for page, ids in self.title_tokens.items()}

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        """At most `num_beams` titles per query, by the beam search's score (the sum of token log-probabilities
        under the trie constraint)."""
        from lmlab.plugins.retrieve.beam import constrained_beam_search

        prompts = prompt_ids(self.tokenizer, queries, MAX_PROMPT_TOKENS)
        with torch.inference_mode():
            found = constrained_beam_search(self.model, prompts, self.trie, num_beams=self.num_beams,
                                            eos_token_id=self.tokenizer.eos_token_id,
                                            pad_token_id=self.tokenizer.pad_token_id, batch_size=self.batch_size)
        return [[Ranked(self.by_tokens[h.tokens], h.score) for h in hyps[:k]] for hyps in found]


class RerankedGenerative:
    """Generative retrieval's candidates, reordered by log p(title | dense contexts, query)."""

    def __init__(self, generative: GenerativeRetriever, dense: Retriever, index: RetrievalIndex, contexts: int,
                 batch_size: int) -> None:
        self.generative, self.dense, self.corpus = generative, dense, index.corpus
        self.contexts, self.batch_size = contexts, batch_size

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        from lmlab.plugins.retrieve.scoring import shared_prompt_logprobs

        candidates = self.generative.search(queries, k)
        found = self.dense.search(queries, self.contexts)
        contexts = [[(self.corpus.by_id[h.id].title, self.corpus.by_id[h.id].text) for h in hits] for hits in found]
        tokenizer = self.generative.tokenizer
        prompts = context_prompt_ids(tokenizer, queries, contexts, MAX_PROMPT_TOKENS)
        out = []
        for start in range(0, len(queries), self.batch_size):
            part = candidates[start:start + self.batch_size]
            scores = shared_prompt_logprobs(self.generative.model, prompts[start:start + self.batch_size],
                                            [[self.generative.title_tokens[h.id] for h in hits] for hits in part],
                                            tokenizer.pad_token_id)
            out += [sorted((Ranked(h.id, s) for h, s in zip(hits, row, strict=True)), key=lambda r: -r.score)
                    for hits, row in zip(part, scores, strict=True)]
        return out


def known_generator(index: RetrievalIndex, options: dict[str, Any]) -> str | None:
    return options.get("generator") or index.built.get("generative", {}).get("generator")


def open_generative(index: RetrievalIndex, options: dict[str, Any]) -> GenerativeRetriever:
    generator = known_generator(index, options)
    if generator is None:
        raise LmlabError(f"Generative retrieval needs a trained title generator, and {index.folder} records none.",
                         hint=f"train one with `lmlab retrieve train --index {index.folder}`, or pass --generator")
    return GenerativeRetriever(index, generator, int(options.get("num_beams", 10)),
                               int(options.get("batch_size", 16)), *placement(options))


def trained_contexts(index: RetrievalIndex, options: dict[str, Any]) -> int:
    """Contexts per reranking prompt: --rerank-contexts, else what the generator was trained with."""
    return int(options.get("rerank_contexts") or index.built.get("generative", {}).get("contexts") or 0)


def open_reranked(index: RetrievalIndex, options: dict[str, Any]) -> RerankedGenerative:
    contexts = trained_contexts(index, options)
    if contexts < 1:
        raise LmlabError("generative-rerank needs a generator trained with contexts, or --rerank-contexts N.",
                         hint=f"train with `lmlab retrieve train --contexts 3 --index {index.folder}`")
    return RerankedGenerative(index.open("generative", options), index.open("dense", options), index, contexts,
                              int(options.get("batch_size", 16)))


def record_generator(index: RetrievalIndex, model_dir: Path, contexts: int) -> None:
    """Note a trained generator (and the contexts per reranking prompt it learnt) in index.json, so that search
    and eval use it by default."""
    index.built.setdefault("generative", {}).update(generator=str(Path(model_dir).resolve()), contexts=contexts)
    index.write_info()

