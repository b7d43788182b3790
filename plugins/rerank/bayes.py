"""Uncertainty-aware relevance (Song, Oh, Kim, Thorne 2024): the deterministic classifier is replaced
by a distribution over P(relevant), summarised by its mean (the score) and spread (the predictive uncertainty).

- plain: one member, dropout off: p = σ(z/T).
- ensemble (deep ensemble, Lakshminarayanan et al. 2017): M members trained from different head inits and data
  orders; p = (1/M) Σ_m σ(z_m/T), spread = std over members.
- mc-dropout (Gal & Ghahramani 2016): member 0 with dropout on, T passes with seeds 0..T-1; p = mean, spread = std.
- swa (Izmailov et al. 2018): member 0's weights averaged over the checkpoints of the last window of training,
  θ_SWA = (1/K) Σ_k θ_k, one deterministic pass.

A trained reranker folder holds `reranker.json` and one Hugging Face folder per member (member-0, ...) plus swa/
when it was trained with SWA.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmlab.core.commands.devices import place
from lmlab.core.files.atomic import write_json_atomic
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.rerankers import RERANKER_FILE, Relevance, binary_entropy
from lmlab.core.retrieval.retrievers import placement
from lmlab.plugins.rerank.model import PairScorer

KIND = "cross-encoder"
VARIANTS = ("plain", "ensemble", "mc-dropout", "swa")


def read_info(folder: Path) -> dict[str, Any]:
    return json.loads((folder / RERANKER_FILE).read_text(encoding="utf-8"))


def write_info(folder: Path, info: dict[str, Any]) -> None:
    write_json_atomic(folder / RERANKER_FILE, info)


def offered_variants(folder: Path | None) -> list[str]:
    """The variants a trained folder can give: plain and mc-dropout always, ensemble with 2+ members, swa if saved."""
    if folder is None:
        return []
    info = read_info(folder)
    return ["plain", *(["ensemble"] if len(info["members"]) > 1 else []), "mc-dropout",
            *(["swa"] if info.get("swa") else [])]


def resolve_variant(folder: Path, variant: str) -> str:
    offered = offered_variants(folder)
    if variant == "auto":
        return read_info(folder).get("default_variant", "plain")
    if variant not in VARIANTS:
        raise LmlabError(f"Unknown --variant '{variant}'.", hint=f"use one of: auto, {', '.join(VARIANTS)}")
    if variant not in offered:
        raise LmlabError(f"{folder} has no '{variant}' variant (it offers {', '.join(offered)}).",
                         hint="train with `--bayes ensemble` (members) or `--bayes swa` (averaged checkpoints)")
    return variant


def swa_average(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """θ_SWA = (1/K) Σ_k θ_k over the given checkpoints' floating-point tensors (integer buffers from the last)."""
    if not states:
        raise ValueError("SWA needs at least one checkpoint")
    averaged = {}
    for name, last in states[-1].items():
        if torch.is_floating_point(last):
            averaged[name] = torch.stack([state[name].double() for state in states]).mean(0).to(last.dtype)
        else:
            averaged[name] = last.clone()
    return averaged


def summarise(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[S, N] sampled probabilities → (mean, std over S; 0 for one sample)."""
    mean = samples.mean(0)
    std = samples.std(0, unbiased=False) if samples.shape[0] > 1 else torch.zeros_like(mean)
    return mean, std


class BayesianReranker:
    """A Reranker (`lmlab.core.retrieval.rerankers`) over one variant of a trained cross-encoder folder."""

    def __init__(self, scorers: list[PairScorer], variant: str, *, passes: int = 8, temperature: float = 1.0,
                 explain: dict[str, Any] | None = None) -> None:
        self.scorers, self.variant, self.passes, self.temperature = scorers, variant, passes, temperature
        self.explain = explain or {}

    def device_logits(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """[S, N] logits before the temperature, on the models' device: one row per member (ensemble) or dropout
        pass (mc-dropout), else one row."""
        if self.variant == "ensemble":
            return torch.stack([s.device_logits(s.batches(pairs), len(pairs)) for s in self.scorers])
        scorer = self.scorers[0]
        batches = scorer.batches(pairs)  # tokenized and padded once for the T passes
        if self.variant == "mc-dropout":
            return torch.stack([scorer.device_logits(batches, len(pairs), dropout_seed=t)
                                for t in range(self.passes)])
        return scorer.device_logits(batches, len(pairs))[None]

    def logits(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """`device_logits` on the CPU, one copy for all members or passes (temperature scaling is fitted on
        these)."""
        if not pairs:
            return torch.empty(1, 0)
        return self.device_logits(pairs).cpu()

    def samples(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """[S, N] sampled probabilities σ(z/T)."""
        return torch.sigmoid(self.logits(pairs) / self.temperature)

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[Relevance]:
        mean, std = summarise(self.samples(pairs))
        return [Relevance(p, p, s, binary_entropy(p)) for p, s in zip(mean.tolist(), std.tolist(), strict=True)]

    def probability_fn(self, query: str) -> Any:
        """P(relevant | query, context) as a function of the context alone (what LIME and SHAP perturb)."""
        def predict(contexts: list[str]) -> Any:
            return self.samples([(query, c) for c in contexts]).mean(0).numpy()

        return predict

    def explanation_scores(self, query: str, contexts: Sequence[str]) -> list[float]:
        """agg(importance) of each context's words (the Bayesian/XAI paper's supplementary score)."""
        from lmlab.plugins.rerank.explain import aggregate, explain

        predict = self.probability_fn(query)
        return [aggregate(explain(predict, context, self.explain.get("explainer", "shap"),
                                  samples=self.explain.get("explain_samples", 64)).importances,
                          self.explain.get("explain_agg", "max")) for context in contexts]


def member_folders(folder: Path, variant: str) -> list[Path]:
    info = read_info(folder)
    if variant == "ensemble":
        return [folder / name for name in info["members"]]
    return [folder / (info["swa"] if variant == "swa" else info["members"][0])]


def open_folder(folder: Path | None, options: dict[str, Any]) -> BayesianReranker:
    """The `cross-encoder` spec's open: a `retrieve train-reranker` model folder, at the variant `options` name."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if folder is None:
        raise LmlabError("The cross-encoder reranker needs trained weights.",
                         hint="train one with `lmlab retrieve train-reranker` and pass its run folder")
    info = read_info(folder)
    variant = resolve_variant(folder, options.get("variant", "auto"))
    device, dtype = placement(options)
    scorers = []
    for path in member_folders(folder, variant):
        model = place(AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True), device,
                      dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        scorers.append(PairScorer(model, tokenizer, max_length=info["max_length"],
                                  batch_size=options.get("rerank_batch_size", 32)))
    return BayesianReranker(scorers, variant, passes=options.get("mc_passes", info.get("mc_passes", 8)),
                            temperature=info.get("temperatures", {}).get(variant, 1.0), explain=options)
