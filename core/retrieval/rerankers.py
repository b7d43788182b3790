"""Rerankers: a second stage that rescores a retriever's candidates for a query, with an uncertainty. A trained one is
a folder with `reranker.json` (`{"kind": NAME, ...}`), opened by the `RerankerSpec` of that kind; one that needs no
folder is opened by name. `Reranking` is the pipeline of `retrieve search|eval --rerank` and `retrieve rerank`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from lmlab.core.commands.options import option
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.kernel.plugins import collect, not_registered
from lmlab.core.retrieval.retrievers import Corpus, Document, Ranked, RetrievalIndex, Retriever

RERANKER_FILE = "reranker.json"
RERANK = "Reranking"
LAST = "last"  # the reranker last trained on the index (recorded in its index.json)


class Relevance(NamedTuple):
    score: float  # what the candidates are sorted by
    probability: float  # predictive P(relevant): the mean over members / passes
    std: float  # spread of P(relevant) over members / passes (0 for one deterministic pass)
    entropy: float  # binary entropy of `probability`, in nats
    explanation: float | None = None  # agg(importance) when the explanation score is on


def binary_entropy(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0.0)


class Reranker(Protocol):
    """What a spec opens: one Relevance per (query, context) pair, in order."""

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[Relevance]:
        ...


@dataclass(frozen=True)
class RerankerSpec:
    """A reranker kind. `open(folder, options)` returns a Reranker (`folder` is None when opened by name);
    `variants(folder)` lists the uncertainty variants a trained folder offers (e.g. plain, ensemble, swa);
    `opens(folder)`: whether it can open a folder that has no reranker.json (e.g. any off-the-shelf model)."""

    name: str
    help: str
    open: Callable[[Path | None, dict[str, Any]], Reranker]
    variants: Callable[[Path | None], list[str]] = lambda folder: ["plain"]
    opens: Callable[[Path], bool] | None = None


@dataclass
class RerankSettings:
    """The reranking options every command that reranks shares (`retrieve rerank`, `search`, `eval`)."""

    variant: str = option("auto", "The reranker's uncertainty variant: plain, ensemble (mean of M members), "
                          "mc-dropout (mean of T dropout passes), swa (averaged checkpoints), or auto (the model's "
                          "default; `retrieve eval` then reports each variant it offers).", panel=RERANK,
                          repeatable=True)
    mc_passes: int = option(8, "mc-dropout: stochastic passes T per pair.", min=1, panel=RERANK)
    mc_attention_dropout: bool = option(False, "mc-dropout: also sample the attention-probability dropout in each "
                                        "pass (about 1.5x slower per pass on CPU).", panel=RERANK)
    risk: float = option(0.0, "κ of the risk-aware score P(relevant) − κ·std that orders the candidates (0: "
                         "P(relevant) alone).", min=0.0, panel=RERANK)
    rerank_depth: int = option(20, "Candidates of the retriever rescored per query.", min=1, panel=RERANK)
    explain_weight: float = option(0.0, "λ of the explanation score s = P(relevant) − κ·std + λ·agg(importance) (0: "
                                   "off; costs one reranker pass per perturbed context, see --explain-samples, per "
                                   "candidate).", min=0.0, panel=RERANK)
    explainer: str = option("shap", "Token importances for the explanation score: lime or shap.", panel=RERANK,
                            repeatable=True)
    explain_agg: str = option("max", "How the context's word importances become one number: max, mean, sum, "
                              "mean-abs or top3.", panel=RERANK)
    explain_samples: int = option(64, "Perturbed contexts scored per explanation, at least: more when the words the "
                                  "reranker reads need them (shap 3/4·words² + 8, lime 4·words + 32), up to 1024.",
                                  min=8, panel=RERANK)
    explain_depth: int = option(5, "Candidates (the reranker's best) that get the explanation score.", min=1,
                                panel=RERANK)
    rerank_batch_size: int = option(32, "(query, context) pairs per reranker batch.", min=1, panel=RERANK)


def rerankers() -> dict[str, RerankerSpec]:
    return collect("register_rerankers", "rerankers", key=lambda spec: spec.name)


def reranker_spec(name: str) -> RerankerSpec:
    found = rerankers()
    if name not in found:
        raise not_registered("register_rerankers", name, f"Unknown reranker kind '{name}'.",
                             hint=f"available: {', '.join(sorted(found)) or 'none'} (`lmlab plugins` lists what each "
                                  "plugin registers)")
    return found[name]


def record_reranker(index: RetrievalIndex, folder: Path) -> None:
    """Remember `folder` as the index's reranker, so `--rerank last` (and `retrieve rerank`) find it."""
    index.info["reranker"] = str(folder.resolve())
    index.write_info()


