"""Generative retrieval (GENRE, De Cao et al. 2021; Re3val, Song et al. 2024): a causal LM writes the title of the
page that answers a query, decoded under the trie of the corpus's titles so that every output names a real page. The
prompt `Question: <query>\nTitle:` is followed by ` <title>` and EOS, in training and decoding alike;
`generative-rerank` rescores the decoded titles as log p(title | contexts, query), dense contexts before the prompt."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from lmlab.core.commands.devices import model_device, place
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.models.loading import load_model, replace_dir
from lmlab.core.retrieval.retrievers import Corpus, Ranked, RetrievalIndex, Retriever, placement
from lmlab.plugins.retrieve.beam import TitleTrie, constrained_beam_search, left_pad
from lmlab.plugins.retrieve.options import DEFAULT_GENERATOR

TRIE_FILE = "trie.safetensors"
MAX_PROMPT_TOKENS = 256
CONTEXT_CHARS = 300  # of each context's text in a reranking prompt
Row = tuple[tuple[int, ...], tuple[int, ...]]  # (prompt tokens, title tokens with EOS)


def query_prompt(query: str) -> str:
    return f"Question: {' '.join(query.split())}\nTitle:"


def context_lines(contexts: Sequence[tuple[str, str]]) -> list[str]:
    return [f"Context: {title}: {' '.join(text.split())[:CONTEXT_CHARS]}\n" for title, text in contexts]


def context_prompt_ids(tokenizer: Any, queries: Sequence[str], contexts: Sequence[Sequence[tuple[str, str]]],
                       max_tokens: int) -> list[list[int]]:
    """Reranking prompts' token ids within `max_tokens`, the same in training and in reranking: the query's prompt
    whole (a query too long alone loses its start), after as many contexts as fit in rank order, so the
    lowest-ranked go first; the first that does not fit whole keeps its beginning. Each line is tokenised on its
    own (a line ends in a newline, where byte-level BPE splits anyway), so the ids are those of the whole text."""
    special = tokenizer("").input_ids  # BOS where the tokenizer adds one
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    lines = [context_lines(c) for c in contexts]
    every = [line for group in lines for line in group]
    flat = tokenizer(every, add_special_tokens=False).input_ids if every else []
    asked = tokenizer([query_prompt(q) for q in queries], add_special_tokens=False).input_ids
    out, at = [], 0
    for group, query in zip(lines, asked, strict=True):
        pieces, at = flat[at:at + len(group)], at + len(group)
        room = max_tokens - len(special) - len(query)
        kept: list[int] = []
        for piece in pieces:
            if len(piece) > room - len(kept):
                part = room - len(kept) - len(newline)
                kept += piece[:part] + newline if part > 0 else []
                break
            kept += piece
        out.append((special + kept + query)[-max_tokens:])
    return out


def prompt_ids(tokenizer: Any, queries: Sequence[str], max_tokens: int) -> list[list[int]]:
    """The prompts' token ids, each cut to its last `max_tokens` (a long query loses its start, not the cue)."""
    return [ids[-max_tokens:] for ids in tokenizer([query_prompt(q) for q in queries]).input_ids]


def title_ids(tokenizer: Any, titles: Sequence[str]) -> list[list[int]]:
    """Each title's tokens after the prompt, ending with EOS (what the trie holds and the generator learns)."""
    eos = tokenizer.eos_token_id
    return [ids + [eos] for ids in tokenizer([f" {t}" for t in titles], add_special_tokens=False).input_ids]


def corpus_title_tokens(tokenizer: Any, corpus: Corpus) -> dict[str, tuple[int, ...]]:
    """Each page's title tokens with EOS, by page id."""
    titles = [d.title for d in corpus.documents]
    return {d.id: tuple(ids) for d, ids in zip(corpus.documents, title_ids(tokenizer, titles), strict=True)}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Tells whether a trie built with one tokenizer fits another: a hash of the vocabulary and EOS."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr((vocab, tokenizer.eos_token_id)).encode()).hexdigest()[:16]


def build_trie(tokenizer: Any, titles: Sequence[str]) -> TitleTrie:
    return TitleTrie.build(title_ids(tokenizer, titles))


def index_trie(index: RetrievalIndex, tokenizer: Any) -> TitleTrie:
    """The index's title trie if it was built with `tokenizer`, else one rebuilt for it (that is cheap)."""
    if index.built.get("generative", {}).get("tokenizer") == tokenizer_fingerprint(tokenizer):
        return TitleTrie.load(index.folder / "generative" / TRIE_FILE)
    return build_trie(tokenizer, [d.title for d in index.corpus.documents])


