"""A pre-training run: corpus → tokenizer → memory-mapped tokens → GPT (any registered attention) on the shared
loop, with TEV / gradient-variance monitoring, validation perplexity, plots and a saved model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmlab.core.attention import AttentionConfig, architectures, attention_types, parse_key_values
from lmlab.core.console import log
from lmlab.core.errors import LmlabError
from lmlab.core.models import cache_dir, replace_dir
from lmlab.core.paths import example
from lmlab.core.runs import RunDir, new_run_path
from lmlab.core.schedules import check_schedule
from lmlab.core.training import TrainOptions, finish_run, make_accelerator, shared_run_path, train
from lmlab.plugins.pretrain.corpus import check_length, read_texts, resolve_tokenizer, tokenize_corpus
from lmlab.plugins.pretrain.model import GPTConfig
from lmlab.plugins.pretrain.task import PretrainTask

PLOTTED = ("loss", "val_loss", "tev_mean", "tev_std", "emb_grad_var", "grad_norm")


@dataclass
class PretrainOptions(TrainOptions):
    max_steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 20
    weight_decay: float = 0.1
    save_every: int = 100
    data: str | None = None
    text_field: str = "text"
    tokenizer: str | None = None
    vocab_size: int = 4096
    val_fraction: float = 0.1
    arch: str = "gpt"
    attn: str = "mha"
    attn_opt: list[str] = field(default_factory=list)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    tev_every: int = 1
    grad_var_every: int = 0
    eval_every: int = 50


def build_model(opts: PretrainOptions, vocab_size: int) -> tuple[Any, GPTConfig]:
    """The registered architecture with the registered attention, options validated by the attention."""
    attentions, archs = attention_types(), architectures()
    if opts.attn not in attentions:
        raise LmlabError(f"Unknown --attn '{opts.attn}'.", hint=f"registered: {', '.join(sorted(attentions))}")
    if opts.arch not in archs:
        raise LmlabError(f"Unknown --arch '{opts.arch}'.", hint=f"registered: {', '.join(sorted(archs))}")
    if opts.n_embd % opts.n_head:
        raise LmlabError(f"--n-embd {opts.n_embd} is not divisible by --n-head {opts.n_head}.",
                         hint="pick a width that is a multiple of the number of heads")
    spec = attentions[opts.attn]
    probe = AttentionConfig(opts.n_embd, opts.n_head, opts.n_layer, opts.block_size, opts.dropout)
    options = spec.parse_options(parse_key_values(opts.attn_opt, "--attn-opt"), probe)
    config = GPTConfig(vocab_size=vocab_size, block_size=opts.block_size, n_layer=opts.n_layer, n_head=opts.n_head,
                       n_embd=opts.n_embd, dropout=opts.dropout, attn=opts.attn, attn_options=options, arch=opts.arch)
    return archs[opts.arch].build(config, spec), config


def run_pretrain(opts: PretrainOptions) -> dict[str, Any]:
    check_schedule(opts.schedule)
    data = opts.data or str(example("pretrain/tinyshakespeare.txt"))
    accelerator = make_accelerator(opts.precision)
    run_path = shared_run_path(accelerator, Path(opts.resume) if opts.resume else
                               new_run_path(f"pretrain-{opts.attn}", opts.output_dir))
    texts = read_texts(data, text_field=opts.text_field)
    with accelerator.main_process_first():
        tokenizer = resolve_tokenizer(opts.tokenizer, [t for _, t in texts], opts.vocab_size,
                                      cache_dir() / "tokenizers")
        train_tokens, val_tokens, meta = tokenize_corpus([t for _, t in texts], tokenizer, cache_dir() / "tokens",
                                                         val_fraction=opts.val_fraction,
                                                         sources=[origin for origin, _ in texts])
    check_length(train_tokens, val_tokens, opts.block_size, data)
    log(f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens from {data} "
        f"({'reused' if meta['reused'] else 'tokenised'}; vocab {len(tokenizer):,})")
    import torch

    torch.manual_seed(opts.seed)
    model, config = build_model(opts, len(tokenizer))
    log(f"{opts.arch} · {opts.attn} · {opts.n_layer} layers × {opts.n_embd} · {model.num_params():,} parameters")
    run = RunDir(run_path, main=accelerator.is_main_process)
    if not opts.resume:
        run.write_config(f"pretrain-{opts.attn}", {**asdict(opts), "data": data})
    task = PretrainTask(train_tokens, val_tokens, block_size=opts.block_size, seed=opts.seed,
                        tev_every=opts.tev_every, grad_var_every=opts.grad_var_every, eval_every=opts.eval_every,
                        batch_size=opts.batch_size)
    cfg = opts.train_config(adam_beta2=0.95)
    result = train(model, task, cfg, run, accelerator, resume=opts.resume is not None)
    trained = result["model"]
    final_eval = task.evaluate(trained)
    summary = {"command": "pretrain", "run_dir": str(run.path), "model_dir": str(run.path / "model"),
               "arch": opts.arch, "attn": opts.attn, "attn_options": config.attn_options,
               "parameters": trained.num_params(), "steps": result["steps"],
               "train_seconds": result["train_seconds"], "tokens_per_s": _tokens_per_s(result, opts),
               **final_eval, "final": {k: v for k, v in result["last"].items() if k != "step"}}

    def write(tmp: Path) -> None:
        trained.save(tmp)
        tokenizer.save_pretrained(tmp)

    return finish_run(run, accelerator, summary, lambda: replace_dir(run.path / "model", write), PLOTTED,
                      "training.png", f"pretrain · {opts.attn}")


def _tokens_per_s(result: dict[str, Any], opts: PretrainOptions) -> float | None:
    rate = result["examples_per_s"]
    return round(rate * opts.block_size, 1) if rate else None
