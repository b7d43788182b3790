"""The systems of `lmlab bench retrieve` as its worker (`bench.run_system`) runs them, each given the settings, the
index the parent built, the corpus's pages and queries, and its device (None for the BM25 pair: it needs no torch)."""

from __future__ import annotations

from typing import Any

from lmlab.core.bench import worker as w
from lmlab.plugins.retrieve.bench_bm25 import Okapi
from lmlab.plugins.retrieve.fused import open_fused, tuned_fusion

KS, DEPTH = (1, 5, 10), 10
#: The rows of the report each system gives, where a worker measures two systems side by side.
ROWS = {"fused": ("fused-rrf", "fused-weighted"), "fused-tuned": ("fused-rrf-tuned", "fused-weighted-tuned"),
        "decode": ("trie-beam", "hf-callback"), "generative": ("generative", "fused+generative")}
Figures = dict[str, Any]


def figures(seconds: float, queries: list[Any], rankings: list[list[str]]) -> Figures:
    return {"queries_per_s": round(len(queries) / seconds, 2), "seconds": round(seconds, 4), "queries": len(queries),
            **w.ranking_figures(rankings, queries, KS)}


def ids(found: list[list[Any]]) -> list[list[str]]:
    return [[hit.id for hit in hits] for hits in found]


def timed(index: Any, retriever: Any, queries: list[Any], settings: dict[str, Any],
          device: Any) -> tuple[Figures, list[list[Any]]]:
    """The figures of `--repeats` searches of every query, each a real one (the index forgets its last rankings),
    and the last one's hits; `device`: where the retriever's model runs, whose queued work each clock waits for."""
    texts = [q.input for q in queries]

    def search() -> list[list[Any]]:
        index.forget()
        return retriever.search(texts, DEPTH)

    seconds, found = w.median_seconds(search, settings["repeats"], device)
    return figures(seconds, queries, ids(found)), found


def bm25(settings: dict[str, Any], index: Any, docs: list[Any], queries: list[Any], device: Any) -> Figures:
    measured, found = timed(index, index.open("bm25", {}), queries, settings, device)
    return {**measured, "top10": [[[h.id, h.score] for h in hits] for hits in found]}


def rank_bm25(settings: dict[str, Any], index: Any, docs: list[Any], queries: list[Any], device: Any) -> Figures:
    anchor = Okapi(docs, settings, epsilon=0.0)
    seconds, found = w.median_seconds(lambda: anchor.top(queries, DEPTH), settings["repeats"])
    return {**figures(seconds, queries, [[doc for doc, _ in hits] for hits in found]), "top10": found,
            "index_seconds": round(anchor.seconds, 2),
            "top10_default_epsilon": Okapi(docs, settings).top(queries, DEPTH),
            "all_scores_max_gap": anchor.score_gap(queries, settings["index"])}


def dense(settings: dict[str, Any], index: Any, docs: list[Any], queries: list[Any], device: Any) -> Figures:
    return timed(index, index.open("dense", {}), queries, settings, device)[0]


def fused(settings: dict[str, Any], index: Any, docs: list[Any], queries: list[Any], device: Any) -> Figures:
    rows = {}
    for row, fusion in zip(ROWS["fused"], ("rrf", "weighted"), strict=True):
        retriever = open_fused(index, {"fuse": ["bm25", "dense"], "fusion": fusion})
        rows[row] = {**timed(index, retriever, queries, settings, device)[0], "fusion": fusion,
                     "members": "bm25 + dense"}
    return {"rows": rows}


