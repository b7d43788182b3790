"""`lmlab augment`: plan the work items, generate them chunk by chunk through a backend, parse each generation,
apply RADA's answer-in-context filter (the one the authors found useful) and near-duplicate removal, append what
is kept, resumably (see `Journal`), then write report.json with distinct-n, the diversity figure."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from lmlab.core.commands.devices import inference_dtype, resolve_device
from lmlab.core.evaluation.backends import Backend, GenerateRequest, load_backend
from lmlab.core.files.atomic import read_complete_lines, sync, write_json_atomic
from lmlab.core.files.records import example
from lmlab.core.files.runs import RunDir, absolute_paths, check_run_folder, new_run_path, run_config
from lmlab.core.kernel.console import Progress, log
from lmlab.core.kernel.errors import Interrupted, LmlabError, StopRequest
from lmlab.core.retrieval.embeddings import DEFAULT_EMBEDDER, Embedder
from lmlab.core.retrieval.vector_store import VectorStore, open_store
from lmlab.plugins.augment.command import AugmentOptions, add_instances
from lmlab.plugins.augment.plan import Template, WorkItem, check_mode, load_template, option_letters, plan
from lmlab.plugins.augment.records import Instance, embed_text, load_instances

COMMAND = "augment"
# Options that decide what the items are: a folder made with other values cannot be continued.
PLAN_OPTIONS = ("data", "store", "retrieval", "template", "multiplier", "demos", "pool", "temperature", "top_p",
                "max_new_tokens", "filter", "dedupe", "dedupe_threshold", "limit", "seed", "model", "backend")
FINAL = ("kept", "filtered", "duplicate", "malformed")  # the outcomes that end an item; "error" is retried
WORD = re.compile(r"\w+")


class Journal:
    """augmented.jsonl (the kept rows) and journal.jsonl (each finished item's outcome), appended so that a run
    killed at any moment and rerun makes every item once: a kept row is written before its journal line, both are
    fsynced after every chunk, and on a rerun a torn last line is cut off and a kept row without its journal line
    gets it back. Items that ended in an error are not done, so a rerun retries them."""

    def __init__(self, folder: Path) -> None:
        self.augmented_path, self.journal_path = folder / "augmented.jsonl", folder / "journal.jsonl"
        self.kept: list[dict[str, Any]] = read_complete_lines(self.augmented_path)
        self.status: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        for row in read_complete_lines(self.journal_path):
            self._note(row)
        self.out: IO[str] = open(self.augmented_path, "a", encoding="utf-8")
        self.log: IO[str] = open(self.journal_path, "a", encoding="utf-8")
        for row in self.kept:
            if self.status.get(row["id"]) != "kept":
                self._write_journal({"id": row["id"], "status": "kept"})
        self.flush()
        self.resumed = len(self.status)

    def _note(self, row: dict[str, Any]) -> None:
        self.status[row["id"]] = row.get("status", "error")
        if row.get("status") == "error":
            self.errors[row["id"]] = str(row.get("error", ""))
        else:
            self.errors.pop(row["id"], None)

    def done(self, item_id: str) -> bool:
        return self.status.get(item_id) in FINAL

    def _write_journal(self, row: dict[str, Any]) -> None:
        self.log.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._note(row)

    def record(self, outcome: dict[str, Any], kept: dict[str, Any] | None) -> None:
        """One finished item: its kept row (if any) first, then its journal line."""
        if kept is not None:
            self.out.write(json.dumps(kept, ensure_ascii=False) + "\n")
            self.kept.append(kept)
        self._write_journal(outcome)

    def flush(self) -> None:
        sync(self.out, self.log)

    def close(self) -> None:
        self.flush()
        self.out.close()
        self.log.close()

    def counts(self) -> dict[str, int]:
        found = Counter(self.status.values())
        return {status: found[status] for status in (*FINAL, "error")}


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def answer_span(answer: str, context: str) -> str | None:
    """The answer as it is written in the context (matched ignoring case and runs of whitespace), or None when
    the context does not contain it: an extractive answer must be a span of its context."""
    pattern = r"\s+".join(re.escape(w) for w in answer.split())
    found = re.search(pattern, context, re.IGNORECASE) if pattern else None
    return found.group(0) if found else None


def choice_answer(answer: str, question: str) -> str | None:
    """A multiple-choice answer normalised to its letter, or None when it is not one of the question's options."""
    letter = re.fullmatch(r"\(?([A-Ea-e])[.)]?(\s.*)?", answer.strip())
    found = letter.group(1).upper() if letter else None
    return found if found in option_letters(question) else None


def shingles(text: str, n: int = 2) -> frozenset[tuple[str, ...]]:
    """The word n-grams of `text`; a text of fewer than n words is one shingle."""
    tokens = words(text)
    return frozenset(tuple(tokens[i:i + n]) for i in range(max(1, len(tokens) - n + 1)))


class Deduper:
    """Near-duplicate removal: a row duplicates an earlier one (or a seed) when the Jaccard similarity of their
    word-bigram sets reaches `threshold` (1.0: only rows that are the same after lower-casing and dropping
    punctuation). An inverted index over bigrams means only rows sharing one are compared."""

    def __init__(self, threshold: float = 0.8) -> None:
        self.threshold = threshold
        self.sets: list[frozenset[tuple[str, ...]]] = []
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)

    def key(self, question: str, answer: str) -> frozenset[tuple[str, ...]]:
        return shingles(question) | {("\x00answer", *words(answer))}

    def duplicate(self, question: str, answer: str) -> bool:
        """Whether (question, answer) is a near-duplicate of a row already added."""
        mine = self.key(question, answer)
        rows = {row for gram in mine for row in self.index.get(gram, ())}
        return any(len(mine & self.sets[row]) / len(mine | self.sets[row]) >= self.threshold for row in rows)

    def add(self, question: str, answer: str) -> None:
        mine = self.key(question, answer)
        for gram in mine:
            self.index[gram].append(len(self.sets))
        self.sets.append(mine)


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct word n-grams over all word n-grams of the texts; 0 for none."""
    grams = [tuple(t[i:i + n]) for t in map(words, texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(texts: list[str]) -> dict[str, float]:
    return {f"distinct_{n}": round(distinct_n(texts, n), 4) for n in (1, 2, 3)}


def flat_options(opts: AugmentOptions) -> dict[str, Any]:
    """Every option by its command-line name (config.json; `--resume` reads it back); no API key."""
    own = {k: v for k, v in asdict(opts).items() if k != "model"}
    return {**own, **{k: v for k, v in asdict(opts.model).items() if k != "api_key"}}


def _check_same_plan(folder: Path, options: dict[str, Any]) -> None:
    recorded = (run_config(folder) or {}).get("options", {})
    changed = [k for k in PLAN_OPTIONS if k in recorded and recorded[k] != options.get(k)]
    if changed:
        shown = ", ".join(f"--{k.replace('_', '-')} {recorded[k]!r} → {options.get(k)!r}" for k in changed[:3])
        raise LmlabError(f"{folder} holds a run made with other settings ({shown}).",
                         hint=f"`--resume {folder}` continues it with its own settings; or choose another --output-dir")


def _open_store(source: Path) -> tuple[Any, list[Instance] | None]:
    """A store folder, loaded; or the instance files to index (read now, so bad rows stop the run before its
    folder exists)."""
    if (source / "store.json").is_file():
        return VectorStore.load(source), None
    return None, load_instances(str(source))


def _index_into_run(rows: list[Instance], source: Path, run: RunDir, embedder: Callable[[str], Any]) -> Any:
    """The instance files indexed into the run folder's store/ (once: a rerun finds them there)."""
    folder = run.path / "store"
    store = open_store(folder, DEFAULT_EMBEDDER, "flat")
    added = add_instances(store, folder, rows, embedder(store.info.embedder), save_every=2048)
    if added:
        log(f"indexed {added} store rows from {source} into {folder}")
    return store


