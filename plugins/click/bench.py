"""`lmlab bench click`: multiple-choice scoring speed, lmlab's hf backend vs lm-evaluation-harness's HFLM, on the same
model object and the exact (context, continuation) pairs of the CLIcK prompt (A-D or A-E); each returns one
log-likelihood per choice, the prediction being the argmax. lm-evaluation-harness runs at its default batch size (1;
`--lm-eval-batch-size`) with its logits cache on, so both do one forward pass per question; each system runs in its own
subprocess with the same torch threads on the same device, after one untimed warm-up question. Reported: items/s,
seconds, and how many per-item predictions agree, with the largest log-likelihood gap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmlab.core.bench.benchmark import Benchmark, BenchOptions, Column, Ratio, System, bench_command, ran
from lmlab.core.bench.machine import version
from lmlab.core.bench.worker import clock, worker_device
from lmlab.core.commands import options as o


@dataclass
class ClickBenchOptions(BenchOptions):
    model: str = o.option("smollm2-135m", "Model alias, local HF folder, or Hub id.", flags=("--model", "-m"))
    data: str | None = o.option(None, "CLIcK in the official layout (default: the bundled examples).",
                                flags=("--data", "-d"))
    limit: int | None = o.option(None, "Items, round-robin across categories (default: all).", min=1)
    lm_eval_batch_size: int = o.option(1, "lm-evaluation-harness batch size (its default is 1).", min=1)


def _settings(opts: ClickBenchOptions) -> dict[str, Any]:
    from lmlab.core.files.records import example

    return {"model": opts.model, "data": opts.data or str(example("eval/click")), "limit": opts.limit,
            "lm_eval_batch_size": opts.lm_eval_batch_size, "seed": opts.seed}


def _finish(settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    """How many per-item predictions agree, and the largest log-likelihood gap (then both lists are dropped)."""
    ours, theirs = results.get("lmlab"), results.get("lm-eval")
    if ran(ours) and ran(theirs):
        agree = sum(a == b for a, b in zip(ours["predictions"], theirs["predictions"], strict=True))
        gap = max(abs(x - y) for a, b in zip(ours["loglik"], theirs["loglik"], strict=True)
                  for x, y in zip(a, b, strict=True))
        settings.update(predictions_agree=f"{agree}/{len(ours['predictions'])}", max_loglik_gap=gap)
    for result in results.values():
        result.pop("loglik", None)
        result.pop("predictions", None)


def _lines(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    return [f"per-item predictions agree: {s['predictions_agree']} (largest log-likelihood gap "
            f"{s['max_loglik_gap']:.2e})"] if "predictions_agree" in s else []


BENCHMARK = Benchmark(
    name="click", doc="CLIcK multiple-choice scoring: items/s and per-item predictions vs lm-evaluation-harness.",
    options=ClickBenchOptions, worker="lmlab.plugins.click.bench:run_system", settings=_settings, finish=_finish,
    systems={"lmlab": System(), "lm-eval": System(requires="lm_eval", install="pip install 'lmlab[lm-eval]'")},
    versions=("torch", "transformers", "lm_eval"), lines=_lines, detail=lambda s: f"{s['limit'] or 'all'} items",
    title=lambda s: f"bench click: multiple-choice scoring · {s['device']}",
    columns=[Column("items", "items", "{}"), Column("seconds", "seconds", "{:.2f}"),
             Column("items/s", "items_per_s"), Column("version", "version", "{}")],
    ratios=[Ratio("items_per_s_lmlab_vs_lm-eval", "lmlab", "lm-eval", "items_per_s", target=(">=", 1.5))])
bench_click = bench_command(BENCHMARK)


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Worker: score the items with one system; returns timings, predictions and log-likelihoods."""
    from lmlab.core.commands.devices import place
    from lmlab.core.evaluation.backends import BackendOptions, ChoiceRequest
    from lmlab.core.evaluation.scoring import EvalSettings, limit_items
    from lmlab.core.models.loading import load_model
    from lmlab.plugins.click.data import load_click

    device = worker_device(settings)
    model, tokenizer = load_model(settings["model"], seed=settings["seed"])  # the seed inits a random-weight alias
    model = place(model, device)
    items = limit_items(load_click(settings["data"], EvalSettings()).items, settings["limit"])
    requests = [ChoiceRequest(item.prompt, item.choices) for item in items]
    if system == "lmlab":
        from lmlab.core.evaluation.backend_hf import HFBackend

        backend = HFBackend(BackendOptions(settings["model"]), model, tokenizer)
        score, name = backend.loglik, "lmlab"
    else:
        score, name = _lm_eval_scorer(model, tokenizer, settings["lm_eval_batch_size"]), "lm_eval"
    score(requests[:1])  # warm-up, not timed
    start = clock(device)
    loglik = score(requests)
    seconds = clock(device) - start
    return {"items": len(items), "seconds": round(seconds, 3), "items_per_s": round(len(items) / seconds, 4),
            "version": version(name), "loglik": loglik,
            "predictions": [max(range(len(row)), key=row.__getitem__) for row in loglik]}


def _lm_eval_scorer(model: Any, tokenizer: Any, batch_size: int) -> Any:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)

    def score(requests: list[Any]) -> list[list[float]]:
        instances = [Instance(request_type="loglikelihood", doc={}, arguments=(r.context, c), idx=i)
                     for i, r in enumerate(requests) for c in r.continuations]
        flat = iter(value for value, _ in lm.loglikelihood(instances, disable_tqdm=True))
        return [[next(flat) for _ in r.continuations] for r in requests]

    return score
