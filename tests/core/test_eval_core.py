"""The evaluation core: the hf backend against a plain full-logits computation, the request cache's resume."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from lmlab.core.evaluation.backend_hf import HFBackend
from lmlab.core.evaluation.backends import BackendOptions, ChoiceRequest, GenerateRequest, cut_at_stop
from lmlab.core.evaluation.request_cache import RequestCache
from lmlab.core.evaluation.scoring import EvalItem, parse_letter
from lmlab.core.models.loading import load_model

REQUESTS = [
    ChoiceRequest("Question: what colour is the sky?\nAnswer:", (" A", " B", " C", " D")),
    ChoiceRequest("Question: what colour is the sky on a clear day?\nAnswer:", (" A", " B", " C", " D", " E")),
    ChoiceRequest("Question: what colour is the sky? ", ("blue", "green and yellow")),  # trailing space moves
    ChoiceRequest("", (" Hello world",)),
]


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return load_model("tiny-llama", seed=3)


def reference(model, tokenizer, request: ChoiceRequest) -> list[float]:
    """Sum of log p(continuation tokens), one full forward pass per choice with full logits."""
    out = []
    for continuation in request.continuations:
        context = request.context
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
        head = tokenizer(context, add_special_tokens=False).input_ids if context else []
        target = whole[len(head):]
        tokens = (head or [tokenizer.eos_token_id]) + target
        with torch.no_grad():
            logits = model(torch.tensor([tokens[:-1]])).logits[0].float().log_softmax(-1)
        picked = logits[len(tokens) - 1 - len(target):].gather(1, torch.tensor(target)[:, None])
        out.append(picked.sum().item())
    return out


@pytest.mark.parametrize("share", [True, False])
def test_hf_loglik_matches_full_logits(tiny, share: bool) -> None:
    model, tokenizer = tiny
    backend = HFBackend(BackendOptions("tiny-llama", batch_size=3), model, tokenizer, share_prefixes=share)
    got = backend.loglik(REQUESTS)
    for request, row in zip(REQUESTS, got, strict=True):
        assert row == pytest.approx(reference(model, tokenizer, request), abs=2e-4)


def test_prefix_sharing_reuses_the_cache_and_agrees(tiny, monkeypatch) -> None:
    model, tokenizer = tiny
    long = "Background: " + "the quick brown fox jumps over the lazy dog. " * 6
    requests = [ChoiceRequest(long + f"Question {i}: pick one.\nAnswer:", (" A", " B")) for i in range(4)]
    shared = HFBackend(BackendOptions("tiny-llama"), model, tokenizer, share_prefixes=True)
    seen = []
    decoder = model.get_decoder()
    original = decoder.forward

    @functools.wraps(original)
    def counting(*args, **kwargs):
        seen.append(kwargs["input_ids"].shape[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", counting)
    got = shared.loglik(requests)
    monkeypatch.undo()
    assert seen[0] > 40 and max(seen[1:]) < 15  # later questions only run their own tokens
    plain = HFBackend(BackendOptions("tiny-llama"), model, tokenizer, share_prefixes=False).loglik(requests)
    for a, b in zip(got, plain, strict=True):
        assert a == pytest.approx(b, abs=2e-4)


def test_hf_generate_batched_equals_one_by_one(tiny) -> None:
    model, tokenizer = tiny
    backend = HFBackend(BackendOptions("tiny-llama", batch_size=4), model, tokenizer)
    prompts = ["The sky is", "Once upon a time, in a land far away,", "2 + 2 ="]
    batched = backend.generate([GenerateRequest(p, max_tokens=6) for p in prompts])
    single = HFBackend(BackendOptions("tiny-llama", batch_size=1), model, tokenizer)
    assert batched == [single.generate([GenerateRequest(p, max_tokens=6)])[0] for p in prompts]
    assert all(len(texts) == 1 and isinstance(texts[0], str) for texts in batched)
    assert cut_at_stop("B because\n\nQuestion: next", ("\n\n",)) == "B because"


def test_fingerprint_separates_models(tiny) -> None:
    a = HFBackend(BackendOptions("tiny-llama"), *tiny)
    b = HFBackend(BackendOptions("tiny-llama"), *load_model("tiny-llama", seed=4))
    assert a.identity != b.identity
    assert a.identity == HFBackend(BackendOptions("tiny-llama"), *tiny).identity


class Counting:
    """A backend that scores the first choice highest and counts what it was asked."""

    def __init__(self, identity: str = "fake:1", fail_after: int | None = None) -> None:
        self.identity, self.asked, self.fail_after = identity, [], fail_after

    def loglik(self, requests):
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise KeyboardInterrupt
        self.asked += requests
        return [[-float(i) for i in range(len(r.continuations))] for r in requests]


def test_cache_resumes_without_redoing_and_never_crosses_models(tmp_path: Path) -> None:
    requests = [ChoiceRequest(f"question {i}" + "x" * i, (" A", " B")) for i in range(10)]
    cache = RequestCache(tmp_path / "cache.sqlite")
    interrupted = Counting(fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        cache.run(interrupted.identity, "loglik", requests, interrupted.loglik, chunk=4)
    cache.close()
    resumed = Counting()
    cache = RequestCache(tmp_path / "cache.sqlite")
    answers = cache.run(resumed.identity, "loglik", requests, resumed.loglik, chunk=4)
    assert len(resumed.asked) == 6 and not set(resumed.asked) & set(interrupted.asked)
    assert answers == [[0.0, -1.0]] * 10
    other = Counting(identity="fake:2")
    cache.run(other.identity, "loglik", requests, other.loglik)
    assert len(other.asked) == 10  # another model never reuses these answers


def test_parse_letter() -> None:
    item = EvalItem("x", "", (" A", " B", " C", " D", " E"), 0, labels=tuple("ABCDE"))
    assert parse_letter(" C", item) == 2
    assert parse_letter("I think (E). ", item) == 4
    assert parse_letter("Let me think. A is wrong, B too.\n정답: D", item) == 3
    assert parse_letter("none of these", item) is None


def test_generate_mode_sends_the_benchmarks_stop_strings_and_parses_answers(tmp_path: Path) -> None:
    from lmlab.core.evaluation.scoring import BenchmarkSpec, EvalContext, EvalSettings, score_items, summarize

    class Talking:
        identity, seen = "fake:talk", []

        def generate(self, requests):
            self.seen.extend(requests)
            return [["The answer is B." if r.prompt.startswith("Q1") else "hmm"] for r in requests]

    spec = BenchmarkSpec("t", "", load=lambda *a: None, default_data=lambda: "", stop=("\n\nQuestion:",))
    items = [EvalItem("1", "Q1\nAnswer:", (" A", " B"), 1), EvalItem("2", "Q2\nAnswer:", (" A", " B"), 0)]
    ctx = EvalContext(EvalSettings(mode="generate"), RequestCache(tmp_path / "c.sqlite"), lambda *a: None)
    backend = Talking()
    summary = summarize(spec, score_items(spec, items, backend, ctx))
    assert [r.stop for r in backend.seen] == [("\n\nQuestion:",)] * 2 and backend.seen[0].max_tokens == 16
    assert summary["accuracy"] == 0.5 and summary["unparsed"] == 1


def test_chat_template_wraps_prompts_and_changes_the_identity(tiny) -> None:
    model, tokenizer = tiny
    chat = HFBackend(BackendOptions("tiny-llama", chat_template=True), model, tokenizer)
    plain = HFBackend(BackendOptions("tiny-llama"), model, tokenizer)
    assert chat.identity != plain.identity  # cached answers of one never serve the other
    wrapped = chat._as_chat("What is 2 + 2?")
    assert wrapped.startswith("<|im_start|>") and "What is 2 + 2?" in wrapped and wrapped.endswith("assistant\n")
    request = ChoiceRequest("What is 2 + 2?", (" 4", " 5"))
    assert chat.loglik([request])[0] == pytest.approx(plain.loglik([ChoiceRequest(wrapped, request.continuations)])[0])
