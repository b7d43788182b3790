"""Text generation for any registered architecture: `lmlab generate`, the demo, the benchmarks and the server.

A model generates fast through the generation interface (docs/plugins.md, "Generation"):
    prefill(idx, real) -> (logits, state)   idx [B, T] left-padded prompts, real [B, T] bool (False: padding);
                                            fills the KV caches; logits [B, V] predict each next token
    decode(tokens, state) -> logits         tokens [B]: one new token per sequence, one cached step
whose state has `full()`, `keep(rows)`, `kv_bytes_per_sequence()` and `merge(other)` (plus `joinable()` where
sequences may join only at some steps, as between the Block Transformer's blocks). Without it, `Recompute`
runs the whole context for every token. A full context starts again from the last half of each sequence.

Everything runs on the model's device and in its dtype: every tensor is made there, each sequence's
`torch.Generator` too, and a decode step reads back to the host once (its tokens, for stops, EOS and events).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lmlab.core.commands.devices import model_device, place
from lmlab.core.kernel.errors import LmlabError, ModelError
from lmlab.core.models.architectures import LanguageModel, find_model_folder, load_model_folder
from lmlab.core.models.kv_cache import to_device

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PAD_ID = 0  # the token left padding uses; architectures that embed padding (block) train with the same id


@dataclass
class Sampling:
    """How one sequence is generated. temperature 0: greedy; otherwise a draw from softmax(logits / temperature)
    over the top_k likeliest tokens (None: all) and the smallest set whose probability reaches top_p."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass
class Completion:
    """tokens: the generated ids (the EOS or the token completing a stop string included); finish_reason:
    "eos", "stop" or "length"; text: the decoded completion, cut before a stop string (when a tokenizer was
    given); kv_bytes: the most KV-cache bytes the sequence held."""

    tokens: list[int]
    finish_reason: str
    text: str | None = None
    kv_bytes: int = 0


def sample_tokens(logits: Tensor, params: Sequence[Sampling],
                  generators: Sequence[torch.Generator | None]) -> Tensor:
    """One next token per row of logits [B, V], each row by its own Sampling and generator, all rows at once:
    greedy rows take the argmax; every sampled row draws one uniform from its own generator (so its tokens do
    not depend on its batch-mates) and takes the token where that uniform falls in its cumulative
    probabilities (inverse CDF). No host sync: the caller reads the tokens once."""
    out = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not rows:
        return out
    device, V = logits.device, logits.size(-1)
    index = to_device(rows, torch.long, device)
    settings = to_device([[params[i].temperature, min(params[i].top_k or V, V), params[i].top_p] for i in rows],
                         torch.float32, device)
    x = logits[index].float() / settings[:, :1]
    if any(min(params[i].top_k or V, V) < V or params[i].top_p < 1 for i in rows):
        top_k, top_p = settings[:, 1:2], settings[:, 2:3]
        ordered, order = x.sort(dim=-1, descending=True)
        ranks = torch.arange(V, device=device)
        probs = ordered.softmax(dim=-1)
        drop = (ranks >= top_k) | (probs.cumsum(dim=-1) - probs >= top_p)
        x = torch.empty_like(x).scatter_(1, order, ordered.masked_fill(drop, -float("inf")))  # the top one is kept
    cdf = x.softmax(dim=-1).cumsum(dim=-1)
    uniform = torch.cat([_uniform(generators[i], device) for i in rows])
    total = cdf[:, -1:]
    # right=True: the first token whose cumulative probability exceeds the draw, never one of probability 0
    target = torch.minimum(uniform[:, None] * total, total.nextafter(torch.zeros_like(total)))
    drawn = torch.searchsorted(cdf, target, right=True)[:, 0].clamp(max=V - 1)
    return out.index_copy(0, index, drawn)


def _uniform(generator: torch.Generator | None, device: torch.device) -> Tensor:
    """One uniform draw in [0, 1) on `device` from `generator` (None: torch's default one), which should live on
    `device` (then no copy); one made elsewhere (a CPU generator for CUDA logits) is drawn from where it is."""
    if generator is None or generator.device == device:
        return torch.rand(1, generator=generator, device=device)
    return to_device(torch.rand(1, generator=generator, device=generator.device).tolist(), torch.float32, device)


