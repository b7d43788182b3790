"""LIME and SHAP word importances on crafted rerankers whose relevance depends on known words, their aggregation, and
the terminal and HTML highlighting."""

from __future__ import annotations

import numpy as np
import pytest

from lmlab.plugins.rerank.explain import AGGREGATIONS, METHODS, Explanation, aggregate, explain, rich_text, write_html

# shap's import touches matplotlib colormap setters that matplotlib plans to deprecate

CONTEXT = "the northern lights or aurora are often seen near the poles on clear winter nights"


def aurora(texts: list[str]) -> np.ndarray:
    assert isinstance(texts, list) and all(isinstance(t, str) for t in texts)
    return np.array([0.9 if "aurora" in t.split() else 0.1 for t in texts])


def two_words(texts: list[str]) -> np.ndarray:
    return np.array([0.1 + 0.5 * ("aurora" in t.split()) + 0.3 * ("poles" in t.split()) for t in texts])


@pytest.mark.parametrize("method", METHODS)
def test_the_deciding_word_ranks_first_and_the_rest_near_zero(method: str) -> None:
    found = explain(aurora, CONTEXT, method, samples=200)
    assert found.method == method and found.words == CONTEXT.split()
    assert len(found.importances) == len(found.words)
    assert found.probability == pytest.approx(0.9) and found.base == pytest.approx(0.1)
    (word, top), *rest = found.ranked()
    assert word == "aurora" and top > 0.5
    assert all(abs(v) < 0.1 * top for _, v in rest)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_importances(method: str) -> None:
    first = explain(two_words, CONTEXT, method, samples=60, seed=3)
    assert explain(two_words, CONTEXT, method, samples=60, seed=3).importances == first.importances


def test_shap_ranks_both_words_of_an_additive_reranker_and_sums_to_the_gap() -> None:
    found = explain(two_words, CONTEXT, "shap")
    assert [w for w, _ in found.ranked()[:2]] == ["aurora", "poles"]
    assert found.importances[found.words.index("aurora")] == pytest.approx(0.5)
    assert found.importances[found.words.index("poles")] == pytest.approx(0.3)
    assert aggregate(found.importances, "sum") == pytest.approx(found.probability - found.base)


@pytest.mark.parametrize("method", METHODS)
def test_empty_and_one_word_contexts(method: str) -> None:
    for context in ("", "  \n "):
        found = explain(aurora, context, method)
        assert found.words == [] and found.importances == [] and found.ranked() == []
    found = explain(aurora, " aurora ", method)
    assert found.words == ["aurora"] and found.importances == [pytest.approx(0.8)]


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        explain(aurora, CONTEXT, "gradcam")


def test_aggregations_match_hand_values() -> None:
    values = [0.5, -0.25, 0.1, 0.0, 0.3]
    expected = {"max": 0.5, "mean": 0.65 / 5, "sum": 0.65, "mean-abs": 1.15 / 5, "top3": 0.9 / 3}
    assert set(expected) == set(AGGREGATIONS)
    for how, value in expected.items():
        assert aggregate(values, how) == pytest.approx(value)
        assert aggregate([], how) == 0.0
    assert aggregate([-0.2, 0.4]) == pytest.approx(0.4)  # "max" by default
    assert aggregate([-0.2, 0.4], "top3") == pytest.approx(0.1)  # fewer than three words: all of them
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(values, "median")


def test_ranked_is_stable_and_to_json_round_trips() -> None:
    found = Explanation("lime", ["a", "b", "c", "d"], [0.1, 0.3, 0.1, -0.2], 0.7, 0.2)
    assert found.ranked() == [("b", 0.3), ("a", 0.1), ("c", 0.1), ("d", -0.2)]
    assert Explanation(**found.to_json()) == found


def test_rich_text_keeps_the_context_and_shades_by_sign() -> None:
    found = explain(two_words, CONTEXT, "shap")
    text = rich_text(found)
    assert text.plain == CONTEXT
    styles = {text.plain[span.start:span.end]: str(span.style) for span in text.spans}
    assert styles["aurora"] == "black on rgb(0,170,0)"  # the strongest word gets the full colour
    assert "the" not in styles  # zero importance: no background
    negative = rich_text(Explanation("lime", ["x", "y"], [-0.4, 0.1], 0.5, 0.5))
    assert [str(s.style) for s in negative.spans] == ["black on rgb(220,0,0)", "black on rgb(191,234,191)"]


def test_write_html_escapes_and_lists_the_top_words(tmp_path) -> None:
    context = "the <b>bold</b> aurora & friends"
    found = explain(aurora, context, "lime", samples=100)
    path = write_html(found, tmp_path / "explain.html", query='what is "aurora"?')
    assert path == tmp_path / "explain.html" and [p.name for p in tmp_path.iterdir()] == ["explain.html"]
    page = path.read_text(encoding="utf-8")
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "&amp;" in page and "<b>bold" not in page
    assert "what is &quot;aurora&quot;?" in page
    assert page.index("<td>1</td><td>aurora</td>") < page.index("<td>2</td>")
