"""Explainable reranking (Song et al. 2024): LIME and SHAP word importances of a reranker's P(relevant) for one
(query, context) pair, their aggregation into a supplementary score s = s_rerank + λ·agg(importance), and
`lmlab retrieve explain`. A word is a run of non-whitespace; masking a word removes it from the context."""

from __future__ import annotations

import html
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.text import Text

from lmlab.core.files.atomic import write_json_atomic, write_text_atomic
from lmlab.core.files.records import example
from lmlab.core.files.runs import RunDir, check_run_folder, new_run_path
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.kilt import load_kilt
from lmlab.core.retrieval.rerankers import context_of, open_reranker
from lmlab.core.retrieval.retrievers import RetrievalIndex
from lmlab.plugins.rerank.command import ExplainOptions

PredictFn = Callable[[list[str]], np.ndarray]  # contexts (the caller holds the query fixed) -> P(relevant), shape [n]
METHODS = ("lime", "shap")
AGGREGATIONS: dict[str, Callable[[np.ndarray], Any]] = {  # how word importances become one score
    "max": np.max, "mean": np.mean, "sum": np.sum,  # for shap, sum = probability minus base
    "mean-abs": lambda x: np.abs(x).mean(), "top3": lambda x: np.sort(x)[::-1][:3].mean()}
WORD = re.compile(r"\S+")
SHAP_BATCH = 16  # masked texts per predict call; bigger batches make shap's Owen recursion less adaptive
# What `samples_for` gives, measured with a deterministic predict (random word weights and pairwise interactions):
# shap's full Owen recursion scores 44, 172, 684 and 2,732 texts for 8, 16, 32 and 64 words (2/3·(n² − 1) + 2 at a
# power of two), at most 0.753·n² for any n ≤ 100, and its values no longer change past that. lime's ridge weights,
# against the exact ones of a linear predict, are off by 0.5-0.6 of the largest at n samples for n words, 0.09-0.3 at
# 4n and 0.01-0.04 at 32n: it never converges, so it gets four samples per feature.
MAX_SAMPLES = 1024  # a full shap recursion up to 36 words; at 64 words its largest importance is still within 0.2%


@dataclass(frozen=True)
class Explanation:
    """Word importances for one context. `base` is P(relevant) with every word removed, i.e. of the empty context:
    shap's base value exactly; lime's intercept only estimates it, so it is predict([""]) for both methods."""

    method: str
    words: list[str]
    importances: list[float]  # one per word: its contribution to P(relevant), positive = more relevant
    probability: float  # P(relevant) of the unperturbed context
    base: float
    unseen_words: int = 0  # the last ones of `words`, past the reranker's token cut: never read, importance 0

    @property
    def seen(self) -> int:
        """How many words (from the first) the reranker reads."""
        return len(self.words) - self.unseen_words

    def ranked(self) -> list[tuple[str, float]]:
        """The words the reranker reads, by importance, highest first; ties keep context order."""
        return sorted(zip(self.words[:self.seen], self.importances[:self.seen], strict=True), key=lambda pair: -pair[1])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _probabilities(predict: PredictFn, texts: Sequence[str]) -> np.ndarray:
    return np.asarray(predict([str(t) for t in texts]), dtype=float).reshape(-1)


def _lime(predict: PredictFn, context: str, samples: int, seed: int) -> tuple[list[str], list[float]]:
    from lime.lime_text import LimeTextExplainer

    def classifier(texts: list[str]) -> np.ndarray:
        p = _probabilities(predict, texts)
        return np.column_stack([1 - p, p])

    # bow=False: each position is its own feature; mask_string="" removes a word instead of writing UNKWORDZ
    explainer = LimeTextExplainer(class_names=["irrelevant", "relevant"], bow=False, split_expression=r"\s+",
                                  mask_string="", random_state=seed)
    found = explainer.explain_instance(context, classifier, labels=(1,), num_features=len(WORD.findall(context)),
                                       num_samples=samples)
    words = [str(w) for w in found.domain_mapper.indexed_string.inverse_vocab]  # = WORD.findall(context)
    weights = dict(found.as_map()[1])  # feature index = word position, since bow=False
    return words, [float(weights.get(i, 0.0)) for i in range(len(words))]


