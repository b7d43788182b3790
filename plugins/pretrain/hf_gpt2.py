"""The data and models of `lmlab bench pretrain`: the windows every system trains on, our GPT, and the `hf-gpt2` anchor
holding the same initial weights in a plain PyTorch loop (docs/benchmarks.md#pre-training-vs-hugging-face-gpt-2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.core.bench import worker as w
from lmlab.core.bench.machine import version
from lmlab.core.files.records import example
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.models.architectures import build_model
from lmlab.core.models.loading import cache_dir

#: Our Linear weights (out, in) that HF's Conv1D holds transposed (in, out).
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def prepare_windows(settings: dict[str, Any], n_steps: int) -> dict[str, Any]:
    """Tiny Shakespeare tokenised as `lmlab pretrain` does (both cached) and `n_steps` full batches of windows in
    PretrainTask's seeded order; sets the settings' vocabulary and data, returns what only the workers read."""
    from lmlab.core.training.text_corpus import check_length, read_texts, resolve_tokenizer, tokenize_corpus
    from lmlab.plugins.pretrain.train import PretrainTask

    corpus, batch_size = example("pretrain/tinyshakespeare.txt"), settings["batch_size"]
    texts = read_texts(str(corpus))
    tokenizer = resolve_tokenizer(None, [t for _, t in texts], settings["vocab_size"], cache_dir() / "tokenizers")
    train_tokens, val_tokens, meta = tokenize_corpus([t for _, t in texts], tokenizer, cache_dir() / "tokens",
                                                     sources=[origin for origin, _ in texts])
    check_length(train_tokens, val_tokens, settings["block_size"], str(corpus))
    task = PretrainTask(train_tokens, val_tokens, block_size=settings["block_size"], seed=settings["seed"],
                        batch_size=batch_size)
    order: list[list[int]] = []
    epoch = 0
    while len(order) < n_steps:
        order += [b for b in task.batches(epoch, batch_size) if len(b) == batch_size]
        epoch += 1
    settings.update(vocab_size=len(tokenizer), data=f"examples/pretrain/tinyshakespeare.txt, {meta['train_tokens']:,} "
                    f"training tokens (byte-level BPE, {len(tokenizer):,} tokens); PretrainTask's seeded windows")
    return {"tokens_dir": meta["path"], "tokens_dtype": meta["dtype"], "train_tokens": meta["train_tokens"],
            "order": order[:n_steps]}


def windows_task(settings: dict[str, Any], tev_every: int) -> tuple[Any, list[dict[str, Any]], str]:
    """In a worker: PretrainTask over the tokens `prepare_windows` wrote (no evaluation), its batches, their sha256."""
    import numpy as np

    from lmlab.plugins.pretrain.train import PretrainTask

    tokens = np.memmap(Path(settings["tokens_dir"]) / "train.bin", dtype=settings["tokens_dtype"], mode="r",
                       shape=(settings["train_tokens"],))
    task = PretrainTask(tokens, tokens, block_size=settings["block_size"], seed=settings["seed"], tev_every=tev_every,
                        eval_every=0, batch_size=settings["batch_size"])
    batches = [task.collate(indices) for indices in settings["order"]]
    return task, batches, w.tensors_sha256((f"{i}.{key}", batch[key]) for i, batch in enumerate(batches)
                                           for key in ("input_ids", "targets"))


def build_gpt(settings: dict[str, Any], attn: str) -> Any:
    """Our model exactly as `lmlab pretrain` builds it: seed, then the registered architecture and attention."""
    import torch

    torch.manual_seed(settings["seed"])
    model, _ = build_model("gpt", attn, vocab_size=settings["vocab_size"], block_size=settings["block_size"],
                           n_layer=settings["n_layer"], n_head=settings["n_head"], n_embd=settings["n_embd"],
                           dropout=0.0)
    return model


def attention_of(model: Any, attn: str) -> str:
    """What the report says of our model's attention: "mha", or MLRA's rank and factorised projections."""
    inner = model.transformer.h[0].attn
    return attn if attn == "mha" else f"mlra (rank {inner.rank}, targets {','.join(inner.low_rank) or '-'}" \
        f"{',o' if getattr(inner, 'o_a', None) is not None else ''})"


def model_flops_per_token(model: Any, settings: dict[str, Any]) -> int:
    """Training FLOPs per token (the report's settings["mfu"]): 6 per weight a token meets in a matmul (every
    matrix but the position table; the tied embedding once), plus 12·L·T·d for the attention scores and values."""
    matmul = sum(p.numel() for name, p in model.named_parameters() if p.ndim >= 2 and "wpe" not in name)
    return 6 * matmul + 12 * settings["n_layer"] * settings["block_size"] * settings["n_embd"]


def hf_twin(settings: dict[str, Any]) -> tuple[Any, str]:
    """GPT2LMHeadModel of our size with its fastest attention ("sdpa", else "eager") and exact GELU, holding our
    MHA model's initial weights (HF's biases zero); returns it and the attention that ran."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=settings["vocab_size"], n_positions=settings["block_size"],
                        n_embd=settings["n_embd"], n_layer=settings["n_layer"], n_head=settings["n_head"],
                        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        layer_norm_epsilon=1e-5, use_cache=False, tie_word_embeddings=True, bos_token_id=None,
                        eos_token_id=None, loss_type="ForCausalLM")
    try:
        hf = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")
    except (ValueError, ImportError):
        hf = GPT2LMHeadModel._from_config(config, attn_implementation="eager")
    ours = build_gpt(settings, "mha").state_dict()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith(".bias"):
                param.zero_()
            elif name in ours:
                param.copy_(ours[name].t() if name.endswith(TRANSPOSED) else ours[name])
            else:
                raise LmlabError(f"HF GPT-2 parameter {name} has no counterpart in our GPT.",
                                 hint=f"transformers {version('transformers')} changed GPT2's layout; update "
                                      "plugins/pretrain/hf_gpt2.py")
    if hf.lm_head.weight is not hf.transformer.wte.weight:
        raise LmlabError("HF GPT-2's lm_head is not tied to its token embedding.", hint="a bug in the benchmark")
    return hf, hf.config._attn_implementation


