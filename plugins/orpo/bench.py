"""`lmlab bench orpo`: our ORPO training against TRL's `ORPOTrainer`, side by side, in one run.

What is compared (docs/benchmarks.md): the same model (same alias, same init seed), the
same synthetic preference rows, the same batches in the same order (a seeded random order, so both systems
see exactly the same padding; lmlab's length-grouped batching, which would cut padding further, is not
credited here), the same per-device batch size, max length, λ, lr, clipping and schedule (constant), full
fine-tuning in float32 on the same device (`--device`: TRL's `use_cpu` follows it, lmlab's loop is pinned to it
and runs `--precision fp32`, never auto's bf16) with the same number of torch threads. TRL's own defaults that
would change the workload are switched off: gradient checkpointing (ORPOConfig turns it on by default) and bf16.

Each system runs in its own subprocess so that its peak memory is its own. Per system we report:
- examples/s: the median over the timed steps of batch_size / step time (one warm-up step is not timed).
  lmlab's step time is the shared loop's own (collation + forward/backward + clip + optimizer step); TRL's is
  from a TrainerCallback between on_step_begin and on_step_end (its collation happens before on_step_begin,
  so TRL is not charged for it).
- peak memory (settings["memory_source"]: the peak RSS, VmHWM via `core.bench.memory.peak_rss_mb`, on the CPU; CUDA's
  `max_memory_allocated` on a GPU) and its increase over the memory in use right after the model (on the
  device) and the data are loaded. The memory ratio uses the increase: it is what training itself costs
  (activations, logits, gradients, optimizer state), without the import and model footprint both systems share.
- the loss of the first batch on the freshly initialised model, before any step. The rows are built so that
  both systems see identical token ids (a BOS token written into the prompt, so TRL does not add one that
  our tokenisation would not; the prompt ends in a newline, so tokenising prompt + response jointly, as TRL
  does, splits where tokenising them apart does; EOS appended by both), and each side hashes its token
  sequences so the report can say they are the same. The two objectives are then the same function: NLL =
  token mean over the whole chosen sequence (prompt included, padding excluded), log p = mean over response
  tokens, odds-ratio term averaged over pairs. What remains is float32 rounding: a different summation order
  (our chunked logsumexp and per-sequence index_add vs TRL's full log_softmax and masked sums), of the order
  of 1e-6.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
from typing import Annotated, Any

import typer

from lmlab.core.bench.machine import cpu_count, machine, version
from lmlab.core.bench.replay import replay_training
from lmlab.core.bench.report import emit, make_report, print_results, ran, ratio
from lmlab.core.bench.systems import System, device_settings, parse_systems, run_systems, systems_option
from lmlab.core.bench.worker import clock, memory_mb, read_peak, tensors_sha256, worker_device
from lmlab.core.commands import options as o
from lmlab.core.commands.devices import DeviceOpt
from lmlab.core.kernel.errors import LmlabError

SYSTEMS = {"lmlab": System(), "trl": System(requires="trl", install="pip install trl")}
SystemsOpt = systems_option(SYSTEMS)
WARMUP_STEPS = 1
BETA = 0.1
LR = 5e-6
MAX_GRAD_NORM = 1.0
SHORTEST = 128  # shortest full sequence (prompt + longer response) in tokens, when --max-length allows
WORKER = "lmlab.plugins.orpo.bench:run_system"  # what each worker subprocess runs (core.bench.worker)
TARGETS = {"examples_per_s_lmlab_vs_trl": (">=", 1.5), "peak_mem_increase_lmlab_vs_trl": ("<=", 0.5)}


def bench_orpo(
    model: Annotated[str, typer.Option("--model", "-m", help="Model alias, local HF folder, or Hub id.")] = (
        "tiny-llama"),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Preference pairs per step.")] = 8,
    max_length: Annotated[int, typer.Option("--max-length", min=64, help="Longest prompt + response, in "
                          "tokens; rows are built to fit, so neither system truncates.")] = 512,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed optimizer steps (after 1 untimed warm-up "
                     "step).")] = 6,
    rows: Annotated[int, typer.Option("--rows", min=1, help="Synthetic preference rows to build.")] = 64,
    systems: SystemsOpt = ",".join(SYSTEMS),
    json_output: o.JsonOpt = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the model init, the rows and the batch "
                    "order.")] = 42,
    device: DeviceOpt = "auto",
) -> None:
    """ORPO training speed, memory and loss: lmlab vs TRL's ORPOTrainer on the same model, data and batches."""
    chosen = parse_systems(systems, SYSTEMS)
    where = device_settings(device)
    threads = cpu_count()
    settings: dict[str, Any] = {
        "model": model, "batch_size": batch_size, "max_length": max_length, "timed_steps": steps,
        "warmup_steps": WARMUP_STEPS, "rows": rows, "seed": seed, "beta": BETA, "lr": LR, "schedule": "constant",
        "max_grad_norm": MAX_GRAD_NORM, "dtype": "float32", **where, "threads": threads,
        "gradient_checkpointing": False, "fine_tuning": "full", "prompt_in_nll": True,
        "batches": "identical seeded random batches for every system",
        "memory_ratio_uses": "peak memory increase over the memory in use after model and data are loaded",
    }
    results = run_systems("orpo", SYSTEMS, chosen, WORKER, settings, threads=threads,
                          detail=f"{WARMUP_STEPS} warm-up + {steps} timed steps, batch {batch_size}, max length "
                                 f"{max_length}, {threads} threads, {where['device']}")
    measured = [r for r in results.values() if "data" in r]
    if measured:
        settings["data"] = measured[0].pop("data")
        for result in measured[1:]:
            result.pop("data")
    _compare_losses(results)
    report = make_report("orpo", machine(threads), settings, results, _ratios(results))
    emit(report, json_output, _print_table)


