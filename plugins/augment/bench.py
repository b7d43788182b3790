"""`lmlab bench augment`: the three costs of an augmentation run, each against the plain way, in one run
(docs/benchmarks.md#bench-augment says what is compared and how each figure is read)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from lmlab.core.bench import worker as w
from lmlab.core.bench.benchmark import Benchmark, BenchOptions, Cell, Column, Ratio, System, bench_command, ran
from lmlab.core.commands import options as o
from lmlab.plugins.augment import bench_inputs as inputs

GENERATORS, PROMPT_SETS, TEMPERATURE, TOP_P = ("batched", "one-at-a-time"), {"demos_3": 3, "demos_0": 0}, 0.9, 0.95


@dataclass
class AugmentBenchOptions(BenchOptions):
    model: str = o.option("smollm2-135m", "Generator (hf backend).", flags=("--model", "-m"), panel=o.MODEL_AND_DATA)
    requests: int = o.option(16, "Augmentation prompts generated.", min=1)
    batch_size: int = o.option(16, "Prompts per batch (batched).", min=1)
    max_new_tokens: int = o.option(32, "Tokens sampled per prompt.", min=1, deprecated=("--new-tokens",))
    synthetic: int = o.option(100_000, "Rows of the synthetic store.", min=100)
    queries: int = o.option(200, "Queries per store.", min=1)
    top_k: int = o.option(10, "Nearest items per query.", min=1, deprecated=("--k",))
    seed: int = 0


def _settings(opts: AugmentBenchOptions) -> dict[str, Any]:
    return {"model": opts.model, "requests": opts.requests, "batch_size": opts.batch_size,
            "new_tokens": opts.max_new_tokens, "sampling": f"temperature {TEMPERATURE}, top-p {TOP_P}, seed + i per "
            "request, no stop strings", "store_rows": len(inputs.store_texts()), "synthetic": opts.synthetic,
            "queries": opts.queries, "k": opts.top_k, "seed": opts.seed, "synthetic_store": inputs.SYNTHETIC_STORE,
            "timing": "generation: one pass after a warm-up request; embedding: one pass after a warm-up; queries: "
                      "median of 3 passes after a warm-up; bundled queries are the first store rows' vectors"}


def _finish(settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    generated = [r for name, r in results.items() if name in GENERATORS and ran(r)]
    settings["same_generated_texts"] = all(len({r[s]["texts_sha256"] for r in generated}) == 1
                                           for s in PROMPT_SETS) if len(generated) == 2 else None


def _bound(report: dict[str, Any]) -> list[str]:
    """The most batching can give: 1 / prefill share (the prefill alone costs as much batched on a CPU)."""
    single = report["results"].get("one-at-a-time", {})
    return [f"{name}: prefill is {share:.0%} of one-at-a-time generation, so batching can give at most {1 / share:.2f}x"
            " here" for name in PROMPT_SETS if ran(single) and (share := single.get(name, {}).get("prefill_share"))]


BENCHMARK = Benchmark(
    name="augment", doc="Augmentation costs: batched vs one-at-a-time generation; embedding and store queries vs a "
    "plain loop.", options=AugmentBenchOptions, worker="lmlab.plugins.augment.bench:run_system",
    systems={"batched": System(), "one-at-a-time": System(), "lmlab-store": System("faiss", "pip install "
             "'lmlab[embed]'"), "st-numpy": System("sentence_transformers", "pip install sentence-transformers")},
    settings=_settings, finish=_finish, lines=_bound, versions=("torch", "transformers", "sentence-transformers",
                                                                "faiss-cpu"),
    title=lambda s: f"bench augment · {s['model']} · {s['requests']} prompts × {s['new_tokens']} tokens · store "
                    f"{s['store_rows']} + synthetic {s['synthetic']} · {s['device']}",
    detail=lambda s: f"{s['requests']} prompts × {s['new_tokens']} tokens, store {s['store_rows']} + {s['synthetic']} "
                     "synthetic",
    columns=[*(Column(f"samples/s {n} demos", f"demos_{n}.samples_per_s", "{}") for n in (3, 0)),
             Column("prefill share", "demos_3.prefill_share", "{:.0%}"), Column("texts/s", "texts_per_s", "{}"),
             *(Column(f"queries/s {name}", f"queries_per_s.{name}", "{}") for name in ("bundled", "synthetic")),
             Cell("ivf / hnsw q/s", "queries_per_s.synthetic_ivf", text=lambda r: " / ".join(
                 str(r["queries_per_s"][k]) for k in ("synthetic_ivf", "synthetic_hnsw") if k in r["queries_per_s"])),
             Cell("ivf / hnsw recall", "recall_at_k", text=lambda r: " / ".join(
                 f"{v:.3f}" for k, v in r["recall_at_k"].items() if k != "flat"))],
    ratios=[*(Ratio(f"samples_per_s_batched_vs_one_at_a_time_{name}", "batched", "one-at-a-time",
                    f"{name}.samples_per_s", target=(">=", 4.0)) for name in PROMPT_SETS),
            Ratio("texts_per_s_lmlab_vs_st", "lmlab-store", "st-numpy", "texts_per_s", target=(">=", 1.0)),
            *(Ratio(f"queries_per_s_{kind}_vs_numpy_{size}", "lmlab-store", "st-numpy", f"queries_per_s.{key}",
                    f"queries_per_s.{size}", target=(">=", 1.0) if kind == "flat" else None)
              for kind, key, size in (("flat", "bundled", "bundled"), ("flat", "synthetic", "synthetic"),
                                      ("ivf", "synthetic_ivf", "synthetic"), ("hnsw", "synthetic_hnsw", "synthetic")))])
bench_augment = bench_command(BENCHMARK)


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Worker: one system's figures, on the device only it sees."""
    device = w.worker_setup(settings)
    return _generate(system, settings, device) if system in GENERATORS else _retrieval(system, settings, device)


