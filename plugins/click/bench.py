"""`lmlab bench click`: multiple-choice scoring speed, lmlab's hf backend vs lm-evaluation-harness's HFLM.

Same model object, same items, same requests: both systems get the exact (context, continuation) pairs of the
CLIcK prompt (A-D or A-E), and each returns one log-likelihood per choice; the prediction is the argmax.
lm-evaluation-harness runs at its own default batch size (1; `--lm-eval-batch-size` to change it) with its
logits cache on (one forward pass per question for single-token answers), so both do one pass per question.
Each system runs in its own subprocess with the same torch threads on the same device (`--device`: the model is
placed there before either system gets it); one warm-up question is not timed.
Reported: items/s, seconds, and how many per-item predictions agree, with the largest log-likelihood gap.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lmlab.core.bench.machine import cpu_count, machine, version
from lmlab.core.bench.report import emit, make_report, print_results, ran, ratio
from lmlab.core.bench.systems import System, device_settings, parse_systems, run_systems, systems_option
from lmlab.core.bench.worker import clock, worker_device
from lmlab.core.commands import options as o
from lmlab.core.commands.devices import DeviceOpt

SYSTEMS = {"lmlab": System(), "lm-eval": System(requires="lm_eval", install="pip install 'lmlab[lm-eval]'")}
SystemsOpt = systems_option(SYSTEMS)
WORKER = "lmlab.plugins.click.bench:run_system"
TARGETS = {"items_per_s_lmlab_vs_lm-eval": (">=", 1.5)}


def bench_click(
    model: Annotated[str, typer.Option("--model", "-m", help="Model alias, local HF folder, or Hub id.")] = (
        "smollm2-135m"),
    data: Annotated[str | None, typer.Option("--data", "-d", help="CLIcK in the official layout (default: the "
                    "bundled examples).", show_default=False)] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Items, round-robin across categories "
                     "(default: all).", show_default=False)] = None,
    lm_eval_batch_size: Annotated[int, typer.Option("--lm-eval-batch-size", min=1, help="lm-evaluation-harness "
                                  "batch size (its default is 1).")] = 1,
    systems: SystemsOpt = ",".join(SYSTEMS),
    json_output: o.JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """CLIcK multiple-choice scoring: items/s and per-item predictions vs lm-evaluation-harness."""
    from lmlab.core.files.paths import example

    threads = cpu_count()
    settings = {"model": model, "data": data or str(example("eval/click")), "limit": limit,
                "lm_eval_batch_size": lm_eval_batch_size, **device_settings(device), "threads": threads}
    results = run_systems("click", SYSTEMS, parse_systems(systems, SYSTEMS), WORKER, settings, threads=threads,
                          detail=f"{limit or 'all'} items, {threads} threads, {settings['device']}")
    ours, theirs = results.get("lmlab"), results.get("lm-eval")
    if ran(ours) and ran(theirs):
        agree = sum(a == b for a, b in zip(ours["predictions"], theirs["predictions"], strict=True))
        gap = max(abs(x - y) for a, b in zip(ours["loglik"], theirs["loglik"], strict=True)
                  for x, y in zip(a, b, strict=True))
        settings.update(predictions_agree=f"{agree}/{len(ours['predictions'])}", max_loglik_gap=gap)
    for result in results.values():
        result.pop("loglik", None)
        result.pop("predictions", None)
    ratios = {"items_per_s_lmlab_vs_lm-eval": ratio((ours or {}).get("items_per_s"),
                                                    (theirs or {}).get("items_per_s"))}
    report = make_report("click", machine(threads, ("torch", "transformers", "lm_eval")), settings, results,
                         ratios)
    emit(report, json_output, _print_table)


def _print_table(report: dict[str, Any]) -> None:
    settings = report["settings"]
    lines = [f"per-item predictions agree: {settings['predictions_agree']} (largest log-likelihood gap "
             f"{settings['max_loglik_gap']:.2e})"] if "predictions_agree" in settings else []
    print_results(report, f"bench click: multiple-choice scoring · {settings['device']}",
                  ("items", "seconds", "items/s", "version"),
                  lambda r: (str(r["items"]), f"{r['seconds']:.2f}", f"{r['items_per_s']:.3f}", r.get("version") or ""),
                  TARGETS, lines=lines)


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Worker: score the items with one system; returns timings, predictions and log-likelihoods."""
    from lmlab.core.commands.devices import place
    from lmlab.core.evaluation.backends import BackendOptions, ChoiceRequest
    from lmlab.core.evaluation.scoring import EvalSettings, limit_items
    from lmlab.core.models.loading import load_model
    from lmlab.plugins.click.data import load_click

    device = worker_device(settings)
    model, tokenizer = load_model(settings["model"])
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
