"""The Block Transformer (docs/methods.md#block-transformer): cached generation against the full forward, the token
decoder's locality, what the loss counts, the training batches, save/load."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.kernel.plugins import load_plugins
from lmlab.core.models.architectures import build_model, load_model_folder
from lmlab.core.serving.generation import PAD_ID, RunningBatch, Sampling, generate, generate_tokens
from lmlab.plugins.block.model import BlockTransformer
from tests.conftest import fit_one_batch

V = 50


def block(block_len: int = 4, attn: str = "mha", block_size: int = 32, n_layer: int = 4, **options: int
          ) -> BlockTransformer:
    load_plugins()
    torch.manual_seed(0)
    model, _ = build_model("block", attn, vocab_size=V, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=32,
                           arch_opt=[f"block_len={block_len}", *(f"{k}={v}" for k, v in options.items())])
    return model.double().eval()


def full_forward_greedy(model: BlockTransformer, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding by the uncached forward over the whole sequence, the prompt left-padded to a block."""
    seq = [PAD_ID] * ((-len(prompt)) % model.block_len) + prompt
    start = len(seq)
    for _ in range(steps):
        seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
    return seq[start:]


@pytest.mark.parametrize(("block_len", "attn"), [(1, "mha"), (2, "mha"), (4, "mha"), (8, "mha"), (4, "mlra")])
def test_cached_generation_equals_the_full_forward_for_prompts_of_different_lengths(block_len: int,
                                                                                     attn: str) -> None:
    model = block(block_len, attn, block_size=64)
    prompts = [[1, 2, 3, 4, 5], [7], [9, 8, 7, 6, 5, 4, 3, 2, 1, 11, 12], [3] * 16]
    budgets = [13, 3, 9, 6]  # sequences that finish leave the batch; the others go on unchanged
    done = generate_tokens(model, prompts, [Sampling(max_tokens=n, temperature=0) for n in budgets])
    assert [c.tokens for c in done] == [full_forward_greedy(model, p, n) for p, n in zip(prompts, budgets, strict=True)]
    assert all(c.finish_reason == "length" for c in done)


def test_the_local_cache_is_dropped_after_each_block_and_the_global_one_holds_a_block_per_entry() -> None:
    model = block(4, block_size=64)
    D, layers = 32, 2  # split 2 + 2 of 4 layers
    done = generate_tokens(model, [[1] * 8], Sampling(max_tokens=8, temperature=0))
    blocks = 8 // 4 + 1  # the prompt's 2 blocks, then one more block-decoder entry (the first generated block)
    local = 2 + 4 - 1  # prefix r + L_B - 1 at most
    assert done[0].kv_bytes == 2 * layers * D * 8 * (blocks + local)  # float64 keys and values


def test_generation_runs_past_the_context_and_is_reproducible() -> None:
    model = block(4, block_size=16)  # 4 blocks of context; 30 new tokens overflow it twice
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    out = generate(model, prompt, 30, temperature=0.9, top_k=10, seed=3)
    assert out.shape == (2, 33) and torch.equal(out, generate(model, prompt, 30, temperature=0.9, top_k=10, seed=3))
    assert not torch.equal(out, generate(model, prompt, 30, temperature=0.9, top_k=10, seed=4))


def test_the_token_decoder_sees_only_its_prefix_and_its_own_block() -> None:
    model = block(4)
    idx = torch.randint(1, V, (1, 32), generator=torch.Generator().manual_seed(0))
    h = torch.randn(1, 8, 32, dtype=torch.float64)
    model.block_decoder.register_forward_hook(lambda module, args, out: h)  # the same block-decoder output always
    logits = model(idx, idx)[0]
    other = idx.clone()
    other[0, :12] = torch.randint(1, V, (12,))  # blocks 0-2 change, block 3 (positions 12-15) does not
    other[0, 16:] = torch.randint(1, V, (16,))  # nor do blocks 4-7
    changed = model(other, other)[0]
    predicting_block_3 = slice(11, 15)  # positions 11-14 predict tokens 12-15
    assert torch.equal(logits[0, predicting_block_3], changed[0, predicting_block_3])
    assert not torch.allclose(logits[0, 15:19], changed[0, 15:19])  # block 4's tokens did change


def test_the_loss_never_predicts_block_0() -> None:
    model = block(4)
    idx = torch.randint(1, V, (2, 32), generator=torch.Generator().manual_seed(1))
    targets = torch.roll(idx, -1, dims=1)
    logits, loss = model(idx, targets)
    assert torch.equal(logits[:, :3], torch.zeros_like(logits[:, :3]))
    by_hand = torch.nn.functional.cross_entropy(logits[:, 3:].flatten(0, 1), targets[:, 3:].flatten())
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-12)
    other = targets.clone()
    other[:, :3] = (other[:, :3] + 1) % V  # block 0's own tokens as targets: never counted
    assert model(idx, other)[1].item() == loss.item()
    other[:, 3] = (other[:, 3] + 1) % V  # the first token of block 1 is
    assert model(idx, other)[1].item() != loss.item()
    per_token = model(idx, targets, reduction="none")[1]
    assert per_token.shape == (2, 32) and torch.equal(per_token[:, :3], torch.zeros(2, 3, dtype=per_token.dtype))