def judge(item: WorkItem, text: str, template: Template, opts: AugmentOptions,
          deduper: Deduper) -> tuple[str, dict[str, Any] | None, str | None]:
    """(status, kept row or None, reason) for one generation."""
    fields = template.parse(text)
    if fields is None:
        return "malformed", None, "does not read as the template's demonstration"
    question, answer = fields["input"], fields["output"]
    if opts.filter and template.check == "span":
        span = answer_span(answer, item.context or "")
        if span is None:
            return "filtered", None, "the answer does not occur in the context"
        answer = span
    if opts.filter and template.check == "choice":
        letter = choice_answer(answer, question)
        if letter is None:
            return "filtered", None, "the answer is not one of the question's option letters"
        answer = letter
    if opts.dedupe and deduper.duplicate(question, answer):
        return "duplicate", None, "a near-duplicate of a seed or a kept row"
    deduper.add(question, answer)
    row = {"id": item.id, "input": question, "output": answer, "context": item.context, "seed": item.seed.id,
           "sample": item.sample, "retrieval": opts.retrieval, "demos": [d.id for d in item.demos],
           "context_id": item.context_id, "template": template.name, "raw": text}
    return "kept", row, None


def _generate_chunk(backend: Backend, requests: list[GenerateRequest]) -> list[tuple[str | None, str | None]]:
    """(text, error) per item: the chunk in one call; if the backend fails, item by item, so that one
    failing request costs only its own item."""
    with contextlib.suppress(LmlabError):
        return [(texts[0], None) for texts in backend.generate(requests)]
    out: list[tuple[str | None, str | None]] = []
    for request in requests:
        try:
            out.append((backend.generate([request])[0][0], None))
        except LmlabError as exc:
            out.append((None, str(exc)))
    return out


