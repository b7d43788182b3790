"""The generative-rerank prompt within its token budget: the query's cue always whole, the best-ranked contexts kept
whole, the lowest-ranked dropped first (training builds its prompts with the same function)."""

from __future__ import annotations

import pytest

from lmlab.core.models.presets import smollm2_tokenizer
from lmlab.plugins.retrieve.generative import CONTEXT_CHARS, context_lines, context_prompt_ids, query_prompt

QUERY = "which metal is liquid at room temperature"
CONTEXTS = [(f"Page {n}", " ".join(f"word{n}x{i}" for i in range(40))) for n in range(1, 4)]


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


def lengths(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]


def test_with_room_for_everything_the_ids_are_the_whole_texts(tokenizer) -> None:
    (ids,) = context_prompt_ids(tokenizer, [QUERY], [CONTEXTS], 10_000)
    assert ids == tokenizer("".join(context_lines(CONTEXTS)) + query_prompt(QUERY)).input_ids


def test_the_lowest_ranked_context_goes_first_and_the_best_stay_whole(tokenizer) -> None:
    line_lengths = lengths(tokenizer, context_lines(CONTEXTS))
    (query_length,) = lengths(tokenizer, [query_prompt(QUERY)])
    budget = line_lengths[0] + line_lengths[1] + query_length + 8  # two whole contexts and 8 tokens of the third
    (ids,) = context_prompt_ids(tokenizer, [QUERY], [CONTEXTS], budget)
    text = tokenizer.decode(ids)
    assert len(ids) == budget
    first, second = context_lines(CONTEXTS[:2])
    assert text.startswith(first + second) and text.endswith(query_prompt(QUERY))
    third = text[len(first + second):-len(query_prompt(QUERY))]
    assert third.startswith("Context: Page 3") and third.endswith("\n") and len(third) < len(context_lines(CONTEXTS)[2])


def test_a_budget_below_one_context_keeps_the_best_contexts_beginning(tokenizer) -> None:
    (query_length,) = lengths(tokenizer, [query_prompt(QUERY)])
    (ids,) = context_prompt_ids(tokenizer, [QUERY], [CONTEXTS], query_length + 8)
    text = tokenizer.decode(ids)
    assert text.startswith("Context: Page 1") and "Page 2" not in text and text.endswith(query_prompt(QUERY))


def test_a_query_too_long_alone_keeps_the_cue(tokenizer) -> None:
    long_query = " ".join(["metal"] * 300)
    (ids,) = context_prompt_ids(tokenizer, [long_query], [CONTEXTS], 32)
    assert len(ids) == 32 and tokenizer.decode(ids).endswith("metal\nTitle:") and "Context" not in tokenizer.decode(ids)


def test_each_context_is_cut_to_its_characters_and_prompts_are_batched(tokenizer) -> None:
    long = [("Long", "y" * (CONTEXT_CHARS * 3))]
    ids = context_prompt_ids(tokenizer, [QUERY, "other"], [long, []], 10_000)
    assert tokenizer.decode(ids[0]) == f"Context: Long: {'y' * CONTEXT_CHARS}\n" + query_prompt(QUERY)
    assert tokenizer.decode(ids[1]) == query_prompt("other")