def test_the_loss_ignores_pad_blocks() -> None:
    model = block(4)
    idx = torch.randint(1, V, (1, 24), generator=torch.Generator().manual_seed(2))
    targets = torch.roll(idx, -1, dims=1)
    plain = model(idx, targets)[1]
    pad = torch.full((1, 8), 7)  # two all-pad blocks in front, of any token
    mask = torch.cat((torch.zeros(1, 8), torch.ones(1, 24)), dim=1)
    padded = model(torch.cat((pad, idx), 1), torch.cat((pad, targets), 1), attention_mask=mask)[1]
    assert padded.item() == pytest.approx(plain.item(), rel=1e-10)
    other = model(torch.cat((pad * 0 + 3, idx), 1), torch.cat((pad, targets), 1), attention_mask=mask)[1]
    assert other.item() == pytest.approx(plain.item(), rel=1e-10)


def test_training_batches_are_left_padded_within_the_first_block() -> None:
    model = block(4)
    idx = torch.arange(1, 33).repeat(64, 1)
    batch = {"input_ids": idx, "targets": idx + 1}
    out = model.prepare_batch(batch, torch.Generator().manual_seed(0))
    pads = (out["input_ids"] == PAD_ID).sum(1)
    assert set(pads.tolist()) == {0, 1, 2, 3}
    for row, k in zip(out["input_ids"], pads.tolist(), strict=True):
        assert row[k:].tolist() == list(range(1, 33 - k))
    assert (out["targets"][:, :3] == -1).all() and torch.equal(out["targets"][:, 3:] - out["input_ids"][:, 3:],
                                                               torch.ones(64, 29, dtype=torch.long))
    evaluation = model.prepare_batch(batch)
    assert torch.equal(evaluation["input_ids"], idx) and int((evaluation["targets"] >= 0).sum()) == 64 * 29
    assert torch.equal(out["input_ids"], model.prepare_batch(batch, torch.Generator().manual_seed(0))["input_ids"])


def test_save_load_round_trip_and_a_tiny_model_overfits(tmp_path) -> None:
    model = block(2)
    model.save(tmp_path / "m")
    loaded = load_model_folder(tmp_path / "m").double().eval()
    idx = torch.randint(1, V, (2, 32))
    assert loaded.config.arch_options == {"block_len": 2, "prefix": 2, "split": 2}
    assert torch.equal(model(idx, idx)[0], loaded(idx, idx)[0])
    batch = torch.randint(1, V, (4, 33), generator=torch.Generator().manual_seed(0))
    losses = fit_one_batch(model.float().train(), batch)
    assert losses[-1] < 0.2 * losses[0]


def run_to_end(batch: RunningBatch, joining: dict[int, tuple[list[int], int]]) -> dict[str, list[int]]:
    """Step `batch` to the end; before step n (once the batch lets it) the prompt joining[n] joins as tag str(n)."""
    out: dict[str, list[int]] = {}
    step, pending = 0, dict(joining)
    while len(batch) or pending:
        ready = [n for n in pending if n <= step]
        if ready and batch.can_join():
            for n in ready:
                prompt, tokens = pending.pop(n)
                batch.add([prompt], [Sampling(max_tokens=tokens, temperature=0)], [str(n)])
        for tag, token, _ in batch.step() if len(batch) else ():
            out.setdefault(tag, []).append(token)
        step += 1
    return out


@pytest.mark.parametrize("arch", ["block", "gpt"])
def test_sequences_that_join_a_running_batch_get_what_they_get_alone(arch: str) -> None:
    """Continuous batching: the GPT takes new sequences at any step, the block model between blocks."""
    model = block(4, block_size=64) if arch == "block" else tiny_gpt()
    joining = {0: ([1, 2, 3, 4, 5], 12), 2: ([7], 9), 5: ([9, 8, 7, 6, 5, 4, 3, 2, 1], 7), 6: ([3] * 13, 10)}
    with torch.inference_mode():
        out = run_to_end(RunningBatch(model), joining)
    for n, (prompt, tokens) in joining.items():
        alone = generate_tokens(model, [prompt], Sampling(max_tokens=tokens, temperature=0))[0].tokens
        assert out[str(n)] == alone, n


def tiny_gpt() -> torch.nn.Module:
    load_plugins()
    torch.manual_seed(0)
    model, _ = build_model("gpt", "mha", vocab_size=V, block_size=64, n_layer=2, n_head=2, n_embd=32)
    return model.double().eval()
