"""`lmlab bench augment`: the three costs of an augmentation run, each against the plain way, in one run.

Four systems, each in its own worker subprocess with the same number of torch threads, on the same device
(`--device`: the generator, core's Embedder and SentenceTransformer all run there; the stores search on the CPU):

- `batched`: the `hf` backend generating the augmentation prompts `--batch-size` at a time (its per-row seeded
  sampler inside transformers' generate), the default of `lmlab augment`;
- `one-at-a-time`: the same backend and requests, one request per call (what a per-item loop does);
- `lmlab-store`: core's Embedder (sentence-transformers, batches of 32) for the bundled store's texts, then
  batched top-k search of core's VectorStore: flat (exact) on the bundled store and on a synthetic store of
  `--synthetic` random unit vectors, plus ivf and hnsw on the synthetic one, with their recall@k against flat;
- `st-numpy`: the plain loop it replaces: `SentenceTransformer.encode` with its defaults, then one numpy
  dot product and argpartition per query.

Generation: the prompts are `lmlab augment`'s own (the bundled seeds, seed-only demonstrations so the bench needs
no store), sampled with temperature 0.9, top-p 0.95, one seed per request and no stop strings, so both systems
generate exactly `--new-tokens` per request (unless EOS) and, with per-request seeds, the same texts: the report
checks their sha256. samples/s = requests / wall seconds of one timed pass after a warm-up request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Annotated, Any

import numpy as np
import typer

from lmlab.core.bench.machine import cpu_count, machine
from lmlab.core.bench.report import emit, make_report, print_results, ran, ratio
from lmlab.core.bench.systems import System, device_settings, median_seconds, parse_systems, run_systems, systems_option
from lmlab.core.bench.worker import clock, worker_device
from lmlab.core.commands import options as o
from lmlab.core.commands.devices import DeviceOpt

SYSTEMS = {"batched": System(), "one-at-a-time": System(),
           "lmlab-store": System(requires="faiss", install="pip install 'lmlab[embed]'"),
           "st-numpy": System(requires="sentence_transformers", install="pip install sentence-transformers")}
SystemsOpt = systems_option(SYSTEMS)
WORKER = "lmlab.plugins.augment.bench:run_system"
TARGETS = {"samples_per_s_batched_vs_one_at_a_time_demos_3": (">=", 4.0),
           "samples_per_s_batched_vs_one_at_a_time_demos_0": (">=", 4.0), "texts_per_s_lmlab_vs_st": (">=", 1.0),
           "queries_per_s_flat_vs_numpy_bundled": (">=", 1.0), "queries_per_s_flat_vs_numpy_synthetic": (">=", 1.0)}


def _prompts(count: int, seed: int, demos: int) -> list[str]:
    from lmlab.core.files.paths import example
    from lmlab.plugins.augment.plan import plan
    from lmlab.plugins.augment.records import load_instances
    from lmlab.plugins.augment.templates import load_template

    seeds = load_instances(str(example("augment/seeds.jsonl")), need_context=True)
    per_seed = -(-count // len(seeds))
    items = plan(seeds, None, None, load_template("extractive-qa"), mode="none", multiplier=per_seed, demos=demos,
                 pool=1, run_seed=seed)
    return [item.prompt for item in items[:count]]


def _generate(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Per prompt setting: samples/s of one full pass; for one-at-a-time also the prefill alone (each request
    with a budget of one token), which batching cannot make cheaper on a CPU: its FLOPs grow with the batch."""
    from lmlab.core.commands.devices import place
    from lmlab.core.evaluation.backend_hf import HFBackend
    from lmlab.core.evaluation.backends import BackendOptions, GenerateRequest
    from lmlab.core.models.loading import load_model

    batch = settings["batch_size"] if system == "batched" else 1
    options = BackendOptions(model=settings["model"], batch_size=batch)
    device = worker_device(settings)
    model, tokenizer = load_model(options.model, seed=options.seed)
    backend = HFBackend(options, place(model, device), tokenizer)

    def run(requests: list[GenerateRequest]) -> tuple[float, list[list[str]]]:
        start = clock(device)
        texts = backend.generate(requests) if system == "batched" else [backend.generate([r])[0] for r in requests]
        return clock(device) - start, texts

    out: dict[str, Any] = {}
    for name, demos in (("demos_3", 3), ("demos_0", 0)):
        prompts = _prompts(settings["requests"], settings["seed"], demos)
        requests = [GenerateRequest(p, settings["new_tokens"], temperature=0.9, top_p=0.95, seed=settings["seed"] + i)
                    for i, p in enumerate(prompts)]
        backend.generate(requests[:1])  # warm-up
        seconds, texts = run(requests)
        tokens = sum(len(backend.tokenizer(t[0], add_special_tokens=False).input_ids) for t in texts)
        prompt_tokens = sum(len(backend.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts)
        result = {"samples_per_s": round(len(requests) / seconds, 3), "seconds": round(seconds, 2),
                  "prompt_tokens_mean": round(prompt_tokens / len(prompts), 1), "generated_tokens": tokens,
                  "texts_sha256": hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]}
        if system == "one-at-a-time":
            prefill, _ = run([replace(r, max_tokens=1) for r in requests])
            result["prefill_seconds"] = round(prefill, 2)
            result["prefill_share"] = round(prefill / seconds, 3)
        out[name] = result
    return out