def _shap(predict: PredictFn, context: str, samples: int, seed: int) -> tuple[list[str], list[float]]:
    with warnings.catch_warnings():  # shap 0.51's colour maps use a matplotlib API that warns on import
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap

    # mask_token=" " removes masked words (shap collapses the whitespace); mask_token="" crashes shap's masker.
    masker = shap.maskers.Text(r"\s+", mask_token=" ")
    explainer = shap.explainers.Partition(lambda texts: _probabilities(predict, texts), masker)
    # The Partition explainer ignores Explainer(seed=...): its only randomness is np.random.randn breaking ties in
    # its priority queue, so seed the global generator for the call and restore it after. Below the evals the full
    # Owen recursion needs (about 3/4·words², `samples_for`) unexplored clusters share their credit evenly.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        values = explainer([context.strip()], max_evals=samples, batch_size=SHAP_BATCH, silent=True)
    finally:
        np.random.set_state(state)
    pairs = [(str(t).strip(), float(v)) for t, v in zip(values.data[0], values.values[0], strict=True)]
    pairs = [(w, v) for w, v in pairs if w]  # shap's tokens keep their trailing whitespace
    return [w for w, _ in pairs], [v for _, v in pairs]


def explain(predict: PredictFn, context: str, method: str = "lime", *, samples: int = 200,
            seed: int = 0) -> Explanation:
    """Explain predict(context) with `method` ("lime" or "shap") using about `samples` masked contexts."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    probability, base = (float(p) for p in _probabilities(predict, [context, ""]))
    words = WORD.findall(context)
    if len(words) < 2:  # one word earns all the credit (shap's text clustering fails on it, lime fits it badly)
        return Explanation(method, words, [probability - base] * len(words), probability, base)
    words, importances = (_lime if method == "lime" else _shap)(predict, context, samples, seed)
    return Explanation(method, words, importances, probability, base)


def samples_for(words: int, method: str, floor: int) -> int:
    """Perturbed contexts to explain `words` words with `method`: `floor` (--explain-samples) or, when more, what the
    method needs, capped at MAX_SAMPLES: shap's full Owen recursion (3/4·words² + 8, above every measured count)
    and for lime 4·words + 32, so the ridge fit has four samples per feature."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    need = math.ceil(0.75 * words * words) + 8 if method == "shap" else 4 * words + 32
    return max(floor, min(need, MAX_SAMPLES))


def with_unseen(found: Explanation, context: str) -> Explanation:
    """`found` (an explanation of a prefix of `context`) followed by the context's later words, importance 0."""
    unseen = WORD.findall(context)[len(found.words):]
    return Explanation(found.method, found.words + unseen, found.importances + [0.0] * len(unseen), found.probability,
                       found.base, found.unseen_words + len(unseen))


