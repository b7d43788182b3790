"""Pre-training's trainer: corpus → tokenizer → mmap tokens (training.text_corpus) → any registered architecture
with any registered attention (core.models.architectures) on the shared skeleton, with TEV / gradient-variance
monitoring, validation perplexity, plots and a saved model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.core.kernel.console import log
from lmlab.core.models.architectures import build_model, check_model_choice
from lmlab.core.models.loading import cache_dir, replace_dir
from lmlab.core.training.text_corpus import check_length, read_texts, resolve_tokenizer, tokenize_corpus
from lmlab.core.training.trainer import Trainer
from lmlab.plugins.pretrain.options import PretrainOptions
from lmlab.plugins.pretrain.task import PretrainTask


class PretrainTrainer(Trainer):
    command = "pretrain"
    plotted = ("loss", "val_loss", "tev_mean", "tev_std", "emb_grad_var", "grad_norm")
    plot_name = "training.png"
    default_data = "pretrain/tinyshakespeare.txt"
    opts: PretrainOptions

    def run_name(self) -> str:
        arch = "" if self.opts.arch == "gpt" else f"{self.opts.arch}-"
        return f"pretrain-{arch}{self.opts.attn}"

    def _shape(self) -> dict[str, Any]:
        opts = self.opts
        return {"block_size": opts.block_size, "n_layer": opts.n_layer, "n_head": opts.n_head, "n_embd": opts.n_embd,
                "dropout": opts.dropout, "attn_opt": opts.attn_opt, "arch_opt": opts.arch_opt}

    def check(self) -> None:
        super().check()
        check_model_choice(self.opts.arch, self.opts.attn, **self._shape())  # before the corpus is tokenised

    def setup(self, accelerator: Any) -> tuple[Any, PretrainTask]:
        import torch

        opts = self.opts
        texts = read_texts(self.data, text_field=opts.text_field)
        with accelerator.main_process_first():
            self.tokenizer = resolve_tokenizer(opts.tokenizer, [t for _, t in texts], opts.vocab_size,
                                               cache_dir() / "tokenizers")
            train_tokens, val_tokens, meta = tokenize_corpus(
                [t for _, t in texts], self.tokenizer, cache_dir() / "tokens", val_fraction=opts.val_fraction,
                sources=[origin for origin, _ in texts])
        check_length(train_tokens, val_tokens, opts.block_size, self.data)
        log(f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens from {self.data} "
            f"({'reused' if meta['reused'] else 'tokenised'}; vocab {len(self.tokenizer):,})")
        torch.manual_seed(opts.seed)
        model, self.config = build_model(opts.arch, opts.attn, vocab_size=len(self.tokenizer), **self._shape())
        log(f"{opts.arch} · {opts.attn} · {opts.n_layer} layers × {opts.n_embd} · {model.num_params():,} parameters")
        self.task = PretrainTask(train_tokens, val_tokens, block_size=opts.block_size, seed=opts.seed,
                                 tev_every=opts.tev_every, grad_var_every=opts.grad_var_every,
                                 eval_every=opts.eval_every, batch_size=opts.batch_size,
                                 prepare=getattr(model, "prepare_batch", None))
        return model, self.task

    def train_config(self) -> Any:
        return self.opts.train_config(adam_beta2=0.95)

    def summarize(self, result: dict[str, Any], run: Any) -> dict[str, Any]:
        opts, trained = self.opts, result["model"]
        rate = result["examples_per_s"]
        return {"model_dir": str(run.path / "model"), "arch": opts.arch, "attn": opts.attn,
                "attn_options": self.config.attn_options, "arch_options": self.config.arch_options,
                "parameters": trained.num_params(), "tokens_per_s": round(rate * opts.block_size, 1) if rate else None,
                **self.task.evaluate(trained)}

    def save(self, result: dict[str, Any], run: Any, summary: dict[str, Any]) -> None:
        def write(tmp: Path) -> None:
            result["model"].save(tmp)
            self.tokenizer.save_pretrained(tmp)

        replace_dir(run.path / "model", write)

    def title(self) -> str:
        return f"pretrain · {self.opts.arch} · {self.opts.attn}"

    def notes(self, summary: dict[str, Any]) -> list[str]:
        return [f"try: lmlab generate {summary['model_dir']}"]