# ---------------------------------------------------------------------------------------------------------
# Parent side: run the workers, compare, report.


def _compare_losses(results: dict[str, dict[str, Any]]) -> None:
    ours, trl = results.get("lmlab"), results.get("trl")
    if not ran(ours) or not ran(trl):
        return
    trl["same_tokens_as_lmlab"] = ours["tokens_sha256"] == trl["tokens_sha256"]
    trl["same_init_as_lmlab"] = ours["init_sha256"] == trl["init_sha256"]
    trl["loss_abs_diff_vs_lmlab"] = abs(ours["loss_first_batch"] - trl["loss_first_batch"])


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    ours, trl = results.get("lmlab"), results.get("trl")
    if not ran(ours) or not ran(trl):
        return {}
    return {"examples_per_s_lmlab_vs_trl": ratio(ours["examples_per_s"], trl["examples_per_s"]),
            "peak_mem_increase_lmlab_vs_trl": ratio(ours["peak_memory_increase_mb"], trl["peak_memory_increase_mb"]),
            "peak_memory_lmlab_vs_trl": ratio(ours["peak_memory_mb"], trl["peak_memory_mb"])}


def _print_table(report: dict[str, Any]) -> None:
    s, trl = report["settings"], report["results"].get("trl", {})
    lines = [f"first-batch loss |lmlab − trl|: {trl['loss_abs_diff_vs_lmlab']:.2e} (same token ids: "
             f"{trl['same_tokens_as_lmlab']}, same initial weights: {trl['same_init_as_lmlab']})"] \
        if "loss_abs_diff_vs_lmlab" in trl else []
    lines.append(f"[dim]memory ({s['memory_source']}) ratio: peak increase over the memory in use after model and "
                 "data are loaded[/dim]")
    print_results(report, f"ORPO vs TRL · {s['model']} · batch {s['batch_size']} · max length {s['max_length']} · "
                          f"{s['timed_steps']} timed steps · {s['threads']} threads · fp32 {s['device']}",
                  ("examples/s", "peak memory MB", "peak memory increase MB", "loss (first batch)"),
                  lambda r: (f"{r['examples_per_s']:.3f}", f"{r['peak_memory_mb']:.0f}",
                             f"{r['peak_memory_increase_mb']:.0f}", f"{r['loss_first_batch']:.6f}"),
                  TARGETS, lines=lines)


# ---------------------------------------------------------------------------------------------------------
# Worker side: one system in its own process.


