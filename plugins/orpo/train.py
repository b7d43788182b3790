"""ORPO's trainer: preference rows → tokenised pairs → OrpoTask on the shared skeleton → model/ (HF format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.core.files.records import Record, SkipLog, load_records
from lmlab.core.kernel.console import err, log
from lmlab.core.kernel.errors import DataError, LmlabError
from lmlab.core.models.loading import load_model, save_model
from lmlab.core.training.logprobs import TokenLogprobModel
from lmlab.core.training.trainer import Trainer
from lmlab.plugins.orpo.data import PreferenceExample, build_examples, check_bos_mode
from lmlab.plugins.orpo.model import check_4bit, load_4bit, trainable_model
from lmlab.plugins.orpo.options import OrpoOptions
from lmlab.plugins.orpo.task import EvaluatedOrpoTask, HeldOutPairs, OrpoTask


class OrpoTrainer(Trainer):
    command = "train-orpo"
    plotted = ("loss", "nll", "log_odds_ratio", "rewards/accuracies", "rewards/margins", "eval_loss",
               "eval_rewards/accuracies")
    default_data = "orpo/preferences.jsonl"
    opts: OrpoOptions

    def check(self) -> None:
        super().check()
        check_bos_mode(self.opts.bos)
        if self.opts.eval_every and self.opts.eval_data is None:
            raise LmlabError("--eval-every needs held-out pairs to score.",
                             hint="add --eval-data FILE (rows in the format of --data)")
        if self.opts.load_in_4bit:
            check_4bit()

    def _examples(self, records: list[Record], source: str,
                  what: str) -> tuple[list[PreferenceExample], SkipLog, dict[str, int]]:
        """Tokenised pairs from `records` (the training or the held-out rows), what was skipped and cut."""
        opts, skips = self.opts, SkipLog()
        examples, cut = build_examples(records, self.tokenizer, max_length=opts.max_length,
                                       max_prompt_length=opts.max_prompt_length, skips=skips, bos=opts.bos)
        if skips.total:
            log(f"[yellow]{skips.summary()}[/yellow]")
        if not examples:
            raise DataError(f"no usable preference rows ({skips.summary() or 'the file has none'}).",
                            path=source, hint="each row needs a prompt and two different, non-empty responses")
        log(f"{len(examples)} {what} from {source} ({cut['responses_truncated']} with responses truncated, "
            f"{cut['prompts_truncated']} with prompts truncated, {skips.total} skipped)")
        return examples, skips, cut

    def _load(self, accelerator: Any) -> tuple[Any, Any]:
        opts = self.opts
        with accelerator.main_process_first():
            if opts.load_in_4bit:
                return load_4bit(opts.model, seed=opts.seed, trust_remote_code=opts.trust_remote_code,
                                 device_index=accelerator.local_process_index)
            return load_model(opts.model, seed=opts.seed, trust_remote_code=opts.trust_remote_code)

    def setup(self, accelerator: Any) -> tuple[Any, OrpoTask]:
        opts = self.opts
        records = load_records(self.data, required=("chosen", "rejected"))
        eval_records = None if opts.eval_data is None else load_records(opts.eval_data, required=("chosen", "rejected"))
        lm, self.tokenizer = self._load(accelerator)
        examples, self.skips, self.cut = self._examples(records, self.data, "preference pairs")
        self.pairs = len(examples)
        lm = trainable_model(lm, lora=opts.lora, quantized=opts.load_in_4bit,
                             gradient_checkpointing=opts.gradient_checkpointing, r=opts.lora_r, alpha=opts.lora_alpha)
        settings = {"pad_id": self.tokenizer.pad_token_id, "beta": opts.beta, "prompt_loss": opts.prompt_loss,
                    "seed": opts.seed}
        self.held_out = None
        if eval_records is None:
            return TokenLogprobModel(lm), OrpoTask(examples, **settings)
        held_out = OrpoTask(self._examples(eval_records, opts.eval_data, "held-out pairs")[0], **settings)
        self.held_out = HeldOutPairs(held_out, batch_size=opts.batch_size, device=accelerator.device,
                                     world=accelerator.num_processes, rank=accelerator.process_index,
                                     reduce=lambda sums: accelerator.reduce(sums, reduction="sum"),
                                     autocast=accelerator.autocast)
        return TokenLogprobModel(lm), EvaluatedOrpoTask(examples, held_out=self.held_out, every=opts.eval_every,
                                                        last_step=opts.max_steps, **settings)

    def summarize(self, result: dict[str, Any], run: Any) -> dict[str, Any]:
        summary = {"model_dir": str(run.path / "model"), "examples_per_s": result["examples_per_s"],
                   "pairs": self.pairs, "skipped": self.skips.as_dict(), **self.cut}
        if self.held_out is not None and self.held_out.last:
            summary["eval"] = {"step": result["steps"], "pairs": len(self.held_out.task.examples), **self.held_out.last}
        return summary

    def save(self, result: dict[str, Any], run: Any, summary: dict[str, Any]) -> None:
        save_model(run.path / "model", result["model"].lm, self.tokenizer)

    def notes(self, summary: dict[str, Any]) -> list[str]:
        held_out = summary.get("eval")
        if not held_out:
            return []
        return [f"held-out ({held_out['pairs']} pairs, step {held_out['step']}): eval_loss {held_out['eval_loss']:.4f}"
                f" · reward accuracy {held_out['eval_rewards/accuracies']:.2f} · margin "
                f"{held_out['eval_rewards/margins']:.4f}"]

    def title(self) -> str:
        return f"ORPO · {self.opts.model}"


def run_demo(output_dir: str, model: str, **settings: Any) -> None:
    """One ORPO step of `lmlab demo`: `model` trained briefly on the bundled preferences, its figures printed."""
    summary = OrpoTrainer(OrpoOptions(model=model, output_dir=Path(output_dir) / f"orpo-{model}", overwrite=True,
                                      **settings)).run()
    final = summary["final"]
    err.print(f"{summary['steps']} steps · loss {final['loss']:.4f} · reward accuracy "
              f"{final['rewards/accuracies']:.2f} · margin {final['rewards/margins']:.4f} · "
              f"{summary['examples_per_s']} pairs/s → [bold]{summary['run_dir']}[/bold]")