def _store_texts() -> list[str]:
    from lmlab.core.files.paths import example
    from lmlab.plugins.augment.records import embed_text, load_instances

    return [embed_text(x) for x in load_instances(str(example("augment/store.jsonl")))]


def _synthetic(settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(settings["seed"])
    centres = rng.normal(size=(256, 384)).astype(np.float32)
    vectors = centres[rng.integers(0, 256, settings["synthetic"])] + 0.5 * rng.normal(
        size=(settings["synthetic"], 384)).astype(np.float32)
    queries = centres[rng.integers(0, 256, settings["queries"])] + 0.5 * rng.normal(
        size=(settings["queries"], 384)).astype(np.float32)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return unit(vectors).astype(np.float32), unit(queries).astype(np.float32)


def _numpy_search(matrix: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    """The plain loop: one dot product per query, then the top k by argpartition."""
    found = []
    for q in queries:
        scores = matrix @ q
        top = np.argpartition(-scores, k)[:k]
        found.append(top[np.argsort(-scores[top])].tolist())
    return found


def _retrieval(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    texts, k = _store_texts(), settings["k"]
    vectors, queries = _synthetic(settings)
    device = worker_device(settings)
    if system == "st-numpy":
        from sentence_transformers import SentenceTransformer

        from lmlab.core.retrieval.embeddings import embedder_path

        model = SentenceTransformer(embedder_path("all-minilm-l6-v2"), device=str(device))
        seconds, embedded = median_seconds(lambda: model.encode(texts, normalize_embeddings=True), 1, device)
        q = embedded[:settings["queries"]]
        bundled, _ = median_seconds(lambda: _numpy_search(embedded, q, k))
        synthetic, _ = median_seconds(lambda: _numpy_search(vectors, queries, k))
        return {"texts_per_s": round(len(texts) / seconds, 1),
                "queries_per_s": {"bundled": round(len(q) / bundled, 1), "synthetic": round(len(queries) / synthetic,
                                                                                            1)}}
    from lmlab.core.retrieval.embeddings import Embedder
    from lmlab.core.retrieval.vector_store import StoreInfo, VectorStore

    embedder = Embedder(device=str(device))
    seconds, embedded = median_seconds(lambda: embedder.encode(texts), 1, device)
    out: dict[str, Any] = {"texts_per_s": round(len(texts) / seconds, 1), "queries_per_s": {}, "recall_at_k": {}}
    store = VectorStore(StoreInfo("all-minilm-l6-v2", 384))
    store.add(embedded, [{"id": str(i)} for i in range(len(texts))])
    q = embedded[:settings["queries"]]
    bundled, _ = median_seconds(lambda: store.search(q, k))
    out["queries_per_s"]["bundled"] = round(len(q) / bundled, 1)
    exact = [{int(i) for i in row} for row in _numpy_search(vectors, queries, k)]
    for kind in ("flat", "ivf", "hnsw"):
        built = clock(device)
        index = VectorStore(StoreInfo("synthetic", 384, index=kind))
        index.add(vectors, [{"id": str(i)} for i in range(len(vectors))])
        build_s = clock(device) - built
        seconds, hits = median_seconds(lambda index=index: index.search(queries, k))
        name = "synthetic" if kind == "flat" else f"synthetic_{kind}"
        out["queries_per_s"][name] = round(len(queries) / seconds, 1)
        out["recall_at_k"][kind] = round(float(np.mean([len({h.position for h in row} & truth) / k
                                                        for row, truth in zip(hits, exact, strict=True)])), 4)
        out.setdefault("build_seconds", {})[kind] = round(build_s, 2)
    return out


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One system's figures, in a worker subprocess."""
    return _generate(system, settings) if system in ("batched", "one-at-a-time") else _retrieval(system, settings)


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def get(system: str, *path: str) -> Any:
        value: Any = results.get(system)
        if not ran(value):
            return None
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    return {**{f"samples_per_s_batched_vs_one_at_a_time_{name}": ratio(get("batched", name, "samples_per_s"),
                                                                       get("one-at-a-time", name, "samples_per_s"))
               for name in ("demos_3", "demos_0")},
            "texts_per_s_lmlab_vs_st": ratio(get("lmlab-store", "texts_per_s"), get("st-numpy", "texts_per_s")),
            **{f"queries_per_s_{name}_vs_numpy_{size}": ratio(get("lmlab-store", "queries_per_s", key),
                                                              get("st-numpy", "queries_per_s", size))
               for name, key, size in (("flat", "bundled", "bundled"), ("flat", "synthetic", "synthetic"),
                                       ("ivf", "synthetic_ivf", "synthetic"), ("hnsw", "synthetic_hnsw", "synthetic"))}}


def _row(result: dict[str, Any]) -> list[str]:
    qps = result.get("queries_per_s", {})
    gen = [str(result.get(name, {}).get("samples_per_s", "")) for name in ("demos_3", "demos_0")]
    prefill = result.get("demos_3", {}).get("prefill_share")
    return [*gen, f"{prefill:.0%}" if prefill is not None else "", str(result.get("texts_per_s", "")),
            str(qps.get("bundled", "")), str(qps.get("synthetic", "")),
            " / ".join(f"{qps[k]}" for k in ("synthetic_ivf", "synthetic_hnsw") if k in qps),
            " / ".join(f"{v:.3f}" for k, v in result.get("recall_at_k", {}).items() if k != "flat")]


def _bound(report: dict[str, Any]) -> list[str]:
    """The most batching can give when the prefill is most of one request's time: the prefill alone costs as
    much batched as one at a time (compute-bound on a CPU), so the ratio is at most 1 / prefill share."""
    single = report["results"].get("one-at-a-time", {})
    lines = []
    for name in ("demos_3", "demos_0"):
        share = single.get(name, {}).get("prefill_share") if ran(single) else None
        if share:
            lines.append(f"{name}: prefill is {share:.0%} of one-at-a-time generation, so batching can give at most "
                         f"{1 / share:.2f}x here")
    return lines


def _print_table(report: dict[str, Any]) -> None:
    settings = report["settings"]
    title = (f"bench augment · {settings['model']} · {settings['requests']} prompts × {settings['new_tokens']} "
             f"tokens · store {settings['store_rows']} + synthetic {settings['synthetic']} · {settings['device']}")
    print_results(report, title,
                  ("samples/s 3 demos", "samples/s 0 demos", "prefill share", "texts/s", "queries/s bundled",
                   "queries/s synthetic", "ivf / hnsw q/s", "ivf / hnsw recall"), _row, TARGETS, lines=_bound(report))


def bench_augment(
    requests: Annotated[int, typer.Option("--requests", min=1, help="Augmentation prompts generated.")] = 16,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts per batch (batched).")] = 16,
    new_tokens: Annotated[int, typer.Option("--new-tokens", min=1, help="Tokens sampled per prompt.")] = 32,
    model: Annotated[str, typer.Option("--model", "-m", help="Generator (hf backend).")] = "smollm2-135m",
    synthetic: Annotated[int, typer.Option("--synthetic", min=100, help="Rows of the synthetic store.")] = 100_000,
    queries: Annotated[int, typer.Option("--queries", min=1, help="Queries per store.")] = 200,
    k: Annotated[int, typer.Option("--k", min=1, help="Nearest items per query.")] = 10,
    systems: SystemsOpt = ",".join(SYSTEMS),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the prompts, sampling and synthetic store.")] = 0,
    json_output: o.JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Augmentation costs: batched vs one-at-a-time generation; embedding and store queries vs a plain loop."""
    chosen = parse_systems(systems, SYSTEMS)
    where = device_settings(device)
    threads = cpu_count()
    settings: dict[str, Any] = {
        "model": model, "requests": requests, "batch_size": batch_size, "new_tokens": new_tokens,
        "sampling": "temperature 0.9, top-p 0.95, seed + i per request, no stop strings",
        "store_rows": len(_store_texts()), "synthetic": synthetic, "queries": queries, "k": k, "seed": seed,
        **where, "threads": threads, "timing": "generation: one pass after a warm-up request; embedding: one pass "
        "after a warm-up; queries: median of 3 passes after a warm-up; bundled queries are the first store rows' "
        "vectors",
        "synthetic_store": "unit vectors around 256 random centres in 384 dimensions (noise 0.5), queries likewise"}
    results = run_systems("augment", SYSTEMS, chosen, WORKER, settings, threads=threads,
                          detail=f"{requests} prompts × {new_tokens} tokens, store {settings['store_rows']} + "
                                 f"{synthetic} synthetic, {threads} threads, {where['device']}")
    generated = [r for name, r in results.items() if name in ("batched", "one-at-a-time") and ran(r)]
    settings["same_generated_texts"] = all(len({r[s]["texts_sha256"] for r in generated}) == 1
                                           for s in ("demos_3", "demos_0")) if len(generated) == 2 else None
    report = make_report("augment", machine(threads, ("torch", "transformers", "sentence-transformers", "faiss-cpu")),
                         settings, results, _ratios(results))
    emit(report, json_output, _print_table)
