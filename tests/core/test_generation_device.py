"""Generation, the KV cache, the serving engine and the training loss on the model's device only (what a GPU run
needs, checked on the CPU): every tensor they make names the model's device, the parts that need no host sync
run on the `meta` device, the training loss needs no [B, T, V] logits and agrees with the plain one, FSDP's
auto-wrap finds our layers, and `lmlab generate` / `lmlab serve-block` take --device and --precision."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lmlab.core.kernel.plugins import load_plugins
from lmlab.core.models.architectures import build_model
from lmlab.core.models.kv_cache import CacheState, KVCache
from lmlab.core.models.transformer import Layer
from lmlab.core.serving.engine import Engine, collect
from lmlab.core.serving.generation import RunningBatch, Sampling, generate_tokens, sample_tokens
from lmlab.core.training.logprobs import head_cross_entropy
from lmlab.core.training.text_corpus import train_tokenizer
from tests.conftest import CORPUS_DOCS, run_cli

V = 40
FACTORIES = {torch.tensor, torch.as_tensor, torch.arange, torch.zeros, torch.ones, torch.full, torch.empty,
             torch.rand, torch.randn, torch.randint, torch.eye}


class FactoryDevices(TorchFunctionMode):
    """Records every tensor-making call that does not name `device` (on a GPU run such a tensor would land on
    the CPU and the next op mixing it in would fail)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device, self.strays = device, []

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in FACTORIES and (kwargs.get("device") is None or torch.device(kwargs["device"]) != self.device):
            self.strays.append(f"{func.__name__}(device={kwargs.get('device')})")
        return func(*args, **kwargs)


def model(arch: str) -> torch.nn.Module:
    load_plugins()
    torch.manual_seed(0)
    opts = ["block_len=4"] if arch == "block" else []
    built, _ = build_model(arch, "mha", vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32, arch_opt=opts)
    return built.eval()


MIXED = [Sampling(max_tokens=7, temperature=0), Sampling(max_tokens=5, temperature=1.0, seed=3),
         Sampling(max_tokens=9, temperature=0.8, top_k=5, top_p=0.9, seed=4), Sampling(max_tokens=4, temperature=1.0)]


def joins_and_leaves(lm: torch.nn.Module) -> dict[int, list[int]]:
    """Two sequences, then two more joining once the batch lets them, every one leaving at its own budget."""
    batch, out, waiting = RunningBatch(lm), {}, [(2, [5, 6, 7, 8, 9, 10, 11]), (3, [4])]
    batch.add([[1, 2, 3], [9]], MIXED[:2], [0, 1])
    while len(batch) or waiting:
        if waiting and batch.can_join():
            tag, prompt = waiting.pop(0)
            batch.add([prompt], [MIXED[tag]], [tag])
        for tag, token, _ in batch.step():
            out.setdefault(tag, []).append(token)
    return out


