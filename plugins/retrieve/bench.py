"""`lmlab bench retrieve`: speed and recall of each retriever and of their fusion on one synthetic corpus, against
rank-bm25 and transformers' generate, in one run.

The corpus is `bench_corpus` (core/bench/synthetic_kilt.py: `--documents` invented encyclopedic pages and
`--queries` KILT queries, from `--seed`, nothing downloaded). It is indexed once, as `lmlab retrieve index` does
(`RetrievalIndex.build`, into a temporary index folder): bm25 (bm25s with `--bm25-method`, default robertson, the
variant whose ranking is rank-bm25's BM25Okapi) and dense (the core vector store over all-MiniLM-L6-v2, flat).
Then each system runs in its own worker subprocess with the same number of torch threads, on the same device
(`--device`: where the models of dense, fused, decode and generative run; each worker sees no other):

- `bm25`: our BM25 retriever (`index.open("bm25")`, single-threaded bm25s), the top 10 of every query;
- `rank-bm25`: the anchor, `rank_bm25.BM25Okapi` (k1 and b the same, epsilon 0: see below) over the same tokens
  (our `tokenize(..., ids=False)`: bm25s's tokenizer, stop words, Snowball stemming), `get_scores` per query and
  the 10 best by a stable sort, documents scoring 0 left out as ours leaves them out. The report checks that the
  two rankings are the same (identical top 10, and identical up to the order of tied scores);
- `dense`: the dense retriever (query embedding included in the timing);
- `fused`: the fused pipeline over bm25 + dense with `retrieve search`'s defaults (RRF, k 60, 100 candidates from
  each), reported as `fused-rrf`, and the same with `--fusion weighted` (min-max normalised scores, equal
  weights), reported as `fused-weighted`;
- `decode`: generative retrieval's decoder, our batched trie-constrained beam search (`trie-beam`) against
  transformers' `generate` with GENRE's `prefix_allowed_tokens_fn` over a dict trie (`hf-callback`), on a tiny
  random Llama (hidden 64, 2 layers, the SmolLM2 tokenizer's 49,152 tokens), the corpus's titles as the trie and
  the first `--decode-queries` queries as prompts, `--num-beams` 5, batches of 8 (plugins/retrieve/bench_decode.py);
  the report checks the two give the same titles with the same scores;
- `generative` (with `--generator`, a `retrieve train` run on this corpus: see `--export`): generative recall on
  the first `--generative-queries` queries, and the RRF of bm25 + dense + generative on them (`fused+generative`).

queries/s = queries / the median wall time of `--repeats` passes over all queries (after one warm-up pass), each
pass one `search(queries, 10)` call as `retrieve eval` makes it; recall@k is KILT's (lmlab.core.retrieval.kilt).

Why epsilon 0: BM25Okapi's idf is log((N - n + 0.5) / (n + 0.5)), replaced by epsilon × the mean idf where it is
negative (terms in more than half the documents); bm25s's robertson variant takes max(0, ...) instead, and leaves
out the constant factor (k1 + 1), which changes no ranking. With epsilon 0 the two are the same function, so their
rankings must agree; the report also gives the agreement at rank-bm25's default epsilon (0.25), which differs only
where a query has such a common term ("region" is in every page of the bench corpus).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lmlab.core.bench.machine import cpu_count, machine
from lmlab.core.bench.report import emit, flatten_rows, make_report, print_results, ran, ratio
from lmlab.core.bench.systems import System, device_settings, median_seconds, parse_systems, run_systems
from lmlab.core.bench.worker import clock, worker_device
from lmlab.core.commands import options as o
from lmlab.core.commands.devices import DeviceOpt
from lmlab.core.kernel.errors import LmlabError

SYSTEMS = {"bm25": System(requires="bm25s", install="pip install 'lmlab[retrieve]'"),
           "rank-bm25": System(requires="rank_bm25", install="pip install rank-bm25"),
           "dense": System(requires="faiss", install="pip install 'lmlab[embed]'"),
           "fused": System(requires="faiss", install="pip install 'lmlab[embed]'"),
           "decode": System(requires="transformers", install="pip install transformers"),
           "generative": System()}
#: The rows of the report each system gives (a worker may measure two systems side by side).
ROWS = {"fused": ("fused-rrf", "fused-weighted"), "decode": ("trie-beam", "hf-callback"),
        "generative": ("generative", "fused+generative")}
WORKER = "lmlab.plugins.retrieve.bench:run_system"
KS = (1, 5, 10)
DEPTH = 10
TARGETS = {"queries_per_s_bm25s_vs_rank_bm25": (">=", 10.0), "queries_per_s_constrained_vs_hf_callback": (">=", 3.0),
           "recall@1_fused_vs_best_single": (">=", 1.0)}


# ----------------------------------------------------------------------------------------------- in the worker

def _corpus(settings: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    from lmlab.core.bench.synthetic_kilt import bench_corpus

    return bench_corpus(settings["documents"], settings["queries"], settings["seed"],
                        lexical_share=settings["lexical_share"])


def _recall(rankings: list[list[str]], queries: list[Any]) -> dict[str, float]:
    from lmlab.core.retrieval.kilt import retrieval_metrics

    metrics = retrieval_metrics({q.id: ranked for q, ranked in zip(queries, rankings, strict=True)}, queries, KS)
    return {key: round(float(metrics[key]), 4) for key in (*(f"recall@{k}" for k in KS), "mrr")}


def _figures(seconds: float, queries: list[Any], rankings: list[list[str]]) -> dict[str, Any]:
    return {"queries_per_s": round(len(queries) / seconds, 2), "seconds": round(seconds, 4), "queries": len(queries),
            **_recall(rankings, queries)}


def _index(settings: dict[str, Any]) -> Any:
    from lmlab.core.retrieval.retrievers import RetrievalIndex

    return RetrievalIndex.load(settings["index"])


def _search(index: Any, retriever: Any, texts: list[str], repeats: int, depth: int = DEPTH,
            device: Any = None) -> tuple[float, list[list[Any]]]:
    """Median seconds of `repeats` searches, each a real one (the index's memory of its last rankings dropped);
    `device`: where its model runs, whose queued work each clock reading waits for (BM25 has none)."""
    def search() -> list[list[Any]]:
        index.forget()
        return retriever.search(texts, depth)

    return median_seconds(search, repeats, device)


def _bm25(settings: dict[str, Any]) -> dict[str, Any]:
    _, queries = _corpus(settings)
    index = _index(settings)
    seconds, found = _search(index, index.open("bm25", {}), [q.input for q in queries], settings["repeats"])
    return {**_figures(seconds, queries, [[h.id for h in hits] for hits in found]),
            "top10": [[[h.id, h.score] for h in hits] for hits in found]}


def _rank_bm25(settings: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from rank_bm25 import BM25Okapi

    from lmlab.plugins.retrieve.bm25 import document_text, tokenize

    docs, queries = _corpus(settings)
    ids, stem = [d.id for d in docs], settings["stem"]
    started = time.perf_counter()
    tokens = tokenize([document_text(d.title, d.text) for d in docs], stem, ids=False)
    model = BM25Okapi(tokens, k1=settings["k1"], b=settings["b"], epsilon=0.0)
    index_seconds = time.perf_counter() - started
    default = BM25Okapi(tokens, k1=settings["k1"], b=settings["b"])  # epsilon 0.25

    def search(bm25: Any) -> list[list[tuple[str, float]]]:
        out = []
        for query in tokenize([q.input for q in queries], stem, ids=False):
            scores = bm25.get_scores(query)
            top = np.argsort(-scores, kind="stable")[:DEPTH]
            out.append([(ids[i], float(scores[i])) for i in top if scores[i] > 0])
        return out

    seconds, found = median_seconds(lambda: search(model), settings["repeats"])
    return {**_figures(seconds, queries, [[doc for doc, _ in hits] for hits in found]),
            "index_seconds": round(index_seconds, 2), "top10": found,
            "top10_default_epsilon": search(default), "all_scores_max_gap": _score_gap(model, queries, settings)}


def _score_gap(anchor: Any, queries: list[Any], settings: dict[str, Any]) -> float:
    """Every document's score for every query, ours (the bm25s index the `bm25` system searches, × (k1 + 1)) against
    rank-bm25's: the largest difference relative to the query's best score (not timed)."""
    import bm25s
    import numpy as np

    from lmlab.plugins.retrieve.bm25 import tokenize

    ours, gap = bm25s.BM25.load(Path(settings["index"]) / "bm25", show_progress=False), 0.0
    for tokens in tokenize([q.input for q in queries], settings["stem"], ids=False):
        known = [t for t in tokens if t in ours.vocab_dict]
        theirs = anchor.get_scores(tokens)
        mine = ours.get_scores(known) * (settings["k1"] + 1) if known else np.zeros_like(theirs)
        gap = max(gap, float(np.max(np.abs(mine - theirs)) / max(float(np.max(theirs)), 1e-9)))
    return float(f"{gap:.3g}")


def _fused(settings: dict[str, Any]) -> dict[str, Any]:
    _, queries = _corpus(settings)
    index, texts, out = _index(settings), [q.input for q in queries], {}
    for row, fusion in zip(ROWS["fused"], ("rrf", "weighted"), strict=True):
        from lmlab.plugins.retrieve.fused import open_fused

        retriever = open_fused(index, {"fuse": ["bm25", "dense"], "fusion": fusion})
        seconds, found = _search(index, retriever, texts, settings["repeats"], device=worker_device(settings))
        out[row] = {**_figures(seconds, queries, [[h.id for h in hits] for hits in found]), "fusion": fusion,
                    "members": "bm25 + dense"}
    return {"rows": out}


def _dense(settings: dict[str, Any]) -> dict[str, Any]:
    _, queries = _corpus(settings)
    index = _index(settings)
    seconds, found = _search(index, index.open("dense", {}), [q.input for q in queries], settings["repeats"],
                             device=worker_device(settings))
    return _figures(seconds, queries, [[h.id for h in hits] for hits in found])


def decode_model(vocab_size: int, bos: int, eos: int, pad: int, seed: int) -> Any:
    """The tiny random Llama of the decoding benchmark: hidden 64, 2 layers, 4 heads, tied embeddings."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


def _decode(settings: dict[str, Any]) -> dict[str, Any]:
    from lmlab.core.models.presets import smollm2_tokenizer
    from lmlab.plugins.retrieve.bench_decode import ANCHOR, OURS, decode_benchmark
    from lmlab.plugins.retrieve.generative import MAX_PROMPT_TOKENS
    from lmlab.plugins.retrieve.prompts import prompt_ids, title_ids
    from lmlab.plugins.retrieve.trie import DictTrie, TitleTrie

    docs, queries = _corpus(settings)
    tokenizer = smollm2_tokenizer()
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    model = decode_model(len(tokenizer), tokenizer.bos_token_id, eos, pad, settings["seed"])
    model.to(worker_device(settings))
    sequences = title_ids(tokenizer, [d.title for d in docs])
    prompts = prompt_ids(tokenizer, [q.input for q in queries[:settings["decode_queries"]]], MAX_PROMPT_TOKENS)
    found = decode_benchmark(model, prompts, TitleTrie.build(sequences), DictTrie(sequences), settings["num_beams"],
                             eos, pad, batch_size=settings["decode_batch_size"], repeats=settings["repeats"])
    common = {"queries": len(prompts), "num_beams": settings["num_beams"], "identical": found["identical"]}
    return {"rows": {row: {"queries_per_s": round(found["results"][name]["queries_per_s"], 2),
                           "seconds": round(found["results"][name]["seconds"], 4), **common}
                     for row, name in zip(ROWS["decode"], (OURS, ANCHOR), strict=True)},
            "model": {"vocab_size": len(tokenizer), "hidden_size": 64, "layers": 2,
                      "parameters": sum(p.numel() for p in model.parameters())},
            "trie": {"titles": len(sequences), "depth": max(map(len, sequences))}}


def _generative(settings: dict[str, Any]) -> dict[str, Any]:
    from lmlab.plugins.retrieve.fused import open_fused
    from lmlab.plugins.retrieve.generative import generator_folder
    from lmlab.plugins.retrieve.options import SearchSettings

    _, queries = _corpus(settings)
    queries = queries[:settings["generative_queries"]]
    index, texts = _index(settings), [q.input for q in queries]
    generator = generator_folder(settings["generator"])
    index.build("generative", {"generator_model": generator})
    options = {"generator": generator, "num_beams": settings["generative_beams"], "batch_size": 16}
    depth = SearchSettings().depth  # what the fused pipeline takes from each member
    device = worker_device(settings)
    start = clock(device)
    # one pass (a real LM is slow on a CPU), as deep as the fusions below ask: they reuse it (RetrievalIndex.open)
    generated = index.open("generative", options).search(texts, depth)
    seconds = clock(device) - start

    def fusion_of(members: list[str]) -> list[list[str]]:
        found = open_fused(index, {**options, "fuse": members, "depth": depth}).search(texts, DEPTH)
        return [[h.id for h in hits] for hits in found]

    fused, two = fusion_of(["bm25", "dense", "generative"]), fusion_of(["bm25", "dense"])
    return {"rows": {"generative": {**_figures(seconds, queries, [[h.id for h in hits] for hits in generated]),
                                    "generator": generator, "num_beams": settings["generative_beams"]},
                     "fused+generative": {**_recall(fused, queries), "queries": len(queries),
                                          "members": "bm25 + dense + generative",
                                          "fused_bm25_dense_same_queries": _recall(two, queries)}}}


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One system's figures, in a worker subprocess (a worker that measures two systems returns their `rows`)."""
    if system not in ("bm25", "rank-bm25"):  # the BM25 systems need no torch, and its import takes seconds
        import torch

        torch.set_num_threads(settings["threads"])
    work = {"bm25": _bm25, "rank-bm25": _rank_bm25, "dense": _dense, "fused": _fused, "decode": _decode,
            "generative": _generative}[system]
    return work(settings)


# ----------------------------------------------------------------------------------------------- in the parent

def _same_up_to_ties(ours: list[list[Any]], anchor: list[list[Any]], scale: float) -> bool:
    """Whether two top-k lists rank the same way: the same scores position by position (ours × `scale`, relative
    1e-5: bm25s scores in float32), and the same documents in every group of tied scores that ends before k
    (the group at the cut may hold any of the documents tied there)."""
    if len(ours) != len(anchor):
        return False
    mine = [(doc, score * scale) for doc, score in ours]
    if any(abs(a - b) > 1e-5 * max(abs(b), 1e-9) for (_, a), (_, b) in zip(mine, anchor, strict=True)):
        return False
    start = 0
    for end in range(1, len(anchor) + 1):
        if end == len(anchor) or abs(anchor[end][1] - anchor[start][1]) > 1e-5 * abs(anchor[start][1]):
            if end < DEPTH and {d for d, _ in mine[start:end]} != {d for d, _ in anchor[start:end]}:
                return False
            start = end
    return True


def _ranking_checks(results: dict[str, dict[str, Any]], k1: float) -> dict[str, Any]:
    """How far our BM25 ranking agrees with rank-bm25's; the top-10 lists are dropped from the results."""
    ours, anchor = results.get("bm25", {}).pop("top10", None), results.get("rank-bm25", {}).pop("top10", None)
    default = results.get("rank-bm25", {}).pop("top10_default_epsilon", None)
    all_scores = results.get("rank-bm25", {}).pop("all_scores_max_gap", None)
    if ours is None or anchor is None:
        return {}
    scale = k1 + 1  # bm25s's robertson variant leaves out BM25Okapi's constant factor (k1 + 1)
    ids = lambda top: [doc for doc, _ in top]  # noqa: E731
    count = len(ours)
    gaps = [abs(a[1] * scale - b[1]) / max(abs(b[1]), 1e-9)
            for mine, theirs in zip(ours, anchor, strict=True) for a, b in zip(mine, theirs, strict=False)]
    tied = [any(abs(x[1] - y[1]) <= 1e-5 * abs(y[1]) for x, y in zip(top, top[1:], strict=False)) for top in anchor]
    untied = [ids(a) == ids(b) for a, b, t in zip(ours, anchor, tied, strict=True) if not t]
    return {"bm25_identical_top10_share": round(sum(ids(a) == ids(b) for a, b in zip(ours, anchor, strict=True))
                                                 / count, 4),
            "bm25_queries_with_tied_scores_in_top10_share": round(sum(tied) / count, 4),
            "bm25_identical_top10_share_without_ties": round(sum(untied) / len(untied), 4) if untied else None,
            "bm25_same_ranking_up_to_ties_share": round(sum(_same_up_to_ties(a, b, scale)
                                                            for a, b in zip(ours, anchor, strict=True)) / count, 4),
            "bm25_max_relative_score_gap": float(f"{max(gaps, default=0.0):.3g}"),
            "bm25_all_scores_max_relative_gap": all_scores,
            "bm25_same_ranking_up_to_ties_share_rank_bm25_default_epsilon": round(
                sum(_same_up_to_ties(a, b, scale) for a, b in zip(ours, default, strict=True)) / count, 4)}


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def get(system: str, figure: str) -> Any:
        return results[system].get(figure) if ran(results.get(system)) else None

    singles = [get(name, "recall@1") for name in ("bm25", "dense")]
    best = max(singles) if None not in singles else None
    return {"queries_per_s_bm25s_vs_rank_bm25": ratio(get("bm25", "queries_per_s"), get("rank-bm25", "queries_per_s")),
            "queries_per_s_constrained_vs_hf_callback": ratio(get("trie-beam", "queries_per_s"),
                                                              get("hf-callback", "queries_per_s")),
            "recall@1_fused_vs_best_single": ratio(get("fused-rrf", "recall@1"), best),
            "recall@1_fused_weighted_vs_best_single": ratio(get("fused-weighted", "recall@1"), best),
            "recall@1_dense_vs_bm25": ratio(get("dense", "recall@1"), get("bm25", "recall@1"))}


def _row(result: dict[str, Any]) -> list[str]:
    def cell(key: str, digits: int = 3) -> str:
        value = result.get(key)
        return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    return [cell("queries_per_s", 1), *(cell(f"recall@{k}") for k in KS), cell("mrr"), cell("queries")]


def _lines(report: dict[str, Any]) -> list[str]:
    checks, results, lines = report["settings"].get("checks", {}), report["results"], []
    singles = {name: results[name]["recall@1"] for name in ("bm25", "dense") if ran(results.get(name))}
    if singles and ran(results.get("fused-rrf")):
        best = max(singles, key=singles.get)
        lines.append(f"recall@1: fused (RRF) {results['fused-rrf']['recall@1']:.3f} vs the best single retriever "
                     f"({best}) {singles[best]:.3f}: {results['fused-rrf']['recall@1'] - singles[best]:+.3f}")
    if "bm25_identical_top10_share" in checks:
        untied, tied = checks["bm25_identical_top10_share_without_ties"], checks[
            "bm25_queries_with_tied_scores_in_top10_share"]
        lines.append(f"bm25 vs rank-bm25 (epsilon 0): the same ranking up to the order of tied scores for "
                     f"{checks['bm25_same_ranking_up_to_ties_share']:.1%} of queries; identical top 10 for "
                     f"{checks['bm25_identical_top10_share']:.1%} ({tied:.1%} "
                     f"have tied scores in their top 10, which the two order differently; without ties: "
                     f"{'-' if untied is None else f'{untied:.1%}'}); every page's score agrees to "
                     f"{checks['bm25_all_scores_max_relative_gap']:.2g} of the query's best; at rank-bm25's default "
                     f"epsilon 0.25, "
                     f"the same ranking up to ties for "
                     f"{checks['bm25_same_ranking_up_to_ties_share_rank_bm25_default_epsilon']:.1%}")
    if "decode_identical" in checks:
        lines.append(f"trie-beam vs hf-callback: {'identical' if checks['decode_identical'] else 'DIFFERENT'} "
                     "titles and scores")
    fused = results.get("fused+generative")
    if ran(fused):
        two = fused.get("fused_bm25_dense_same_queries", {})
        lines.append(f"on the {fused['queries']} generative queries: bm25 + dense RRF recall@1 "
                     f"{two.get('recall@1', float('nan')):.3f}, with generative {fused['recall@1']:.3f}")
    return lines


def _print_table(report: dict[str, Any]) -> None:
    settings = report["settings"]
    title = (f"bench retrieve · {settings['documents']} pages · {settings['queries']} queries · seed "
             f"{settings['seed']} · bm25 {settings['bm25_method']}")
    print_results(report, title, ("queries/s", *(f"recall@{k}" for k in KS), "MRR", "queries"), _row, TARGETS,
                  lines=_lines(report))


def _corpus_facts(docs: list[Any], queries: list[Any], stem: bool) -> dict[str, Any]:
    from collections import Counter

    from lmlab.plugins.retrieve.bm25 import document_text, tokenize

    titles = sorted(d.title for d in docs)
    prefixes = sum(1 for a, b in zip(titles, titles[1:], strict=False) if b.startswith(a + " "))
    document_frequency = Counter(t for tokens in tokenize([document_text(d.title, d.text) for d in docs], stem,
                                                          ids=False) for t in set(tokens))
    return {"titles_that_prefix_another": prefixes,
            "terms_in_over_half_the_documents": sorted(t for t, n in document_frequency.items() if n > len(docs) / 2),
            "mean_document_words": round(statistics.fmean(len(d.text.split()) for d in docs), 1),
            "queries_asking_for_a_name": sum(q.answers[0] == q.titles[0][0] or q.titles[0][0].startswith(
                                                 f"{q.answers[0]} (") for q in queries)}


def _export(folder: Path, docs: list[Any], queries: list[Any], settings: dict[str, Any], train: int) -> None:
    """The corpus, the bench's queries and `train` further queries (none the same as a bench query), for
    `retrieve index` and `retrieve train` on the same pages."""
    from dataclasses import asdict

    from lmlab.core.bench.synthetic_kilt import bench_corpus, kilt_row

    folder.mkdir(parents=True, exist_ok=True)
    _, more = bench_corpus(settings["documents"], len(queries) + train, settings["seed"],
                           lexical_share=settings["lexical_share"])
    asked = {q.input for q in queries}
    for name, rows in (("corpus.jsonl", [asdict(d) for d in docs]), ("queries.jsonl", [kilt_row(q) for q in queries]),
                       ("train.jsonl", [kilt_row(q) for q in more[len(queries):] if q.input not in asked])):
        (folder / name).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                                   encoding="utf-8")