def dev_split(queries: list[Any]) -> tuple[list[Any], list[Any]]:
    """The first third of the queries (a dev split the weights are tuned on) and the others (reported on)."""
    return queries[:len(queries) // 3], queries[len(queries) // 3:]


def fused_tuned(settings: dict[str, Any], index: Any, docs: list[Any], queries: list[Any], device: Any) -> Figures:
    """bm25 + dense fused with the weights that rank the dev split best (`tuned_fusion`, as --tune-weights chooses
    them), reported on the held-out queries beside the members and the equal-weight fusion on the same queries."""
    dev, held_out = dev_split(queries)
    texts, names = [q.input for q in held_out], ["bm25", "dense"]
    members = {name: index.open(name, {}) for name in names}
    rows = {}
    for row, fusion in zip(ROWS["fused-tuned"], ("rrf", "weighted"), strict=True):
        tuned = tuned_fusion(members, fusion, 60.0, 100, dev, f"the first {len(dev)} bench queries")
        equal = open_fused(index, {"fuse": names, "fusion": fusion})
        same = {name: w.ranking_figures(ids(members[name].search(texts, DEPTH)), held_out, KS) for name in names}
        rows[row] = {**w.ranking_figures(ids(tuned.search(texts, DEPTH)), held_out, KS), "queries": len(held_out),
                     "dev_queries": len(dev), "fusion": fusion, "members": "bm25 + dense",
                     "weights": tuned.record()["weights"], "dev_r_precision": round(tuned.tuned["r_precision"], 4),
                     "same_queries": {**same, f"fused-{fusion}": w.ranking_figures(ids(equal.search(texts, DEPTH)),
                                                                                  held_out, KS)}}
    return {"rows": rows}


def same_hypotheses(ours: list[list[Any]], anchor: list[list[Any]], tolerance: float = 1e-4) -> bool:
    return all([h.tokens for h in a] == [h.tokens for h in b]
               and all(abs(x.score - y.score) <= tolerance for x, y in zip(a, b, strict=True))
               for a, b in zip(ours, anchor, strict=True))


def decode(settings: dict[str, Any], index: Any, docs: list[Any], queries: list[Any], device: Any) -> Figures:
    """Our trie-constrained beam search against GENRE's `prefix_allowed_tokens_fn` in `generate`, on the same prompts,
    titles and batches of a tiny random Llama over the SmolLM2 tokenizer, and whether their hypotheses agree."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.core.models.presets import smollm2_tokenizer
    from lmlab.plugins.retrieve.beam import DictTrie, TitleTrie, constrained_beam_search, hf_constrained_generate
    from lmlab.plugins.retrieve.generative import MAX_PROMPT_TOKENS, prompt_ids, title_ids

    tokenizer = smollm2_tokenizer()
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                         pad_token_id=pad)
    with torch.random.fork_rng():
        torch.manual_seed(settings["seed"])
        model = LlamaForCausalLM(config).eval().to(device)
    titles = title_ids(tokenizer, [d.title for d in docs])
    prompts = prompt_ids(tokenizer, [q.input for q in queries[:settings["decode_queries"]]], MAX_PROMPT_TOKENS)
    args = dict(num_beams=settings["num_beams"], eos_token_id=eos, pad_token_id=pad,
                batch_size=settings["decode_batch_size"])
    trie, dict_trie = TitleTrie.build(titles), DictTrie(titles)
    ours = w.median_seconds(lambda: constrained_beam_search(model, prompts, trie, **args), settings["repeats"], device)
    anchor = w.median_seconds(lambda: hf_constrained_generate(model, prompts, dict_trie, **args), settings["repeats"],
                            device)
    common = {"queries": len(prompts), "num_beams": settings["num_beams"],
              "identical": same_hypotheses(ours[1], anchor[1])}
    return {"rows": {row: {"queries_per_s": round(len(prompts) / seconds, 2), "seconds": round(seconds, 4), **common}
                     for row, (seconds, _) in zip(ROWS["decode"], (ours, anchor), strict=True)},
            "decode_model": {"vocab_size": len(tokenizer), "hidden_size": 64, "layers": 2,
                             "parameters": sum(p.numel() for p in model.parameters())},
            "decode_trie": {"titles": len(titles), "depth": max(map(len, titles))}}


def generative(settings: dict[str, Any], index: Any, docs: list[Any], queries: list[Any], device: Any) -> Figures:
    """Generative recall with a trained title generator, and the RRF of bm25 + dense + generative (and of bm25 +
    dense alone) on the same first `--generative-queries` queries."""
    from lmlab.plugins.retrieve.generative import generator_folder
    from lmlab.plugins.retrieve.options import SearchSettings

    queries, generator = queries[:settings["generative_queries"]], generator_folder(settings["generator"])
    texts, depth = [q.input for q in queries], SearchSettings().depth  # what the fused pipeline takes from each
    index.build("generative", {"generator_model": generator})
    options = {"generator": generator, "num_beams": settings["generative_beams"], "batch_size": 16}
    start = w.clock(device)
    # one pass (a real LM is slow on a CPU), as deep as the fusions below ask: they reuse it (RetrievalIndex.open)
    generated = index.open("generative", options).search(texts, depth)
    seconds = w.clock(device) - start
    three, two = (ids(open_fused(index, {**options, "fuse": members, "depth": depth}).search(texts, DEPTH))
                  for members in (["bm25", "dense", "generative"], ["bm25", "dense"]))
    ours, fusion = ROWS["generative"]
    return {"rows": {ours: {**figures(seconds, queries, ids(generated)), "generator": generator,
                            "num_beams": settings["generative_beams"]},
                     fusion: {**w.ranking_figures(three, queries, KS), "queries": len(queries),
                                          "members": "bm25 + dense + generative",
                                          "fused_bm25_dense_same_queries": w.ranking_figures(two, queries, KS)}}}