@pytest.mark.parametrize("arch", ["gpt", "block"])
def test_generation_makes_every_tensor_on_the_model_device(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = model(arch)
    generators = []
    make = torch.Generator

    def generator(device: Any = "cpu") -> torch.Generator:
        generators.append(torch.device(device))
        return make(device)

    monkeypatch.setattr(torch, "Generator", generator)
    with torch.inference_mode(), FactoryDevices(torch.device("cpu")) as mode:
        out = joins_and_leaves(lm)
        generate_tokens(lm, [[1, 2], [3, 4, 5, 6, 7]], MIXED[1:3])
    assert mode.strays == []
    assert generators and set(generators) == {torch.device("cpu")}
    assert [len(out[tag]) for tag in range(4)] == [7, 5, 9, 4]


class NoCache(torch.nn.Module):
    """A model without the generation interface: generation recomputes the context for every token."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> Any:
        return self.inner(idx, targets)


def test_the_recompute_fallback_makes_every_tensor_on_the_model_device() -> None:
    lm = model("gpt")
    with torch.inference_mode(), FactoryDevices(torch.device("cpu")) as mode:
        slow = generate_tokens(NoCache(lm), [[1, 2, 3], [4]], MIXED[:2])
    assert mode.strays == []
    with torch.inference_mode():
        assert slow[0].tokens == generate_tokens(lm, [[1, 2, 3]], MIXED[0])[0].tokens


def test_inference_runs_in_the_model_dtype() -> None:
    lm = model("gpt").to(torch.bfloat16)
    with torch.inference_mode():
        batch = RunningBatch(lm)
        batch.add([[1, 2, 3]], [Sampling(max_tokens=3, temperature=1.0, seed=0)], [0])
        batch.step()
        assert batch.state.cache.k.dtype == torch.bfloat16 and batch.logits.dtype == torch.bfloat16


def test_the_serving_engine_makes_every_tensor_on_the_model_device() -> None:
    lm = model("gpt")
    engine = Engine(lm, None, max_batch_size=3, batch_window_ms=0)
    tickets = engine.submit([[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]], MIXED)
    engine._stopping = True  # the engine's loop runs here, in this thread, under the mode, and returns when done
    with FactoryDevices(torch.device("cpu")) as mode:
        engine._loop()
    assert mode.strays == []
    assert [len(collect(t, timeout=5).tokens) for t in tickets] == [7, 5, 9, 4]


def test_a_seeded_sequence_samples_the_same_whatever_its_batch_mates() -> None:
    lm = model("gpt")
    with torch.inference_mode():
        together = joins_and_leaves(lm)
        for tag in (1, 2):
            alone = generate_tokens(lm, [[[1, 2, 3], [9], [5, 6, 7, 8, 9, 10, 11]][tag]], MIXED[tag])[0]
            assert together[tag] == alone.tokens


def test_sampling_draws_each_row_from_its_own_generator_all_rows_at_once() -> None:
    logits = torch.randn(3, V)
    params = [Sampling(temperature=1.0, seed=1), Sampling(temperature=0), Sampling(temperature=1.0, seed=2)]

    def draw(order: list[int]) -> list[int]:
        gens = [torch.Generator().manual_seed(params[i].seed) if params[i].seed is not None else None for i in order]
        return sample_tokens(logits[order], [params[i] for i in order], gens).tolist()

    first, reordered = draw([0, 1, 2]), draw([2, 1, 0])
    assert first == reordered[::-1]  # each row's token is its own generator's, whatever the rows beside it
    assert first[1] == int(logits[1].argmax())
    probs = torch.tensor([[0.0, 0.7, 0.0, 0.3]])
    gen = torch.Generator().manual_seed(0)
    drawn = {int(sample_tokens(probs.log(), [Sampling(temperature=1.0)], [gen])) for _ in range(200)}
    assert drawn == {1, 3}  # never a token of probability 0


def test_the_kv_cache_decode_steps_and_slots_run_on_meta() -> None:
    meta = torch.device("meta")
    cache = KVCache(2, 3, 2, 4, 8, dtype=torch.bfloat16, device=meta)
    assert cache.begin(3) == (None, True)
    for layer in range(2):
        k, v = cache.update(layer, torch.empty(3, 2, 3, 4, dtype=torch.bfloat16, device=meta),
                            torch.empty(3, 2, 3, 4, dtype=torch.bfloat16, device=meta))
    cache.end()
    assert k.device == meta and k.dtype == torch.bfloat16
    cache.keep([2, 0])  # a sequence leaves: its slot is free, the others are read through an index
    mask, _ = cache.begin(1)
    k, _ = cache.update(0, torch.empty(2, 2, 1, 4, dtype=torch.bfloat16, device=meta),
                        torch.empty(2, 2, 1, 4, dtype=torch.bfloat16, device=meta))
    cache.end()
    assert mask is None and k.shape == (2, 2, 4, 4) and k.device == meta
    longer = KVCache(2, 2, 2, 4, 8, dtype=torch.bfloat16, device=meta)
    longer.length = 6
    cache.merge(longer)  # two join: one takes the free slot, one a new slot; the running rows move right
    assert cache.slots[:2] == [2, 0] and len(cache.slots) == 4 and cache.length == 6
    mask, _ = cache.begin(1)
    assert mask.device == meta and mask.shape == (4, 1, 1, 7)


@pytest.mark.parametrize("arch", ["gpt", "block"])
def test_decode_steps_run_on_meta(arch: str) -> None:
    lm = model(arch).to(device="meta", dtype=torch.bfloat16)
    meta = torch.device("meta")
    x = torch.empty(2, 1, 32, dtype=torch.bfloat16, device=meta)
    with torch.inference_mode():
        if arch == "gpt":
            cache = KVCache(2, 2, 2, 16, 32, dtype=torch.bfloat16, device=meta)
            state = CacheState(cache, torch.zeros(2, dtype=torch.long, device=meta))
        else:
            from lmlab.plugins.block.model import BlockState

            state = BlockState(lm.block_decoder.new_cache(2, 8, x), lm.token_decoder.new_cache(2, 5, x),
                               torch.zeros(2, dtype=torch.long, device=meta), 4)
            lm._start_block(torch.empty(2, 32, dtype=torch.bfloat16, device=meta), state)
        for _ in range(5):  # the block model completes a block on the fourth: a block-decoder step
            logits = lm.decode(torch.zeros(2, dtype=torch.long, device=meta), state)
            assert logits.device == meta and logits.shape == (2, V)
        drawn = sample_tokens(logits, [Sampling(temperature=0), Sampling(temperature=1.0, top_k=5)], [None, None])
    assert drawn.device == meta


@pytest.mark.parametrize("arch", ["gpt", "block"])
def test_the_training_loss_without_logits_agrees_with_the_plain_one(arch: str) -> None:
    lm = model(arch).double().train()
    lm.config.dropout = 0.0
    idx = torch.randint(1, V, (2, 16))
    targets = torch.randint(0, V, (2, 16))
    targets[0, 3:6] = -1
    if arch == "block":
        targets[:, :3] = -1
    results = {}
    for plain in (True, False):
        lm.zero_grad()
        logits, loss = lm(idx, targets, reduction="sum", return_logits=plain)
        assert (logits is None) != plain
        loss.backward()
        results[plain] = (loss.detach(), [p.grad.clone() for p in lm.parameters() if p.grad is not None])
    assert torch.allclose(results[True][0], results[False][0], rtol=1e-9)
    for a, b in zip(results[True][1], results[False][1], strict=True):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-10)
    none_plain = lm(idx, targets, reduction="none")[1]
    none_chunked = lm(idx, targets, reduction="none", return_logits=False)[1]
    assert none_plain.shape == none_chunked.shape == targets.shape
    assert torch.allclose(none_plain, none_chunked)


def test_head_cross_entropy_is_the_cross_entropy_of_the_logits() -> None:
    hidden, weight = torch.randn(2, 5, 8, dtype=torch.double), torch.randn(V, 8, dtype=torch.double)
    targets = torch.randint(0, V, (2, 5))
    targets[1, 2] = -1
    logits = hidden @ weight.T
    for reduction in ("mean", "sum", "none"):
        expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=reduction)
        got = head_cross_entropy(hidden, weight, targets, reduction)
        assert torch.allclose(got, expected.view_as(got))


@pytest.mark.parametrize("arch", ["gpt", "block"])
def test_fsdp_auto_wrap_finds_the_transformer_layers(arch: str) -> None:
    from accelerate.utils.dataclasses import get_module_class_from_name
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    lm = model(arch)
    classes = {get_module_class_from_name(lm, name) for name in lm._no_split_modules}
    assert classes == {Layer}
    wrapped = [m for m in lm.modules()
               if transformer_auto_wrap_policy(m, recurse=False, nonwrapped_numel=0, transformer_layer_cls=classes)]
    assert len(wrapped) == 2 and all(isinstance(m, Layer) for m in wrapped)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("device") / "run" / "model"
    tokenizer = train_tokenizer(CORPUS_DOCS, 300, folder)
    load_plugins()
    torch.manual_seed(0)
    lm, _ = build_model("gpt", "mha", vocab_size=len(tokenizer), block_size=64, n_layer=1, n_head=2, n_embd=16)
    lm.save(folder)
    return folder.parent


def test_generate_takes_device_and_precision(run_dir: Path) -> None:
    done = run_cli("generate", str(run_dir), "--prompt", "The", "--max-new-tokens", "4", "--temperature", "0",
                   "--device", "cpu", "--precision", "fp32", "--json")
    assert done.returncode == 0, done.stderr
    assert '"tokens": 4' in done.stdout


@pytest.mark.parametrize("command", ["generate", "serve-block"])
def test_a_missing_gpu_is_refused_with_a_hint(run_dir: Path, command: str) -> None:
    done = run_cli(command, str(run_dir), "--device", "cuda")
    assert done.returncode == 2
    assert "no CUDA GPU is visible" in done.stderr and "--device cpu" in done.stderr