def build(corpus: Corpus, folder: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The title trie, with the tokenizer of `--generator-model`."""
    model_name = options.get("generator_model", DEFAULT_GENERATOR)
    _, tokenizer = load_model(model_name)
    trie = build_trie(tokenizer, [d.title for d in corpus.documents])
    replace_dir(folder, lambda tmp: trie.save(tmp / TRIE_FILE))
    return {"tokenizer_of": model_name, "tokenizer": tokenizer_fingerprint(tokenizer), "titles": len(trie)}


def sequences_batch(rows: Sequence[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt + title rows, with the flat positions that predict each title token."""
    width = max(len(p) + len(t) for p, t in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    positions, targets, seq_id = [], [], []
    for row, (prompt, title) in enumerate(rows):
        seq = torch.tensor(prompt + title, dtype=torch.long)
        input_ids[row, :len(seq)] = seq
        attention[row, :len(seq)] = 1
        pos = torch.arange(len(prompt) - 1, len(seq) - 1)
        positions.append(row * width + pos)
        targets.append(seq[pos + 1])
        seq_id.append(torch.full_like(pos, row))
    return {"input_ids": input_ids, "attention_mask": attention, "positions": torch.cat(positions),
            "targets": torch.cat(targets), "seq_id": torch.cat(seq_id)}


def sequence_logprobs(model: torch.nn.Module, rows: Sequence[Row], pad_id: int) -> torch.Tensor:
    """log p(title | prompt) of each row, summed over the title's tokens, on the model's device; `model` is a
    TokenLogprobModel (or the DDP/FSDP module wrapping one)."""
    device = model_device(model)
    batch = {name: tensor.to(device) for name, tensor in sequences_batch(rows, pad_id).items()}
    token_logp = model(batch["input_ids"], batch["attention_mask"], batch["positions"], batch["targets"])
    return torch.zeros(len(rows), dtype=token_logp.dtype, device=device).index_add(0, batch["seq_id"], token_logp)


@torch.inference_mode()
def shared_prompt_logprobs(lm: torch.nn.Module, prompts: Sequence[Sequence[int]],
                           candidates: Sequence[Sequence[tuple[int, ...]]], pad_id: int) -> list[list[float]]:
    """log p(title | prompt) for every candidate title (tokens with EOS) of every prompt, the prompt run once
    and its KV cache shared by its candidates: reranking 10 titles after a 250-token context prompt costs one
    prompt pass plus 10 short title passes, not 10 full passes."""
    device = lm.device
    ids, attention = (t.to(device) for t in left_pad(prompts, pad_id))  # every prompt ends at the last column
    positions = (attention.cumsum(-1) - 1).clamp_(min=0)
    out = lm(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].float().log_softmax(-1)
    owner = torch.tensor([row for row, titles in enumerate(candidates) for _ in titles], device=device)
    titles = [t for row in candidates for t in row]
    if not titles:
        return [[] for _ in prompts]
    out.cache.reorder_cache(owner)
    # the title's tokens after the first, each predicted by the one before
    padded = pad_sequence([torch.tensor(t) for t in titles], batch_first=True, padding_value=pad_id).to(device)
    inputs, targets, steps = padded[:, :-1], padded[:, 1:], padded.shape[1] - 1
    valid = torch.arange(steps, device=device) < torch.tensor([len(t) - 1 for t in titles], device=device)[:, None]
    mask = torch.cat([attention[owner], valid.long()], 1)
    rest = lm(input_ids=inputs, attention_mask=mask, cache=out.cache, use_cache=True,
              position_ids=positions[owner, -1:] + 1 + torch.arange(steps, device=device))
    token_logp = rest.logits.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    heads = torch.tensor([t[0] for t in titles], device=device)
    scores = iter((first[owner, heads] + (token_logp * valid).sum(1)).tolist())
    return [[next(scores) for _ in row] for row in candidates]


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
        self.trie = index_trie(index, self.tokenizer).to(self.model.device)  # moved once, not per search
        self.title_tokens = corpus_title_tokens(self.tokenizer, index.corpus)
        self.by_tokens = {ids[:-1]: page for page, ids in self.title_tokens.items()}

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        """At most `num_beams` titles per query, by the beam search's score (the sum of token log-probabilities
        under the trie constraint)."""
        prompts = prompt_ids(self.tokenizer, queries, MAX_PROMPT_TOKENS)
        with torch.inference_mode():
            found = constrained_beam_search(self.model, prompts, self.trie, num_beams=self.num_beams,
                                            eos_token_id=self.tokenizer.eos_token_id,
                                            pad_token_id=self.tokenizer.pad_token_id, batch_size=self.batch_size)
        return [[Ranked(self.by_tokens[h.tokens], h.score) for h in hyps[:k]] for hyps in found]


@dataclass(frozen=True)
class TitleScorer:
    """What scores log p(title | dense contexts, query): the generator itself (same-generator rescoring) or a title
    reranker trained apart (`retrieve train --role title-reranker`), with its own tokenizer's title tokens."""

    model: Any
    tokenizer: Any
    title_tokens: dict[str, tuple[int, ...]]  # page id -> the title's tokens with EOS


class RerankedGenerative:
    """Generative retrieval's candidates, reordered by a `TitleScorer`'s log p(title | dense contexts, query)."""

    def __init__(self, generative: GenerativeRetriever, dense: Retriever, index: RetrievalIndex, contexts: int,
                 batch_size: int, scorer: TitleScorer | None = None) -> None:
        self.generative, self.dense, self.corpus = generative, dense, index.corpus
        self.contexts, self.batch_size = contexts, batch_size
        self.scorer = scorer or TitleScorer(generative.model, generative.tokenizer, generative.title_tokens)

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        candidates = self.generative.search(queries, k)
        found = self.dense.search(queries, self.contexts)
        contexts = [[(self.corpus.by_id[h.id].title, self.corpus.by_id[h.id].text) for h in hits] for hits in found]
        scorer = self.scorer
        prompts = context_prompt_ids(scorer.tokenizer, queries, contexts, MAX_PROMPT_TOKENS)
        out = []
        for start in range(0, len(queries), self.batch_size):
            part = candidates[start:start + self.batch_size]
            scores = shared_prompt_logprobs(scorer.model, prompts[start:start + self.batch_size],
                                            [[scorer.title_tokens[h.id] for h in hits] for hits in part],
                                            scorer.tokenizer.pad_token_id)
            out += [sorted((Ranked(h.id, s) for h, s in zip(hits, row, strict=True)), key=lambda r: -r.score)
                    for hits, row in zip(part, scores, strict=True)]
        return out


def open_generative(index: RetrievalIndex, options: dict[str, Any]) -> GenerativeRetriever:
    generator = options.get("generator") or index.built.get("generative", {}).get("generator")
    if generator is None:
        raise LmlabError(f"Generative retrieval needs a trained title generator, and {index.folder} records none.",
                         hint=f"train one with `lmlab retrieve train --index {index.folder}`, or pass --generator")
    return GenerativeRetriever(index, generator, int(options.get("num_beams", 10)),
                               int(options.get("batch_size", 16)), *placement(options))


def open_reranked(index: RetrievalIndex, options: dict[str, Any]) -> RerankedGenerative:
    """The generator's titles rescored by --title-reranker, else the index's recorded title reranker, else the
    generator itself; contexts per prompt: --rerank-contexts, else what the rescoring model was trained with."""
    recorded = index.built.get("generative", {})
    reranker = options.get("title_reranker") or recorded.get("title_reranker")
    trained_with = recorded.get("title_reranker_contexts" if reranker else "contexts")
    contexts = int(options.get("rerank_contexts") or trained_with or 0)
    if contexts < 1:
        raise LmlabError("generative-rerank needs a generator (or title reranker) trained with contexts, or "
                         "--rerank-contexts N.",
                         hint=f"train with `lmlab retrieve train --contexts 3 --index {index.folder}`")
    generative = index.open("generative", options)
    scorer = None
    if reranker:
        model, tokenizer = load_model(generator_folder(reranker))
        scorer = TitleScorer(place(model, *placement(options)), tokenizer, corpus_title_tokens(tokenizer, index.corpus))
    return RerankedGenerative(generative, index.open("dense", options), index, contexts,
                              int(options.get("batch_size", 16)), scorer)


def record_generator(index: RetrievalIndex, model_dir: Path, contexts: int) -> None:
    """Note a trained generator (and the contexts per reranking prompt it learnt) in index.json, so that search
    and eval use it by default."""
    index.built.setdefault("generative", {}).update(generator=str(Path(model_dir).resolve()), contexts=contexts)
    index.write_info()


def record_title_reranker(index: RetrievalIndex, model_dir: Path, contexts: int) -> None:
    """Note a title reranker trained apart (and its contexts per prompt) in index.json, for generative-rerank."""
    index.built.setdefault("generative", {}).update(title_reranker=str(Path(model_dir).resolve()),
                                                    title_reranker_contexts=contexts)
    index.write_info()

