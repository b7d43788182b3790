"""`bos="always"` gives TRL's ORPOTrainer token ids and first-step loss on plain-text rows.

TRL's rules are written out here (trl 1.16, `ORPOTrainer.tokenize_row` and `concatenated_forward`), so the
main test needs no TRL: prompt text without special tokens, then BOS first unless it already is; the response
tokenised jointly with the prompt and EOS last unless it already is; labels −100 on the prompt. The loss is
TRL's formula on one padded [2B, T] batch of full logits with the same weights: NLL = token mean of the
cross-entropy over the whole chosen sequences, log p = mean response log-prob, L = NLL − λ·mean(log σ(log
odds)). The SmolLM2 tokenizer of `tiny-llama` adds no BOS by itself, so "auto" differs from TRL there. The
last row has BOS written in its prompt and EOS at its chosen response's end: neither is doubled. Where TRL is
installed, its own tokenisation (plain and chat-templated rows) and loss are checked too.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmlab.core.files.records import Record, SkipLog
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.models.loading import load_model
from lmlab.core.training.logprobs import TokenLogprobModel
from lmlab.plugins.orpo.data import build_examples
from lmlab.plugins.orpo.task import OrpoTask
from tests.conftest import PREFERENCES, run_cli, write_jsonl

BETA = 0.1
MAX_LENGTH = 128
ROWS = [*PREFERENCES,
        {"prompt": "<|im_start|>Name a fruit.", "chosen": "An apple.<|im_end|>", "rejected": "A carrot."}]


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[torch.nn.Module, object]:
    lm, tokenizer = load_model("tiny-llama", seed=0)
    return lm.eval(), tokenizer


def examples(tokenizer: object, bos: str, rows: list[dict] = ROWS, max_prompt_length: int | None = None) -> list:
    records = [Record(row, "prefs.jsonl", i + 1) for i, row in enumerate(rows)]
    built, _ = build_examples(records, tokenizer, max_length=MAX_LENGTH, max_prompt_length=max_prompt_length,
                              skips=SkipLog(), bos=bos)
    return built


def trl_sequence(tokenizer: object, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """TRL's input ids and labels for prompt + response (build_tokenized_answer, add_bos/eos_token_if_needed)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
    start = len(prompt_ids) - (full[:len(prompt_ids)] != prompt_ids)  # a token merged across the boundary
    head, answer = full[:start], full[start:]
    if head[:1] != [tokenizer.bos_token_id]:
        head = [tokenizer.bos_token_id, *head]
    if answer[-1:] != [tokenizer.eos_token_id]:
        answer = [*answer, tokenizer.eos_token_id]
    return head + answer, [-100] * len(head) + answer


def trl_sequences(tokenizer: object, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
    """Chosen sequences first, then rejected ones, as TRL concatenates them."""
    return [trl_sequence(tokenizer, row["prompt"], row[key]) for key in ("chosen", "rejected") for row in rows]


def trl_loss(lm: torch.nn.Module, tokenizer: object, rows: list[dict]) -> torch.Tensor:
    seqs = trl_sequences(tokenizer, rows)
    half, width = len(rows), max(len(ids) for ids, _ in seqs)
    input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in seqs])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in seqs])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in seqs])
    logits = lm(input_ids, attention_mask=attention).logits[:, :-1].float()
    nll_labels = torch.where(attention == 1, input_ids, -100)[:, 1:]
    nll = F.cross_entropy(logits[:half].reshape(-1, logits.shape[-1]), nll_labels[:half].reshape(-1))
    response = labels[:, 1:] != -100
    token_logp = logits.log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    logp = (token_logp * response).sum(-1) / response.sum(-1)
    w, lo = logp[:half], logp[half:]
    log_odds = (w - lo) - (torch.log(-torch.expm1(w)) - torch.log(-torch.expm1(lo)))
    return nll - BETA * F.logsigmoid(log_odds).mean()


def our_loss(lm: torch.nn.Module, tokenizer: object, bos: str) -> torch.Tensor:
    """The first step's loss as `train-orpo` computes it: build_examples → OrpoTask.collate → OrpoTask.loss."""
    task = OrpoTask(examples(tokenizer, bos), pad_id=tokenizer.pad_token_id, beta=BETA, prompt_loss=True, seed=0)
    batch = task.collate(list(range(len(ROWS))))
    loss, _ = task.loss(TokenLogprobModel(lm), batch, task.counts(batch))
    return loss


def test_always_gives_trls_token_ids(model_and_tokenizer: tuple) -> None:
    _, tokenizer = model_and_tokenizer
    ours = examples(tokenizer, "always")
    responses = [e.chosen for e in ours] + [e.rejected for e in ours]
    sequences = [(e.prompt + r, [-100] * len(e.prompt) + r) for e, r in zip(ours + ours, responses, strict=True)]
    assert sequences == trl_sequences(tokenizer, ROWS)
    assert ours[-1].prompt.count(tokenizer.bos_token_id) == 1 and ours[-1].chosen[-2:] != [tokenizer.eos_token_id] * 2


def test_always_gives_trls_first_step_loss(model_and_tokenizer: tuple) -> None:
    lm, tokenizer = model_and_tokenizer
    with torch.no_grad():
        reference = trl_loss(lm, tokenizer, ROWS)
        ours, auto = our_loss(lm, tokenizer, "always"), our_loss(lm, tokenizer, "auto")
    assert abs(float(ours) / float(reference) - 1) < 1e-5
    assert abs(float(auto) / float(reference) - 1) > 1e-4  # the convention matters: "auto" is not TRL's here