def hf_loss(hf: Any, batch: dict[str, Any], bf16: bool) -> Any:
    """The twin's loss on our batch (bf16: under autocast): `shift_labels` are our targets, already the next tokens,
    so both models predict the same B × T tokens."""
    import torch

    with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=bf16):
        return hf(input_ids=batch["input_ids"], labels=batch["targets"], shift_labels=batch["targets"],
                  use_cache=False).loss


def run_twin(settings: dict[str, Any], batches: list[dict[str, Any]], device: Any, bf16: bool, *, lr: float,
             adam_beta1: float, adam_beta2: float, weight_decay: float, max_grad_norm: float) -> tuple[Any, ...]:
    """The `hf-gpt2` systems: our batches on the device before the timed region, the twin's first loss, then a plain
    PyTorch loop (forward with labels, backward, clip, torch's default AdamW step, zero_grad) for `bench.run_system`."""
    import torch

    from lmlab.core.training.loop import param_groups

    batches = [{key: value.to(device) for key, value in batch.items()} for batch in batches]
    hf, attention = hf_twin(settings)
    hf.to(device).train()
    first, start = w.first_loss(lambda: hf_loss(hf, batches[0], bf16), device)
    optimizer = torch.optim.AdamW(param_groups(hf, weight_decay), lr=lr, betas=(adam_beta1, adam_beta2))
    params, times, losses = [p for p in hf.parameters() if p.requires_grad], [], []
    for batch in batches:
        tick = w.clock(device)
        loss = hf_loss(hf, batch, bf16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(w.clock(device) - tick)
        losses.append(loss.detach())
    return hf, f"GPT2 {attention}", first, start, times, float(losses[-1]), w.read_peak(device), {}
