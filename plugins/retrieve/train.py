"""`lmlab retrieve train`: the title generator of generative retrieval (docs/methods.md#re3val), recorded in the index
for `retrieve search` and `eval`. `title-gen`: GENRE's cross-entropy of the gold titles after the prompt; `reinforce`:
Re3val's ∇J = E[(R(ŷ) − b) ∇ log π(ŷ|x)], R and b options. `--estimator sample` (the default) is that estimator:
titles ŷ drawn from π, the generator restricted to the trie, and log π their trie-normalised log-probability;
`--estimator beam` weighs the titles the beam search decodes instead: minimum-risk training over the beam, a biased
estimate. `--reward reader` rewards a title by how well an extractive reader answers from its page (`ReaderReward`),
not only by whether it is gold. Neither the `ema` baseline, the sampler's generator nor the reader's reward cache is
checkpointed: after --resume the baseline restarts from the next batch's mean and the draws from --seed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from lmlab.core.commands.devices import model_device
from lmlab.core.evaluation.answers import best_over_golds, f1
from lmlab.core.files.records import SkipLog, load_records
from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import DataError, LmlabError
from lmlab.core.models.loading import load_model, save_model
from lmlab.core.retrieval.kilt import KiltQuery, load_kilt
from lmlab.core.retrieval.passages import passages_of_pages
from lmlab.core.retrieval.reader import ReaderConfig, load_reader, read_passages
from lmlab.core.retrieval.retrievers import Corpus, RetrievalIndex
from lmlab.core.training.logprobs import TokenLogprobModel
from lmlab.core.training.trainer import Trainer, length_grouped_batches
from lmlab.plugins.retrieve.beam import ROOT, TitleTrie, constrained_sample
from lmlab.plugins.retrieve.generative import (
    MAX_PROMPT_TOKENS,
    context_prompt_ids,
    index_trie,
    prompt_ids,
    record_generator,
    record_title_reranker,
    sequence_logprobs,
    sequences_batch,
    title_ids,
)
from lmlab.plugins.retrieve.options import RetrieveTrainOptions

METHODS = ("title-gen", "reinforce")
REWARDS = ("match", "rank", "reader")
BASELINES = ("mean", "ema", "none")
ESTIMATORS = ("sample", "beam")
ROLES = ("generator", "title-reranker")
READ_PASSAGES = 5  # passages of a page the reader reward reads (Re3val's reader reads five contexts)
READER_BATCH = 32  # (question, context window) rows per reader forward pass


class Target(NamedTuple):
    """A query and one of its gold pages, with every gold page of the query; KILT queries also carry their id and
    gold answers (what `--reward reader` scores the reader's span against)."""

    query: str
    page: str
    gold: frozenset[str]
    id: str = ""
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pair:
    """One training query: its prompt tokens, the gold title tokens (with EOS) and the gold page ids; for the reader
    reward also the query's id, text and gold answers."""

    prompt: tuple[int, ...]
    title: tuple[int, ...]
    gold: frozenset[str]
    query_id: str = ""
    question: str = ""
    answers: tuple[str, ...] = ()


def kilt_targets(queries: list[KiltQuery], corpus: Corpus, skips: SkipLog) -> list[Target]:
    """A target for each distinct gold page of each query."""
    out = []
    for query in queries:
        gold = frozenset(page for pages in query.evidence for page in pages)
        known = [page for page in dict.fromkeys(p for pages in query.evidence for p in pages) if page in corpus.by_id]
        if not query.evidence:
            skips.add("no provenance")
        elif not known:
            skips.add("provenance not in the index's corpus")
        out += [Target(query.input, page, gold, query.id, query.answers) for page in known]
    return out


def question_targets(path: str, corpus: Corpus) -> list[Target]:
    """Pairs from `retrieve questions` (or any rows with `input` and a `title` or `wikipedia_id` of the corpus)."""
    out = []
    for record in load_records(path, required=("input",)):
        if record.data.get("wikipedia_id") is not None:
            page = str(record.get("wikipedia_id", (str, int)))
            if page not in corpus.by_id:
                raise DataError(f"'{page}' is not a page of the index's corpus", path=record.path, line=record.line,
                                field="wikipedia_id", hint="generate the questions from this index")
        else:
            title = record.get("title", str)
            if title not in corpus.by_title:
                raise DataError(f"'{title}' is not a title of the index's corpus", path=record.path,
                                line=record.line, field="title", hint="generate the questions from this index")
            page = corpus.by_title[title].id
        out.append(Target(record.get("input", str), page, frozenset([page])))
    return out


class TitleGenTask:
    """Cross-entropy of the title tokens given the prompt, averaged over title tokens."""

    def __init__(self, pairs: list[Pair], *, pad_id: int, seed: int) -> None:
        self.pairs, self.pad_id, self.seed = pairs, pad_id, seed

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        return length_grouped_batches([len(p.prompt) + len(p.title) for p in self.pairs], global_batch,
                                      seed=self.seed, epoch=epoch)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return sequences_batch([(self.pairs[i].prompt, self.pairs[i].title) for i in indices], self.pad_id)

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"tokens": float(batch["targets"].numel()), "examples": float(batch["input_ids"].shape[0])}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logp = model(batch["input_ids"], batch["attention_mask"], batch["positions"], batch["targets"])
        loss = -logp.sum() / totals["tokens"]
        return loss, {"loss": loss.detach()}


