"""`lmlab bench orpo`: our ORPO training step against TRL's `ORPOTrainer` on the same model, rows and batches
(docs/benchmarks.md#orpo-vs-trl says what is compared and how each figure is read)."""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from lmlab.core.bench import worker as w
from lmlab.core.bench.benchmark import Benchmark, BenchOptions, Column, Ratio, System, bench_command
from lmlab.core.bench.machine import version
from lmlab.core.commands import options as o
from lmlab.plugins.orpo.synthetic import data_stats, examples_of, synthetic_rows, token_hash

WARMUP_STEPS, BETA, LR, MAX_GRAD_NORM = 1, 0.1, 5e-6, 1.0


@dataclass
class OrpoBenchOptions(BenchOptions):
    model: str = o.option("tiny-llama", "Model alias, local HF folder, or Hub id.", flags=("--model", "-m"))
    batch_size: int = o.option(8, "Preference pairs per step.", min=1)
    max_length: int = o.option(512, "Longest prompt + response, in tokens; rows are built to fit, so neither "
                               "system truncates.", min=64)
    max_steps: int = o.option(6, f"Timed optimizer steps (after {WARMUP_STEPS} untimed warm-up step).", min=1,
                              deprecated=("--steps",))
    rows: int = o.option(64, "Synthetic preference rows to build.", min=1)


def _settings(opts: OrpoBenchOptions) -> dict[str, Any]:
    return {"model": opts.model, "batch_size": opts.batch_size, "max_length": opts.max_length,
            "timed_steps": opts.max_steps, "warmup_steps": WARMUP_STEPS, "rows": opts.rows, "seed": opts.seed,
            "beta": BETA, "lr": LR, "schedule": "constant", "max_grad_norm": MAX_GRAD_NORM, "dtype": "float32",
            "gradient_checkpointing": False, "fine_tuning": "full", "prompt_in_nll": True,
            "batches": "identical seeded random batches for every system",
            "memory_ratio_uses": "peak memory increase over the memory in use after model and data are loaded"}


def _lines(report: dict[str, Any]) -> list[str]:
    s, trl = report["settings"], report["results"].get("trl", {})
    lines = [f"first-batch loss |lmlab − trl|: {trl['loss_abs_diff_vs_lmlab']:.2e} (same token ids: "
             f"{trl['same_tokens_as_lmlab']}, same initial weights: {trl['same_init_as_lmlab']})"] \
        if "loss_abs_diff_vs_lmlab" in trl else []
    return [*lines, f"[dim]memory ({s['memory_source']}) ratio: peak increase over the memory in use after model "
                    "and data are loaded[/dim]"]


BENCHMARK = Benchmark(
    name="orpo", doc="ORPO training speed, memory and loss: lmlab vs TRL's ORPOTrainer on the same model, data and "
    "batches.", options=OrpoBenchOptions,
    systems={"lmlab": System(), "trl": System("trl", "pip install trl", lambda: None if (
        files("trl") / "experimental" / "orpo").is_dir() else "no trl.experimental.orpo (pip install 'trl>=0.25')")},
    worker="lmlab.plugins.orpo.bench:run_system", settings=_settings, lines=_lines, hoisted=["data"],
    same_as=("lmlab", {"tokens_sha256": "same_tokens_as_lmlab", "init_sha256": "same_init_as_lmlab"},
             {"loss_first_batch": "loss_abs_diff_vs_lmlab"}),
    title=lambda s: f"ORPO vs TRL · {s['model']} · batch {s['batch_size']} · max length {s['max_length']} · "
                    f"{s['timed_steps']} timed steps · {s['threads']} threads · fp32 {s['device']}",
    detail=lambda s: f"{WARMUP_STEPS} warm-up + {s['timed_steps']} timed steps, batch {s['batch_size']}, max length "
                     f"{s['max_length']}",
    columns=[Column("examples/s", "examples_per_s"), Column("peak memory MB", "peak_memory_mb", "{:.0f}"),
             Column("peak memory increase MB", "peak_memory_increase_mb", "{:.0f}"),
             Column("loss (first batch)", "loss_first_batch", "{:.6f}")],
    ratios=[Ratio("examples_per_s_lmlab_vs_trl", "lmlab", "trl", "examples_per_s", target=(">=", 1.5)),
            Ratio("peak_mem_increase_lmlab_vs_trl", "lmlab", "trl", "peak_memory_increase_mb", target=("<=", 0.5)),
            Ratio("peak_memory_lmlab_vs_trl", "lmlab", "trl", "peak_memory_mb")])