def _generate(system: str, settings: dict[str, Any], device: Any) -> dict[str, Any]:
    """Per prompt set: samples/s of one pass; one at a time, also the prefill alone (a budget of one token each)."""
    from lmlab.core.evaluation.backend_hf import HFBackend
    from lmlab.core.evaluation.backends import BackendOptions, GenerateRequest

    backend = HFBackend(BackendOptions(model=settings["model"], batch_size=settings["batch_size"] if system == "batched"
                                       else 1, device=device.type, precision="fp32"))
    run = backend.generate if system == "batched" else lambda requests: [backend.generate([r])[0] for r in requests]
    out: dict[str, Any] = {}
    for name, demos in PROMPT_SETS.items():
        prompts = inputs.augment_prompts(settings["requests"], settings["seed"], demos)
        requests = [GenerateRequest(p, settings["new_tokens"], temperature=TEMPERATURE, top_p=TOP_P,
                                    seed=settings["seed"] + i) for i, p in enumerate(prompts)]
        backend.generate(requests[:1])  # warm-up
        seconds, texts = w.timed(lambda requests=requests: run(requests), device)
        tokens = [len(backend.tokenizer(t, add_special_tokens=False).input_ids)
                  for t in (*prompts, *(t[0] for t in texts))]
        out[name] = {"samples_per_s": round(len(requests) / seconds, 3), "seconds": round(seconds, 2),
                     "prompt_tokens_mean": round(sum(tokens[:len(prompts)]) / len(prompts), 1),
                     "generated_tokens": sum(tokens[len(prompts):]),
                     "texts_sha256": hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]}
        if system == "one-at-a-time":
            prefill, _ = w.timed(lambda requests=requests: run([replace(r, max_tokens=1) for r in requests]), device)
            out[name].update(prefill_seconds=round(prefill, 2), prefill_share=round(prefill / seconds, 3))
    return out


def _retrieval(system: str, settings: dict[str, Any], device: Any) -> dict[str, Any]:
    """Embedding texts/s, then queries/s on the bundled and the synthetic store: by the numpy loop, or by core's
    VectorStore (flat; on the synthetic store also ivf and hnsw, with build time and recall@k against exact)."""
    from lmlab.core.retrieval.embeddings import Embedder, embedder_path
    from lmlab.core.retrieval.vector_store import StoreInfo, VectorStore

    texts, k = inputs.store_texts(), settings["k"]
    if system == "st-numpy":
        from sentence_transformers import SentenceTransformer

        encode = partial(SentenceTransformer(embedder_path("all-minilm-l6-v2"), device=str(device)).encode,
                         normalize_embeddings=True)
    else:
        encode = Embedder(device=str(device)).encode
    seconds, embedded = w.median_seconds(lambda: encode(texts), 1, device)
    vectors, queries = inputs.synthetic_store(settings["synthetic"], settings["queries"], settings["seed"])
    stores = {"bundled": ("flat", embedded, embedded[:settings["queries"]]), "synthetic": ("flat", vectors, queries)}
    if system == "lmlab-store":
        stores.update({f"synthetic_{kind}": (kind, vectors, queries) for kind in ("ivf", "hnsw")})
        exact = [set(row) for row in inputs.exact_top_k(vectors, queries, k)]
    out: dict[str, Any] = {"texts_per_s": round(len(texts) / seconds, 1), "queries_per_s": {}}
    for name, (kind, rows, asked) in stores.items():
        if system == "st-numpy":
            seconds, _ = w.median_seconds(lambda m=rows, q=asked: inputs.exact_top_k(m, q, k))
        else:
            index = VectorStore(StoreInfo("all-minilm-l6-v2", inputs.DIM, index=kind))
            build_s, _ = w.timed(lambda i=index, m=rows: i.add(m, [{"id": str(n)} for n in range(len(m))]), device)
            seconds, hits = w.median_seconds(lambda i=index, q=asked: i.search(q, k))
        out["queries_per_s"][name] = round(len(asked) / seconds, 1)
        if system == "lmlab-store" and name != "bundled":
            found = sum(len({h.position for h in row} & truth) for row, truth in zip(hits, exact, strict=True))
            out.setdefault("recall_at_k", {})[kind] = round(found / (k * len(exact)), 4)
            out.setdefault("build_seconds", {})[kind] = round(build_s, 2)
    return out
