"""`lmlab retrieve train-reranker`: the cross-encoder reranker on the shared training loop, on each query's gold
contexts and BM25 hard negatives, passages on a `--passages` index (as Re3val trains its context reranker). With
`--bayes` the M ensemble members train at once (one checkpoint resumes them all) and member 0's last checkpoints are
averaged (SWA)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmlab.core.files.atomic import atomic_path
from lmlab.core.files.records import SkipLog, example, load_records
from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import DataError, LmlabError
from lmlab.core.retrieval.kilt import load_kilt
from lmlab.core.retrieval.passages import answer_passages, passages_of_pages
from lmlab.core.retrieval.rerankers import context_of, record_reranker
from lmlab.core.retrieval.retrievers import RetrievalIndex
from lmlab.core.training.trainer import Trainer, length_grouped_batches
from lmlab.plugins.rerank import bayes
from lmlab.plugins.rerank.command import RerankTrainOptions

BAYES = ("ensemble", "mc-dropout", "swa", "all")
LOSSES = ("bce+listwise", "bce")
SNAPSHOTS = "swa-checkpoints"


@dataclass(frozen=True)
class LabelledPair:
    query_id: str
    query: str
    context: str
    label: int  # 1: a gold page (or a relevant row), 0: a hard negative


def mined_pairs(path: str, index: RetrievalIndex, *, negatives: int, depth: int, retriever: str = "bm25",
                skips: SkipLog | None = None) -> list[LabelledPair]:
    """Gold contexts and the top `negatives` contexts not from a gold page among the retriever's best `depth`, per
    KILT query. On a passage index (Re3val's context reranker) the contexts are passages: `answer_passages` of
    each gold page, and passage hits of other pages as negatives; otherwise whole pages."""
    queries = [q for q in load_kilt(path) if q.evidence]
    skips = skips if skips is not None else SkipLog()
    passage_level = bool(index.passage_words) and index.passage_level(retriever)
    corpus = index.passage_corpus if passage_level else index.corpus
    search = index.open_passages(retriever, {}) if passage_level else index.open(retriever, {})
    found = search.search([q.input for q in queries], depth) if queries else []
    of_page = passages_of_pages(index.passages.values())
    out: list[LabelledPair] = []
    for query, hits in zip(queries, found, strict=True):
        pages = dict.fromkeys(p for evidence in query.evidence for p in evidence)
        gold = [page for page in pages if page in index.corpus.by_id]
        if not gold:
            skips.add("provenance not in the index's corpus")
            continue
        positives = ([p.id for page in gold for p in answer_passages(query.answers, of_page[page])] if passage_level
                     else gold)
        out += [LabelledPair(query.id, query.input, context_of(corpus.by_id[doc]), 1) for doc in positives]
        page_of = (lambda doc: index.passages[doc].page_id) if passage_level else (lambda doc: doc)
        hard = [hit.id for hit in hits if page_of(hit.id) not in gold][:negatives]
        out += [LabelledPair(query.id, query.input, context_of(corpus.by_id[doc]), 0) for doc in hard]
    if not out:
        raise DataError("no query has a gold page in the index's corpus.", path=path,
                        hint="use queries whose provenance wikipedia_id is a document id of the index")
    return out


def file_pairs(path: str) -> list[LabelledPair]:
    """Rows {query, context, label (0/1)} and optionally `query_id` (default: the query text)."""
    out = []
    for record in load_records(path, required=("query", "context", "label")):
        label = record.get("label", (int, bool))
        if label not in (0, 1):
            raise DataError(f"is {label!r}, not 0 or 1", path=record.path, line=record.line, field="label",
                            hint="label 1 for a relevant context, 0 otherwise")
        query = record.get("query", str)
        query_id = str(record.data["query_id"]) if record.data.get("query_id") is not None else query
        out.append(LabelledPair(query_id, query, record.get("context", str), int(label)))
    return out


def load_pairs(path: str, index: RetrievalIndex | None, *, negatives: int, depth: int,
               skips: SkipLog | None = None) -> list[LabelledPair]:
    """{query, context, label} rows as they are, or KILT queries mined against the index's BM25."""
    first = load_records(path)[0].data
    if "context" in first and "label" in first:
        return file_pairs(path)
    if index is None:
        raise LmlabError(f"{path} holds KILT queries, whose pairs need a retrieval index (none was found).",
                         hint="build one with `lmlab retrieve index`, or give {query, context, label} rows")
    return mined_pairs(path, index, negatives=negatives, depth=depth, skips=skips)


class Members(torch.nn.Module):
    """M cross-encoders trained side by side. One forward runs every member on its own batch, so that under DDP
    (`model(inputs)` on the wrapped module) every member's parameters take part in each step's forward and their
    gradients are all-reduced; a member called directly (`model.module.members[m](...)`) bypasses DDP's hooks."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, inputs: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """The float32 relevance logits [pairs] of each member on its inputs (one dict of encoder inputs each)."""
        return [member(**x).logits[:, 0].float() for member, x in zip(self.members, inputs, strict=True)]


def query_groups(pairs: list[LabelledPair]) -> list[list[int]]:
    """The positions of each query's pairs, queries in the order they first appear."""
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(pair.query_id, []).append(i)
    return list(groups.values())


class RerankTask:
    """Each member's loss on its own order of the training queries; a query is a unit, all its pairs in one batch.
    loss = BCE(σ(z), y) averaged over pairs, plus with `listwise` the `_listwise` term averaged over queries with a
    gold page (the classifier term alone learns slowly from a sentence encoder)."""

    def __init__(self, features: list[dict[str, list[int]]], labels: list[int], groups: list[list[int]],
                 tokenizer: Any, *, members: int, seed: int, swa_steps: set[int], listwise: bool = True) -> None:
        self.features, self.labels, self.groups, self.tokenizer = features, labels, groups, tokenizer
        self.seed, self.listwise = seed, listwise
        self.lengths = [max(len(features[i]["input_ids"]) for i in group) for group in groups]
        self.orders = [list(range(len(groups)))] + [self._swapped(seed + m) for m in range(1, members)]
        self.swa_steps, self.snapshots, self.main = swa_steps, None, True

    def _swapped(self, seed: int, window: int = 64) -> list[int]:
        """A permutation that swaps each query for one of similar length (shuffled within windows of the queries
        sorted by length): another member's order whose batches still pad little."""
        generator = torch.Generator().manual_seed(seed)
        by_length = sorted(range(len(self.groups)), key=lambda i: self.lengths[i])
        order = list(range(len(self.groups)))
        for start in range(0, len(by_length), window):
            chunk = by_length[start:start + window]
            for a, j in zip(chunk, torch.randperm(len(chunk), generator=generator).tolist(), strict=True):
                order[a] = chunk[j]
        return order

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        return length_grouped_batches(self.lengths, global_batch, seed=self.seed, epoch=epoch)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Per member m: its encoder inputs (`member{m}.*`), each pair's label and query slot, each query slot's
        number of gold pages and the slots that have one (counted on the host: the step reads nothing back)."""
        out: dict[str, torch.Tensor] = {}
        for m, order in enumerate(self.orders):
            units = [order[i] for i in indices]
            rows = [row for unit in units for row in self.groups[unit]]
            padded = self.tokenizer.pad([self.features[r] for r in rows], return_tensors="pt")
            out.update({f"member{m}.{name}": tensor for name, tensor in padded.items()})
            out[f"labels{m}"] = torch.tensor([float(self.labels[r]) for r in rows])
            out[f"query{m}"] = torch.tensor([q for q, unit in enumerate(units) for _ in self.groups[unit]])
            gold = [sum(self.labels[r] for r in self.groups[unit]) for unit in units]
            out[f"gold{m}"] = torch.tensor(gold, dtype=torch.float32)
            out[f"ranked{m}"] = torch.tensor([q for q, n in enumerate(gold) if n], dtype=torch.long)
        return out

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {name: float(len(batch[f"{key}{m}"])) for m in range(len(self.orders))
                for name, key in ((f"pairs{m}", "labels"), (f"ranked{m}", "ranked"))}

    def loss(self, model: torch.nn.Module, batch: dict[str, Any],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        members = len(self.orders)
        inputs = [{k.split(".", 1)[1]: v for k, v in batch.items() if k.startswith(f"member{m}.")}
                  for m in range(members)]
        device = batch["labels0"].device
        total = torch.zeros((), device=device)
        parts = {"bce": torch.zeros((), device=device), "listwise": torch.zeros((), device=device)}
        for m, logits in enumerate(model(inputs)):  # through DDP's forward: the members' gradients are all-reduced
            labels = batch[f"labels{m}"]
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / \
                totals[f"pairs{m}"]
            total, parts["bce"] = total + bce, parts["bce"] + bce.detach()
            if self.listwise and totals[f"ranked{m}"]:
                listwise = _listwise(logits, labels, batch[f"query{m}"], batch[f"gold{m}"]) / totals[f"ranked{m}"]
                total, parts["listwise"] = total + listwise, parts["listwise"] + listwise.detach()
        return total, {name: value / members for name, value in parts.items()} | {"loss": total.detach() / members}

    def after_step(self, model: torch.nn.Module, step: int, no_sync: Any) -> dict[str, float]:
        if step in self.swa_steps and self.main and self.snapshots is not None:
            self.snapshots.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.members[0].state_dict().items()}
            with atomic_path(self.snapshots / f"step-{step:06d}.safetensors") as tmp:
                save_file(state, tmp)
        return {}


def _listwise(logits: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Σ over the batch's queries with a gold page of −(1/|G|) Σ_{g∈G} log softmax(z_query)_g; `query` is each
    pair's query slot, `gold` each slot's number of gold pages (no value is read back to the host)."""
    queries, device = len(gold), logits.device
    top = torch.full((queries,), -torch.inf, device=device).scatter_reduce(0, query, logits.detach(), "amax")
    shifted = logits - top[query]  # each query's own max: no exp overflows or underflows to an empty sum
    log_norm = torch.zeros(queries, device=device).index_add_(0, query, shifted.exp()).log()
    log_p = shifted - log_norm[query]
    per_query = torch.zeros(queries, device=device).index_add_(0, query, log_p * labels)
    return -torch.where(gold > 0, per_query / gold.clamp(min=1), 0.0).sum()


def quality_tensor(scorer: bayes.PairScorer, pairs: list[LabelledPair]) -> torch.Tensor:
    """[accuracy (P ≥ 0.5 vs label), BCE loss, ROC AUC (nan without both labels)] of one pass, on the model's device."""
    texts = [(p.query, p.context) for p in pairs]
    logits = scorer.device_logits(scorer.batches(texts), len(texts))
    device = logits.device
    labels = torch.tensor([float(p.label) for p in pairs], device=device)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    accuracy = ((logits >= 0).float() == labels).float().mean()
    pos = logits[torch.tensor([i for i, p in enumerate(pairs) if p.label == 1], dtype=torch.long, device=device)]
    neg = logits[torch.tensor([i for i, p in enumerate(pairs) if p.label == 0], dtype=torch.long, device=device)]
    auc = ((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean() \
        if len(pos) and len(neg) else torch.tensor(float("nan"), device=device)
    return torch.stack([accuracy, loss, auc])


def split_by_query(pairs: list[LabelledPair], share: float, seed: int) -> tuple[list[LabelledPair], list[LabelledPair]]:
    """(training, held-out) pairs, the held-out ones all the pairs of a seeded `share` of the queries (at least one
    query, and never all of them; none when `share` is 0)."""
    queries = list(dict.fromkeys(p.query_id for p in pairs))
    count = min(len(queries) - 1, max(1, round(share * len(queries)))) if share > 0 else 0
    order = torch.randperm(len(queries), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {queries[i] for i in order[:count]}
    return [p for p in pairs if p.query_id not in held], [p for p in pairs if p.query_id in held]


class RerankTrainer(Trainer):
    command = "retrieve-train-reranker"
    cli_command = "retrieve train-reranker"
    plotted = ("loss", "bce", "listwise")
    default_data = "retrieve/train.jsonl"
    opts: RerankTrainOptions

    def check(self) -> None:
        super().check()
        opts = self.opts
        for flag, value, allowed in (("--loss", opts.loss, LOSSES), ("--bayes", opts.bayes, BAYES)):
            if value not in allowed:
                raise LmlabError(f"Unknown {flag} '{value}'.", hint=f"use one of: {', '.join(allowed)}")
        if opts.bayes in ("swa", "all") and opts.swa_window > opts.max_steps:
            raise LmlabError(f"--swa-window {opts.swa_window} is longer than the run (--max-steps {opts.max_steps}).",
                             hint=f"e.g. --swa-window {max(1, opts.max_steps // 3)}")
        if opts.bayes in ("ensemble", "all") and opts.members < 2:
            raise LmlabError(f"An ensemble needs 2 or more members, got --members {opts.members}.",
                             hint="e.g. --members 3, or --bayes mc-dropout / swa for one model")

    def members(self) -> int:
        return self.opts.members if self.opts.bayes in ("ensemble", "all") else 1

    def swa_steps(self) -> set[int]:
        if self.opts.bayes not in ("swa", "all"):
            return set()
        last = self.opts.max_steps
        return {s for s in range(last - self.opts.swa_window + 1, last + 1) if s % self.opts.swa_every == 0} | {last}

    def setup(self, accelerator: Any) -> tuple[Any, Any]:
        opts = self.opts
        self.index = RetrievalIndex.load(opts.index)
        self.skips = SkipLog()
        pairs = load_pairs(self.data, self.index, negatives=opts.negatives, depth=opts.negative_depth, skips=self.skips)
        if self.skips.total:
            log(f"[yellow]{self.skips.summary()}[/yellow]")
        if opts.eval_data is None and opts.data is not None:
            pairs, self.heldout = split_by_query(pairs, opts.eval_share, opts.seed)
            if self.heldout:
                log(f"held out {len({p.query_id for p in self.heldout})} of --data's queries for the before/after "
                    "check (--eval-share)")
        else:
            eval_data = opts.eval_data or str(example("retrieve/dev.jsonl"))
            self.heldout = [] if eval_data == "none" else load_pairs(eval_data, self.index, negatives=opts.negatives,
                                                                    depth=opts.negative_depth)
        with accelerator.main_process_first():  # member m's head is initialised from seed + m
            loaded = [bayes.load_cross_encoder(opts.model, seed=opts.seed + m, dropout=opts.dropout)
                      for m in range(self.members())]
        models, self.tokenizer = [model for model, _ in loaded], loaded[-1][1]
        features = bayes.tokenize_pairs(self.tokenizer, [(p.query, p.context) for p in pairs], opts.max_length)
        labels = [p.label for p in pairs]
        self.pairs = len(pairs)
        log(f"{len(pairs)} pairs ({sum(labels)} relevant) for {len({p.query_id for p in pairs})} queries; "
            f"{len(models)} member(s)")
        self.task = RerankTask(features, labels, query_groups(pairs), self.tokenizer, members=len(models),
                               seed=opts.seed, swa_steps=self.swa_steps(), listwise=opts.loss == "bce+listwise")
        return Members(models), self.task

    def _quality(self, member: Any) -> dict[str, float] | None:
        """Held-out quality of one member, on the member's device; no collective, so under DDP each process
        scores the unwrapped (whole) member by itself."""
        if not self.heldout:
            return None
        scorer = bayes.PairScorer(member, self.tokenizer, max_length=self.opts.max_length)
        accuracy, loss, auc = quality_tensor(scorer, self.heldout).tolist()  # read back once
        return {"accuracy": round(accuracy, 4), "loss": round(loss, 4), "auc": round(auc, 4)}

    def before_training(self, run: Any, model: Any, accelerator: Any) -> None:
        self.task.snapshots, self.task.main = run.path / SNAPSHOTS, accelerator.is_main_process
        model.to(accelerator.device)  # where the loop trains it: the held-out pass runs there too
        self.before = self._quality(model.members[0])

    def summarize(self, result: dict[str, Any], run: Any) -> dict[str, Any]:
        after = self._quality(result["model"].members[0])  # the unwrapped (under FSDP, gathered) model
        return {"bayes": self.opts.bayes, "members": self.members(), "model_dir": str(run.path / "model"),
                "index": str(self.index.folder), "pairs": self.pairs, "skipped": self.skips.as_dict(),
                "queries_per_s": result["examples_per_s"],
                **({"heldout_pairs": len(self.heldout), "heldout_before": self.before, "heldout_after": after}
                   if after else {})}

    def notes(self, summary: dict[str, Any]) -> list[str]:
        if "heldout_after" not in summary:
            return []
        b, a = summary["heldout_before"], summary["heldout_after"]
        return [f"held-out pairs ({summary['heldout_pairs']}): accuracy {b['accuracy']:.3f} → {a['accuracy']:.3f}, "
                f"AUC {b['auc']:.3f} → {a['auc']:.3f}, loss {b['loss']:.3f} → {a['loss']:.3f} (member 0, before → "
                "after training)"]

    def save(self, result: dict[str, Any], run: Any, summary: dict[str, Any]) -> None:
        folder = run.path / "model"
        names = [f"member-{m}" for m in range(self.members())]
        for name, member in zip(names, result["model"].members, strict=True):
            bayes.save_member(folder / name, member, self.tokenizer)
        swa = self._save_swa(folder, result["model"].members[0], run.path / SNAPSHOTS)
        default = "ensemble" if len(names) > 1 else ("swa" if swa else "mc-dropout")
        bayes.write_info(folder, {"kind": bayes.KIND, "members": names, "swa": swa, "default_variant": default,
                                  "max_length": self.opts.max_length, "mc_passes": self.opts.mc_passes,
                                  "dropout": self.opts.dropout, "encoder": self.opts.model, "temperatures": {}})
        record_reranker(self.index, folder)

    def _save_swa(self, folder: Path, member: Any, snapshots: Path) -> str | None:
        paths = sorted(snapshots.glob("step-*.safetensors")) if self.swa_steps() else []
        if not paths:
            return None
        wanted = {f"step-{s:06d}.safetensors" for s in self.swa_steps()}
        states = [load_file(p) for p in paths if p.name in wanted]
        member.load_state_dict(bayes.swa_average(states))
        bayes.save_member(folder / "swa", member, self.tokenizer)
        log(f"swa: averaged {len(states)} checkpoints (steps {', '.join(p.stem[5:].lstrip('0') for p in paths)})")
        return "swa"

    def title(self) -> str:
        return f"retrieve train-reranker · {self.opts.bayes} · {self.opts.model}"