def bench_retrieve(
    documents: Annotated[int, typer.Option("--documents", min=10, help="Pages of the synthetic corpus.")] = 3000,
    queries: Annotated[int, typer.Option("--queries", min=1, help="KILT queries about them.")] = 400,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the corpus, the queries and the decoding model.")] = 0,
    lexical_share: Annotated[float, typer.Option("--lexical-share", min=0.0, max=1.0,
                                                 help="Chance that a query's cue uses its page's own words rather "
                                                      "than a paraphrase.")] = 0.3,
    bm25_method: Annotated[str, typer.Option("--bm25-method", help="bm25s variant (robertson ranks as rank-bm25's "
                                                                   "BM25Okapi).")] = "robertson",
    k1: Annotated[float, typer.Option("--k1", min=0.0, help="BM25 k1 (both BM25 systems).")] = 1.5,
    b: Annotated[float, typer.Option("--b", min=0.0, max=1.0, help="BM25 b (both BM25 systems).")] = 0.75,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed passes per system (the median is "
                                                                  "reported), after one warm-up pass.")] = 3,
    decode_queries: Annotated[int, typer.Option("--decode-queries", min=1, help="Prompts of the decoding "
                                                                                "benchmark.")] = 32,
    num_beams: Annotated[int, typer.Option("--num-beams", min=1, help="Beams of the decoding benchmark.")] = 5,
    decode_batch_size: Annotated[int, typer.Option("--decode-batch-size", min=1,
                                                   help="Prompts per batch (both decoders).")] = 8,
    generator: Annotated[str | None, typer.Option("--generator", help="A trained title generator (`retrieve train` "
                                                                      "run or model folder) for generative recall; "
                                                                      "without it, generative is skipped.")] = None,
    generative_queries: Annotated[int, typer.Option("--generative-queries", min=1,
                                                    help="Queries for generative recall (the first N).")] = 100,
    generative_beams: Annotated[int, typer.Option("--generative-beams", min=1,
                                                  help="Beams of generative retrieval.")] = 10,
    export: Annotated[Path | None, typer.Option("--export", help="Also write the corpus, the queries and ~2000 "
                                                                 "others (corpus.jsonl, queries.jsonl, train.jsonl) "
                                                                 "into this folder, to train a generator for "
                                                                 "--generator: `lmlab retrieve index --corpus "
                                                                 "DIR/corpus.jsonl -o IDX -r generative`, then "
                                                                 "`lmlab retrieve train --index IDX --data "
                                                                 "DIR/train.jsonl`.")] = None,
    systems: Annotated[str, typer.Option("--systems", help=f"Comma-separated systems to run: "
                                                           f"{', '.join(SYSTEMS)}.")] = ",".join(SYSTEMS),
    json_output: o.JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Retrieval speed and recall@1/5/10: bm25 vs rank-bm25, dense, fused, and trie-constrained decoding vs HF."""
    from lmlab.core.bench.synthetic_kilt import bench_corpus
    from lmlab.plugins.retrieve.bm25 import METHODS

    if bm25_method not in METHODS:
        raise LmlabError(f"Unknown --bm25-method '{bm25_method}'.", hint=f"use one of: {', '.join(METHODS)}")
    chosen = parse_systems(systems, list(SYSTEMS))
    known = {**SYSTEMS, "generative": System(precondition=lambda: None if generator else
                                              "no --generator (one trained on this corpus: see --export)")}
    threads = cpu_count()
    settings: dict[str, Any] = {
        "documents": documents, "queries": queries, "seed": seed, "lexical_share": lexical_share,
        "bm25_method": bm25_method, "k1": k1, "b": b, "stem": True, "rank_bm25_epsilon": 0.0, "k": DEPTH,
        "repeats": repeats, "decode_queries": min(decode_queries, queries), "num_beams": num_beams,
        "decode_batch_size": decode_batch_size, "generator": generator, "generative_queries":
        min(generative_queries, queries), "generative_beams": generative_beams, **device_settings(device),
        "threads": threads,
        "embedder": "all-minilm-l6-v2 (flat)", "fusion": "rrf k 60 and weighted (minmax, equal weights), 100 "
        "candidates per member", "timing": "queries/s: median of --repeats passes over all queries after a warm-up "
        "pass (generative: one pass); each pass one search(queries, 10) call"}
    docs, asked = bench_corpus(documents, queries, seed, lexical_share=lexical_share)
    settings["corpus"] = _corpus_facts(docs, asked, True)
    if export is not None:
        _export(export, docs, asked, settings, 2000)
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-retrieve-") as tmp:
        settings["index_seconds"] = _build_index(Path(tmp), docs, chosen, settings, device)
        results = run_systems("retrieve", known, chosen, WORKER, {**settings, "index": tmp}, threads=threads,
                              detail=f"{documents} pages, {queries} queries, {threads} threads, "
                                     f"{settings['device']}")
    checks = _ranking_checks(results, k1)
    results, extra = flatten_rows(results)
    if "decode_model" in extra:
        settings["decode_model"], settings["decode_trie"] = extra["decode_model"], extra["decode_trie"]
        checks["decode_identical"] = all(results[row]["identical"] for row in ROWS["decode"])
    settings["checks"] = checks
    report = make_report("retrieve", machine(threads, ("torch", "transformers", "sentence-transformers", "faiss-cpu",
                                                       "bm25s", "rank-bm25")), settings, results, _ratios(results))
    emit(report, json_output, _print_table)


def _build_index(folder: Path, docs: list[Any], chosen: list[str], settings: dict[str, Any],
                 device: str) -> dict[str, float]:
    """bm25 and dense into one index folder, as `retrieve index` builds them, where a chosen system needs them;
    dense embeds on the bench's --device (this process sees every GPU, the workers only that one)."""
    from lmlab.core.kernel.console import log
    from lmlab.core.retrieval.retrievers import Corpus, RetrievalIndex

    needs = {"bm25": {"bm25", "fused", "generative"}, "dense": {"dense", "fused", "generative"}}
    index = RetrievalIndex.create(folder, Corpus(docs, source=f"bench_corpus(seed={settings['seed']})"))
    seconds = {}
    for name, users in needs.items():
        if users & set(chosen):
            log(f"bench retrieve: building the {name} index of {len(docs)} pages…")
            built = index.build(name, {"bm25_method": settings["bm25_method"], "k1": settings["k1"],
                                       "b": settings["b"], "stem": settings["stem"], "device": device})
            seconds[name] = built["seconds"]
    return seconds
