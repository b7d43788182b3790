"""`lmlab augment`: plan the work items, generate them chunk by chunk through a backend, parse, filter and
dedupe each generation, and append what is kept, resumably (see journal.py), then write report.json."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmlab.core.commands.devices import inference_dtype, resolve_device
from lmlab.core.evaluation.backends import Backend, GenerateRequest, load_backend
from lmlab.core.files.atomic import write_json_atomic
from lmlab.core.files.records import example
from lmlab.core.files.runs import RunDir, absolute_paths, check_run_folder, new_run_path, run_config
from lmlab.core.kernel.console import Progress, log
from lmlab.core.kernel.errors import Interrupted, LmlabError
from lmlab.core.kernel.signals import StopRequest
from lmlab.plugins.augment.filters import Deduper, answer_span, choice_answer, diversity
from lmlab.plugins.augment.journal import Journal
from lmlab.plugins.augment.options import AugmentOptions
from lmlab.plugins.augment.plan import WorkItem, check_mode, plan
from lmlab.plugins.augment.records import Instance, embed_text, load_instances
from lmlab.plugins.augment.templates import Template, load_template

COMMAND = "augment"
# Options that decide what the items are: a folder made with other values cannot be continued.
PLAN_OPTIONS = ("data", "store", "retrieval", "template", "multiplier", "demos", "pool", "temperature", "top_p",
                "max_new_tokens", "filter", "dedupe", "dedupe_threshold", "limit", "seed", "model", "backend")


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
    from lmlab.core.retrieval.vector_store import VectorStore

    if (source / "store.json").is_file():
        return VectorStore.load(source), None
    return None, load_instances(str(source))


def _index_into_run(rows: list[Instance], source: Path, run: RunDir, embedder: Callable[[str], Any]) -> Any:
    """The instance files indexed into the run folder's store/ (once: a rerun finds them there)."""
    from lmlab.core.retrieval.embeddings import DEFAULT_EMBEDDER
    from lmlab.core.retrieval.vector_store import open_store
    from lmlab.plugins.augment.index import add_instances

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


def _generate_chunk(backend: Backend, chunk: list[WorkItem], requests: list[GenerateRequest]
                    ) -> list[tuple[str | None, str | None]]:
    """(text, error) per item: the chunk in one call; if the backend fails, item by item, so that one
    failing request costs only its own item."""
    try:
        return [(texts[0], None) for texts in backend.generate(requests)]
    except LmlabError:
        pass
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
    seeds = load_instances(opts.data or str(example("augment/seeds.jsonl")), need_context=template.needs_context)
    seeds = seeds[:opts.limit] if opts.limit else seeds
    options = {**flat_options(opts), "data": opts.data or str(example("augment/seeds.jsonl")),
               "store": opts.store or str(example("augment/store.jsonl"))}
    if opts.resume is None and opts.output_dir is not None:
        check_run_folder(opts.output_dir, COMMAND, reusable=True)
    folder = new_run_path(COMMAND, opts.resume or opts.output_dir)
    if folder.exists():
        _check_same_plan(folder, absolute_paths(options))
    source = Path(opts.store or example("augment/store.jsonl"))
    store, rows = _open_store(source) if opts.retrieval != "none" else (None, None)
    backend = load_backend(opts.backend, opts.model)  # before the run folder: a bad model leaves none behind
    run = RunDir(folder, checkpoints=False)
    run.write_config(COMMAND, options)
    vectors = None
    if opts.retrieval != "none":
        from lmlab.core.retrieval.embeddings import Embedder

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
                for item, (text, error) in zip(chunk, _generate_chunk(backend, chunk, requests), strict=True):
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
                progress.update(len(items) - sum(1 for i in todo if not journal.done(i.id)),
                                f"kept {counts['kept']}")
                if failures >= opts.max_failures:
                    raise LmlabError(f"The backend failed on {failures} items in a row (last: "
                                     f"{journal.errors[chunk[-1].id]}); {counts['kept']} rows are kept so far.",
                                     hint=f"fix the backend, then rerun with --resume {run.path}")
    except KeyboardInterrupt as exc:
        raise Interrupted(f"Interrupted; {len(journal.kept)} kept rows are saved in {journal.augmented_path}.",
                          hint=f"rerun with --resume {run.path} to continue where it stopped") from exc
    finally:
        journal.close()
    seconds = time.perf_counter() - started
    return report(run, journal, items, seeds, opts, template, seconds, len(todo))


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
