"""KILT-format queries, KILT's page-level retrieval metrics and its downstream (answer) scores.

A row is `{"id", "input", "output": [{"answer", "provenance": [{"wikipedia_id", "title", ...}]}]}`; each output with
provenance gives one evidence set (its distinct `wikipedia_id`s), any one set enough to support the answer. The
metrics reproduce KILT's `kilt/eval_retrieval.py` (commit 2664322, rank key `wikipedia_id`), plus MRR on the same rank,
except that an output with an empty provenance list gives no evidence set (KILT would count one that can never be
found in recall's denominator). The downstream scores reproduce `kilt/eval_downstream.py`: SQuAD-normalised EM
and token F1 (`core.evaluation.answers`, the best over the gold answers), accuracy for labels, and KILT-EM/F1/AC,
which credit an answer only where the ranking's R-precision is 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmlab.core.evaluation.answers import best_over_golds, exact_match, f1
from lmlab.core.files.records import Record, load_records
from lmlab.core.kernel.errors import DataError

Evidence = Sequence[Sequence[str]]
ROW_HINT = ('a KILT row looks like {"id": "q1", "input": "...", "output": [{"answer": "...", '
            '"provenance": [{"wikipedia_id": "123", "title": "..."}]}]}')


@dataclass(frozen=True)
class KiltQuery:
    """One query. `evidence` holds the distinct evidence sets (page ids), `titles` their pages' titles in the
    same shape (None where a provenance entry has no title), `answers` the distinct non-empty answers."""

    id: str
    input: str
    answers: tuple[str, ...]
    evidence: tuple[tuple[str, ...], ...]
    titles: tuple[tuple[str | None, ...], ...]


def _value(record: Record, field: str, value: Any, types: tuple[type, ...], expected: str,
           required: bool = True) -> Any:
    """`value` if it is one of `types` (a bool is no int); None if absent and not required; else DataError."""
    if value is None and not required:
        return None
    if value is None or isinstance(value, bool) or not isinstance(value, types):
        message = "missing" if value is None else f"expected {expected}, got {type(value).__name__}"
        raise DataError(message, path=record.path, line=record.line, field=field, hint=ROW_HINT)
    return value


def _key(record: Record, field: str, value: Any) -> str:
    """An id (a string or an integer) as KILT compares it: `str(value).strip()`, which must not be empty."""
    key = str(_value(record, field, value, (str, int), "a string or an integer")).strip()
    if not key:
        raise DataError("is empty", path=record.path, line=record.line, field=field, hint=ROW_HINT)
    return key


def _evidence_set(record: Record, where: str, provenance: list[Any]) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """The distinct page ids of one output's provenance, in order, and their titles."""
    pages: dict[str, str | None] = {}
    for j, page in enumerate(provenance):
        at = f"{where}.provenance[{j}]"
        _value(record, at, page, (dict,), "an object")
        page_id = _key(record, f"{at}.wikipedia_id", page.get("wikipedia_id"))
        title = _value(record, f"{at}.title", page.get("title"), (str,), "a string", required=False)
        pages.setdefault(page_id, (title or "").strip() or None)
    return tuple(pages), tuple(pages.values())


def kilt_query(record: Record) -> KiltQuery:
    """The KiltQuery in one row; DataError naming file, line and field (e.g. `output[0].provenance[1].wikipedia_id`)
    for anything missing or mistyped. A row without `output` (a KILT test split) has no answers and no evidence."""
    key = _key(record, "id", record.data.get("id"))
    text = _value(record, "input", record.data.get("input"), (str,), "a string")
    if not text.strip():
        raise DataError("is empty", path=record.path, line=record.line, field="input", hint=ROW_HINT)
    outputs = _value(record, "output", record.data.get("output"), (list,), "a list of objects", required=False)
    answers: dict[str, None] = {}
    evidence: dict[frozenset[str], tuple[tuple[str, ...], tuple[str | None, ...]]] = {}
    for i, output in enumerate(outputs or []):
        where = f"output[{i}]"
        _value(record, where, output, (dict,), "an object")
        answer = _value(record, f"{where}.answer", output.get("answer"), (str,), "a string", required=False)
        if answer and answer.strip():
            answers.setdefault(answer.strip())
        provenance = _value(record, f"{where}.provenance", output.get("provenance"), (list,), "a list of objects",
                            required=False)
        ids, titles = _evidence_set(record, where, provenance or [])
        if ids:
            evidence.setdefault(frozenset(ids), (ids, titles))
    return KiltQuery(id=key, input=text, answers=tuple(answers),
                     evidence=tuple(ids for ids, _ in evidence.values()),
                     titles=tuple(titles for _, titles in evidence.values()))


def load_kilt(path: str | os.PathLike) -> list[KiltQuery]:
    """Every query in a KILT file (JSONL/JSON/CSV/Parquet/saved dataset); ids must be unique."""
    queries: list[KiltQuery] = []
    seen: dict[str, Record] = {}
    for record in load_records(path):
        query = kilt_query(record)
        if query.id in seen:
            raise DataError(f"duplicate id '{query.id}' (first at line {seen[query.id].line})", path=record.path,
                            line=record.line, field="id", hint="every query needs its own id")
        seen[query.id] = record
        queries.append(query)
    return queries


def _guesses(ranking: Sequence[str]) -> list[str]:
    """The ranking as KILT reads it: ids stripped, later duplicates dropped (`_remove_duplicates`)."""
    return list(dict.fromkeys(str(page).strip() for page in ranking))


def _sets(evidence: Evidence) -> list[set[str]]:
    """The distinct non-empty evidence sets (`get_rank`: "no duplicate evidence set"), in order."""
    distinct = dict.fromkeys(frozenset(str(page).strip() for page in pages) for pages in evidence if pages)
    return [set(pages) for pages in distinct]


