"""ORPO's trainer: preference rows → tokenised pairs → OrpoTask on the shared skeleton → model/ (HF format)."""

from __future__ import annotations

from typing import Any

from lmlab.core.console import log
from lmlab.core.data import SkipLog, load_records
from lmlab.core.errors import DataError
from lmlab.core.extras import require
from lmlab.core.logprobs import TokenLogprobModel
from lmlab.core.models import load_model, save_model
from lmlab.core.trainer import Trainer
from lmlab.plugins.orpo.data import build_examples, check_bos_mode
from lmlab.plugins.orpo.options import OrpoOptions
from lmlab.plugins.orpo.task import OrpoTask


def _lora(model: Any, r: int, alpha: int) -> Any:
    peft = require("peft", "--lora", "lora")
    return peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear",
                                                      task_type="CAUSAL_LM"))


class OrpoTrainer(Trainer):
    command = "train-orpo"
    plotted = ("loss", "nll", "log_odds_ratio", "rewards/accuracies", "rewards/margins")
    default_data = "orpo/preferences.jsonl"
    opts: OrpoOptions

    def check(self) -> None:
        super().check()
        check_bos_mode(self.opts.bos)

    def setup(self, accelerator: Any) -> tuple[Any, OrpoTask]:
        opts = self.opts
        records = load_records(self.data, required=("chosen", "rejected"))
        with accelerator.main_process_first():
            lm, self.tokenizer = load_model(opts.model, seed=opts.seed, trust_remote_code=opts.trust_remote_code)
        self.skips = SkipLog()
        examples, self.cut = build_examples(records, self.tokenizer, max_length=opts.max_length,
                                            max_prompt_length=opts.max_prompt_length, skips=self.skips,
                                            bos=opts.bos)
        if self.skips.total:
            log(f"[yellow]{self.skips.summary()}[/yellow]")
        if not examples:
            raise DataError(f"no usable preference rows ({self.skips.summary() or 'the file has none'}).",
                            path=self.data, hint="each row needs a prompt and two different, non-empty responses")
        log(f"{len(examples)} preference pairs from {self.data} ({self.cut['responses_truncated']} with responses "
            f"truncated, {self.cut['prompts_truncated']} with prompts truncated, {self.skips.total} skipped)")
        self.pairs = len(examples)
        if opts.lora:
            lm = _lora(lm, opts.lora_r, opts.lora_alpha)
        task = OrpoTask(examples, pad_id=self.tokenizer.pad_token_id, beta=opts.beta, prompt_loss=opts.prompt_loss,
                        seed=opts.seed)
        return TokenLogprobModel(lm), task

    def summarize(self, result: dict[str, Any], run: Any) -> dict[str, Any]:
        return {"model_dir": str(run.path / "model"), "examples_per_s": result["examples_per_s"],
                "pairs": self.pairs, "skipped": self.skips.as_dict(), **self.cut}

    def save(self, result: dict[str, Any], run: Any, summary: dict[str, Any]) -> None:
        save_model(run.path / "model", result["model"].lm, self.tokenizer)

    def title(self) -> str:
        return f"ORPO · {self.opts.model}"