bench_orpo = bench_command(BENCHMARK)


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Worker: load the model and the rows, check the first batch's loss, then train and time."""
    import torch

    from lmlab.core.models.loading import load_model

    device = w.worker_setup(settings)
    lm, tokenizer = load_model(settings["model"], seed=settings["seed"])
    lm.to(device)  # both systems measure their memory from the model on the device
    rows = synthetic_rows(tokenizer, settings["rows"], settings["max_length"], settings["seed"])
    examples = examples_of(rows, tokenizer, settings["max_length"])
    order = w.seeded_batches(len(rows), settings["batch_size"], WARMUP_STEPS + settings["timed_steps"],
                           settings["seed"])
    init_sha = w.tensors_sha256(sorted(lm.state_dict().items()))
    run = _run_lmlab if system == "lmlab" else _run_trl
    name, loss, tokens, after_load, peak, times, final = run(lm, tokenizer, rows, examples, order, settings, device)
    times = times[WARMUP_STEPS:]
    return {"examples_per_s": round(statistics.median(settings["batch_size"] / t for t in times), 4),
            "step_times_s": [round(t, 4) for t in times], "version": version(name), "loss_first_batch": float(loss),
            "tokens_sha256": token_hash(tokens), "init_sha256": init_sha, **w.memory_figures(after_load, peak),
            "final_loss": final, "data": data_stats(examples, order, settings["max_length"], WARMUP_STEPS),
            "torch_threads": torch.get_num_threads()}


def _run_lmlab(lm: Any, tokenizer: Any, rows: list[dict[str, str]], examples: list[Any],
               order: list[list[int]], settings: dict[str, Any], device: Any) -> tuple[Any, ...]:
    import torch

    from lmlab.core.training.logprobs import TokenLogprobModel
    from lmlab.plugins.orpo.task import OrpoTask

    task = OrpoTask(examples, pad_id=tokenizer.pad_token_id, beta=BETA, prompt_loss=True, seed=settings["seed"])
    model = TokenLogprobModel(lm)
    tokens = [(examples[i].prompt + examples[i].chosen, examples[i].prompt + examples[i].rejected,
               len(examples[i].prompt)) for batch in order for i in batch]
    after_load = w.memory_mb(device)
    with torch.no_grad():
        batch = {key: value.to(device) for key, value in task.collate(order[0]).items()}
        loss, _ = task.loss(model, batch, task.counts(batch))
    records, peak = w.replay_steps(model, task, order, device, lr=LR, batch_size=settings["batch_size"],
                                   max_grad_norm=MAX_GRAD_NORM, seed=settings["seed"])
    return "lmlab", loss, tokens, after_load, peak, [r["step_time"] for r in records], records[-1]["loss"]


def _run_trl(lm: Any, tokenizer: Any, rows: list[dict[str, str]], examples: list[Any],
             order: list[list[int]], settings: dict[str, Any], device: Any) -> tuple[Any, ...]:
    import torch
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    timer = w.trainer_step_timer(device, len(order))
    dataset = Dataset.from_list([rows[i] for batch in order for i in batch])
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-trl-") as tmp:
        config = ORPOConfig(
            output_dir=tmp, per_device_train_batch_size=settings["batch_size"], gradient_accumulation_steps=1,
            max_length=settings["max_length"], beta=BETA, learning_rate=LR, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=MAX_GRAD_NORM, max_steps=len(order),
            gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=device.type == "cpu",
            train_sampling_strategy="sequential", dataloader_num_workers=0, remove_unused_columns=False,
            logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=settings["seed"])
        trainer = ORPOTrainer(model=lm, args=config, train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[timer])
        # TRL's own tokenisation of the rows, in step order, hashed like ours so the report can compare them.
        tokens = [(item["chosen_input_ids"], item["rejected_input_ids"],
                   sum(1 for label in item["chosen_labels"] if label == -100)) for item in trainer.train_dataset]
        after_load = w.memory_mb(device)
        with torch.no_grad():
            batch = trainer.data_collator([trainer.train_dataset[i] for i in range(settings["batch_size"])])
            loss, _ = trainer.get_batch_loss_metrics(trainer.model, batch)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return "trl", loss, tokens, after_load, timer.peak_mb, timer.times, losses[-1] if losses else None
