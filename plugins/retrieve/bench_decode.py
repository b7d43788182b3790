"""Decoding speed of generative retrieval: our batched trie-constrained beam search against its anchor, GENRE's
`prefix_allowed_tokens_fn` over a dict trie in transformers' `generate` (De Cao et al. 2021), on the same model,
prompts, titles and batches on the model's device; the median of a few timed runs after a warm-up (each clock reading
waiting for the device's queued work), and whether the hypotheses agree."""

from __future__ import annotations

from typing import Any

from lmlab.core.bench.systems import median_seconds
from lmlab.plugins.retrieve.beam import Hypothesis, constrained_beam_search, hf_constrained_generate
from lmlab.plugins.retrieve.trie import DictTrie, TitleTrie

OURS, ANCHOR = "trie_beam_search", "hf_prefix_allowed_tokens_fn"


def same_hypotheses(ours: list[list[Hypothesis]], anchor: list[list[Hypothesis]], tolerance: float = 1e-4) -> bool:
    return all([h.tokens for h in a] == [h.tokens for h in b]
               and all(abs(x.score - y.score) <= tolerance for x, y in zip(a, b, strict=True))
               for a, b in zip(ours, anchor, strict=True))


def decode_benchmark(model: Any, prompts: list[list[int]], trie: TitleTrie, dict_trie: DictTrie, num_beams: int,
                     eos: int, pad: int, *, batch_size: int = 8, repeats: int = 3) -> dict[str, Any]:
    """{"settings", "results": {system: {"seconds", "queries_per_s"}}, "ratios", "identical"}."""
    args = dict(num_beams=num_beams, eos_token_id=eos, pad_token_id=pad, batch_size=batch_size)
    seconds, found = {}, {}
    seconds[OURS], found[OURS] = median_seconds(lambda: constrained_beam_search(model, prompts, trie, **args), repeats,
                                                model.device)
    seconds[ANCHOR], found[ANCHOR] = median_seconds(
        lambda: hf_constrained_generate(model, prompts, dict_trie, **args), repeats, model.device)
    return {
        "settings": {"queries": len(prompts), "titles": len(trie), "num_beams": num_beams, "batch_size": batch_size,
                     "repeats": repeats, "vocab_size": model.config.vocab_size},
        "results": {name: {"seconds": s, "queries_per_s": len(prompts) / s} for name, s in seconds.items()},
        "ratios": {f"queries_per_s_{OURS}_vs_{ANCHOR}": seconds[ANCHOR] / seconds[OURS]},
        "identical": same_hypotheses(found[OURS], found[ANCHOR]),
    }
