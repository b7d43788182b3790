"""The extractive QA reader: `lmlab augment eval` trains it (RADA scores augmented data by the F1 of a reader trained
on it; Seo et al. 2024's readers are T5-base generating the answer) and `lmlab retrieve answer` reads retrieved
passages with it. It is BERT's span reader (Devlin et al. 2019, §4.2), so an answer is always a span of the context
and a small encoder trains on two CPU cores in a minute:

    (question, context) → encoder → Linear(hidden, 2) → start/end logits → best span (start ≤ end, ≤ 30 tokens)

As in BERT's run_squad.py, questions are cut (max_query_length) and a long context is read in overlapping windows
(doc stride), the best span of any window winning; over several passages, the best span of any passage wins.
A generative reader (`generate_answers`) answers through any backend instead."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from lmlab.core.evaluation.answers import normalize_answer
from lmlab.core.evaluation.backends import Backend, GenerateRequest
from lmlab.core.files.records import SkipLog
from lmlab.core.kernel.errors import ModelError
from lmlab.core.retrieval.embeddings import embedder_path
from lmlab.core.training.trainer import length_grouped_batches

HEAD_FILE = "span_head.safetensors"
NOT_FOUND = "answer not found in its context"
CUT_OFF = "answer past the --max-length window"
MIN_WEIGHT = 1e-6  # a passage weighted 0 still answers when no other passage has a span


class Example(Protocol):
    """What the reader reads: a question (`input`), its `context` and, for training, the answer (`output`)."""

    input: str
    output: str
    context: str | None


@dataclass
class _Question:
    input: str
    context: str
    output: str = ""


@dataclass
class ReaderConfig:
    model: str = "all-minilm-l6-v2"  # an embedder alias, an HF encoder folder (or a saved reader), or a Hub id
    max_length: int = 256  # tokens of question + context + special tokens
    max_answer_tokens: int = 30  # longest predicted span (run_squad.py's max_answer_length)
    max_question_tokens: int = 64  # longer questions are cut (run_squad.py's max_query_length)


@dataclass
class SpanFeature:
    """One tokenised (question, context window); `start`/`end` are the answer's token positions (-1 if unknown)
    and `offsets` the character span in the context of each token (meaningful for context tokens only)."""

    row: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    offsets: list[tuple[int, int]]
    context_first: int
    context_last: int
    start: int = -1
    end: int = -1


class SpanReader(nn.Module):
    """An encoder and a span head: `forward` gives [B, T] start and end logits, padding masked out so a row's
    logits do not depend on what it was batched with."""

    def __init__(self, encoder: nn.Module, config: ReaderConfig) -> None:
        super().__init__()
        self.encoder, self.config = encoder, config
        self.span = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        logits = self.span(hidden).float().masked_fill((attention_mask == 0)[..., None], torch.finfo(torch.float32).min)
        return logits.unbind(-1)

    def save(self, folder: Path, tokenizer: Any) -> None:
        """An HF encoder folder plus the span head: `load_reader` on it gives this reader back."""
        from safetensors.torch import save_file

        self.encoder.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.span.state_dict().items()}, folder / HEAD_FILE)


def _located(config: ReaderConfig) -> tuple[str, bool]:
    """(where the model is, whether only the local Hugging Face cache may serve it); a run folder (`retrieve
    train-reader`, one system of `augment eval`) means its model/ sub-folder."""
    path = embedder_path(config.model)
    folder = Path(path).expanduser()
    if (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    if folder.exists() and not (folder / "config.json").is_file():
        raise ModelError(f"{config.model}: the folder has no config.json, so it is not a Hugging Face model folder.",
                         hint="pass an encoder folder written by save_pretrained, a Hub id, or all-minilm-l6-v2")
    return str(folder) if folder.exists() else path, not folder.is_dir()


def _load_error(config: ReaderConfig, exc: Exception) -> ModelError:
    return ModelError(f"Could not load the reader's encoder '{config.model}' ({str(exc).splitlines()[0][:160]}).",
                      hint="use the offline default all-minilm-l6-v2, a local encoder folder, or a Hub id already in "
                           "the Hugging Face cache")


def load_tokenizer(config: ReaderConfig) -> Any:
    """The reader's fast tokenizer (offsets map tokens to characters); cheap, so a command can check --model
    before it writes anything. As lmlab.core.retrieval.embeddings, a Hub id is read from the local cache only."""
    from transformers import AutoTokenizer

    path, offline = _located(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise _load_error(config, exc) from None
    if not tokenizer.is_fast:
        raise ModelError(f"{config.model}: the reader needs a fast tokenizer (character offsets of tokens).",
                         hint="use a model whose folder has a tokenizer.json")
    return tokenizer


def load_reader(config: ReaderConfig, *, seed: int) -> tuple[SpanReader, Any]:
    """(reader, fast tokenizer) for `config.model`; the span head starts from `seed`, or from the folder's own
    span head when it is a saved reader."""
    from transformers import AutoModel

    tokenizer = load_tokenizer(config)
    path, offline = _located(config)
    torch.manual_seed(seed)
    try:
        encoder = AutoModel.from_pretrained(path, dtype=torch.float32, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise _load_error(config, exc) from None
    reader = SpanReader(encoder, config)
    if (Path(path) / HEAD_FILE).is_file():
        from safetensors.torch import load_file

        reader.span.load_state_dict(load_file(Path(path) / HEAD_FILE))
    return reader, tokenizer


def _cut_questions(tokenizer: Any, questions: Sequence[str], budget: int) -> list[str]:
    """Each question cut after its `budget`-th token (at that token's last character)."""
    encoded = tokenizer(list(questions), add_special_tokens=False, return_offsets_mapping=True)
    return [q if len(spans) <= budget else q[:spans[budget - 1][1]]
            for q, spans in zip(questions, encoded["offset_mapping"], strict=True)]


def _encode(tokenizer: Any, examples: Sequence[Example], config: ReaderConfig, *, windows: bool) -> list[SpanFeature]:
    """Tokenise (question, context) pairs, truncating the context only: one window per row, or (`windows`) as
    many overlapping windows as the context needs, half a window of overlap."""
    if not examples:
        return []
    budget = min(config.max_question_tokens, config.max_length // 2)
    questions = _cut_questions(tokenizer, [e.input for e in examples], budget)
    room = config.max_length - budget - tokenizer.num_special_tokens_to_add(pair=True)
    encoded = tokenizer(questions, [e.context for e in examples], truncation="only_second",
                        max_length=config.max_length, return_offsets_mapping=True,
                        return_overflowing_tokens=windows, stride=room // 2 if windows else 0)
    rows = encoded["overflow_to_sample_mapping"] if windows else range(len(examples))
    found = []
    for k, row in enumerate(rows):
        context = [t for t, s in enumerate(encoded.sequence_ids(k)) if s == 1]
        if not context:
            continue
        found.append(SpanFeature(row=row, input_ids=encoded["input_ids"][k],
                                 token_type_ids=encoded["token_type_ids"][k] if "token_type_ids" in encoded else None,
                                 offsets=[tuple(span) for span in encoded["offset_mapping"][k]],
                                 context_first=context[0], context_last=context[-1]))
    return found


def features(instances: Sequence[Example], tokenizer: Any, *, max_length: int = 256,
             skips: SkipLog | None = None, max_question_tokens: int = 64) -> list[SpanFeature]:
    """Training features: each row's answer (its first occurrence, `context.find(answer)`) mapped from
    characters to the first and last context tokens it overlaps; rows whose answer is missing from the context
    or cut off by the window are skipped and counted in `skips`."""
    config = ReaderConfig(max_length=max_length, max_question_tokens=max_question_tokens)
    skips = skips if skips is not None else SkipLog()
    encoded = {f.row: f for f in _encode(tokenizer, instances, config, windows=False)}
    found = []
    for row, item in enumerate(instances):
        first_char = item.context.find(item.output)
        feature = encoded.get(row)
        if first_char < 0 or feature is None:
            skips.add(NOT_FOUND)
            continue
        last_char = first_char + len(item.output)
        offsets, ctx = feature.offsets, range(feature.context_first, feature.context_last + 1)
        window_end = offsets[feature.context_last][1]
        if last_char > window_end and item.context[window_end:].strip():
            skips.add(CUT_OFF)
            continue
        starts = [t for t in ctx if offsets[t][1] > first_char]
        ends = [t for t in ctx if offsets[t][0] < last_char]
        if not starts or not ends or starts[0] > ends[-1]:
            skips.add(NOT_FOUND)
            continue
        feature.start, feature.end = starts[0], ends[-1]
        found.append(feature)
    return found


def collate(feats: Sequence[SpanFeature], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask (/ token_type_ids) and the start/end targets."""
    ids = [torch.tensor(f.input_ids, dtype=torch.long) for f in feats]
    batch = {"input_ids": pad_sequence(ids, batch_first=True, padding_value=pad_id),
             "attention_mask": pad_sequence([torch.ones_like(i) for i in ids], batch_first=True)}
    if feats[0].token_type_ids is not None:
        batch["token_type_ids"] = pad_sequence([torch.tensor(f.token_type_ids, dtype=torch.long) for f in feats],
                                               batch_first=True)
    batch["start"] = torch.tensor([f.start for f in feats], dtype=torch.long)
    batch["end"] = torch.tensor([f.end for f in feats], dtype=torch.long)
    return batch


def span_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start: torch.Tensor,
              end: torch.Tensor) -> torch.Tensor:
    """BERT's SQuAD objective summed over the batch: Σ_examples (CE(start) + CE(end)) / 2."""
    starts = F.cross_entropy(start_logits, start, reduction="sum")
    return (starts + F.cross_entropy(end_logits, end, reduction="sum")) / 2


class SpanTask:
    """The reader as a TrainTask for the shared loop: length-grouped batches; the loss is the summed span loss
    divided by the global batch's example count, so micro-batches and processes add up to the global mean."""

    def __init__(self, feats: list[SpanFeature], *, pad_id: int, seed: int) -> None:
        self.feats, self.pad_id, self.seed = feats, pad_id, seed

    def batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        return length_grouped_batches([len(f.input_ids) for f in self.feats], global_batch, seed=self.seed, epoch=epoch)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return collate([self.feats[i] for i in indices], self.pad_id)

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"examples": float(batch["start"].shape[0])}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        start_logits, end_logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        loss = span_loss(start_logits, end_logits, batch["start"], batch["end"]) / totals["examples"]
        hit = (start_logits.argmax(-1) == batch["start"]) & (end_logits.argmax(-1) == batch["end"])
        return loss, {"span_accuracy": hit.float().sum() / totals["examples"]}


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, first: int, last: int,
              max_tokens: int) -> tuple[float, int, int]:
    """(score, i, j) maximising start[i] + end[j] over context tokens first ≤ i ≤ j ≤ last, j - i < max_tokens."""
    start, end = start_logits[first:last + 1], end_logits[first:last + 1]
    scores = start[:, None] + end[None, :]
    allowed = torch.ones_like(scores, dtype=torch.bool).triu().tril(max_tokens - 1)  # 0 ≤ j - i < max_tokens
    flat = int(scores.masked_fill(~allowed, float("-inf")).argmax())
    i, j = divmod(flat, len(start))
    return float(scores[i, j]), first + i, first + j


@torch.inference_mode()
def _best_spans(model: SpanReader, tokenizer: Any, examples: Sequence[Example],
                batch_size: int) -> list[tuple[float, int, int] | None]:
    """(score, first character, end character) of the best span of each example's context (None: no window)."""
    config = model.config
    windows = _encode(tokenizer, examples, config, windows=True)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    best: list[tuple[float, int, int] | None] = [None] * len(examples)
    order = sorted(range(len(windows)), key=lambda k: len(windows[k].input_ids))
    was_training = model.training
    model.eval()
    for begin in range(0, len(order), batch_size):
        chunk = [windows[k] for k in order[begin:begin + batch_size]]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        start, end = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        for f, s, e in zip(chunk, start.cpu(), end.cpu(), strict=True):  # one copy to the host per batch
            score, i, j = best_span(s, e, f.context_first, f.context_last, config.max_answer_tokens)
            if best[f.row] is None or score > best[f.row][0]:
                best[f.row] = (score, f.offsets[i][0], f.offsets[j][1])
    model.train(was_training)
    return best


def predict(model: SpanReader, tokenizer: Any, examples: Sequence[Example], batch_size: int = 32) -> list[str]:
    """The best answer span of each example's context, as text cut from the original context by the token
    offsets; the model's `config` gives the window length and the longest span."""
    spans = _best_spans(model, tokenizer, examples, batch_size)
    return ["" if span is None else e.context[span[1]:span[2]] for e, span in zip(examples, spans, strict=True)]


def read_passages(model: SpanReader, tokenizer: Any, questions: Sequence[str], passages: Sequence[Sequence[str]],
                  batch_size: int = 32,
                  weights: Sequence[Sequence[float]] | None = None) -> list[tuple[str, int | None]]:
    """Each question's answer over its passages: the best-scoring span of any of them (start + end logits, as
    BERT compares windows), with the index of the passage it came from (None: no passage). `weights`, one in (0, 1]
    per passage (a reranker's confidence that it is relevant), add log(weight) to its spans' scores: the span's
    log-score under p(span | passage) · p(passage), so a confident passage's span wins a near tie."""
    pairs = [_Question(q, text) for q, texts in zip(questions, passages, strict=True) for text in texts]
    spans = iter(zip(pairs, _best_spans(model, tokenizer, pairs, batch_size), strict=True))
    answers: list[tuple[str, int | None]] = []
    for q, texts in enumerate(passages):
        prior = [math.log(max(w, MIN_WEIGHT)) for w in weights[q]] if weights is not None else [0.0] * len(texts)
        found = [(span[0] + prior[n], span, n, pair.context)
                 for n, (pair, span) in enumerate(next(spans) for _ in texts) if span]
        if not found:
            answers.append(("", None))
            continue
        _, span, n, context = max(found, key=lambda x: x[0])
        answers.append((context[span[1]:span[2]], n))
    return answers


PASSAGE_CHARS = 1200  # of each context in the generative reader's prompt (about 300 tokens)


def reader_prompt(question: str, passages: Sequence[tuple[str, str]]) -> str:
    """The generative reader's prompt: the passages as `title: text` lines, best-ranked first, then the question.
    Each text is cut to PASSAGE_CHARS, so five whole pages still fit a small model's context: a backend cuts an
    over-long prompt from its start, which would drop the best-ranked passage first."""
    lines = [f"Passage {n}: {title}: {' '.join(text.split())[:PASSAGE_CHARS]}"
             for n, (title, text) in enumerate(passages, start=1)]
    return "\n".join(["Answer the question from the passages in a few words.", *lines,
                      f"Question: {' '.join(question.split())}", "Answer:"])


def generate_answers(backend: Backend, questions: Sequence[str], passages: Sequence[Sequence[tuple[str, str]]],
                     max_tokens: int = 32) -> list[str]:
    """Each question answered by a generating backend (hf, openai or a plugin's) from its passages (title, text):
    greedy, the first line of what it writes."""
    requests = [GenerateRequest(reader_prompt(q, p), max_tokens=max_tokens, stop=("\n",))
                for q, p in zip(questions, passages, strict=True)]
    return [texts[0].strip() for texts in backend.generate(requests)]


def vote_answers(backend: Backend, questions: Sequence[str], passages: Sequence[Sequence[tuple[str, str]]],
                 weights: Sequence[Sequence[float]], max_tokens: int = 32) -> list[tuple[str, int]]:
    """Each question answered from each passage alone, then the answer whose passages' weights (a reranker's
    confidences) sum highest after SQuAD normalisation: RAG-Sequence's p(y | x) ≈ Σ_z p(z | x)·[y = ŷ_z] (Lewis et
    al. 2020, its fast decoding). Ties go to the best-ranked passage; returns (answer, passage it first came from)."""
    singles = generate_answers(backend, [q for q, found in zip(questions, passages, strict=True) for _ in found],
                               [[p] for found in passages for p in found], max_tokens=max_tokens)
    out, at = [], 0
    for found, weight in zip(passages, weights, strict=True):
        answers, at = singles[at:at + len(found)], at + len(found)
        votes: dict[str, float] = {}
        for answer, w in zip(answers, weight, strict=True):
            if normalize_answer(answer):
                votes[normalize_answer(answer)] = votes.get(normalize_answer(answer), 0.0) + w
        if not votes:  # no answer survives normalisation: the best-ranked passage's, as written
            out.append((answers[0] if answers else "", 0))
            continue
        best = max(votes.values())
        n = next(n for n, a in enumerate(answers) if votes.get(normalize_answer(a)) == best)
        out.append((answers[n], n))
    return out