def constrained_logprobs(model: torch.nn.Module, rows: list[tuple[tuple[int, ...], tuple[int, ...]]], trie: TitleTrie,
                         pad_id: int) -> torch.Tensor:
    """log π(title | prompt) under the trie-restricted policy, Σ_t [log p(y_t) − log Σ_{a ∈ A_t} p(a)] with A_t the
    tokens the trie allows after y_<t, teacher-forced in one pass through `model` (a TokenLogprobModel, or the DDP
    module wrapping one, so that gradients sync): each title position is scored at every token it allows."""
    device = model_device(model)
    batch = {name: tensor.to(device) for name, tensor in sequences_batch(rows, pad_id).items()}
    targets, seq_id = batch["targets"], batch["seq_id"]
    first = torch.ones_like(seq_id, dtype=torch.bool)
    first[1:] = seq_id[1:] != seq_id[:-1]  # the targets run title after title, in order
    nodes = torch.full_like(targets, ROOT)
    for _ in range(trie.depth - 1):  # the trie node before each target: one more position settles per pass
        nodes[1:] = torch.where(first[1:], ROOT, trie.advance(nodes[:-1], targets[:-1]))
    at, tokens = trie.allowed(nodes)
    logp = model(batch["input_ids"], batch["attention_mask"], batch["positions"][at], tokens)
    top = torch.zeros_like(nodes, dtype=logp.dtype).scatter_reduce_(0, at, logp.detach(), "amax", include_self=False)
    norm = torch.zeros_like(top).index_add_(0, at, (logp - top[at]).exp()).log() + top  # log Σ_{a ∈ A_t} p(a)
    chosen = logp[tokens == targets[at]]  # log p(y_t): y_t is allowed exactly once at its position
    return torch.zeros(len(rows), dtype=logp.dtype, device=device).index_add(0, seq_id, chosen - norm)


def leave_one_out(reward: torch.Tensor) -> torch.Tensor:
    """[queries, samples] rewards -> each sample's baseline, the mean reward of its query's other samples: it does not
    depend on that sample, so E[(R(ŷ) − b) ∇ log π(ŷ|x)] stays ∇J (unbiased) while the variance drops."""
    return (reward.sum(-1, keepdim=True) - reward) / (reward.shape[-1] - 1)


class PageContexts:
    """What the reader reads of a page for a query: its text; on a passage index (`--passages`) its passages, at
    most READ_PASSAGES of them: those the index's bm25 scores highest for the query (the scores `retrieve search -r
    bm25` ranks by), ties in page order; the page's first ones when the index has no bm25."""

    def __init__(self, index: RetrievalIndex) -> None:
        self.index = index
        self.of_page = {page: [p.id for p in found]
                        for page, found in passages_of_pages(index.passages.values()).items()}
        long = any(len(ids) > READ_PASSAGES for ids in self.of_page.values())
        self.bm25 = index.open_passages("bm25", {}) if long and "bm25" in index.built else None
        self.row = {pid: n for n, pid in enumerate(self.bm25.ids)} if self.bm25 is not None else {}

    def __call__(self, query: str, pages: Sequence[str]) -> list[list[str]]:
        if not self.index.passage_words:
            return [[self.index.corpus.by_id[page].text] for page in pages]
        ranked = [self.of_page[page] for page in pages]
        if self.bm25 is not None and any(len(ids) > READ_PASSAGES for ids in ranked):
            from lmlab.plugins.retrieve.bm25 import tokenize

            bm25 = self.bm25.model
            scores = bm25.get_scores_from_ids(bm25.get_tokens_ids(tokenize([query], self.bm25.settings["stem"],
                                                                           ids=False)[0]))
            ranked = [sorted(ids, key=lambda pid: -scores[self.row[pid]]) for ids in ranked]  # stable: page order
        return [[self.index.passages[pid].text for pid in ids[:READ_PASSAGES]] for ids in ranked]


