"""The evaluation runner every `lmlab eval NAME` shares: items → cached backend requests → per-item results →
accuracy overall and per breakdown. A benchmark only loads its files into `EvalItem`s (and parses answers)."""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lmlab.core.evaluation.backends import Backend, ChoiceRequest, GenerateRequest
from lmlab.core.evaluation.request_cache import RequestCache
from lmlab.core.files.records import SkipLog
from lmlab.core.kernel.errors import LmlabError
from lmlab.core.kernel.plugins import collect

MODES = ("loglik", "generate")


@dataclass
class EvalItem:
    """One question: loglik mode scores `choices` after `prompt`; generate mode sends `generate_prompt` (default:
    `prompt`) and `parse` maps the text to an option index. Rubric items are generated and scored in [0, 1] by
    the benchmark's `judge`."""

    id: str
    prompt: str
    choices: tuple[str, ...]
    gold: int
    groups: dict[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    generate_prompt: str | None = None
    rubric: Any = None


@dataclass
class LoadedData:
    """What a benchmark read: the items (all of them, before --limit), skipped rows, and counts."""

    items: list[EvalItem]
    skipped: SkipLog = field(default_factory=SkipLog)
    source: str = ""


@dataclass
class EvalSettings:
    mode: str = "loglik"
    num_fewshot: int = 0
    cot: bool = False
    max_tokens: int | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkOption:
    """A benchmark-specific option of `lmlab eval NAME` (e.g. BEnQA's --lang)."""

    name: str
    default: Any
    help: str


@dataclass
class EvalContext:
    """What a judge gets: the settings, the cache, and a way to build other backends (a judge model)."""

    settings: EvalSettings
    cache: RequestCache
    backend_for: Callable[[str, str], Backend]
    progress: Callable[[int], None] | None = None

    def generate(self, backend: Backend, requests: Sequence[GenerateRequest]) -> list[str]:
        """The first text of each request, through the request cache."""
        texts = self.cache.run(backend.identity, "generate", requests, backend.generate, progress=self.progress)
        return [choices[0] for choices in texts]


@dataclass
class BenchmarkSpec:
    """A benchmark for `lmlab eval NAME`."""

    name: str
    description: str
    load: Callable[[str, EvalSettings], LoadedData]
    default_data: Callable[[], str]
    breakdowns: tuple[str, ...] = ()
    options: tuple[BenchmarkOption, ...] = ()
    parse: Callable[[str, EvalItem], int | None] | None = None
    judge: Callable[[Sequence[EvalItem], Sequence[str], EvalContext], list[float]] | None = None
    extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    normalize: bool = False  # loglik: rank choices by log-likelihood per byte (choices of different lengths)
    max_tokens: int = 16
    cot_max_tokens: int = 512
    stop: tuple[str, ...] = ()  # generate mode: where the answer ends (e.g. the start of a next question)


def benchmarks() -> dict[str, BenchmarkSpec]:
    return collect("register_benchmarks", "eval", key=lambda spec: spec.name)


def parse_letter(text: str, item: EvalItem) -> int | None:
    """The option a free-text answer names: the last 'answer: X' / '정답: X' / '{"Answer": "x"}' if present,
    else the first standalone option label; None when it names none (an anomalous answer)."""
    labels = item.labels or tuple(chr(ord("A") + i) for i in range(len(item.choices)))
    pattern = "|".join(re.escape(label) for label in labels)
    flags = re.IGNORECASE if all(label.isascii() for label in labels) else 0
    stated = re.findall(rf"(?:answer|정답|উত্তর)\W{{0,6}}\(?({pattern})\b", text, flags)
    found = stated[-1] if stated else None
    if found is None:
        first = re.search(rf"(?<![\w])\(?({pattern})(?:\)|\.|:|,|\s|$)", text.strip(), flags)
        found = first.group(1) if first else None
    if found is None:
        return None
    lowered = [label.lower() for label in labels]
    return lowered.index(found.lower()) if flags else labels.index(found)


def limit_items(items: list[EvalItem], limit: int | None) -> list[EvalItem]:
    """The first `limit` items, taken round-robin across the first breakdown value (file / category), so a
    small limit still covers every category; the order is deterministic."""
    if limit is None or limit >= len(items):
        return items
    buckets: dict[str, list[EvalItem]] = defaultdict(list)
    for item in items:
        buckets[next(iter(item.groups.values()), "")].append(item)
    rounds = itertools.zip_longest(*buckets.values())  # every bucket's first item, then every second one, ...
    return [item for row in rounds for item in row if item is not None][:limit]


def score_items(spec: BenchmarkSpec, items: Sequence[EvalItem], backend: Backend, ctx: EvalContext
                ) -> list[dict[str, Any]]:
    """Per-item results: {id, groups, gold, pred, correct, ...}; `correct` is 0/1, or a rubric score."""
    settings = ctx.settings
    choice = [n for n, i in enumerate(items) if i.rubric is None]
    judged = [n for n, i in enumerate(items) if i.rubric is not None]
    results: dict[int, dict[str, Any]] = {}
    if choice and settings.mode == "loglik":
        requests = [ChoiceRequest(items[n].prompt, items[n].choices) for n in choice]
        scores = ctx.cache.run(backend.identity, "loglik", requests, backend.loglik, progress=ctx.progress)
        for n, row in zip(choice, scores, strict=True):
            ranked = [v / max(1, len(c.encode())) for v, c in zip(row, items[n].choices, strict=True)] \
                if spec.normalize else row
            results[n] = _result(items[n], max(range(len(row)), key=ranked.__getitem__), loglik=row)
    elif choice:
        parse = spec.parse or parse_letter
        default = spec.cot_max_tokens if settings.cot else spec.max_tokens
        requests = [GenerateRequest(items[n].generate_prompt or items[n].prompt, settings.max_tokens or default,
                                    spec.stop) for n in choice]
        texts = ctx.generate(backend, requests)
        for n, text in zip(choice, texts, strict=True):
            results[n] = _result(items[n], parse(text, items[n]), response=text)
    if judged:
        if spec.judge is None:
            raise LmlabError(f"Benchmark '{spec.name}' has rubric items but no judge.", hint="a plugin bug")
        todo = [items[n] for n in judged]
        requests = [GenerateRequest(i.generate_prompt or i.prompt, settings.max_tokens or spec.cot_max_tokens,
                                    spec.stop) for i in todo]
        texts = ctx.generate(backend, requests)
        scores = spec.judge(todo, texts, replace(ctx, progress=None))  # judge calls are not items: no progress
        for n, item, text, score in zip(judged, todo, texts, scores, strict=True):
            results[n] = {"id": item.id, "groups": item.groups, "gold": None, "pred": None,
                          "correct": float(score), "response": text}
    return [results[n] for n in range(len(items))]


def _result(item: EvalItem, pred: int | None, **extra: Any) -> dict[str, Any]:
    return {"id": item.id, "groups": item.groups, "gold": item.gold, "pred": pred,
            "correct": float(pred == item.gold), **extra}


def summarize(spec: BenchmarkSpec, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and per breakdown value; unparsed generated answers count as wrong (and as `unparsed`)."""
    def block(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"n": len(rows), "accuracy": sum(r["correct"] for r in rows) / len(rows) if rows else None}

    by: dict[str, dict[str, Any]] = {}
    for key in spec.breakdowns:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in results:
            if key in row["groups"]:
                groups[row["groups"][key]].append(row)
        if groups:
            by[key] = {value: block(rows) for value, rows in sorted(groups.items())}
    summary = {**block(results), "unparsed": sum(1 for r in results if r["gold"] is not None and r["pred"] is None),
               "by": by}
    if spec.extra is not None:
        summary.update(spec.extra(summary))
    return summary
