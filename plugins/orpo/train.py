"""ORPO training run: data → examples → shared loop → run directory (called by `train-orpo` and the demo)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab.core.console import log
from lmlab.core.data import SkipLog, load_records
from lmlab.core.errors import DataError, LmlabError
from lmlab.core.logprobs import TokenLogprobModel
from lmlab.core.models import load_model, replace_dir
from lmlab.core.paths import example
from lmlab.core.runs import RunDir, new_run_path
from lmlab.core.schedules import check_schedule
from lmlab.core.training import TrainOptions, finish_run, make_accelerator, shared_run_path, train
from lmlab.plugins.orpo.data import build_examples
from lmlab.plugins.orpo.task import OrpoTask

PLOTTED = ("loss", "nll", "log_odds_ratio", "rewards/accuracies", "rewards/margins")


@dataclass
class OrpoOptions(TrainOptions):
    schedule: str = "inverse_sqrt"
    warmup_steps: int = 10
    model: str = "tiny-llama"
    data: str | None = None
    beta: float = 0.1
    prompt_loss: bool = True
    max_length: int = 512
    max_prompt_length: int | None = None
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    trust_remote_code: bool = False


def _lora(model: Any, r: int, alpha: int) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise LmlabError("--lora needs peft, which is not installed.", hint="pip install 'lmlab[lora]'") from exc
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def run_orpo(opts: OrpoOptions) -> dict[str, Any]:
    """Train with ORPO and write the run directory; returns the summary."""
    check_schedule(opts.schedule)
    data = opts.data or str(example("orpo/preferences.jsonl"))
    accelerator = make_accelerator(opts.precision)
    run_path = shared_run_path(accelerator, Path(opts.resume) if opts.resume else
                               new_run_path("train-orpo", opts.output_dir))
    records = load_records(data, required=("chosen", "rejected"))
    with accelerator.main_process_first():
        lm, tokenizer = load_model(opts.model, seed=opts.seed, trust_remote_code=opts.trust_remote_code)
    skips = SkipLog()
    examples, cut = build_examples(records, tokenizer, max_length=opts.max_length,
                                   max_prompt_length=opts.max_prompt_length, skips=skips)
    if skips.total:
        log(f"[yellow]{skips.summary()}[/yellow]")
    if not examples:
        raise DataError(f"no usable preference rows ({skips.summary() or 'the file has none'}).", path=data,
                        hint="each row needs a prompt and two different, non-empty responses")
    log(f"{len(examples)} preference pairs from {data} ({cut['responses_truncated']} with responses truncated, "
        f"{cut['prompts_truncated']} with prompts truncated, {skips.total} skipped)")
    if opts.lora:
        lm = _lora(lm, opts.lora_r, opts.lora_alpha)
    run = RunDir(run_path, main=accelerator.is_main_process)
    if not opts.resume:
        run.write_config("train-orpo", {**asdict(opts), "data": data})
    cfg = opts.train_config()
    task = OrpoTask(examples, pad_id=tokenizer.pad_token_id, beta=opts.beta, prompt_loss=opts.prompt_loss,
                    seed=opts.seed)
    result = train(TokenLogprobModel(lm), task, cfg, run, accelerator, resume=opts.resume is not None)
    model_dir = run.path / "model"
    summary = {"command": "train-orpo", "run_dir": str(run.path), "model_dir": str(model_dir),
               "steps": result["steps"], "train_seconds": result["train_seconds"],
               "examples_per_s": result["examples_per_s"], "pairs": len(examples), "skipped": skips.as_dict(),
               **cut, "final": {k: v for k, v in result["last"].items() if k not in ("step",)}}
    lm_trained = result["model"].lm

    def write(tmp: Path) -> None:
        lm_trained.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return finish_run(run, accelerator, summary, lambda: replace_dir(model_dir, write), PLOTTED, "loss.png",
                      f"ORPO · {opts.model}")
