"""How a query and a title become tokens, the same for training the generator and for decoding with it: the
prompt `Question: <query>\nTitle:` is followed by ` <title>` and the end-of-sequence token. Generative reranking
puts the query's dense-retrieved contexts before it, one `Context: <title>: <text>` line each."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any


def query_prompt(query: str) -> str:
    return f"Question: {' '.join(query.split())}\nTitle:"


CONTEXT_CHARS = 300  # of each context's text in a reranking prompt


def context_prompt(query: str, contexts: Sequence[tuple[str, str]]) -> str:
    lines = [f"Context: {title}: {' '.join(text.split())[:CONTEXT_CHARS]}" for title, text in contexts]
    return "\n".join([*lines, query_prompt(query)])


def context_prompt_ids(tokenizer: Any, queries: Sequence[str], contexts: Sequence[Sequence[tuple[str, str]]],
                       max_tokens: int) -> list[list[int]]:
    """Reranking prompts' token ids, each cut to its last `max_tokens` (the first contexts go first)."""
    texts = [context_prompt(q, c) for q, c in zip(queries, contexts, strict=True)]
    return [ids[-max_tokens:] for ids in tokenizer(texts).input_ids]


def prompt_ids(tokenizer: Any, queries: Sequence[str], max_tokens: int) -> list[list[int]]:
    """The prompts' token ids, each cut to its last `max_tokens` (a long query loses its start, not the cue)."""
    return [ids[-max_tokens:] for ids in tokenizer([query_prompt(q) for q in queries]).input_ids]


def title_ids(tokenizer: Any, titles: Sequence[str]) -> list[list[int]]:
    """Each title's tokens after the prompt, ending with EOS (what the trie holds and the generator learns)."""
    eos = tokenizer.eos_token_id
    return [ids + [eos] for ids in tokenizer([f" {t}" for t in titles], add_special_tokens=False).input_ids]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Tells whether a trie built with one tokenizer fits another: a hash of the vocabulary and EOS."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr((vocab, tokenizer.eos_token_id)).encode()).hexdigest()[:16]