class ReaderReward:
    """`--reward reader`: R(ŷ) = max_a F1(span, a) over the query's gold answers a (SQuAD-normalised,
    core/evaluation/answers.py), the span being what the extractive reader cuts out of ŷ's page (`contexts`, e.g.
    PageContexts). Each step reads its distinct (query, page) pairs not read before in one batched call, on the
    reader's device without gradients; rewards are cached per (query id, page id), as the policy keeps drawing the
    same titles."""

    def __init__(self, reader: torch.nn.Module, tokenizer: Any,
                 contexts: Callable[[str, Sequence[str]], list[list[str]]], batch_size: int = READER_BATCH) -> None:
        self.reader = reader.eval().requires_grad_(False)
        self.tokenizer, self.contexts, self.batch_size = tokenizer, contexts, batch_size
        self.device: torch.device | None = None
        self.cache: dict[tuple[str, str], float] = {}

    def to(self, device: torch.device) -> ReaderReward:
        if device != self.device:
            self.reader.to(device)
            self.device = device
        return self

    def __call__(self, pairs: Sequence[Pair], pages: Sequence[Sequence[str | None]]) -> list[list[float]]:
        """Each query's rewards for its titles' pages (None: a title of no page, reward 0)."""
        todo: dict[str, tuple[Pair, dict[str, None]]] = {}
        for pair, found in zip(pairs, pages, strict=True):
            for page in found:
                if page is not None and (pair.query_id, page) not in self.cache:
                    todo.setdefault(pair.query_id, (pair, {}))[1].setdefault(page)
        rows = [(pair, page, texts) for pair, wanted in todo.values()
                for page, texts in zip(wanted, self.contexts(pair.question, list(wanted)), strict=True)]
        if rows:
            with torch.no_grad():
                read = read_passages(self.reader, self.tokenizer, [pair.question for pair, _, _ in rows],
                                     [texts for _, _, texts in rows], batch_size=self.batch_size)
            for (pair, page, _), (span, _) in zip(rows, read, strict=True):
                self.cache[pair.query_id, page] = best_over_golds(f1, span, pair.answers)
        return [[0.0 if page is None else self.cache[pair.query_id, page] for page in found]
                for pair, found in zip(pairs, pages, strict=True)]


