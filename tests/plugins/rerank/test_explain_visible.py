"""Explanations see what the reranker sees: `PairScorer.visible` is the prefix of a context left by the reranker's
token cut, the explanation score and `retrieve explain` perturb only that prefix, `samples_for` scales the
perturbations to its words, and the explanation score can lift a candidate from below the top k into it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from lmlab.core.retrieval.embeddings import embedder_path
from lmlab.core.retrieval.rerankers import Relevance, Reranking
from lmlab.core.retrieval.retrievers import Corpus, Document, Ranked
from lmlab.plugins.rerank.bayes import BayesianReranker, PairScorer, tokenize_pairs
from lmlab.plugins.rerank.command import ExplainOptions
from lmlab.plugins.rerank.explain import MAX_SAMPLES, Explanation, explain, rich_text, run_explain, samples_for, visible
from tests.plugins.rerank.conftest import tiny_encoder

QUERY = "polar lights"
SEEN = "the aurora glows over cold thermometers tonight"  # 11 word pieces ("thermometers" is four)
CONTEXT = f"{SEEN} while aurora aurora aurora shines near the poles on clear winter nights"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedder_path("all-minilm-l6-v2"))


def context_ids(tokenizer: Any, query: str, context: str, max_length: int) -> list[int]:
    """The context's token ids in the cut pair, without the final [SEP]."""
    features = tokenize_pairs(tokenizer, [(query, context)], max_length)[0]
    return [t for t, kind in zip(features["input_ids"], features["token_type_ids"], strict=True) if kind == 1][:-1]


def test_visible_is_the_words_the_cut_pair_keeps(tokenizer: Any) -> None:
    query_tokens = len(tokenizer.tokenize(QUERY))
    for max_length in range(query_tokens + 4, 40):
        scorer = PairScorer(None, tokenizer, max_length=max_length)
        seen = scorer.visible(QUERY, CONTEXT)
        kept = tokenizer.decode(context_ids(tokenizer, QUERY, CONTEXT, max_length))
        words = seen.split()
        assert CONTEXT.startswith(seen) and words == CONTEXT.split()[:len(words)]
        # the kept tokens end inside the last visible word, not before it
        assert " ".join(words).startswith(kept) and len(" ".join(words[:-1])) < len(kept), max_length
        # the prefix is what the reranker reads of the whole context: the same input ids
        assert tokenize_pairs(tokenizer, [(QUERY, seen)], max_length) == tokenize_pairs(tokenizer, [(QUERY, CONTEXT)],
                                                                                        max_length)
    # 3 specials + 2 query tokens + 8 context tokens: the cut falls after "the ##rm", and "thermometers" is kept whole
    cut = PairScorer(None, tokenizer, max_length=13).visible(QUERY, CONTEXT)
    assert cut == "the aurora glows over cold thermometers"
    assert PairScorer(None, tokenizer, max_length=16).visible(QUERY, CONTEXT) == SEEN  # 11 context tokens
    assert PairScorer(None, tokenizer, max_length=128).visible(QUERY, CONTEXT) == CONTEXT  # nothing cut


class AuroraCounter(torch.nn.Module):
    """A cross-encoder whose logit is 4·(times "aurora" is among the context tokens it reads) − 2."""

    def __init__(self, keyword: int) -> None:
        super().__init__()
        self.keyword, self.bias = keyword, torch.nn.Parameter(torch.tensor(-2.0))

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        hits = ((input_ids == self.keyword) & (token_type_ids == 1)).sum(1, keepdim=True)
        return SimpleNamespace(logits=4.0 * hits + self.bias)


class Recording(BayesianReranker):
    """Keeps every context the explainer asks the reranker about."""

    asked: list[str]

    def probability_fn(self, query: str) -> Any:
        inner = super().probability_fn(query)
        self.asked = []
        return lambda contexts: self.asked.extend(contexts) or inner(contexts)


@pytest.mark.parametrize("method", ["shap", "lime"])
def test_the_explanation_score_explains_only_the_visible_prefix(tokenizer: Any, method: str) -> None:
    scorer = PairScorer(AuroraCounter(tokenizer.convert_tokens_to_ids("aurora")), tokenizer, max_length=16)
    reranker = Recording([scorer], "plain", explain={"explainer": method, "explain_samples": 8, "explain_agg": "mean"})
    assert reranker.visible(QUERY, CONTEXT) == SEEN
    (score,) = reranker.explanation_scores(QUERY, [CONTEXT])
    assert all(set(text.split()) <= set(SEEN.split()) for text in reranker.asked)  # no word past the cut is perturbed
    gap = float(torch.sigmoid(torch.tensor(2.0)) - torch.sigmoid(torch.tensor(-2.0)))  # one aurora read vs none
    if method == "shap":  # efficiency: the importances of the 7 words read sum to the gap, so their mean is gap / 7
        assert score == pytest.approx(gap / 7)
    else:  # lime's ridge fit, on samples_for(7 words) = 60 perturbations besides the context and the empty one
        assert score == pytest.approx(gap / 7, abs=0.03) and len(reranker.asked) == 2 + samples_for(7, method, 8)


def test_samples_for_grows_with_the_words_between_the_floor_and_the_cap() -> None:
    for method in ("shap", "lime"):
        counts = [samples_for(words, method, 8) for words in (4, 8, 16, 32)]
        assert counts == sorted(counts) and len(set(counts)) == 4
        assert samples_for(2, method, 300) == 300  # the floor, when the words need fewer
        assert samples_for(500, method, 8) == MAX_SAMPLES  # a long passage stays affordable
        assert samples_for(500, method, 5000) == 5000  # unless the floor asks for more
    assert [samples_for(n, "shap", 8) for n in (8, 16, 32)] == [56, 200, 776]  # ⌈3n²/4⌉ + 8
    assert [samples_for(n, "lime", 8) for n in (8, 16, 32)] == [64, 96, 160]  # 4n + 32
    with pytest.raises(ValueError, match="unknown method"):
        samples_for(8, "gradcam", 8)


