"""The cross-encoder context reranker: an encoder reads "[CLS] query [SEP] context [SEP]", a one-unit head gives the
logit z, P(relevant) = σ(z / T); members are plain `AutoModelForSequenceClassification(num_labels=1)` folders (they
load in CrossEncoder too). Its uncertainty (Song et al. 2024): the mean and spread of P over a deep ensemble's members,
MC-dropout passes or one model (plain or SWA). A trained folder: `reranker.json`, member-0/, ... and swa/."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from lmlab.core.commands.devices import model_device, place
from lmlab.core.files.atomic import write_json_atomic
from lmlab.core.kernel.errors import LmlabError, ModelError
from lmlab.core.retrieval.embeddings import DEFAULT_EMBEDDER, embedder_path
from lmlab.core.retrieval.rerankers import RERANKER_FILE, Relevance, binary_entropy
from lmlab.core.retrieval.retrievers import placement

KIND = "cross-encoder"
VARIANTS = ("plain", "ensemble", "mc-dropout", "swa")
WORD_REST = re.compile(r"\S*")  # the rest of a word the token cut falls inside


def load_cross_encoder(spec: str, *, seed: int = 0, dropout: float | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from an encoder alias or folder; a new head is initialised from `seed`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = embedder_path(spec)
    extra = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier" is what a new reranker is
    try:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, local_files_only=True, **extra)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot load the encoder '{spec}' ({str(exc).splitlines()[0][:160]}).",
                         hint=f"use the packaged '{DEFAULT_EMBEDDER}' or a local Hugging Face encoder folder") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.float(), tokenizer


def tokenize_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int) -> list[dict[str, list[int]]]:
    """Token ids of each (query, context), cut to `max_length` the way CrossEncoder cuts them (longest first)."""
    if not pairs:
        return []
    encoded = tokenizer([q for q, _ in pairs], [c for _, c in pairs], truncation=True, max_length=max_length)
    return [dict(zip(encoded.keys(), values, strict=True)) for values in zip(*encoded.values(), strict=True)]


def samples_attention(module: torch.nn.Module) -> bool:
    """An attention module whose own training mode turns on its attention-probability dropout (Hugging Face encoders
    pass `dropout.p if self.training else 0` to the attention kernel): BertSelfAttention, RobertaSelfAttention, ..."""
    return "attention" in type(module).__name__.lower() and isinstance(getattr(module, "dropout", None),
                                                                         torch.nn.Dropout)


@contextlib.contextmanager
def dropout_mode(model: torch.nn.Module, on: bool, *, attention: bool = False) -> Iterator[None]:
    """MC dropout on or off; modes restored after. On, the `nn.Dropout` layers sample and every other module stays in
    eval mode, so attention runs without dropout; with `attention`, the attention modules sample their
    attention-probability dropout too (4 MiniLM passes over 32 pairs on 2 CPU threads: 2.1 s instead of 1.4 s)."""
    was = {module: module.training for module in model.modules()}
    for module in model.modules():
        module.training = on and (isinstance(module, torch.nn.Dropout) or attention and samples_attention(module))
    try:
        yield
    finally:
        for module, training in was.items():
            module.training = training


class PairScorer:
    """Relevance logits of (query, context) pairs for one model, in batches sorted by token length (little padding)."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int = 256, batch_size: int = 32) -> None:
        self.model, self.tokenizer, self.max_length, self.batch_size = model, tokenizer, max_length, batch_size

    def batches(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        """(positions, padded tensors) per batch, longest first; reusable for several passes."""
        features = tokenize_pairs(self.tokenizer, pairs, self.max_length)
        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
        cuts = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        return [(rows, self.tokenizer.pad([features[i] for i in rows], return_tensors="pt")) for rows in cuts]

    @torch.inference_mode()
    def device_logits(self, batches: list[tuple[list[int], dict[str, torch.Tensor]]], total: int, *,
                      dropout_seed: int | None = None, attention_dropout: bool = False) -> torch.Tensor:
        """[total] float32 logits in the pairs' order, left on the model's device (nothing is read back); with
        `dropout_seed`, one MC-dropout pass seeded by it (`torch.manual_seed` seeds the GPU's generator too), with
        `attention_dropout` sampling the attention-probability dropout as well."""
        device = model_device(self.model)
        out = torch.empty(total, device=device)
        with dropout_mode(self.model, dropout_seed is not None, attention=attention_dropout):
            if dropout_seed is not None:
                torch.manual_seed(dropout_seed)
            for rows, tensors in batches:
                logits = self.model(**{name: t.to(device) for name, t in tensors.items()}).logits
                out[torch.tensor(rows, device=device)] = logits[:, 0].float()
        return out

    def score(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """Logits of `pairs` on the CPU (one copy), dropout off."""
        return self.device_logits(self.batches(pairs), len(pairs)).cpu()

    def visible(self, query: str, context: str) -> str:
        """The prefix of `context` the model reads after `tokenize_pairs`' cut, to the end of a word: a word the cut
        falls inside is kept whole (the model reads its first pieces), so the prefix scores as the whole context
        does. All of `context` when nothing is cut, or for a slow tokenizer (no offsets to find the cut by)."""
        if not getattr(self.tokenizer, "is_fast", False):
            return context
        encoded = self.tokenizer(query, context, truncation=True, max_length=self.max_length,
                                 return_offsets_mapping=True)
        ends = [end for (_, end), sequence in zip(encoded["offset_mapping"], encoded.sequence_ids(), strict=True)
                if sequence == 1]
        return context[:WORD_REST.match(context, max(ends)).end()] if ends else ""


def save_member(folder: Path, model: Any, tokenizer: Any) -> None:
    """One member as a Hugging Face folder (safetensors), loadable by AutoModelForSequenceClassification."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def is_cross_encoder(folder: Path) -> bool:
    """An off-the-shelf cross-encoder folder (sentence-transformers' CrossEncoder format, or any HF sequence
    classifier with one output): it reranks as it is, without `retrieve train-reranker`."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    labels = config.get("id2label") or {}
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []) and (
        config.get("num_labels", len(labels)) == 1 or len(labels) == 1)


def read_info(folder: Path) -> dict[str, Any]:
    """A trained folder's reranker.json; for an off-the-shelf cross-encoder, the same facts of its single model."""
    if not (folder / RERANKER_FILE).is_file() and is_cross_encoder(folder):
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return {"kind": "cross-encoder", "members": ["."], "default_variant": "plain",
                "max_length": min(512, config.get("max_position_embeddings", 512))}
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
    return {name: torch.stack([state[name].double() for state in states]).mean(0).to(last.dtype)
            if torch.is_floating_point(last) else last.clone() for name, last in states[-1].items()}


class BayesianReranker:
    """A Reranker (`lmlab.core.retrieval.rerankers`) over one variant of a trained cross-encoder folder."""

    def __init__(self, scorers: list[PairScorer], variant: str, *, passes: int = 8, temperature: float = 1.0,
                 attention_dropout: bool = False, explain: dict[str, Any] | None = None) -> None:
        self.scorers, self.variant, self.passes, self.temperature = scorers, variant, passes, temperature
        self.attention_dropout = attention_dropout  # mc-dropout: sample attention-probability dropout too
        self.explain = explain or {}

    def device_logits(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """[S, N] logits before the temperature, on the models' device: one row per member (deep ensemble,
        Lakshminarayanan et al. 2017) or dropout pass (MC dropout, Gal & Ghahramani 2016), else one row."""
        if self.variant == "ensemble":
            return torch.stack([s.device_logits(s.batches(pairs), len(pairs)) for s in self.scorers])
        scorer = self.scorers[0]
        batches = scorer.batches(pairs)  # tokenized and padded once for the T passes
        if self.variant == "mc-dropout":
            return torch.stack([scorer.device_logits(batches, len(pairs), dropout_seed=t,
                                                     attention_dropout=self.attention_dropout)
                                for t in range(self.passes)])
        return scorer.device_logits(batches, len(pairs))[None]

    def logits(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """`device_logits` on the CPU in one copy (temperature scaling is fitted on these)."""
        if not pairs:
            return torch.empty(1, 0)
        return self.device_logits(pairs).cpu()

    def samples(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """[S, N] sampled probabilities σ(z/T); p = their mean over S, e.g. (1/M) Σ_m σ(z_m/T)."""
        return torch.sigmoid(self.logits(pairs) / self.temperature)

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[Relevance]:
        samples = self.samples(pairs)
        mean = samples.mean(0)
        std = samples.std(0, unbiased=False) if len(samples) > 1 else torch.zeros_like(mean)  # 0 for one sample
        return [Relevance(p, p, s, binary_entropy(p)) for p, s in zip(mean.tolist(), std.tolist(), strict=True)]

    def probability_fn(self, query: str) -> Any:
        """P(relevant | query, context) as a function of the context alone (what LIME and SHAP perturb)."""
        return lambda contexts: self.samples([(query, c) for c in contexts]).mean(0).numpy()

    def visible(self, query: str, context: str) -> str:
        """The prefix of `context` the members read (they share one tokenizer and max length)."""
        return self.scorers[0].visible(query, context)

    def explanation_scores(self, query: str, contexts: Sequence[str]) -> list[float]:
        """agg(importance) of each context's words (the Bayesian/XAI paper's supplementary score), over the words the
        model reads, with perturbations enough for their number (`samples_for`)."""
        from lmlab.plugins.rerank.explain import WORD, aggregate, explain, samples_for

        predict = self.probability_fn(query)
        method = self.explain.get("explainer", "shap")
        scores = []
        for context in contexts:
            seen = self.visible(query, context)
            samples = samples_for(len(WORD.findall(seen)), method, self.explain.get("explain_samples", 64))
            scores.append(aggregate(explain(predict, seen, method, samples=samples).importances,
                                    self.explain.get("explain_agg", "max")))
        return scores


def open_folder(folder: Path | None, options: dict[str, Any]) -> BayesianReranker:
    """The `cross-encoder` spec's open: a `retrieve train-reranker` model folder, at the variant `options` name."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if folder is None:
        raise LmlabError("The cross-encoder reranker needs trained weights.",
                         hint="train one with `lmlab retrieve train-reranker` and pass its run folder")
    info = read_info(folder)
    variant = resolve_variant(folder, options.get("variant", "auto"))
    device, dtype = placement(options)
    members = info["members"] if variant == "ensemble" else [info["swa"] if variant == "swa" else info["members"][0]]
    scorers = []
    for path in (folder / name for name in members):
        model = place(AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True), device, dtype)
        scorers.append(PairScorer(model, AutoTokenizer.from_pretrained(path, local_files_only=True),
                                  max_length=info["max_length"], batch_size=options.get("rerank_batch_size", 32)))
    return BayesianReranker(scorers, variant, passes=options.get("mc_passes", info.get("mc_passes", 8)),
                            temperature=info.get("temperatures", {}).get(variant, 1.0),
                            attention_dropout=options.get("mc_attention_dropout", False), explain=options)
