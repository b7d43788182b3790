"""`lmlab pretrain`: TEV, the task (next-token windows, validation perplexity) and the trainer for any registered
architecture and attention (docs/methods.md#stable-pre-training-and-tev), and its part of `lmlab demo`."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from lmlab.core.commands.devices import model_device
from lmlab.core.kernel.console import err, log
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.models.architectures import build_model, check_model_choice
from lmlab.core.models.loading import cache_dir, replace_dir
from lmlab.core.serving.generation import generate_text
from lmlab.core.training.report import plot_runs
from lmlab.core.training.text_corpus import TokenWindows, check_length, read_texts, resolve_tokenizer, tokenize_corpus
from lmlab.core.training.trainer import Trainer
from lmlab.plugins.pretrain.options import PretrainOptions


def _value(statistic: Tensor) -> float:
    """A 0-d statistic as a float. Under FSDP2 it is a DTensor over this process's rows: reduced over every process
    first (collective; its `.item()` would read this process's partial value)."""
    return (statistic.full_tensor() if isinstance(statistic, DTensor) else statistic).item()


@torch.no_grad()
def tev(embedding: Tensor) -> dict[str, float]:
    """TEV (Chung et al. 2024) of an embedding matrix E [|V|, d], one pass over E: μ_TEV = mean_i TEV_i and
    σ_TEV = std_i TEV_i. Population stds (divide by d, resp. |V|): they describe the matrix, not a sample of it."""
    per_token = embedding.detach().float().std(dim=1, correction=0)  # TEV_i = std_j(E_ij)
    return {"tev_mean": _value(per_token.mean()), "tev_std": _value(per_token.std(correction=0))}


@torch.no_grad()
def embedding_grad_variance(grads: list[Tensor]) -> float:
    """What TEV proxies: the embedding gradient's sample variance across M ≥ 2 micro-batches, element mean."""
    if len(grads) < 2:
        raise LmlabError(f"gradient variance needs at least 2 micro-batches, got {len(grads)}.",
                         hint="measure it with a batch split into 2 or more micro-batches")
    mean = sum(g.float() for g in grads) / len(grads)
    return _value((sum((g.float() - mean).square() for g in grads) / (len(grads) - 1)).mean())


class PretrainTask:
    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, *, block_size: int, seed: int,
                 tev_every: int = 1, grad_var_every: int = 0, grad_var_batches: int = 4, eval_every: int = 0,
                 eval_batches: int = 8, batch_size: int = 8,
                 prepare: Callable[[dict[str, Tensor], torch.Generator | None], dict[str, Tensor]] | None = None
                 ) -> None:
        self.train, self.val = TokenWindows(train_tokens, block_size), TokenWindows(val_tokens, block_size)
        self.seed, self.batch_size = seed, batch_size
        self.tev_every, self.grad_var_every, self.grad_var_batches = tev_every, grad_var_every, grad_var_batches
        self.eval_every, self.eval_batches = eval_every, eval_batches
        self.prepare = prepare

    def _batch(self, windows: TokenWindows, indices: list[int], train: bool) -> dict[str, Tensor]:
        """Through the model's `prepare_batch(batch, generator)` if it has one: in training with a generator seeded by
        the window indices (a resumed run sees the same batches). Losses average over the targets that are not -1."""
        batch = windows.batch(indices)
        if self.prepare is None:
            return batch
        generator = torch.Generator().manual_seed(hash((self.seed, *indices)) & 0xFFFF_FFFF) if train else None
        return self.prepare(batch, generator)

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        return self.train.epoch_batches(epoch, global_batch, self.seed)

    def collate(self, indices: list[int]) -> dict[str, Tensor]:
        return self._batch(self.train, indices, train=True)

    def counts(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return {"tokens": float((batch["targets"] >= 0).sum())}

    def loss(self, model: torch.nn.Module, batch: dict[str, Tensor],
             totals: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
        _, loss_sum = model(batch["input_ids"], batch["targets"], reduction="sum", return_logits=False)
        return loss_sum / totals["tokens"], {}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean token loss and perplexity over evenly spaced validation windows."""
        picks = self.val.evenly_spaced(self.eval_batches * self.batch_size)
        device = model_device(model)
        was_training = model.training
        model.eval()
        summed, count = torch.zeros((), dtype=torch.float64, device=device), 0
        for start in range(0, len(picks), self.batch_size):
            batch = self._batch(self.val, picks[start:start + self.batch_size], train=False)
            _, loss_sum = model(batch["input_ids"].to(device), batch["targets"].to(device), reduction="sum")
            summed += loss_sum.detach()
            count += int((batch["targets"] >= 0).sum())  # CPU targets: no device read
        model.train(was_training)
        total = float(summed)  # the one read back from the device
        return {"val_loss": total / count, "val_ppl": math.exp(min(total / count, 50.0))}

    def grad_variance(self, model: torch.nn.Module, step: int, no_sync: Any) -> float:
        """`embedding_grad_variance` over random micro-batches, the same on every process (all report one figure)."""
        generator = torch.Generator().manual_seed(self.seed * 7919 + step)
        embedding = model.get_input_embeddings().weight
        device = embedding.device
        grads = []
        for _ in range(self.grad_var_batches):
            batch = self._batch(self.train, self.train.sample(self.batch_size, generator), train=True)
            if isinstance(embedding, DTensor):
                grads.append(self._sharded_grad(model, embedding, batch))
                continue
            with no_sync():
                _, loss = model(batch["input_ids"].to(device), batch["targets"].to(device))
                grad, = torch.autograd.grad(loss, embedding)  # not accumulated into .grad
            grads.append(grad.detach().float())
        return embedding_grad_variance(grads)

    @staticmethod
    def _sharded_grad(model: torch.nn.Module, embedding: DTensor, batch: dict[str, Tensor]) -> DTensor:
        """One micro-batch's embedding gradient under FSDP2, as this process's shard: autograd sees the gathered
        weight, not the sharded parameter, so a synced backward reduce-scatters the gradient into the shards'
        `.grad` (the mean over processes of the same micro-batch: its gradient), which is then taken and cleared.
        The loop calls `after_step` after `zero_grad`, so no training gradient is in `.grad` to disturb."""
        _, loss = model(batch["input_ids"].to(embedding.device), batch["targets"].to(embedding.device))
        loss.backward()
        grad = embedding.grad.detach().float().clone()
        model.zero_grad(set_to_none=True)
        return grad

    def after_step(self, model: torch.nn.Module, step: int, no_sync: Any) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.tev_every and step % self.tev_every == 0:
            metrics.update(tev(model.get_input_embeddings().weight))
        if self.grad_var_every and step % self.grad_var_every == 0:
            metrics["emb_grad_var"] = self.grad_variance(model, step, no_sync)
        if self.eval_every and step % self.eval_every == 0:
            metrics.update(self.evaluate(model))
        return metrics


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


def run_demo(output_dir: str, quick: bool) -> None:
    """MHA vs MLRA on Tiny Shakespeare: both runs' losses and TEV on one figure, a sample generated."""
    metrics: dict[str, Path] = {}
    steps = 60 if quick else 100  # --quick keeps the whole demo near a minute
    for attn in ("mha", "mlra"):
        summary = PretrainTrainer(PretrainOptions(attn=attn, output_dir=Path(output_dir) / f"pretrain-{attn}",
                                                  overwrite=True, max_steps=steps, eval_every=steps // 2)).run()
        final = summary["final"]
        err.print(f"{attn}: {summary['parameters']:,} params · val ppl {summary['val_ppl']:.1f} · "
                  f"TEV μ {final.get('tev_mean', float('nan')):.4f} σ {final.get('tev_std', float('nan')):.4f} · "
                  f"{summary['tokens_per_s']} tok/s → [bold]{summary['run_dir']}[/bold]")
        metrics[attn.upper()] = Path(summary["run_dir"]) / "metrics.jsonl"
    figure = Path(output_dir) / "pretrain-mha-vs-mlra.png"
    if plot_runs(metrics, ("val_loss", "loss", "tev_mean"), figure, "pre-training on Tiny Shakespeare: MHA vs MLRA"):
        err.print(f"MHA vs MLRA (validation loss, training loss, TEV): [bold]{figure}[/bold]")
    sample = generate_text(Path(summary["model_dir"]), "ROMEO:", max_new_tokens=40, temperature=0.8, top_k=50,
                           seed=0).text
    err.print(f"[dim]sample (mlra):[/dim] ROMEO:{sample}")