def interacting(words: int) -> Any:
    """A deterministic predict with random word weights and pairwise interactions (no additive shortcut)."""
    rng = np.random.default_rng(words)
    weights, pairs = rng.normal(size=words), rng.normal(size=(words, words)) * 0.3

    def predict(texts: list[str]) -> np.ndarray:
        present = np.array([[f"w{i}" in t.split() for i in range(words)] for t in texts], dtype=float)
        return 1 / (1 + np.exp(-(present @ weights + np.einsum("ni,ij,nj->n", present, pairs, present) / words)))
    return predict


@pytest.mark.parametrize("words", [8, 16, 24])
def test_shap_at_samples_for_is_its_full_recursion(words: int) -> None:
    context = " ".join(f"w{i}" for i in range(words))
    predict = interacting(words)
    full = explain(predict, context, "shap", samples=100_000).importances
    assert explain(predict, context, "shap", samples=samples_for(words, "shap", 8)).importances == full
    short = explain(predict, context, "shap", samples=samples_for(words, "shap", 8) // 3).importances
    assert not np.allclose(short, full)  # fewer, and unexplored clusters share their credit evenly


def test_run_explain_reports_the_words_past_the_cut(tmp_path: Path) -> None:
    folder = tiny_encoder(tmp_path / "reranker")
    (folder / "reranker.json").write_text(json.dumps({"kind": "cross-encoder", "members": ["."], "max_length": 16}))
    summary = run_explain(ExplainOptions(query=QUERY, context=CONTEXT, index=tmp_path / "no-index", model=str(folder),
                                         explain_samples=8, output_dir=tmp_path / "explained"))
    unseen = len(CONTEXT.split()) - len(SEEN.split())
    assert summary["unseen_words"] == unseen
    saved = json.loads((tmp_path / "explained" / "explanation.json").read_text(encoding="utf-8"))
    for method in ("lime", "shap"):
        found = saved["methods"][method]
        assert found["words"] == CONTEXT.split() and found["unseen_words"] == unseen
        assert found["importances"][-unseen:] == [0.0] * unseen and any(found["importances"][:-unseen])
        assert found["samples"] == samples_for(len(SEEN.split()), method, 8)
        assert {w for w, _ in found["top"]} <= set(SEEN.split())  # unseen words are not ranked
        page = Path(found["html"]).read_text(encoding="utf-8")
        assert '<span title="past the reranker\'s token cut' in page
        assert f"The last {unseen} words (grey)" in page and "near the poles on clear winter nights</span>" in page


def test_rich_text_greys_the_unseen_words() -> None:
    text = rich_text(Explanation("shap", ["a", "b", "c"], [0.4, 0.0, 0.0], 0.5, 0.1, unseen_words=1))
    assert text.plain == "a b c"
    assert [(text.plain[s.start:s.end], str(s.style)) for s in text.spans] == [("a", "black on rgb(0,170,0)"),
                                                                               ("c", "grey50")]


def test_a_reranker_that_does_not_say_what_it_reads_is_explained_whole() -> None:
    assert visible(object(), QUERY, CONTEXT) == CONTEXT


class ChosenReranker:
    """Chosen P(relevant) per context and chosen explanation scores; records what it was asked to explain."""

    def __init__(self, probabilities: dict[str, float], explanations: dict[str, float]) -> None:
        self.probabilities, self.explanations, self.explained = probabilities, explanations, []

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[Relevance]:
        return [Relevance(self.probabilities[c], self.probabilities[c], 0.0, 0.0) for _, c in pairs]

    def explanation_scores(self, query: str, contexts: Sequence[str]) -> list[float]:
        self.explained.append(list(contexts))
        return [self.explanations[c] for c in contexts]


def test_the_explanation_score_promotes_a_candidate_from_below_the_top_k() -> None:
    probabilities = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}
    explanations = {"a": 0.0, "b": 0.05, "c": 0.6, "d": 0.9}
    corpus = Corpus([Document(i, i, "") for i in probabilities])
    candidates = [[Ranked("d", 4.0), Ranked("c", 3.0), Ranked("b", 2.0), Ranked("a", 1.0)]]  # retriever's order

    def top2(explain_depth: int) -> tuple[list[tuple[str, float]], ChosenReranker]:
        reranker = ChosenReranker(probabilities, explanations)
        found = Reranking(None, reranker, corpus, 4, explain_weight=0.5, explain_depth=explain_depth).rerank(
            ["q"], candidates, 2)
        return [(hit.id, hit.score) for hit in found[0]], reranker

    # depth 3: the reranker's best three (not the retriever's) are explained; c, third by P(relevant) alone, scores
    # 0.7 + 0.5·0.6 = 1.0 and goes first, ahead of a (0.9 + 0) and b (0.8 + 0.025), which leaves the top 2
    ranked, reranker = top2(3)
    assert reranker.explained == [["a", "b", "c"]]
    assert ranked == [("c", pytest.approx(1.0)), ("a", pytest.approx(0.9))]
    # depth 4: d (0.6 + 0.45 = 1.05), last by P(relevant), is explained too and goes first
    ranked, reranker = top2(4)
    assert reranker.explained == [["a", "b", "c", "d"]]
    assert ranked == [("d", pytest.approx(1.05)), ("c", pytest.approx(1.0))]
    # depth 2 = k: only the top two are reordered, so nothing from below can come in
    ranked, _ = top2(2)
    assert [name for name, _ in ranked] == ["a", "b"]
