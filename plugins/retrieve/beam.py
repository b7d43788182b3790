"""Trie-constrained beam search, the decoder of generative retrieval (GENRE: De Cao et al. 2021, "Autoregressive
Entity Retrieval"; Re3val: Song et al. 2024): a causal LM continues each prompt with a page title and EOS, and at each
step only the tokens the title trie allows may follow, so every hypothesis is a real title.

`constrained_beam_search` is transformers' beam search (`GenerationMixin._beam_search`, 5.x) in batched tensor form,
step for step: the top 2 * num_beams candidates, the best num_beams that did not end run on, those of the first
num_beams that ended join the finished, and the stopping heuristic. It differs in how, not in what it finds:
- the trie gives all allowed (beam, token) pairs of all beams at once (`TitleTrie.allowed`), and the top-k runs over
  those alone, instead of a Python `prefix_allowed_tokens_fn` per beam and step masking [beams, vocab] rows;
- each prompt is prefilled once (generate prefills one copy per beam);
- one forward per step runs only the beams that can still change the result (see `search_batch`), on a KV cache
  reordered by beam.
`hf_constrained_generate` is the anchor: `model.generate` with GENRE's callback over a `DictTrie`. Both return the
same hypotheses in the same order (scores agree to float rounding, ~1e-6).

Scoring: length_penalty=0.0, early_stopping=False. A title's score is then the sum of its tokens' log-probabilities,
EOS included: log p(title | prompt), the model's own distribution over the closed set of titles, comparable across
queries and with no push towards long titles (length_penalty=1 divides by the length). And transformers' stopping
heuristic becomes exact: scores only fall as tokens are added, so a prompt's search ends once its best running beam
scores no more than its num_beams-th finished title, and nothing beam search could still find is cut off
(early_stopping=True ends as soon as num_beams titles are finished, e.g. before a likelier "Paris Hilton" gets past
"Paris").

transformers scores empty slots, and beams that must not run on, -1e9 (masked tokens -inf); when fewer than
num_beams titles are reachable, such slots end up holding a copy of a title or an unfinished prefix. Both functions
return only hypotheses scoring above -1e8, that is finished real titles, so a prompt may get fewer than num_beams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from lmlab.plugins.retrieve.trie import ROOT, DictTrie, TitleTrie

IMPOSSIBLE = -1e9  # transformers' score for empty slots and for finished beams taken out of the running
FOUND = -1e8  # hypotheses scoring above it are titles the search really found


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