def test_auto_keeps_the_tokenizers_convention(model_and_tokenizer: tuple) -> None:
    _, tokenizer = model_and_tokenizer
    row = PREFERENCES[0]
    auto, always, never = (examples(tokenizer, bos, [row])[0] for bos in ("auto", "always", "never"))
    assert tokenizer(row["prompt"])["input_ids"][0] != tokenizer.bos_token_id  # SmolLM2 adds no BOS
    assert auto.prompt == tokenizer(row["prompt"], add_special_tokens=True)["input_ids"] == never.prompt
    assert auto.chosen == tokenizer(row["chosen"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert always.prompt == [tokenizer.bos_token_id, *auto.prompt] and always.chosen == auto.chosen


def test_always_keeps_bos_when_the_prompt_is_cut(model_and_tokenizer: tuple) -> None:
    _, tokenizer = model_and_tokenizer
    row = PREFERENCES[0]
    full = examples(tokenizer, "always", [row])[0].prompt
    cut = examples(tokenizer, "always", [row], max_prompt_length=4)[0].prompt
    assert cut == [tokenizer.bos_token_id, *full[-3:]]


def test_never_drops_the_bos_a_tokenizer_adds(model_and_tokenizer: tuple) -> None:
    tokenizer = copy.deepcopy(model_and_tokenizer[1])
    tokenizer.add_bos_token = True  # now a Llama-style tokenizer: it adds BOS by itself
    row = PREFERENCES[0]
    text = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    auto, always, never = (examples(tokenizer, bos, [row])[0].prompt for bos in ("auto", "always", "never"))
    assert auto == always == [tokenizer.bos_token_id, *text] and never == text


def test_unknown_bos_convention_is_a_clear_error(model_and_tokenizer: tuple) -> None:
    with pytest.raises(LmlabError, match="sometimes") as error:
        examples(model_and_tokenizer[1], "sometimes")
    assert "auto" in error.value.hint and "always" in error.value.hint and "never" in error.value.hint


def test_always_without_a_bos_token_is_a_clear_error(model_and_tokenizer: tuple) -> None:
    tokenizer = copy.deepcopy(model_and_tokenizer[1])
    tokenizer.bos_token = None
    with pytest.raises(LmlabError, match="needs a BOS token") as error:
        examples(tokenizer, "always")
    assert "--bos never" in error.value.hint
    assert examples(tokenizer, "never")[0].prompt == examples(model_and_tokenizer[1], "auto")[0].prompt


def trl_trainer(lm: torch.nn.Module, tokenizer: object, rows: list[dict], tmp_path: object) -> object:
    pytest.importorskip("trl.experimental.orpo")
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    config = ORPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(rows), max_length=MAX_LENGTH,
                        beta=BETA, gradient_checkpointing=False, bf16=False, use_cpu=True, report_to="none",
                        remove_unused_columns=False, disable_tqdm=True)
    return ORPOTrainer(model=lm, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def trl_rows(trainer: object) -> list[dict]:
    return [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]


def test_trls_own_tokenisation_and_loss_agree(model_and_tokenizer: tuple, tmp_path: object) -> None:
    """The same checks against the installed TRL itself: its tokenize_row and its get_batch_loss_metrics."""
    lm, tokenizer = model_and_tokenizer
    trainer = trl_trainer(lm, tokenizer, ROWS, tmp_path)
    rows = trl_rows(trainer)
    theirs = [(row[f"{key}_input_ids"], row[f"{key}_labels"]) for key in ("chosen", "rejected") for row in rows]
    assert theirs == trl_sequences(tokenizer, ROWS)
    with torch.no_grad():
        loss, _ = trainer.get_batch_loss_metrics(trainer.model, trainer.data_collator(rows))
        ours = our_loss(lm, tokenizer, "always")
    assert abs(float(ours) / float(loss) - 1) < 1e-5


def test_always_gives_trls_ids_on_conversational_rows(model_and_tokenizer: tuple, tmp_path: object) -> None:
    """Chat-templated rows: TRL adds no BOS where the template writes one, and an EOS after the template's end."""
    lm, tokenizer = model_and_tokenizer
    rows = [{key: [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": answer}]
             for key, answer in (("chosen", "Paris."), ("rejected", "Rome."))}]
    ours = examples(tokenizer, "always", rows)[0]
    theirs = trl_rows(trl_trainer(lm, tokenizer, rows, tmp_path))[0]
    assert theirs["chosen_input_ids"] == ours.prompt + ours.chosen
    assert theirs["rejected_input_ids"] == ours.prompt + ours.rejected
    assert theirs["chosen_labels"].count(-100) == len(ours.prompt)
    assert ours.chosen[-1] == tokenizer.eos_token_id != examples(tokenizer, "auto", rows)[0].chosen[-1]


def test_train_orpo_bos_always_gives_trls_first_step_loss(model_and_tokenizer: tuple, tmp_path: Path) -> None:
    """Through the command a user runs: the first step's logged loss is TRL's on the same initial weights."""
    lm, tokenizer = model_and_tokenizer
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    run = tmp_path / "run"
    result = run_cli("train-orpo", "--bos", "always", "--data", str(data), "--batch-size", str(len(ROWS)),
                     "--max-steps", "1", "--max-length", str(MAX_LENGTH), "--beta", str(BETA), "--seed", "0",
                     "--precision", "fp32", "-o", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    with torch.no_grad():
        reference = float(trl_loss(lm, tokenizer, ROWS))
    assert abs(logged / reference - 1) < 1e-5
    assert json.loads((run / "config.json").read_text())["options"]["bos"] == "always"


def test_train_orpo_refuses_an_unknown_bos_before_loading_anything(tmp_path: Path) -> None:
    result = run_cli("train-orpo", "--bos", "sometimes", "-o", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--bos 'sometimes' is not a BOS convention" in result.stderr
    assert not (tmp_path / "run").exists()