def left_pad(sequences: Sequence[Sequence[int]], device: torch.device | str = "cpu",
             pad_id: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """(idx, real): the sequences left-padded to the longest, [B, T] int64 and bool, made on `device`."""
    T = max(len(s) for s in sequences)
    device = torch.device(device)
    idx = to_device([[pad_id] * (T - len(s)) + list(s) for s in sequences], torch.long, device)
    real = to_device([[False] * (T - len(s)) + [True] * len(s) for s in sequences], torch.bool, device)
    return idx, real


class Recompute:
    """The generation interface for a model without one, and its own decode state (the contexts so far): every
    step runs forward over each (cropped) context."""

    def __init__(self, model: LanguageModel, contexts: list[Tensor] | None = None) -> None:
        self.model, self.contexts = model, contexts or []

    def prefill(self, idx: Tensor, real: Tensor) -> tuple[Tensor, Recompute]:
        state = Recompute(self.model, [row[mask] for row, mask in zip(idx, real, strict=True)])
        return state._next(), state

    def decode(self, tokens: Tensor, state: Recompute) -> Tensor:
        state.contexts = [torch.cat((c, t.view(1))) for c, t in zip(state.contexts, tokens, strict=True)]
        return state._next()

    def full(self) -> bool:
        return False

    def keep(self, rows: Sequence[int]) -> None:
        self.contexts = [self.contexts[r] for r in rows]

    def kv_bytes_per_sequence(self) -> int:
        return 0

    def merge(self, other: Recompute) -> None:
        self.contexts += other.contexts

    def _next(self) -> Tensor:
        block = self.model.config.block_size
        windows = [c[-block:] for c in self.contexts]
        if len({len(w) for w in windows}) == 1:
            return self.model(torch.stack(windows))[0][:, -1]
        return torch.cat([self.model(w[None])[0][:, -1] for w in windows])


class LiveSequence:
    """One sequence of a RunningBatch: its prompt and settings, what it has generated, its own generator."""

    def __init__(self, tag: Any, prompt: Sequence[int], sampling: Sampling, device: torch.device) -> None:
        self.tag, self.sampling, self.context, self.tokens = tag, sampling, list(prompt), []
        self.generator = torch.Generator(device).manual_seed(sampling.seed) if sampling.seed is not None else None
        self.kv_bytes = 0


class RunningBatch:
    """Sequences generated together, one token each per `step`: they join with `add` (prefilled, then merged into
    the running caches when `can_join`) and leave as they finish."""

    def __init__(self, model: LanguageModel, *, eos_id: int | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        cached = callable(getattr(model, "prefill", None)) and callable(getattr(model, "decode", None))
        self.model, self.decoder = model, model if cached else Recompute(model)
        self.device = model_device(model)
        self.eos_id, self.tokenizer = eos_id, tokenizer
        self.live: list[LiveSequence] = []
        self.logits: Tensor | None = None
        self.state: Any = None

    def __len__(self) -> int:
        return len(self.live)

    def can_join(self) -> bool:
        """Whether sequences may join now (the Block Transformer's only between blocks)."""
        return self.state is None or getattr(self.state, "joinable", lambda: True)()

    def add(self, prompts: Sequence[Sequence[int]], sampling: Sequence[Sampling], tags: Sequence[Any]) -> None:
        """Prefill these prompts and merge them into the batch (call when `can_join()`)."""
        if any(not p for p in prompts):
            raise LmlabError("A prompt of no tokens cannot be continued.", hint="give at least one token (e.g. EOS)")
        if self.tokenizer is None and any(p.stop for p in sampling):
            raise ValueError("stop strings need the tokenizer")
        joining = [LiveSequence(tag, p, s, self.device) for p, s, tag in zip(prompts, sampling, tags, strict=True)]
        logits, state = self._prefill(joining)
        if self.state is None:
            self.live, self.logits, self.state = joining, logits, state
        else:
            self.state.merge(state)
            self.live, self.logits = self.live + joining, torch.cat((self.logits, logits))

    def _prefill(self, sequences: list[LiveSequence], keep: int | None = None) -> tuple[Tensor, Any]:
        block_size = self.model.config.block_size
        return self.decoder.prefill(*left_pad([s.context[-(keep or block_size):] for s in sequences], self.device))

    def step(self) -> list[tuple[Any, int, Completion | None]]:
        """One token for every live sequence: (tag, token, its Completion if it just finished, else None)."""
        kv = self.state.kv_bytes_per_sequence()
        tokens = sample_tokens(self.logits, [s.sampling for s in self.live], [s.generator for s in self.live])
        events, still = [], []
        for j, (seq, token) in enumerate(zip(self.live, tokens.tolist(), strict=True)):
            seq.tokens.append(token)
            seq.context.append(token)
            seq.kv_bytes = max(seq.kv_bytes, kv)
            done = self._finished(seq, token)
            events.append((seq.tag, token, done))
            if done is None:
                still.append(j)
        if not still:
            self.live, self.logits, self.state = [], None, None
        elif len(still) < len(self.live):
            self.state.keep(still)
            tokens, self.live = tokens[to_device(still, torch.long, self.device)], [self.live[j] for j in still]
        if self.live and self.state.full():  # start again from the last half of every context
            self.logits, self.state = self._prefill(self.live, max(1, self.model.config.block_size // 2))
        elif self.live:
            self.logits = self.decoder.decode(tokens, self.state)
        return events

    def cancel(self, tag: Any) -> None:
        """Drop a sequence (its client went away) before the next step."""
        rows = [j for j, seq in enumerate(self.live) if seq.tag != tag]
        if len(rows) == len(self.live):
            return
        if not rows:
            self.live, self.logits, self.state = [], None, None
            return
        self.state.keep(rows)
        self.live, self.logits = [self.live[j] for j in rows], self.logits[to_device(rows, torch.long, self.device)]

    def _finished(self, seq: LiveSequence, token: int) -> Completion | None:
        p, text, reason = seq.sampling, None, None
        if self.eos_id is not None and token == self.eos_id and not p.ignore_eos:
            reason = "eos"
        elif p.stop:
            text = self.tokenizer.decode(seq.tokens)
            cut = min((text.find(s) for s in p.stop if s and s in text), default=None)
            if cut is not None:
                text, reason = text[:cut], "stop"
        if reason is None and len(seq.tokens) >= p.max_tokens:
            reason = "length"
        if reason is None:
            return None
        if self.tokenizer is not None and text is None:
            text = self.tokenizer.decode(seq.tokens[:-1] if reason == "eos" else seq.tokens)
        return Completion(seq.tokens, reason, text, seq.kv_bytes)


@torch.inference_mode()
def generate_tokens(model: LanguageModel, prompts: Sequence[Sequence[int]], sampling: Sampling | Sequence[Sampling],
                    *, eos_id: int | None = None, tokenizer: PreTrainedTokenizerBase | None = None) -> list[Completion]:
    """Generate a completion for every prompt (token ids, any lengths) in one batch; see the module docstring."""
    params = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
    if len(params) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(params)} Sampling settings")
    done: list[Completion | None] = [Completion([], "length", "" if tokenizer is not None else None)
                                     if p.max_tokens <= 0 else None for p in params]
    batch = RunningBatch(model, eos_id=eos_id, tokenizer=tokenizer)
    live = [i for i in range(len(prompts)) if done[i] is None]
    if live:
        batch.add([prompts[i] for i in live], [params[i] for i in live], live)
    while len(batch):
        for i, _, completion in batch.step():
            if completion is not None:
                done[i] = completion
    return done  # type: ignore[return-value]


@torch.inference_mode()
def sequence_logprobs(model: LanguageModel, ids: Sequence[int], prompt_len: int | None = None) -> Tensor:
    """[T - 1, V] log-softmax rows: row i is the model's distribution for token i + 1 after ids[:i + 1] (a NaN row
    where the architecture predicts nothing, as the Block Transformer for its first block). Architectures whose
    forward does not give these directly provide `next_token_logprobs(idx, prompt_len)` with the same meaning.
    `prompt_len`: how many of ids are the prompt, the rest generated after it (None: all of them), for architectures
    that align a sequence by its prompt, as the Block Transformer's blocks are, so that generated tokens never move
    the prompt's scores."""
    device = model_device(model)
    idx = to_device([list(ids)], torch.long, device)[:, -model.config.block_size:]
    own = getattr(model, "next_token_logprobs", None)
    if callable(own):
        return own(idx) if prompt_len is None else own(idx, prompt_len - (len(ids) - idx.size(1)))
    logits, _ = model(idx[:, :-1], idx[:, 1:])
    return logits[0].float().log_softmax(dim=-1)


def generate(model: LanguageModel, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float = 1.0, seed: int | None = None) -> Tensor:
    """idx [B, T] followed by max_new_tokens tokens, [B, T + max_new_tokens] (no EOS stop)."""
    params = [Sampling(max_new_tokens, temperature, top_p, top_k, None if seed is None else seed + row)
              for row in range(idx.size(0))]
    done = generate_tokens(model, idx.tolist(), params)
    return torch.cat((idx, torch.tensor([c.tokens for c in done], dtype=idx.dtype, device=idx.device)), dim=1)


def load_generator(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
                   ) -> tuple[LanguageModel, PreTrainedTokenizerBase]:
    """The model saved in `path` (a model folder or a run directory), on `device` in `dtype`, and its tokenizer."""
    from transformers import AutoTokenizer

    folder = find_model_folder(path)
    model = place(load_model_folder(folder), torch.device(device), dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: no tokenizer saved with the model ({str(exc).strip().splitlines()[0]}).",
                         hint="a run of `lmlab pretrain` saves its tokenizer in model/") from None
    return model, tokenizer


def generate_text(path: str | Path, prompt: str, *, max_new_tokens: int, temperature: float, top_k: int | None,
                  seed: int, top_p: float = 1.0, stop: Sequence[str] = (), ignore_eos: bool = False,
                  device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Completion:
    """The continuation of `prompt` by the model saved in `path`, up to EOS, a stop string or max_new_tokens."""
    model, tokenizer = load_generator(path, device, dtype)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, seed, tuple(stop), ignore_eos)
    return generate_tokens(model, [ids], sampling, eos_id=tokenizer.eos_token_id, tokenizer=tokenizer)[0]
