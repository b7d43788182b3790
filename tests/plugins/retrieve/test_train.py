"""`lmlab retrieve train`: title-gen learns the gold titles and makes generative retrieval (and its reranking
given dense contexts) work end to end; a REINFORCE step raises the log-probability of a rewarded title."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lmlab.cli.app import main
from lmlab.core.models.loading import load_model
from lmlab.core.retrieval.retrievers import RetrievalIndex
from lmlab.core.training.logprobs import TokenLogprobModel
from lmlab.plugins.retrieve.beam import TitleTrie
from lmlab.plugins.retrieve.generative import (
    context_prompt_ids,
    prompt_ids,
    sequence_logprobs,
    shared_prompt_logprobs,
    title_ids,
)
from lmlab.plugins.retrieve.train import Pair, ReinforceTask
from tests.conftest import refused, write_jsonl
from tests.plugins.retrieve.conftest import DOCS, QUERIES, kilt_rows


def lmlab(args: list[str], code: int = 0) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == code


@pytest.fixture
def own_index(built_index: Path, tmp_path: Path) -> Path:
    """A copy of the session's index, so that recording a generator in it changes no other test."""
    return Path(shutil.copytree(built_index, tmp_path / "index"))


def test_title_gen_learns_the_titles_and_generative_retrieval_returns_them(own_index: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", kilt_rows([q for q in QUERIES if q[2] and len(q[2]) == 1
                                                             and len(q[2][0]) == 1]))
    run = tmp_path / "run"
    lmlab(["retrieve", "train", "--index", str(own_index), "--data", str(train), "--model", "tiny-llama",
           "--max-steps", "40", "--lr", "3e-3", "--batch-size", "7", "--contexts", "2", "-o", str(run), "--json"])
    summary = json.loads(capsys.readouterr().out)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert summary["pairs"] == 14 and losses[-1] < 0.2 * losses[0]  # 7 plain pairs and 7 with contexts
    recorded = json.loads((own_index / "index.json").read_text())["retrievers"]["generative"]
    assert Path(recorded["generator"]) == (run / "model").resolve() and recorded["contexts"] == 2

    lmlab(["retrieve", "search", "--index", str(own_index), "-r", "generative", "--num-beams", "4", "--top-k", "4",
           "--query", QUERIES[0][1], "--query", QUERIES[3][1], "--query", "something never asked"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    titles = {t for _, t, _ in DOCS}
    assert all(len(r["results"]) == 4 and {h["title"] for h in r["results"]} <= titles for r in rows)
    assert rows[0]["results"][0]["title"] == "Mercury"  # a title that is a prefix of another
    assert rows[1]["results"][0]["title"] == "Java (programming language)"

    lmlab(["retrieve", "search", "--index", str(own_index), "-r", "generative-rerank", "--num-beams", "4",
           "--top-k", "4", "--query", QUERIES[1][1], "--json"])
    reranked = json.loads(capsys.readouterr().out)["results"][0]["results"]
    lmlab(["retrieve", "search", "--index", str(own_index), "-r", "generative", "--num-beams", "4",
           "--top-k", "4", "--query", QUERIES[1][1], "--json"])
    decoded = json.loads(capsys.readouterr().out)["results"][0]["results"]
    assert sorted(h["id"] for h in reranked) == sorted(h["id"] for h in decoded)  # the same candidates, rescored
    lm, tokenizer = load_model(str(run / "model"))
    dense = RetrievalIndex.load(own_index).open("dense", {}).search([QUERIES[1][1]], 2)[0]
    by_id = {i: (t, x) for i, t, x in DOCS}
    prompt = context_prompt_ids(tokenizer, [QUERIES[1][1]], [[by_id[h.id] for h in dense]], 256)[0]
    top = reranked[0]
    with torch.no_grad():
        expected = sequence_logprobs(TokenLogprobModel(lm), [(tuple(prompt), tuple(title_ids(tokenizer,
                                                                                         [top["title"]])[0]))],
                                     tokenizer.pad_token_id)
    assert abs(float(expected[0]) - top["score"]) < 1e-3
    assert all(a["score"] >= b["score"] for a, b in zip(reranked, reranked[1:], strict=False))

    lmlab(["retrieve", "eval", "--index", str(own_index), "--data", str(train), "-o", str(tmp_path / "eval"),
           "-r", "generative", "-r", "generative-rerank", "-r", "bm25", "--json"])
    results = json.loads(capsys.readouterr().out)["results"]
    assert results["generative"]["recall@1"] == 1.0  # it learnt its training queries
    assert results["generative-rerank"]["recall@10"] == results["generative"]["recall@10"]


def test_a_title_reranker_trained_apart_rescores_the_generators_titles(own_index: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Re3val's page-title reranker as its own model: recorded apart from the generator, and what generative-rerank
    scores with (log p(title | its dense contexts, query) under the reranker, not the generator)."""
    train = write_jsonl(tmp_path / "train.jsonl", kilt_rows([q for q in QUERIES if q[2] and len(q[2]) == 1]))
    lmlab(["retrieve", "train", "--index", str(own_index), "--data", str(train), "--role", "title-reranker",
           "--contexts", "2", "--max-steps", "2", "--model", "tiny-llama", "-o", str(tmp_path / "run"), "--quiet"])
    recorded = json.loads((own_index / "index.json").read_text())["retrievers"]["generative"]
    assert Path(recorded["title_reranker"]) == (tmp_path / "run" / "model").resolve()
    assert recorded["title_reranker_contexts"] == 2 and "generator" not in recorded
    query = QUERIES[1][1]
    lmlab(["retrieve", "search", "--index", str(own_index), "-r", "generative-rerank", "--generator", "tiny-llama",
           "--num-beams", "3", "--top-k", "3", "--query", query, "--json"])
    reranked = json.loads(capsys.readouterr().out)["results"][0]["results"]
    dense = RetrievalIndex.load(own_index).open("dense", {}).search([query], 2)[0]
    by_id = {i: (t, x) for i, t, x in DOCS}
    for name, expect in ((tmp_path / "run" / "model", True), ("tiny-llama", False)):
        lm, tokenizer = load_model(str(name))
        prompt = tuple(context_prompt_ids(tokenizer, [query], [[by_id[h.id] for h in dense]], 256)[0])
        with torch.no_grad():
            scores = sequence_logprobs(TokenLogprobModel(lm), [(prompt, tuple(title_ids(tokenizer, [h["title"]])[0]))
                                                               for h in reranked], tokenizer.pad_token_id)
        close = all(abs(float(s) - h["score"]) < 1e-3 for s, h in zip(scores, reranked, strict=True))
        assert close == expect  # the reranker's own scores; the untrained generator's differ


def test_a_title_reranker_needs_contexts(own_index: Path, capsys: pytest.CaptureFixture) -> None:
    message = refused(capsys, "retrieve", "train", "--index", str(own_index), "--role", "title-reranker")
    assert "--contexts" in message


def test_a_reinforce_step_raises_the_log_probability_of_the_rewarded_title() -> None:
    lm, tokenizer = load_model("tiny-llama", seed=3)
    titles = [t for _, t, _ in DOCS]
    sequences = title_ids(tokenizer, titles)
    trie = TitleTrie.build(sequences)
    page_of = {tuple(s[:-1]): i for s, (i, _, _) in zip(sequences, DOCS, strict=True)}
    prompt = tuple(prompt_ids(tokenizer, ["closest planet to the sun"], 64)[0])
    gold = tuple(sequences[1])
    task = ReinforceTask([Pair(prompt, gold, frozenset(["102"]))], trie, page_of, pad_id=tokenizer.pad_token_id,
                         eos_id=tokenizer.eos_token_id, num_beams=len(titles), reward="match", baseline="mean",
                         ema=0.9, seed=0)
    model = TokenLogprobModel(lm)

    def logp(title: tuple[int, ...]) -> float:
        with torch.no_grad():
            return float(sequence_logprobs(model, [(prompt, title)], tokenizer.pad_token_id)[0])

    others = [tuple(s) for s in sequences if tuple(s) != gold]
    before, before_others = logp(gold), [logp(t) for t in others]
    batch = task.collate(task.batches(0, 1)[0])
    loss, metrics = task.loss(model, batch, task.counts(batch))
    assert 0 < float(metrics["reward"]) < 1  # the gold title is one of the decoded ones
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad
    after = logp(gold)
    assert after > before + 0.1
    share = torch.tensor([before, *before_others]).log_softmax(0)[0]  # its probability among all the titles
    assert torch.tensor([after, *(logp(t) for t in others)]).log_softmax(0)[0] > share


def test_scoring_titles_on_a_shared_prompt_cache_equals_scoring_each_row_alone() -> None:
    lm, tokenizer = load_model("tiny-llama", seed=1)
    prompts = [[5, 6, 7, 8, 9], [11, 12], [3] * 30]
    candidates = [[(1, 2, 2), (4, 2)], [(7, 8, 9, 2)], [(1, 2), (5, 5, 5, 5, 2), (9, 2)]]
    shared = shared_prompt_logprobs(lm, prompts, candidates, tokenizer.pad_token_id)
    model = TokenLogprobModel(lm)
    with torch.no_grad():
        alone = [sequence_logprobs(model, [(tuple(p), c) for c in titles], tokenizer.pad_token_id).tolist()
                 for p, titles in zip(prompts, candidates, strict=True)]
    assert [len(row) for row in shared] == [2, 1, 3]
    assert torch.allclose(torch.tensor(sum(shared, [])), torch.tensor(sum(alone, [])), atol=1e-4)
