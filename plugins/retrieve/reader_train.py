"""`lmlab retrieve train-reader`: the extractive span reader `retrieve answer --reader span` reads with, trained on the
shared loop over each KILT query's gold contexts: the passages of its gold pages that hold an answer (whole pages on
an index without passages), the answer's first verbatim occurrence being the span learnt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmlab.core.evaluation.answers import best_over_golds, exact_match, f1
from lmlab.core.files.records import SkipLog, example
from lmlab.core.files.runs import RunDir
from lmlab.core.kernel.console import log
from lmlab.core.kernel.errors import DataError
from lmlab.core.retrieval.kilt import KiltQuery, load_kilt
from lmlab.core.retrieval.passages import answer_passages, passages_of_pages
from lmlab.core.retrieval.reader import ReaderConfig, SpanTask, features, load_reader, predict
from lmlab.core.retrieval.retrievers import RetrievalIndex
from lmlab.core.training.trainer import Trainer
from lmlab.plugins.retrieve.options import ReaderTrainOptions

NO_ANSWER = "no answer or no gold page in the index"
NOT_VERBATIM = "no answer written as it is in a gold context"


@dataclass(frozen=True)
class Reading:
    """One (question, gold context, answer) the reader learns or is scored on (core.retrieval.reader.Example)."""

    id: str
    input: str
    output: str
    context: str
    answers: tuple[str, ...]


def gold_readings(queries: list[KiltQuery], index: RetrievalIndex, skips: SkipLog) -> list[Reading]:
    """One reading per gold context that holds an answer verbatim (the answer as the query gives it)."""
    of_page = passages_of_pages(index.passages.values())
    out = []
    for query in queries:
        pages = [p for p in dict.fromkeys(p for evidence in query.evidence for p in evidence)
                 if p in index.corpus.by_id]
        if not query.answers or not pages:
            skips.add(NO_ANSWER)
            continue
        texts = ([p.text for page in pages for p in answer_passages(query.answers, of_page[page])]
                 if index.passage_words else [index.corpus.by_id[page].text for page in pages])
        firsts = ((text, next((a for a in query.answers if a in text), None)) for text in texts)
        found = [Reading(query.id, query.input, answer, text, query.answers) for text, answer in firsts if answer]
        if not found:
            skips.add(NOT_VERBATIM)
        out += found
    return out


class ReaderTrainer(Trainer):
    command = "retrieve-train-reader"
    cli_command = "retrieve train-reader"
    plotted = ("loss", "span_accuracy")
    default_data = "retrieve/train.jsonl"
    opts: ReaderTrainOptions

    def setup(self, accelerator: Any) -> tuple[Any, SpanTask]:
        opts = self.opts
        self.index = RetrievalIndex.load(opts.index)
        self.skips = SkipLog()
        readings = gold_readings(load_kilt(self.data), self.index, self.skips)
        eval_data = opts.eval_data or str(example("retrieve/dev.jsonl"))
        self.heldout = [] if eval_data == "none" else gold_readings(load_kilt(eval_data), self.index, SkipLog())
        config = ReaderConfig(model=opts.model, max_length=opts.max_length, max_answer_tokens=opts.max_answer_tokens)
        with accelerator.main_process_first():
            reader, self.tokenizer = load_reader(config, seed=opts.seed)
        self.feats = features(readings, self.tokenizer, max_length=opts.max_length, skips=self.skips)
        if self.skips.total:
            log(f"[yellow]{self.skips.summary()}[/yellow]")
        if not self.feats:
            raise DataError(f"no query gives a reading to train on ({self.skips.summary()}).", path=self.data,
                            hint="queries need an answer written as it is in a gold page of the index")
        log(f"{len(self.feats)} (question, gold context, answer) readings from {len({r.id for r in readings})} queries")
        return reader, SpanTask(self.feats, pad_id=self.tokenizer.pad_token_id or 0, seed=opts.seed)

    def summarize(self, result: dict[str, Any], run: RunDir) -> dict[str, Any]:
        summary = {"model_dir": str(run.path / "model"), "index": str(self.index.folder), "readings": len(self.feats),
                   "skipped": self.skips.as_dict(), "examples_per_s": result["examples_per_s"]}
        if self.heldout:
            answers = predict(result["model"], self.tokenizer, self.heldout, self.opts.eval_batch_size)
            summary["heldout"] = {"readings": len(self.heldout), **{
                name: round(sum(best_over_golds(metric, a, r.answers) for a, r in zip(answers, self.heldout,
                                                                                     strict=True)) / len(answers), 4)
                for name, metric in (("exact_match", exact_match), ("f1", f1))}}
        return summary

    def notes(self, summary: dict[str, Any]) -> list[str]:
        if "heldout" not in summary:
            return []
        held = summary["heldout"]
        return [f"held-out gold contexts ({held['readings']}): EM {held['exact_match']:.3f}, F1 {held['f1']:.3f}; "
                f"read with `lmlab retrieve answer --reader span --model {summary['model_dir']}`"]

    def save(self, result: dict[str, Any], run: RunDir, summary: dict[str, Any]) -> None:
        from lmlab.core.models.loading import replace_dir

        replace_dir(run.path / "model", lambda tmp: result["model"].save(tmp, self.tokenizer))

    def title(self) -> str:
        return f"retrieve train-reader · {self.opts.model}"