def aggregate(importances: Sequence[float], how: str = "max") -> float:
    """One score from word importances by an `AGGREGATIONS` rule; 0.0 when empty."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; expected one of {', '.join(AGGREGATIONS)}")
    if len(importances) == 0:
        return 0.0
    return float(AGGREGATIONS[how](np.asarray(importances, dtype=float)))


def _shade(importance: float, top: float) -> str:
    """White blended toward green (positive) or red (negative) by |importance| / top, as 'rgb(r,g,b)'."""
    strength = abs(importance) / top if top > 0 else 0.0
    target = (0, 170, 0) if importance > 0 else (220, 0, 0)
    r, g, b = (round(255 + (c - 255) * strength) for c in target)
    return f"rgb({r},{g},{b})"


def rich_text(explanation: Explanation) -> Text:
    """The words joined by single spaces, each on a background shaded by its importance; unseen words in grey."""
    top = max((abs(v) for v in explanation.importances), default=0.0)

    def style(n: int, importance: float) -> str:
        return "grey50" if n >= explanation.seen else f"black on {_shade(importance, top)}" if importance else ""

    return Text(" ").join(Text(word, style=style(n, importance))
                          for n, (word, importance) in enumerate(zip(explanation.words, explanation.importances,
                                                                     strict=True)))


def write_html(explanation: Explanation, path: Path, *, query: str = "") -> Path:
    """A self-contained HTML page: the highlighted context (words past the reranker's cut in grey) and a table of the
    ten most important words."""
    e = html.escape
    strongest = max((abs(v) for v in explanation.importances), default=0.0)
    spans = " ".join(f'<span title="{v:+.4f}" style="background:{_shade(v, strongest)};padding:0 2px">{e(w)}</span>'
                     for w, v in zip(explanation.words[:explanation.seen], explanation.importances[:explanation.seen],
                                     strict=True))
    if explanation.unseen_words:
        spans += (' <span title="past the reranker\'s token cut: not read, importance 0" style="color:#999">'
                  + e(" ".join(explanation.words[explanation.seen:])) + "</span>")
    cut = (f"<p>The last {explanation.unseen_words} words (grey) are past the reranker's token cut: it does not read "
           "them, so they carry no importance.</p>" if explanation.unseen_words else "")
    rows = "".join(f"<tr><td>{i}</td><td>{e(w)}</td><td>{v:+.4f}</td></tr>"
                   for i, (w, v) in enumerate(explanation.ranked()[:10], 1))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(explanation.method)} explanation</title></head>
<body style="font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.8">
<h1 style="font-size:1.3em">{e(explanation.method.upper())} word importances</h1>
{f"<p><b>Query:</b> {e(query)}</p>" if query else ""}
<p>P(relevant) = {explanation.probability:.4f}, with every word removed = {explanation.base:.4f}</p>
<p style="border:1px solid #ccc;padding:1em">{spans}</p>
{cut}
<table style="border-collapse:collapse" border="1" cellpadding="4">
<tr><th>#</th><th>word</th><th>importance</th></tr>{rows}</table>
</body></html>
"""
    write_text_atomic(path, page)
    return path


def _pair(opts: ExplainOptions, index: RetrievalIndex | None) -> tuple[str, str]:
    query = opts.query or load_kilt(str(example("retrieve/dev.jsonl")))[0].input
    if opts.context is not None:
        return query, opts.context
    if index is None:
        raise LmlabError(f"{opts.index} is not a retrieval index, needed to find a context for the query.",
                         hint="give --context TEXT, or build the index with `lmlab retrieve index`")
    best = index.open("bm25", {}).search([query], 1)[0]
    return query, context_of(index.corpus.by_id[best[0].id])


def predictor(reranker: Any, query: str) -> Any:
    """P(relevant | query, ·) over contexts, for a reranker with or without its own `probability_fn`."""
    if hasattr(reranker, "probability_fn"):
        return reranker.probability_fn(query)
    return lambda contexts: np.array([r.probability for r in reranker.score([(query, c) for c in contexts])])


def visible(reranker: Any, query: str, context: str) -> str:
    """The prefix of `context` the reranker reads with `query` (all of it for a reranker that does not say)."""
    return reranker.visible(query, context) if hasattr(reranker, "visible") else context


def run_explain(opts: ExplainOptions) -> dict[str, Any]:
    for method in opts.explainer:
        if method not in METHODS:
            raise LmlabError(f"Unknown --explainer '{method}'.", hint=f"use one of: {', '.join(METHODS)}")
    device, dtype = opts.placement.resolve()  # a GPU asked for that is not there is refused before any work
    if opts.output_dir is not None:
        check_run_folder(opts.output_dir, "retrieve explain", reusable=True)
    index = RetrievalIndex.load(opts.index) if (opts.index / "index.json").is_file() else None
    query, context = _pair(opts, index)
    reranker = open_reranker(opts.model, {"variant": opts.variant, "device": device, "dtype": dtype}, index)
    predict = predictor(reranker, query)
    run = RunDir(new_run_path("retrieve-explain", opts.output_dir), checkpoints=False)
    run.write_config("retrieve explain", asdict(opts))
    seen = visible(reranker, query, context)  # words past the reranker's cut are not perturbed: reported as unseen
    methods: dict[str, Any] = {}
    for method in dict.fromkeys(opts.explainer):
        started = time.perf_counter()
        samples = samples_for(len(WORD.findall(seen)), method, opts.explain_samples)
        found = with_unseen(explain(predict, seen, method, samples=samples, seed=opts.seed), context)
        methods[method] = {**found.to_json(), "samples": samples, "seconds": round(time.perf_counter() - started, 3),
                           "html": str(write_html(found, run.path / f"{method}.html", query=query)),
                           "top": [[w, round(v, 6)] for w, v in found.ranked()[:opts.top]]}
    summary = {"query": query, "context": context, "probability": float(predict([context])[0]),
               "unseen_words": len(WORD.findall(context)) - len(WORD.findall(seen)),
               "variant": getattr(reranker, "variant", opts.variant), "methods": methods, "run_dir": str(run.path)}
    write_json_atomic(run.path / "explanation.json", summary)
    return summary
