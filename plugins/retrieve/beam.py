"""Trie-constrained beam search, the decoder of generative retrieval (GENRE: De Cao et al. 2021; Re3val: Song et al.
2024): a causal LM continues each prompt with a page title and EOS, only the tokens the title trie allows at each step.

`TitleTrie` holds each title's tokens and EOS (a node can have EOS among its children: "Paris", "Paris Hilton") as
edges sorted by (parent, token), each node's children one contiguous slice (CSR): one entry per edge, where a padded
row per node or a node × vocabulary table would cost nodes × fan-out (~10^3 at the root) or nodes × 49k. One scatter
gives every beam's allowed tokens, one `torch.searchsorted` on the keys (parent << 32 | token) advances them all.

`constrained_beam_search` is transformers' beam search (`GenerationMixin._beam_search`, 5.x) step for step, batched,
and differs in how, not in what it finds: the top-k runs over the allowed (beam, token) pairs of all beams at once, not
a per-beam `prefix_allowed_tokens_fn` masking [beams, vocab] rows; each prompt is prefilled once, not once per beam;
each step runs only the beams that can still change the result. Its anchor, `hf_constrained_generate`
(`model.generate` with GENRE's callback over a nested-dict `DictTrie`), returns the same hypotheses in the same order
(scores agree to ~1e-6). With length_penalty=0.0 and early_stopping=False a title scores log p(title | prompt), EOS
included, and as scores only fall when tokens are added, the stopping heuristic is exact (early_stopping=True would
stop before a likelier "Paris Hilton" gets past "Paris"). Slots scored -1e9 (empty, or beams that must not run on) may
hold copies or prefixes, so both return only hypotheses above -1e8: a prompt may get fewer than num_beams titles.

`constrained_sample` draws titles instead of searching for them, for REINFORCE (`train.py`): at each step a softmax
over the allowed tokens only, the same trie lookups, every prompt's samples one batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file

from lmlab.core.files.atomic import atomic_path

DEAD = 0  # where a beam lands when it leaves the trie (or runs on past EOS): no children, nothing allowed
ROOT = 1
IMPOSSIBLE = -1e9  # transformers' score for empty slots and for finished beams taken out of the running
FOUND = -1e8  # hypotheses scoring above it are titles the search really found


class TitleTrie:
    def __init__(self, parents: torch.Tensor, tokens: torch.Tensor, children: torch.Tensor, depth: int,
                 titles: int) -> None:
        """Edges sorted by (parent, token); `depth` is the longest sequence (title + EOS), `titles` their number."""
        self.parents, self.tokens, self.children = parents, tokens, children
        self.depth, self.titles = depth, titles
        nodes = max(ROOT, int(children.max()) if len(children) else 0) + 1
        self.offsets = torch.searchsorted(parents, torch.arange(nodes + 1, device=parents.device))
        self.keys = parents << 32 | tokens

    @classmethod
    def build(cls, sequences: Iterable[Sequence[int]]) -> TitleTrie:
        unique = sorted({tuple(s) for s in sequences if len(s)})
        edges: dict[tuple[int, int], int] = {}
        for seq in unique:
            node = ROOT
            for token in seq:
                node = edges.setdefault((node, token), len(edges) + ROOT + 1)
        keys = sorted(edges)
        return cls(torch.tensor([p for p, _ in keys], dtype=torch.long),
                   torch.tensor([t for _, t in keys], dtype=torch.long),
                   torch.tensor([edges[k] for k in keys], dtype=torch.long),
                   max(map(len, unique), default=0), len(unique))

    def __len__(self) -> int:
        return self.titles

    def to(self, device: torch.device | str) -> TitleTrie:
        """The trie's tensors on `device` (itself when they are there already), copied as they are: nothing is
        recomputed, so the move reads nothing back to the host."""
        if self.parents.device == torch.device(device):
            return self
        moved = copy.copy(self)
        for name in ("parents", "tokens", "children", "offsets", "keys"):
            setattr(moved, name, getattr(self, name).to(device))
        return moved

    def allowed(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every allowed continuation of a 1-D batch of nodes, as (index into `nodes`, token) tensors."""
        start = self.offsets[nodes]
        counts = self.offsets[nodes + 1] - start
        index = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), counts)
        first = torch.repeat_interleave(start - (counts.cumsum(0) - counts), counts)  # edge index minus output slot
        return index, self.tokens[first + torch.arange(len(index), device=nodes.device)]

    def allowed_mask(self, nodes: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """BoolTensor[*nodes.shape, vocab_size]: which tokens may follow each node."""
        index, tokens = self.allowed(nodes.reshape(-1))
        mask = torch.zeros(nodes.numel(), vocab_size, dtype=torch.bool, device=nodes.device)
        mask[index, tokens] = True
        return mask.view(*nodes.shape, vocab_size)

    def advance(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The child of each node by each token; DEAD where the token is not a child."""
        if not len(self.keys):
            return torch.full_like(nodes, DEAD)
        key = nodes << 32 | tokens
        at = torch.searchsorted(self.keys, key).clamp_(max=len(self.keys) - 1)
        return torch.where(self.keys[at] == key, self.children[at], DEAD)

    def save(self, path: str | Path) -> None:
        """safetensors, written to a temporary file first and renamed into place."""
        with atomic_path(path) as tmp:
            save_file({"parents": self.parents.cpu(), "tokens": self.tokens.cpu(), "children": self.children.cpu(),
                       "sizes": torch.tensor([self.depth, self.titles])}, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> TitleTrie:
        saved = load_file(str(path))
        if set(saved) != {"parents", "tokens", "children", "sizes"}:
            raise ValueError(f"{path} is not a title trie (tensors: {', '.join(sorted(saved))}).")
        depth, titles = saved["sizes"].tolist()
        return cls(saved["parents"], saved["tokens"], saved["children"], depth, titles)


class DictTrie:
    """Nested dicts {token: {token: ...}}, as GENRE walks them in its `prefix_allowed_tokens_fn`."""

    def __init__(self, sequences: Iterable[Sequence[int]]) -> None:
        self.root: dict[int, dict] = {}
        self.depth = 0
        for seq in sequences:
            node = self.root
            for token in seq:
                node = node.setdefault(token, {})
            self.depth = max(self.depth, len(seq))

    def allowed(self, prefix_tokens: Sequence[int]) -> list[int]:
        """The tokens that may follow `prefix_tokens`; [] when the prefix is not in the trie or is a whole title."""
        node = self.root
        for token in prefix_tokens:
            node = node.get(token)
            if node is None:
                return []
        return list(node)


class Hypothesis(NamedTuple):
    tokens: tuple[int, ...]  # the title, without EOS
    score: float  # sum of log-probabilities of the title and EOS


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = [[pad_token_id] * (width - len(p)) + list(p) for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def found(sequences: torch.Tensor, scores: torch.Tensor, eos_token_id: int) -> list[list[Hypothesis]]:
    """[prompts, beams, length] generated tokens and [prompts, beams] scores, best first -> the real titles."""
    return [[Hypothesis(tuple(seq[:seq.index(eos_token_id)]), score)
             for seq, score in zip(seqs, row, strict=True) if score > FOUND]
            for seqs, row in zip(sequences.tolist(), scores.tolist(), strict=True)]


def _in_batches(search: Any, prompts: list[list[int]], batch_size: int) -> list[list[Hypothesis]]:
    """`search` over consecutive batches of `batch_size` prompts, results in prompt order."""
    return [hyps for start in range(0, len(prompts), batch_size) for hyps in search(prompts[start:start + batch_size])]


def constrained_beam_search(model: Any, prompts: list[list[int]], trie: TitleTrie, *, num_beams: int,
                            eos_token_id: int, pad_token_id: int, batch_size: int = 8) -> list[list[Hypothesis]]:
    """For each prompt, at most `num_beams` titles of `trie` (tokens without EOS) with their scores, best first."""
    if not len(trie):
        return [[] for _ in prompts]
    trie = trie.to(model.device)
    return _in_batches(lambda part: search_batch(model, part, trie, num_beams, eos_token_id, pad_token_id), prompts,
                       batch_size)


@torch.inference_mode()
def search_batch(model: Any, prompts: list[list[int]], trie: TitleTrie, beams: int, eos: int,
                 pad: int) -> list[list[Hypothesis]]:
    device, n, depth = model.device, len(prompts), trie.depth
    ids, attention = (t.to(device) for t in left_pad(prompts, pad))
    positions = (attention.cumsum(-1) - 1).clamp_(min=0)
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache, logits, positions = out.cache, out.logits[:, -1].float(), positions[:, -1:]

    rows = torch.arange(n, device=device)[:, None]
    top_beams = torch.arange(2 * beams, device=device) < beams  # only these candidates may finish
    nodes = torch.full((n, beams), ROOT, device=device)
    scores = torch.full((n, beams), IMPOSSIBLE, device=device)
    scores[:, 0] = 0.0  # the copies of beam 0 start out impossible, so step 0 expands beam 0 only
    seqs = torch.full((n, beams, depth), pad, device=device)
    done_seqs, done_scores = seqs.clone(), torch.full((n, beams), IMPOSSIBLE, device=device)
    done = torch.zeros((n, beams), dtype=torch.bool, device=device)
    open_ = torch.ones((n, 1), dtype=torch.bool, device=device)  # can the running beams still beat the finished?
    active = scores > FOUND  # the beams the model runs on: one row each of logits and of the cache, in order
    for t in range(depth):
        # the allowed continuations of the active beams, per prompt in (beam, token) order with their accumulated
        # scores, padded with -inf: transformers' [beams * vocab] rows without the -inf of masked tokens
        row, token = trie.allowed(nodes[active])
        beam = active.view(-1).nonzero()[:, 0][row]
        prompt, vocab = beam // beams, logits.shape[-1]
        counts = torch.bincount(prompt, minlength=n)
        slot = torch.arange(len(beam), device=device) - (counts.cumsum(0) - counts)[prompt]
        width = max(2 * beams, int(counts.max()))
        candidates = torch.full((n, width), -torch.inf, device=device)
        candidates[prompt, slot] = torch.log_softmax(logits, -1)[row, token] + scores.view(-1)[beam]
        flat = torch.zeros((n, width), dtype=torch.long, device=device)
        flat[prompt, slot] = beam % beams * vocab + token
        cand_scores, pick = candidates.topk(2 * beams)
        parent, token = flat[rows, pick] // vocab, flat[rows, pick] % vocab
        cand = seqs[rows, parent]
        cand[..., t] = token
        ended = (token == eos) | (t + 1 == depth)

        # the running beams: the best candidates that did not end
        keep = (cand_scores + ended.float() * IMPOSSIBLE).topk(beams)
        scores, seqs, source = keep.values, cand[rows, keep.indices], parent[rows, keep.indices]
        nodes = trie.advance(nodes[rows, source], token[rows, keep.indices])
        # the finished: the best of the old and of the top `beams` candidates that ended, while the prompt is open
        just_done = ended & top_beams
        new_scores = cand_scores + (~open_).float() * IMPOSSIBLE + (~just_done).float() * IMPOSSIBLE
        best = torch.cat([done_scores, new_scores], 1).topk(beams)
        done_scores = best.values
        done_seqs = torch.cat([done_seqs, cand], 1)[rows, best.indices]
        done = torch.cat([done, just_done], 1)[rows, best.indices]
        worst_done = torch.where(done, done_scores.min(1, keepdim=True).values, IMPOSSIBLE)
        open_ &= (scores[:, :1] > worst_done).any(1, keepdim=True)

        # run on only the beams that can still change the finished titles: real ones (above -1e8), of open prompts,
        # and, once all slots are full, no worse than the worst finished, as scores only fall. The others' candidates
        # would rank below every candidate that matters, so leaving them at -inf changes no returned hypothesis.
        cache_row = torch.full((n, beams), -1, device=device)
        cache_row[active] = torch.arange(len(logits), device=device)
        bar = torch.where(done.all(1, keepdim=True), done_scores[:, -1:], -torch.inf)
        active = (scores > FOUND) & open_ & (scores >= bar)
        if not active.any() or t + 1 == depth:
            break
        cache_rows = cache_row[rows, source][active]  # each active beam continues its parent's row
        cache.reorder_cache(cache_rows)
        attention = torch.cat([attention[cache_rows], attention.new_ones(len(cache_rows), 1)], 1)
        positions = positions[cache_rows] + 1
        out = model(input_ids=seqs[..., t][active][:, None], attention_mask=attention, position_ids=positions,
                    cache=cache, use_cache=True)
        logits = out.logits[:, -1].float()
    return found(done_seqs, done_scores, eos)


@torch.inference_mode()
def constrained_sample(model: Any, prompts: list[list[int]], trie: TitleTrie, *, samples: int, eos_token_id: int,
                       pad_token_id: int, generator: torch.Generator) -> list[list[Hypothesis]]:
    """For each prompt, `samples` titles of `trie` drawn from the policy restricted to it, π(y_t | y_<t, x) =
    softmax over the allowed next tokens only, until EOS; each scored log π(title | prompt) = Σ_t log π(y_t | ·),
    EOS included (the gradient's log-probability is `train.py:constrained_logprobs`, through the training wrapper).
    All prompts' samples run as one batch, each prompt prefilled once; `generator` lives on the model's device."""
    if not len(trie):
        return [[] for _ in prompts]
    device, trie = model.device, trie.to(model.device)
    ids, attention = (t.to(device) for t in left_pad(prompts, pad_token_id))
    positions = (attention.cumsum(-1) - 1).clamp_(min=0)
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1)
    rows = torch.arange(len(prompts), device=device).repeat_interleave(samples)  # one cache row per sample
    out.cache.reorder_cache(rows)
    cache, logits = out.cache, out.logits[rows, -1].float()
    attention, positions = attention[rows], positions[rows, -1:]
    nodes = torch.full((len(rows),), ROOT, device=device)
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    tokens = torch.full((len(rows), trie.depth), eos_token_id, device=device)
    scores = torch.zeros(len(rows), device=device)
    for t in range(trie.depth):
        allowed = trie.allowed_mask(nodes, logits.shape[-1])
        allowed[done, eos_token_id] = True  # a finished title only repeats EOS, at log-probability 0
        log_pi = logits.masked_fill(~allowed, -torch.inf).log_softmax(-1)
        token = torch.multinomial(log_pi.exp(), 1, generator=generator)[:, 0]
        scores += log_pi.gather(1, token[:, None])[:, 0]
        tokens[:, t], done = token, done | (token == eos_token_id)
        nodes = trie.advance(nodes, token)
        if done.all():
            break
        attention = torch.cat([attention, attention.new_ones(len(rows), 1)], 1)
        positions = positions + 1
        out = model(input_ids=token[:, None], attention_mask=attention, position_ids=positions, cache=cache,
                    use_cache=True)
        logits = out.logits[:, -1].float()
    drawn = [Hypothesis(tuple(seq[:seq.index(eos_token_id)]), score)
             for seq, score in zip(tokens.tolist(), scores.tolist(), strict=True)]
    return [drawn[i:i + samples] for i in range(0, len(drawn), samples)]


def hf_constrained_generate(model: Any, prompts: list[list[int]], dict_trie: DictTrie, *, num_beams: int,
                            eos_token_id: int, pad_token_id: int, batch_size: int = 8) -> list[list[Hypothesis]]:
    """The anchor: `model.generate` with GENRE's `prefix_allowed_tokens_fn` over nested dicts, same batches."""
    return _in_batches(lambda part: generate_batch(model, part, dict_trie, num_beams, eos_token_id, pad_token_id),
                       prompts, batch_size)


@torch.inference_mode()
def generate_batch(model: Any, prompts: list[list[int]], dict_trie: DictTrie, beams: int, eos: int,
                   pad: int) -> list[list[Hypothesis]]:
    ids, attention = (t.to(model.device) for t in left_pad(prompts, pad))
    width = ids.shape[1]

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        # a beam off the trie (or past EOS) only ever scores -inf or -1e9; generate needs some token for it
        return dict_trie.allowed(sent[width:].tolist()) or [eos]

    # num_beams=1 runs greedy search, which has no length penalty and gives no sequence scores
    scoring = (dict(early_stopping=False, length_penalty=0.0, output_scores=True) if beams > 1
               else dict(output_logits=True))
    out = model.generate(ids, attention_mask=attention, num_beams=beams, num_return_sequences=beams, do_sample=False,
                         prefix_allowed_tokens_fn=allowed, max_new_tokens=dict_trie.depth, eos_token_id=eos,
                         pad_token_id=pad, return_dict_in_generate=True, **scoring)
    tokens = out.sequences[:, width:]
    if beams == 1:  # the log-probabilities of the tokens up to the first EOS
        log_probs = torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
        is_eos = (tokens == eos).long()
        scores = torch.where(is_eos.cumsum(1) - is_eos == 0, log_probs, 0.0).sum(1)
    else:
        scores = out.sequences_scores
    return found(tokens.view(len(prompts), beams, -1), scores.view(len(prompts), beams), eos)