def resolve_reranker(model: str, index: RetrievalIndex | None) -> tuple[RerankerSpec, Path | None]:
    """The spec and folder behind --rerank/--model: `last`, a folder with reranker.json (or a run folder whose
    `model/` holds one), or a registered reranker's name."""
    if model == LAST:
        recorded = index.info.get("reranker") if index is not None else None
        if not recorded:
            where = index.folder if index is not None else "the index"
            raise LmlabError(f"No reranker has been trained on {where}.",
                             hint="train one with `lmlab retrieve train-reranker`, or name a folder with --model")
        model = recorded
    folder = Path(model)
    for candidate in (folder, folder / "model"):
        if (candidate / RERANKER_FILE).is_file():
            try:
                kind = json.loads((candidate / RERANKER_FILE).read_text(encoding="utf-8"))["kind"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise LmlabError(f"{candidate / RERANKER_FILE}: cannot read the reranker's kind ({exc}).",
                                 hint="retrain it with `lmlab retrieve train-reranker`") from exc
            return reranker_spec(kind), candidate
    if model in rerankers():
        return rerankers()[model], None
    if folder.is_dir():
        for spec in rerankers().values():
            if spec.opens is not None and spec.opens(folder):
                return spec, folder
    raise LmlabError(f"'{model}' is neither a reranker folder (no {RERANKER_FILE}) nor a registered reranker.",
                     hint="give a `lmlab retrieve train-reranker` run folder, a sentence-transformers cross-encoder "
                          f"folder, or one of: {', '.join(sorted(rerankers())) or 'none registered'}")


def open_reranker(model: str, options: dict[str, Any], index: RetrievalIndex | None = None) -> Reranker:
    spec, folder = resolve_reranker(model, index)
    return spec.open(folder, options)


def context_of(doc: Document) -> str:
    """The text a reranker reads for a document: its title, then its text."""
    return f"{doc.title}. {doc.text}" if doc.text else doc.title


class Reranking:
    """A retriever whose top `depth` candidates are rescored by a reranker. With `risk` κ > 0 they are ordered by the
    risk-aware score P(relevant) − κ·std (a confident candidate beats an equally probable, uncertain one). With
    `explain_weight` λ > 0 the best `explain_depth` are reordered among themselves by that score + λ·agg(importance)
    (the Bayesian/XAI paper's explanation score); `details` holds the last search's Relevance per query and candidate
    id, its `score` the one ordered by."""

    def __init__(self, retriever: Retriever | None, reranker: Reranker, corpus: Corpus, depth: int, *,
                 explain_weight: float = 0.0, explain_depth: int = 5, risk: float = 0.0) -> None:
        self.retriever, self.reranker, self.corpus, self.depth = retriever, reranker, corpus, depth
        self.explain_weight, self.explain_depth, self.risk = explain_weight, explain_depth, risk
        self.details: list[dict[str, Relevance]] = []

    @classmethod
    def configured(cls, retriever: Retriever | None, reranker: Reranker, corpus: Corpus, settings: RerankSettings,
                   **overrides: Any) -> Reranking:
        """The reranking the --rerank-* options describe (`overrides` replace some, e.g. an ablation's λ)."""
        chosen = {"depth": settings.rerank_depth, "explain_weight": settings.explain_weight,
                  "explain_depth": settings.explain_depth, "risk": settings.risk, **overrides}
        depth = chosen.pop("depth")
        return cls(retriever, reranker, corpus, depth, **chosen)

    def search(self, queries: Sequence[str], k: int) -> list[list[Ranked]]:
        if self.retriever is None:
            raise LmlabError("This reranking has no retriever to take candidates from.", hint="pass candidates")
        return self.rerank(queries, self.retriever.search(queries, max(k, self.depth)), k)

    def rerank(self, queries: Sequence[str], candidates: Sequence[Sequence[Ranked]], k: int) -> list[list[Ranked]]:
        """Rescore the first `depth` of each candidate list (e.g. a `retrieve search` output) and keep the best `k`;
        candidates past `depth` follow in the retriever's order, scored below every rescored one."""
        pairs = [(query, context_of(self.corpus.by_id[hit.id]))
                 for query, hits in zip(queries, candidates, strict=True) for hit in hits[:self.depth]]
        scores = iter(self.reranker.score(pairs))
        self.details, ranked = [], []
        for query, hits in zip(queries, candidates, strict=True):
            relevance = {hit.id: next(scores) for hit in hits[:self.depth]}
            if self.risk > 0:
                relevance = {name: r._replace(score=self._base(r)) for name, r in relevance.items()}
            order = sorted(hits[:self.depth], key=lambda hit: -relevance[hit.id].score)  # stable: ties keep order
            if self.explain_weight > 0:
                order = self._explained(query, order, relevance)
            floor = min((r.score for r in relevance.values()), default=0.0)
            tail = [Ranked(hit.id, floor - n) for n, hit in enumerate(hits[self.depth:k], 1)]
            ranked.append([Ranked(hit.id, relevance[hit.id].score) for hit in order][:k] + tail)
            self.details.append(relevance)
        return ranked

    def _explained(self, query: str, order: list[Ranked], relevance: dict[str, Relevance]) -> list[Ranked]:
        explain = getattr(self.reranker, "explanation_scores", None)
        if explain is None:
            raise LmlabError("This reranker gives no token importances for the explanation score.",
                             hint="drop --explain-weight, or use a reranker that explains (the cross-encoder)")
        top = order[:self.explain_depth]
        bonus = explain(query, [context_of(self.corpus.by_id[hit.id]) for hit in top])
        for hit, value in zip(top, bonus, strict=True):
            relevance[hit.id] = relevance[hit.id]._replace(score=self._base(relevance[hit.id])
                                                           + self.explain_weight * value, explanation=value)
        return sorted(top, key=lambda hit: -relevance[hit.id].score) + order[self.explain_depth:]

    def _base(self, relevance: Relevance) -> float:
        """The risk-aware score P(relevant) − κ·std (P(relevant) itself when κ = 0)."""
        return relevance.probability - self.risk * relevance.std if self.risk > 0 else relevance.probability