def run_augment(opts: AugmentOptions) -> dict[str, Any]:
    device = resolve_device(opts.model.device)  # a GPU asked for that is not there is refused before any work
    dtype = inference_dtype(opts.model.precision, device)
    template = load_template(opts.template)
    check_mode(opts.retrieval, template)
    data = opts.data or str(example("augment/seeds.jsonl"))
    store_spec = opts.store or str(example("augment/store.jsonl"))
    seeds = load_instances(data, need_context=template.needs_context)[:opts.limit]
    options = {**flat_options(opts), "data": data, "store": store_spec}
    if opts.resume is None and opts.output_dir is not None:
        check_run_folder(opts.output_dir, COMMAND, reusable=True)
    folder = new_run_path(COMMAND, opts.resume or opts.output_dir)
    if folder.exists():
        _check_same_plan(folder, absolute_paths(options))
    source = Path(store_spec)
    store, rows = _open_store(source) if opts.retrieval != "none" else (None, None)
    backend = load_backend(opts.backend, opts.model)  # before the run folder: a bad model leaves none behind
    run = RunDir(folder, checkpoints=False)
    run.write_config(COMMAND, options)
    vectors = None
    if opts.retrieval != "none":
        def embedder(name: str) -> Embedder:
            return Embedder(name, device=device, dtype=dtype)  # where the generator runs

        store = store if rows is None else _index_into_run(rows, source, run, embedder)
        vectors = embedder(store.info.embedder).encode([embed_text(s) for s in seeds])
    items = plan(seeds, vectors, store, template, mode=opts.retrieval, multiplier=opts.multiplier, demos=opts.demos,
                 pool=opts.pool, run_seed=opts.model.seed)
    journal = Journal(run.path)
    deduper = Deduper(opts.dedupe_threshold)
    for seed in seeds:
        deduper.add(seed.input, seed.output)
    for row in journal.kept:
        deduper.add(row["input"], row["output"])
    todo = [item for item in items if not journal.done(item.id)]
    if journal.resumed:
        log(f"{run.path}: {len(items) - len(todo)} of {len(items)} items already done; generating {len(todo)}")
    started, failures, stop = time.perf_counter(), 0, StopRequest()
    chunk_size = max(opts.model.batch_size, opts.model.concurrency)  # one backend call each, then saved
    try:
        with stop.installed(), Progress("augment", len(items), completed=len(items) - len(todo),
                                        line="{label}: {completed}/{total} items {info}") as progress:
            for start in range(0, len(todo), chunk_size):
                if stop.signal is not None:
                    raise KeyboardInterrupt
                chunk = todo[start:start + chunk_size]
                requests = [GenerateRequest(item.prompt, opts.max_new_tokens, template.stop, opts.temperature,
                                            opts.top_p, 1, item.request_seed) for item in chunk]
                for item, (text, error) in zip(chunk, _generate_chunk(backend, requests), strict=True):
                    if text is None:
                        failures += 1
                        journal.record({"id": item.id, "status": "error", "error": error}, None)
                        continue
                    failures = 0
                    status, kept, reason = judge(item, text, template, opts, deduper)
                    journal.record({"id": item.id, "status": status, **({"reason": reason} if reason else {}),
                                    "raw": text}, kept)
                journal.flush()
                counts = journal.counts()
                progress.update(len(items) - sum(1 for i in todo if not journal.done(i.id)), f"kept {counts['kept']}")
                if failures >= opts.max_failures:
                    raise LmlabError(f"The backend failed on {failures} items in a row (last: "
                                     f"{journal.errors[chunk[-1].id]}); {counts['kept']} rows are kept so far.",
                                     hint=f"fix the backend, then rerun with --resume {run.path}")
    except KeyboardInterrupt as exc:
        raise Interrupted(f"Interrupted; {len(journal.kept)} kept rows are saved in {journal.augmented_path}.",
                          hint=f"rerun with --resume {run.path} to continue where it stopped") from exc
    finally:
        journal.close()
    return report(run, journal, items, seeds, opts, template, time.perf_counter() - started, len(todo))


def report(run: RunDir, journal: Journal, items: list[WorkItem], seeds: list[Instance], opts: AugmentOptions,
           template: Template, seconds: float, generated: int) -> dict[str, Any]:
    counts = journal.counts()
    kept = [row["input"] for row in journal.kept]
    summary: dict[str, Any] = {
        "retrieval": opts.retrieval, "template": template.name, "model": opts.model.model, "backend": opts.backend,
        "seeds": len(seeds), "planned": len(items), **counts,
        "pending": sum(1 for i in items if not journal.done(i.id)) - counts["error"],
        "diversity": {"augmented": diversity(kept), "seeds": diversity([s.input for s in seeds])},
        "generated_now": generated, "seconds": round(seconds, 2),
        "items_per_s": round(generated / seconds, 3) if seconds and generated else None,
        "augmented": str(journal.augmented_path), "run_dir": str(run.path)}
    if opts.compare:
        baseline = load_instances(opts.compare)
        summary["diversity"]["baseline"] = {**diversity([b.input for b in baseline]), "rows": len(baseline),
                                            "file": opts.compare}
    write_json_atomic(run.path / "report.json", summary)
    return summary