def _kilt_rank(ranking: Sequence[str], evidence: Evidence) -> tuple[list[bool | str], int]:
    """KILT `get_rank`: each evidence set is one point of the rank, placed at its last page to be retrieved
    (`True` once complete, a placeholder while partial); a page of no set is one `False` point. Returns the
    rank and the number of distinct evidence sets."""
    sets = _sets(evidence)
    rank: list[bool | str] = []
    for guess in _guesses(ranking):
        found = False
        for i, pages in enumerate(sets):
            if guess in pages:
                found = True
                if f"set{i}" in rank:
                    rank.remove(f"set{i}")
                pages.remove(guess)
                rank.append(True if not pages else f"set{i}")
        if not found:
            rank.append(False)
    return rank, len(sets)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")


def min_prediction_size(evidence: Evidence, k: int) -> int:
    """KILT `get_rank`'s "minimum number of predicted pages needed to get a robust P/R@k": the sizes of the k largest
    evidence sets, plus one page per slot up to k that no set fills. A ranking shorter than this cannot show every
    set completing within k points, so a retriever is scored on at least this many pages, never on a list cut to k."""
    _check_k(k)
    sizes = sorted((len(pages) for pages in _sets(evidence)), reverse=True)[:k]
    return sum(sizes) + k - len(sizes)


def r_precision(ranking: Sequence[str], evidence: Evidence) -> float:
    """KILT `rprecision`: for each evidence set of R distinct pages, the share of the top R guesses (duplicates
    dropped) that lie in the set (`_computeRprec`); the best over the sets; 0 without evidence."""
    guesses = _guesses(ranking)
    return max((len(pages.intersection(guesses[:len(pages)])) / len(pages) for pages in _sets(evidence)),
               default=0.0)


def recall_at_k(ranking: Sequence[str], evidence: Evidence, k: int) -> float:
    """KILT `_recall_at_k`: the share of evidence sets complete within the first k points of `get_rank`'s rank
    (a set is one point, so recall@2 of [A, X, B] for the set {A, B} is 1); 0 without evidence."""
    _check_k(k)
    rank, sets = _kilt_rank(ranking, evidence)
    return rank[:k].count(True) / sets if sets else 0.0


def success_at_k(ranking: Sequence[str], evidence: Evidence, k: int) -> float:
    """KILT `_success_rate_at_k`: 1 if some evidence set is complete within the first k points of the rank."""
    _check_k(k)
    rank, _ = _kilt_rank(ranking, evidence)
    return float(True in rank[:k])


def reciprocal_rank(ranking: Sequence[str], evidence: Evidence) -> float:
    """1 / the first point of `get_rank`'s rank at which some evidence set is complete (not in KILT; chosen so
    that success@k = 1 exactly when the reciprocal rank is at least 1/k); 0 if none is."""
    rank, _ = _kilt_rank(ranking, evidence)
    return 1 / (rank.index(True) + 1) if True in rank else 0.0


def retrieval_metrics(rankings: Mapping[str, Sequence[str]], queries: Sequence[KiltQuery],
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float | int]:
    """Means over all `queries`, one without provenance scoring 0 (counted in `without_provenance`); every query needs
    a ranking (`validate_input`), others are ignored. Keys: r_precision, recall@k and success@k per k, mrr, queries."""
    for k in ks:
        _check_k(k)
    missing = [query.id for query in queries if query.id not in rankings]
    if missing:
        raise ValueError(f"no ranking for {len(missing)} of {len(queries)} queries, e.g. '{missing[0]}'")
    count = len(queries)

    def mean(values: list[float]) -> float:
        return math.fsum(values) / count if count else 0.0

    result: dict[str, float | int] = {"r_precision": mean([r_precision(rankings[q.id], q.evidence) for q in queries])}
    for name, metric in (("recall", recall_at_k), ("success", success_at_k)):
        for k in ks:
            result[f"{name}@{k}"] = mean([metric(rankings[q.id], q.evidence, k) for q in queries])
    result["mrr"] = mean([reciprocal_rank(rankings[q.id], q.evidence) for q in queries])
    result["queries"] = count
    result["without_provenance"] = sum(not q.evidence for q in queries)
    return result


def downstream_metrics(answers: Mapping[str, str], rankings: Mapping[str, Sequence[str]],
                       queries: Sequence[KiltQuery]) -> dict[str, float | int]:
    """KILT's `eval_downstream._calculate_metrics` over every query with gold answers: accuracy (the stripped answer
    is one of the gold answers, as given), EM and F1 after SQuAD's normalisation (the best over the gold answers), and
    KILT-AC/EM/F1: the same, credited only where the ranking's R-precision is 1. An empty answer scores 0 and
    counts; every query needs an answer and a ranking."""
    scored = [q for q in queries if q.answers]
    missing = [q.id for q in scored if q.id not in answers or q.id not in rankings]
    if missing:
        raise ValueError(f"no answer or ranking for {len(missing)} of {len(scored)} queries, e.g. '{missing[0]}'")
    totals = dict.fromkeys(("accuracy", "em", "f1", "kilt_accuracy", "kilt_em", "kilt_f1"), 0.0)
    for query in scored:
        guess = str(answers[query.id]).strip()
        if not guess:
            continue
        local = {"accuracy": float(guess in query.answers),
                 "em": best_over_golds(exact_match, guess, query.answers),
                 "f1": best_over_golds(f1, guess, query.answers)}
        proven = r_precision(rankings[query.id], query.evidence) == 1
        for name, value in local.items():
            totals[name] += value
            totals[f"kilt_{name}"] += value if proven else 0.0
    count = len(scored)
    return {**{name: value / count if count else 0.0 for name, value in totals.items()}, "queries": count}
