"""Synthetic preference rows for `lmlab bench orpo`, built from the bundled preference text and identical for every
worker: full lengths spread over the context, token ids the same for lmlab and TRL (docs/benchmarks.md#orpo-vs-trl)."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from lmlab.core.kernel.errors import LmlabError

SHORTEST = 128  # shortest full sequence (prompt + longer response) in tokens, when --max-length allows


def _word_pool() -> list[str]:
    from lmlab.core.files.records import example

    rows = [json.loads(line) for line in example("orpo/preferences.jsonl").read_text().splitlines() if line.strip()]
    return [w for row in rows for field in ("prompt", "chosen", "rejected") if isinstance(row.get(field), str)
            for w in row[field].split()]


def synthetic_rows(tokenizer: Any, n_rows: int, max_length: int, seed: int) -> list[dict[str, str]]:
    """Deterministic {prompt, chosen, rejected} rows whose full length (prompt + longer response + EOS) is
    spread uniformly over [min(128, max_length/2), max_length] tokens, the prompt taking 10-50% of it and
    the shorter response 30-100% of the longer one; never longer than max_length for either system."""
    words = _word_pool()
    sizes = [len(ids) for ids in tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]]
    rng = random.Random(seed)
    overhead = len(_prompt_ids(tokenizer, _prompt_text(tokenizer, "")))
    if overhead + 16 > max_length:
        raise LmlabError(f"--max-length {max_length} leaves no room for rows after the {overhead}-token prompt "
                         "template of this model.", hint="raise --max-length")

    def text(target: int) -> str:
        start, picked, total = rng.randrange(len(words)), [], 0
        while total + sizes[(start + len(picked)) % len(words)] <= max(target, 1) or not picked:
            total += sizes[(start + len(picked)) % len(words)]
            picked.append(words[(start + len(picked)) % len(words)])
        return " ".join(picked)

    rows = []
    for _ in range(n_rows):
        full = rng.randint(min(SHORTEST, max_length // 2), max_length)
        prompt_len = max(overhead + 4, round(full * rng.uniform(0.1, 0.5)))
        long_len = max(4, full - prompt_len - 1)  # -1: the EOS both systems append
        short_len = max(2, round(long_len * rng.uniform(0.3, 1.0)))
        prompt = _prompt_text(tokenizer, text(prompt_len - overhead))
        long_text, short_text = text(long_len), text(short_len)
        while len(_prompt_ids(tokenizer, prompt)) + _response_len(tokenizer, long_text) > max_length:
            long_text = long_text.rsplit(" ", 1)[0]  # the per-word estimate was short: drop words until it fits
        chosen_first = rng.random() < 0.5
        rows.append({"prompt": prompt, "chosen": long_text if chosen_first else short_text,
                     "rejected": short_text if chosen_first else long_text})
    return rows


def _prompt_text(tokenizer: Any, body: str) -> str:
    """The user turn in the model's chat template (plain text otherwise), ending in a newline, with the BOS
    token written in when the tokenizer would not add it: TRL always starts a prompt with BOS."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                               add_generation_prompt=True)
    else:
        prompt = f"Question: {body}\nAnswer:\n"
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer(prompt, add_special_tokens=True)["input_ids"][:1] != [bos]:
        prompt = tokenizer.bos_token + prompt
    return prompt


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def _response_len(tokenizer: Any, response: str) -> int:
    return len(tokenizer(response, add_special_tokens=False)["input_ids"]) + 1


def examples_of(rows: list[dict[str, str]], tokenizer: Any, max_length: int) -> list[Any]:
    """Our tokenisation of the rows; none may be cut or skipped (then both systems see every token)."""
    from lmlab.core.files.records import Record, SkipLog
    from lmlab.plugins.orpo.data import build_examples

    skips = SkipLog()
    records = [Record(row, "<synthetic>", i + 1) for i, row in enumerate(rows)]
    examples, cut = build_examples(records, tokenizer, max_length=max_length, max_prompt_length=None, skips=skips)
    if skips.total or any(cut.values()):
        raise LmlabError(f"synthetic rows were cut or skipped ({cut}, {skips.summary()}).",
                         hint="this is a bug in the benchmark's row builder; try another --max-length")
    return examples


def token_hash(sequences: list[tuple[list[int], list[int], int]]) -> str:
    """sha256 of (prompt + chosen, prompt + rejected, prompt length) token ids of every row, in step order."""
    return hashlib.sha256(json.dumps(sequences).encode()).hexdigest()


def data_stats(examples: list[Any], order: list[list[int]], max_length: int, warmup: int) -> dict[str, Any]:
    lengths = sorted(e.length for e in examples)
    timed = [[len(examples[i].prompt) + len(r) for i in batch for r in (examples[i].chosen, examples[i].rejected)]
             for batch in order[warmup:]]
    real, padded = sum(map(sum, timed)), sum(len(seqs) * max(seqs) for seqs in timed)
    return {"full_length_min": lengths[0], "full_length_median": lengths[len(lengths) // 2],
            "full_length_max": lengths[-1], "max_length": max_length, "truncated_rows": 0,
            "padding_fraction_timed_batches": round(1 - real / padded, 3)}