def run_system(system: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Load the model and the rows, check the first batch's loss, then train and time; returns the figures."""
    import torch

    from lmlab.core.kernel.console import set_quiet
    from lmlab.core.models.loading import load_model

    set_quiet(True)
    torch.set_num_threads(settings["threads"])
    device = worker_device(settings)
    lm, tokenizer = load_model(settings["model"], seed=settings["seed"])
    lm.to(device)  # both systems measure their memory from the model on the device
    rows = synthetic_rows(tokenizer, settings["rows"], settings["max_length"], settings["seed"])
    examples = _examples(rows, tokenizer, settings["max_length"])
    order = step_batches(len(rows), settings["batch_size"], WARMUP_STEPS + settings["timed_steps"],
                         settings["seed"])
    run = _run_lmlab if system == "lmlab" else _run_trl
    result = run(lm, tokenizer, rows, examples, order, settings, device)
    times = result.pop("step_times")[WARMUP_STEPS:]
    per_step = [settings["batch_size"] / t for t in times]
    return {
        "examples_per_s": round(statistics.median(per_step), 4),
        "step_times_s": [round(t, 4) for t in times],
        **result,
        "peak_memory_increase_mb": round(result["peak_memory_mb"] - result["memory_after_load_mb"], 1),
        "data": _data_stats(examples, order, settings["max_length"]),
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------------------
# Data: synthetic rows from the bundled preference text, identical for every worker.


def _word_pool() -> list[str]:
    from lmlab.core.files.paths import example

    words: list[str] = []
    for line in example("orpo/preferences.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            words += [w for field in ("prompt", "chosen", "rejected") if isinstance(row.get(field), str)
                      for w in row[field].split()]
    return words


def synthetic_rows(tokenizer: Any, n_rows: int, max_length: int, seed: int) -> list[dict[str, str]]:
    """Deterministic {prompt, chosen, rejected} rows whose full length (prompt + longer response + EOS) is
    spread uniformly over [min(128, max_length/2), max_length] tokens, the prompt taking 10-50% of it and
    the shorter response 30-100% of the longer one; never longer than max_length for either system."""
    words = _word_pool()
    sizes = [len(ids) for ids in tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]]
    rng = random.Random(seed)
    overhead = len(_prompt_ids(tokenizer, _prompt_text(tokenizer, "")))
    if overhead + 16 > max_length:
        raise LmlabError(f"--max-length {max_length} leaves no room for rows after the {overhead}-token prompt "
                         "template of this model.", hint="raise --max-length")

    def text(target: int) -> str:
        start, picked, total = rng.randrange(len(words)), [], 0
        while total + sizes[(start + len(picked)) % len(words)] <= max(target, 1) or not picked:
            total += sizes[(start + len(picked)) % len(words)]
            picked.append(words[(start + len(picked)) % len(words)])
        return " ".join(picked)

    rows = []
    for _ in range(n_rows):
        full = rng.randint(min(SHORTEST, max_length // 2), max_length)
        prompt_len = max(overhead + 4, round(full * rng.uniform(0.1, 0.5)))
        long_len = max(4, full - prompt_len - 1)  # -1: the EOS both systems append
        short_len = max(2, round(long_len * rng.uniform(0.3, 1.0)))
        prompt = _prompt_text(tokenizer, text(prompt_len - overhead))
        long_text, short_text = text(long_len), text(short_len)
        while len(_prompt_ids(tokenizer, prompt)) + _response_len(tokenizer, long_text) > max_length:
            long_text = long_text.rsplit(" ", 1)[0]  # the per-word estimate was short: drop words until it fits
        chosen_first = rng.random() < 0.5
        rows.append({"prompt": prompt, "chosen": long_text if chosen_first else short_text,
                     "rejected": short_text if chosen_first else long_text})
    return rows


def _prompt_text(tokenizer: Any, body: str) -> str:
    """The user turn in the model's chat template (plain text otherwise), ending in a newline, with the BOS
    token written in when the tokenizer would not add it: TRL always starts a prompt with BOS."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                               add_generation_prompt=True)
    else:
        prompt = f"Question: {body}\nAnswer:\n"
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer(prompt, add_special_tokens=True)["input_ids"][:1] != [bos]:
        prompt = tokenizer.bos_token + prompt
    return prompt


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def _response_len(tokenizer: Any, response: str) -> int:
    return len(tokenizer(response, add_special_tokens=False)["input_ids"]) + 1


def _examples(rows: list[dict[str, str]], tokenizer: Any, max_length: int) -> list[Any]:
    """Our tokenisation of the rows; none may be cut or skipped (then both systems see every token)."""
    from lmlab.core.files.records import Record, SkipLog
    from lmlab.plugins.orpo.data import build_examples

    skips = SkipLog()
    records = [Record(row, "<synthetic>", i + 1) for i, row in enumerate(rows)]
    examples, cut = build_examples(records, tokenizer, max_length=max_length, max_prompt_length=None, skips=skips)
    if skips.total or any(cut.values()):
        raise LmlabError(f"synthetic rows were cut or skipped ({cut}, {skips.summary()}).",
                         hint="this is a bug in the benchmark's row builder; try another --max-length")
    return examples


def step_batches(n_rows: int, batch_size: int, n_steps: int, seed: int) -> list[list[int]]:
    """The row indices of each step: seeded random batches, reshuffled after each pass over the rows."""
    rng = random.Random(seed + 1)
    stream: list[int] = []
    while len(stream) < n_steps * batch_size:
        order = list(range(n_rows))
        rng.shuffle(order)
        stream += order
    return [stream[i * batch_size:(i + 1) * batch_size] for i in range(n_steps)]


def _token_hash(sequences: list[tuple[list[int], list[int], int]]) -> str:
    """sha256 of (prompt + chosen, prompt + rejected, prompt length) token ids of every row, in step order."""
    import hashlib

    return hashlib.sha256(json.dumps(sequences).encode()).hexdigest()


def _data_stats(examples: list[Any], order: list[list[int]], max_length: int) -> dict[str, Any]:
    lengths = sorted(len(e.prompt) + max(len(e.chosen), len(e.rejected)) for e in examples)
    real = padded = 0
    for batch in order[WARMUP_STEPS:]:
        seqs = [len(examples[i].prompt) + len(r) for i in batch for r in (examples[i].chosen, examples[i].rejected)]
        real, padded = real + sum(seqs), padded + len(seqs) * max(seqs)
    return {"full_length_min": lengths[0], "full_length_median": lengths[len(lengths) // 2],
            "full_length_max": lengths[-1], "max_length": max_length, "truncated_rows": 0,
            "padding_fraction_timed_batches": round(1 - real / padded, 3)}


# ---------------------------------------------------------------------------------------------------------
# The two systems.


def _run_lmlab(lm: Any, tokenizer: Any, rows: list[dict[str, str]], examples: list[Any],
               order: list[list[int]], settings: dict[str, Any], device: Any) -> dict[str, Any]:
    import torch

    from lmlab.core.training.logprobs import TokenLogprobModel
    from lmlab.core.training.loop import TrainConfig, make_accelerator
    from lmlab.plugins.orpo.task import OrpoTask

    init_sha = tensors_sha256(sorted(lm.state_dict().items()))
    task = OrpoTask(examples, pad_id=tokenizer.pad_token_id, beta=BETA, prompt_loss=True,
                  seed=settings["seed"])
    model = TokenLogprobModel(lm)
    tokens = [(examples[i].prompt + examples[i].chosen, examples[i].prompt + examples[i].rejected,
               len(examples[i].prompt)) for batch in order for i in batch]
    after_load = memory_mb(device)
    with torch.no_grad():
        batch = {key: value.to(device) for key, value in task.collate(order[0]).items()}
        loss, _ = task.loss(model, batch, task.counts(batch))
    cfg = TrainConfig(max_steps=len(order) + 1, batch_size=settings["batch_size"], lr=LR, schedule="constant",
                      warmup_steps=0, max_grad_norm=MAX_GRAD_NORM, seed=settings["seed"], save_every=10**9)
    records, peak = replay_training(model, task, order, cfg, make_accelerator("fp32"),
                                    peak=lambda: read_peak(device))
    return {"version": version("lmlab"), "loss_first_batch": float(loss), "tokens_sha256": _token_hash(tokens),
            "init_sha256": init_sha, "memory_after_load_mb": round(after_load, 1),
            "peak_memory_mb": round(peak, 1), "step_times": [r["step_time"] for r in records],
            "final_loss": records[-1]["loss"]}


def _run_trl(lm: Any, tokenizer: Any, rows: list[dict[str, str]], examples: list[Any],
             order: list[list[int]], settings: dict[str, Any], device: Any) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    try:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    except ImportError as exc:
        raise LmlabError(f"trl {version('trl')} has no trl.experimental.orpo ({exc}).",
                         hint="install a trl with the experimental ORPO trainer, e.g. pip install 'trl>=0.25'") from exc

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.tick = 0.0
            self.peak_mb = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.tick = clock(device)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(clock(device) - self.tick)
            if len(self.times) == len(order):
                self.peak_mb = read_peak(device)

    init_sha = tensors_sha256(sorted(lm.state_dict().items()))
    timer = StepTimer()
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
        after_load = memory_mb(device)
        with torch.no_grad():
            batch = trainer.data_collator([trainer.train_dataset[i] for i in range(settings["batch_size"])])
            loss, _ = trainer.get_batch_loss_metrics(trainer.model, batch)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"version": version("trl"), "loss_first_batch": float(loss),
            "tokens_sha256": _token_hash(tokens),
            "init_sha256": init_sha, "memory_after_load_mb": round(after_load, 1),
            "peak_memory_mb": round(timer.peak_mb, 1), "step_times": timer.times,
            "final_loss": losses[-1] if losses else None}