class ReinforceTask:
    """REINFORCE over titles sampled from, or decoded by, the current model under the trie (see the module
    docstring)."""

    def __init__(self, pairs: list[Pair], trie: TitleTrie, page_of: dict[tuple[int, ...], str], *, pad_id: int,
                 eos_id: int, num_beams: int, reward: str, baseline: str, ema: float, seed: int,
                 estimator: str = "beam", samples: int = 4, reader: ReaderReward | None = None) -> None:
        if (reward == "reader") != (reader is not None):
            raise ValueError("a ReaderReward is what --reward reader scores with, and only it")
        self.pairs, self.trie, self.page_of, self.reader = pairs, trie, page_of, reader
        self.pad_id, self.eos_id, self.num_beams, self.seed = pad_id, eos_id, num_beams, seed
        self.reward, self.baseline, self.ema = reward, baseline, ema
        self.estimator, self.samples = estimator, samples
        self.running: float | None = None  # the ema baseline
        self.generator: torch.Generator | None = None  # the sampler's, made on the model's device at the first step

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        queries = sorted({p.prompt: i for i, p in enumerate(self.pairs)}.values())  # each query once
        order = torch.randperm(len(queries), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        shuffled = [queries[i] for i in order]
        shuffled += shuffled[:(-len(shuffled)) % global_batch]
        return [shuffled[i:i + global_batch] for i in range(0, len(shuffled), global_batch)]

    def collate(self, indices: list[int]) -> dict[str, Any]:
        return {"index": torch.tensor(indices)}

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"examples": float(batch["index"].numel())}

    def rewards(self, titles: list[tuple[int, ...]], gold: frozenset[str]) -> list[float]:
        hits = [self.page_of.get(t) in gold for t in titles]
        if self.reward == "match":
            return [float(h) for h in hits]
        return [1.0 / rank if h else 0.0 for rank, h in enumerate(hits, 1)]

    def step_rewards(self, pairs: list[Pair], titles: list[list[tuple[int, ...]]]) -> list[list[float]]:
        """Each query's rewards for its titles (the reader reads the whole step's new pages at once)."""
        if self.reader is not None:
            return self.reader(pairs, [[self.page_of.get(t) for t in found] for found in titles])
        return [self.rewards(found, pair.gold) for pair, found in zip(pairs, titles, strict=True)]

    def loss(self, model: torch.nn.Module, batch: dict[str, Any],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pairs = [self.pairs[i] for i in batch["index"].tolist()]  # one host read of the step's queries
        lm = getattr(model, "module", model).lm
        self.trie = self.trie.to(lm.device)  # once: a step then searches on the model's device
        if self.reader is not None:
            self.reader.to(lm.device)
        loss, mean_reward = (self._sample_loss if self.estimator == "sample" else self._beam_loss)(model, lm, pairs)
        if self.baseline == "ema":
            previous = mean_reward if self.running is None else self.running
            self.running = self.ema * previous + (1 - self.ema) * mean_reward
        loss = loss / totals["examples"]
        reward = torch.tensor(mean_reward * len(pairs) / totals["examples"], device=loss.device)
        return loss, {"loss": loss.detach(), "reward": reward}

    def _sample_loss(self, model: torch.nn.Module, lm: Any, pairs: list[Pair]) -> tuple[torch.Tensor, float]:
        """−Σ_q mean_i (R_qi − b_qi) log π(ŷ_qi | x_q), ŷ_qi ~ π: the Monte Carlo estimate of −J whose gradient is
        REINFORCE's ∇J = E[(R(ŷ) − b) ∇ log π(ŷ|x)]; b the leave-one-out mean with --baseline mean."""
        if self.generator is None:
            self.generator = torch.Generator(lm.device).manual_seed(self.seed)
        drawn = constrained_sample(lm, [list(p.prompt) for p in pairs], self.trie, samples=self.samples,
                                   eos_token_id=self.eos_id, pad_token_id=self.pad_id, generator=self.generator)
        rows = [(pair.prompt, h.tokens + (self.eos_id,)) for pair, hyps in zip(pairs, drawn, strict=True) for h in hyps]
        reward = torch.tensor(self.step_rewards(pairs, [[h.tokens for h in hyps] for hyps in drawn]),
                              device=model_device(model))
        base = (leave_one_out(reward) if self.baseline == "mean"
                else torch.full_like(reward, self._baseline(reward.flatten().tolist())))
        logp = constrained_logprobs(model, rows, self.trie, self.pad_id).view(reward.shape)
        return -((reward - base) * logp).mean(-1).sum(), reward.mean().item()

    def _beam_loss(self, model: torch.nn.Module, lm: Any, pairs: list[Pair]) -> tuple[torch.Tensor, float]:
        """Minimum-risk training over the beam: −Σ_q Σ_i (R_qi − b_q)/n · log p(ŷ_qi | x_q) over the n titles the
        beam search decodes (deterministic, so not an unbiased estimate of ∇J)."""
        from lmlab.plugins.retrieve.beam import constrained_beam_search  # looked up per step (tests replace it)

        with torch.no_grad():
            decoded = constrained_beam_search(lm, [list(p.prompt) for p in pairs], self.trie,
                                              num_beams=self.num_beams, eos_token_id=self.eos_id,
                                              pad_token_id=self.pad_id)
        rows, advantages, rewards = [], [], []
        found = [[h.tokens for h in hyps] for hyps in decoded]
        for pair, titles, reward in zip(pairs, found, self.step_rewards(pairs, found), strict=True):
            rewards += reward
            base = self._baseline(reward)
            rows += [(pair.prompt, t + (self.eos_id,)) for t in titles]
            advantages += [(r - base) / len(titles) for r in reward]  # a mean over the query's titles
        sequence_logp = sequence_logprobs(model, rows, self.pad_id)
        loss = -(torch.tensor(advantages, device=sequence_logp.device) * sequence_logp).sum()
        return loss, sum(rewards) / len(rewards)

    def _baseline(self, reward: list[float]) -> float:
        if self.baseline == "mean":
            return sum(reward) / len(reward)
        if self.baseline == "ema":
            return self.running if self.running is not None else sum(reward) / len(reward)
        return 0.0


class RetrieveTrainer(Trainer):
    command = "retrieve-train"
    cli_command = "retrieve train"
    plotted = ("loss",)
    default_data = "retrieve/train.jsonl"
    opts: RetrieveTrainOptions

    def check(self) -> None:
        super().check()
        for flag, value, allowed in (("--method", self.opts.method, METHODS), ("--reward", self.opts.reward, REWARDS),
                                     ("--baseline", self.opts.baseline, BASELINES),
                                     ("--estimator", self.opts.estimator, ESTIMATORS)):
            if value not in allowed:
                raise LmlabError(f"Unknown {flag} '{value}'.", hint=f"use one of: {', '.join(allowed)}")
        if self.opts.method == "reinforce" and self.opts.estimator == "sample":
            if self.opts.reward == "rank":
                raise LmlabError("--reward rank is the beam rank of a title; samples have none.",
                                 hint="use --reward match, or --estimator beam")
            if self.opts.baseline == "mean" and self.opts.samples < 2:
                raise LmlabError("--baseline mean with --estimator sample is the mean reward of a query's other "
                                 "samples: it needs --samples 2 or more.", hint="e.g. --samples 4, or --baseline none")
        if self.opts.role not in ROLES:
            raise LmlabError(f"Unknown --role '{self.opts.role}'.", hint=f"use one of: {', '.join(ROLES)}")
        if self.opts.role == "title-reranker" and (self.opts.method != "title-gen" or self.opts.contexts < 1):
            raise LmlabError("A title reranker scores titles after the query's dense contexts, so it is trained with "
                             "--method title-gen and --contexts N.", hint="add --contexts 3, or --role generator")
        if self.opts.method == "reinforce" and self.opts.reward == "reader":
            if self.opts.reader_model is None:
                raise LmlabError("--reward reader scores each title by what an extractive reader answers from its "
                                 "page, and no --reader-model names that reader.",
                                 hint="pass --reader-model FOLDER (a reader `lmlab augment eval` saved, or an "
                                      "encoder folder), or use --reward match")
            if self.opts.questions:
                raise LmlabError("--reward reader scores the reader's answer against each query's gold answers, and "
                                 "--questions pairs have none.", hint="drop --questions, or use --reward match")
        if self.opts.method == "reinforce":
            self.plotted = ("loss", "reward")

    def setup(self, accelerator: Any) -> tuple[Any, Any]:
        opts = self.opts
        self.index = RetrievalIndex.load(opts.index)
        corpus = self.index.corpus
        self.skips = SkipLog()
        targets = kilt_targets(load_kilt(self.data), corpus, self.skips)
        for path in opts.questions:
            targets += question_targets(path, corpus)
        if self.skips.total:
            log(f"[yellow]{self.skips.summary()}[/yellow]")
        if not targets:
            raise DataError("no query has a gold page in the index's corpus.", path=self.data,
                            hint="train on queries whose provenance wikipedia_id is a document id of the index")
        reader = self._reader_reward(targets) if opts.method == "reinforce" and opts.reward == "reader" else None
        with accelerator.main_process_first():
            lm, self.tokenizer = load_model(opts.model, seed=opts.seed, trust_remote_code=False)
        titles = title_ids(self.tokenizer, [corpus.by_id[t.page].title for t in targets])
        longest = max(len(t) for t in titles)
        if longest >= opts.max_length:
            raise LmlabError(f"--max-length {opts.max_length} leaves no room for the prompt: a title takes "
                             f"{longest} tokens.", hint=f"e.g. --max-length {longest + 64}")
        prompts = [prompt_ids(self.tokenizer, [target.query], opts.max_length - len(t))[0]
                   for target, t in zip(targets, titles, strict=True)]
        pairs = [Pair(tuple(p), tuple(t), target.gold, target.id, target.query, target.answers)
                 for p, t, target in zip(prompts, titles, targets, strict=True)]
        log(f"{len(pairs)} (query, title) pairs for {len({p.prompt for p in pairs})} queries over {len(corpus)} titles")
        if opts.method == "title-gen" and opts.contexts:
            pairs += self._context_pairs(targets, titles, accelerator.device)
        self.examples = len(pairs)
        if opts.method == "title-gen":
            return TokenLogprobModel(lm), TitleGenTask(pairs, pad_id=self.tokenizer.pad_token_id, seed=opts.seed)
        page_of = {tuple(ids[:-1]): d.id for ids, d in
                   zip(title_ids(self.tokenizer, [d.title for d in corpus.documents]), corpus.documents, strict=True)}
        return TokenLogprobModel(lm), ReinforceTask(
            pairs, index_trie(self.index, self.tokenizer), page_of, pad_id=self.tokenizer.pad_token_id,
            eos_id=self.tokenizer.eos_token_id, num_beams=opts.num_beams, reward=opts.reward, baseline=opts.baseline,
            ema=opts.ema, seed=opts.seed, estimator=opts.estimator, samples=opts.samples, reader=reader)

    def _reader_reward(self, targets: list[Target]) -> ReaderReward:
        """The reader reward, refused before any model loads when a query has no gold answer to score against."""
        unanswered = list(dict.fromkeys(t.id for t in targets if not t.answers))
        if unanswered:
            queries = len({t.id for t in targets})
            raise DataError(f"--reward reader scores the reader's span against each query's gold answers, and "
                            f"{len(unanswered)} of the {queries} queries {'has' if len(unanswered) == 1 else 'have'} "
                            f"none (first: '{unanswered[0]}').", path=self.data,
                            hint="give each query an output with an answer, or use --reward match")
        reader, tokenizer = load_reader(ReaderConfig(model=self.opts.reader_model), seed=self.opts.seed)
        log(f"--reward reader: the span reader {self.opts.reader_model} reads each title's "
            + (f"passages (at most {READ_PASSAGES})" if self.index.passage_words else "page"))
        return ReaderReward(reader, tokenizer, PageContexts(self.index))

    def _context_pairs(self, targets: list[Target], titles: list[list[int]],
                       device: torch.device) -> list[Pair]:
        """The same targets after the query's top `--contexts` dense-retrieved contexts (the reranking prompt),
        the queries embedded on this process's device."""
        queries = list(dict.fromkeys(t.query for t in targets))
        dense = self.index.open("dense", {"device": device})
        found = dict(zip(queries, dense.search(queries, self.opts.contexts), strict=True))
        corpus = self.index.corpus
        contexts = [[(corpus.by_id[h.id].title, corpus.by_id[h.id].text) for h in found[t.query]] for t in targets]
        prompts = context_prompt_ids(self.tokenizer, [t.query for t in targets], contexts, MAX_PROMPT_TOKENS)
        log(f"{len(prompts)} more pairs with {self.opts.contexts} dense contexts before the query")
        return [Pair(tuple(p), tuple(t), target.gold) for p, t, target in zip(prompts, titles, targets, strict=True)]

    def summarize(self, result: dict[str, Any], run: Any) -> dict[str, Any]:
        return {"method": self.opts.method, "model_dir": str(run.path / "model"), "index": str(self.index.folder),
                "pairs": self.examples, "skipped": self.skips.as_dict(), "examples_per_s": result["examples_per_s"]}

    def save(self, result: dict[str, Any], run: Any, summary: dict[str, Any]) -> None:
        save_model(run.path / "model", result["model"].lm, self.tokenizer)
        if self.opts.role == "title-reranker":
            record_title_reranker(self.index, run.path / "model", self.opts.contexts)
        else:
            record_generator(self.index, run.path / "model", self.opts.contexts if self.opts.method == "title-gen"
                             else self.index.built.get("generative", {}).get("contexts", 0))

    def title(self) -> str:
        return f"retrieve train · {self.opts.method} · {self.opts.model}"
