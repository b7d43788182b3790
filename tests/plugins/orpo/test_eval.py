"""`train-orpo --eval-data FILE --eval-every N`: TRL's ORPO eval metrics on the held-out pairs at steps N, 2N, …
and after the last step, equal to a plain computation on the weights the run saved at those steps; training
itself is not touched; bad held-out rows are refused like bad --data rows; several processes' shares add up to
one process's figures."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model as load_weights

from lmlab.core.files.records import SkipLog, load_records
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.models.loading import load_model
from lmlab.core.training.logprobs import TokenLogprobModel
from lmlab.plugins.orpo.data import PreferenceExample, build_examples
from lmlab.plugins.orpo.options import OrpoOptions
from lmlab.plugins.orpo.task import HeldOutPairs, OrpoTask
from lmlab.plugins.orpo.train import OrpoTrainer
from tests.conftest import run_cli, write_jsonl
from tests.plugins.orpo.test_loss import examples as random_examples
from tests.plugins.orpo.test_loss import tiny_lm

BETA = 0.1
HELD_OUT = [
    {"prompt": "What is the capital of Italy?", "chosen": "Rome is the capital of Italy.",
     "rejected": "The capital of Italy is Milan."},
    {"prompt": "What is 4 + 4?", "chosen": "4 + 4 = 8.", "rejected": "4 + 4 = 9, give or take."},
    {"prompt": "Name a planet.", "chosen": "Mars is a planet.", "rejected": "The Moon."},
]
ARGS = ("--max-steps", "4", "--max-length", "64", "--batch-size", "2", "--lr", "1e-3", "--schedule", "constant",
        "--save-every", "2", "--json")
TRL_NAMES = ("eval_loss", "eval_nll_loss", "eval_log_odds_ratio", "eval_log_odds_chosen", "eval_rewards/chosen",
             "eval_rewards/rejected", "eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen",
             "eval_logps/rejected")


def plain_eval(lm: torch.nn.Module, pairs: list[PreferenceExample]) -> dict[str, float]:
    """TRL's ORPO eval metrics written plainly: one unpadded sequence at a time, full logits, reward β·mean
    log-prob, the NLL over every chosen token (prompt included, the default)."""
    nll_terms, logp_w, logp_l = [], [], []
    with torch.no_grad():
        for ex in pairs:
            for response, chosen in ((ex.chosen, True), (ex.rejected, False)):
                ids = torch.tensor([ex.prompt + response])
                logp = lm(ids).logits[0, :-1].float().log_softmax(-1).gather(1, ids[0, 1:, None]).squeeze(1)
                (logp_w if chosen else logp_l).append(logp[len(ex.prompt) - 1:].mean())
                if chosen:
                    nll_terms.append(logp)
    nll = -torch.cat(nll_terms).mean()
    w, lo = torch.stack(logp_w), torch.stack(logp_l)
    log_odds = (w - lo) - (torch.log(-torch.expm1(w)) - torch.log(-torch.expm1(lo)))
    ratio = F.logsigmoid(log_odds).mean()
    return {"eval_loss": float(nll - BETA * ratio), "eval_nll_loss": float(nll), "eval_log_odds_ratio": float(ratio),
            "eval_log_odds_chosen": float(log_odds.mean()), "eval_rewards/accuracies": float((w > lo).float().mean()),
            "eval_rewards/margins": float(BETA * (w - lo).mean()), "eval_rewards/chosen": float(BETA * w.mean())}


def metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_eval_metrics_at_every_n_steps_match_the_saved_weights_and_leave_training_alone(tmp_path: Path,
                                                                                         preferences: Path) -> None:
    held_out = write_jsonl(tmp_path / "heldout.jsonl", HELD_OUT)
    run = tmp_path / "run"
    result = run_cli("train-orpo", "--data", str(preferences), *ARGS, "--eval-data", str(held_out), "--eval-every",
                     "2", "-o", str(run))
    assert result.returncode == 0, result.stderr
    records = metrics(run)
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
    for r in records:
        assert all(name in r for name in TRL_NAMES) == (r["step"] in (2, 4)), r
    summary = json.loads(result.stdout)
    assert summary["eval"] == {"step": 4, "pairs": 3, **{k: v for k, v in records[-1].items() if k in TRL_NAMES}}
    assert OrpoTrainer(OrpoOptions()).notes(summary)[0].startswith("held-out (3 pairs, step 4): eval_loss ")

    lm, tokenizer = load_model("tiny-llama")
    pairs, _ = build_examples(load_records(held_out), tokenizer, max_length=64, max_prompt_length=None,
                              skips=SkipLog())
    model = TokenLogprobModel(lm).eval()
    for step in (2, 4):
        load_weights(model, str(run / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))
        expected = plain_eval(model.lm, pairs)
        logged = next(r for r in records if r["step"] == step)
        for name, value in expected.items():
            assert logged[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, name)
    assert records[1]["eval_loss"] != records[3]["eval_loss"]  # the weights moved between the two

    plain = tmp_path / "plain"
    without = run_cli("train-orpo", "--data", str(preferences), *ARGS, "-o", str(plain))
    assert without.returncode == 0, without.stderr
    assert [r["loss"] for r in metrics(plain)] == [r["loss"] for r in records]
    assert [r["grad_norm"] for r in metrics(plain)] == [r["grad_norm"] for r in records]
    assert not any(k.startswith("eval_") for r in metrics(plain) for k in r)


def test_bad_held_out_rows_are_refused_like_bad_training_rows(tmp_path: Path, preferences: Path) -> None:
    held_out = tmp_path / "heldout.jsonl"
    held_out.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    result = run_cli("train-orpo", "--data", str(preferences), "--eval-data", str(held_out), "--max-steps", "1",
                     "-o", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "heldout.jsonl:2" in errors[0] and "rejected" in errors[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_eval_every_without_eval_data_is_refused() -> None:
    with pytest.raises(LmlabError, match="--eval-every needs held-out pairs") as caught:
        OrpoTrainer(OrpoOptions(eval_every=2)).check()
    assert "--eval-data" in caught.value.hint


@pytest.mark.parametrize("world", [2, 3])
def test_process_shares_add_up_to_one_process_and_run_the_same_number_of_forwards(world: int) -> None:
    task = OrpoTask(random_examples() + random_examples(seed=2)[:1], pad_id=0, beta=BETA, prompt_loss=True, seed=0)
    model = TokenLogprobModel(tiny_lm()).train()

    def held_out(rank: int, world: int) -> HeldOutPairs:
        return HeldOutPairs(task, batch_size=2, device=torch.device("cpu"), world=world, rank=rank,
                            reduce=lambda sums: sums, autocast=contextlib.nullcontext)

    whole = held_out(0, 1).score(model)
    shares = [held_out(rank, world) for rank in range(world)]
    assert len({len(share.mine) for share in shares}) == 1  # a sharded model gathers weights in every forward
    parts = [share.score(model) for share in shares]
    assert model.training  # back to train mode after scoring
    for name, value in whole.items():
        assert sum(part[name] for part in parts) == pytest.approx(value, rel=1e-5, abs=1e-6), name


class MetaLogprobs(torch.nn.Module):
    """Stands in for TokenLogprobModel on the meta device (transformers' mask code reads values, which meta
    tensors have not): every input must already be there, and the log-probs it gives are made there."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        assert {t.device.type for t in (input_ids, attention_mask, positions, targets)} == {"meta"}
        return -torch.rand(positions.shape, device=positions.device)


def test_scoring_makes_every_tensor_on_the_models_device() -> None:
    """On the meta device any tensor made on the CPU and mixed in raises, as it would on a GPU."""
    task = OrpoTask(random_examples(), pad_id=0, beta=BETA, prompt_loss=True, seed=0)
    seen = []

    def reduce(sums: torch.Tensor) -> torch.Tensor:
        seen.append(sums.device)
        return torch.zeros(sums.shape)  # meta tensors hold no values to read back

    scores = HeldOutPairs(task, batch_size=2, device=torch.device("meta"), world=1, rank=0, reduce=reduce,
                          autocast=contextlib.nullcontext).score(MetaLogprobs())
    assert seen == [torch.device("meta")] and "eval_loss" in scores
