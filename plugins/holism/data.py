"""Holism items (the open JSONL format of docs/holism.md): read them, check every rule, build the prompts, and judge
the arguments. Abduction and revision items are two-option preference questions: loglik mode scores each option text
after the prompt (per byte), generate mode shows them as A/B and parses the letter. Argument items are generated,
then scored by `judge`: the fraction of rubric points made, by keyword (`--judge keywords`, the default: a point is
made when one of its keywords appears as a whole word or phrase) or by a judge model asked per point (yes/no)."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from lmlab.core.evaluation.backends import GenerateRequest
from lmlab.core.evaluation.scoring import EvalContext, EvalItem, EvalSettings, LoadedData
from lmlab.core.files.records import Record, SkipLog, load_records
from lmlab.core.kernel.errors import DataError

TASKS = ("abduction", "revision", "argument")
PREFERENCE_TASKS = ("abduction", "revision")
KINDS = ("core", "peripheral")
LABELS = ("A", "B")
HINT = "see docs/holism.md (Item format) for the fields and rules"
STATEMENT_ID = re.compile(r"([cp])[1-9][0-9]*")
ASK_LETTER = "Answer with the letter A or B.\nAnswer:"
ASK_COT = "Think step by step, then give the final answer on the last line as 'Answer: A' or 'Answer: B'.\nReasoning:"
ARGUMENT_TASK = ("Write a short argument, in a few sentences, that reconciles the observation with the background "
                 "knowledge: say which belief should be kept, which should be revised, and why.")
KEYWORDS = "keywords"
# A base model often goes on to write the next prompt; only the argument itself is judged.
_NEXT_SECTION = re.compile(r"\n\s*(?:Background knowledge|Observation|Question|Argument|Answer)\s*:")
JUDGE_MAX_TOKENS = 4


def _fail(record: Record, field: str, message: str, hint: str = HINT) -> DataError:
    return DataError(message, path=record.path, line=record.line, field=field, hint=hint)


def _text(record: Record, value: Any, field: str) -> str:
    """A non-empty string at `field` (a top-level or nested field, named for the error)."""
    if value is None:
        raise _fail(record, field, "missing")
    if not isinstance(value, str):
        raise _fail(record, field, f"expected a string, got {_type(value)}")
    if not value.strip():
        raise _fail(record, field, "is empty")
    return value.strip()


def _list(record: Record, value: Any, field: str, low: int, high: int, what: str) -> list[Any]:
    if value is None:
        raise _fail(record, field, "missing")
    if not isinstance(value, list):
        raise _fail(record, field, f"expected a list of {what}, got {_type(value)}")
    if not low <= len(value) <= high:
        count = f"exactly {low}" if low == high else f"{low}-{high}"
        raise _fail(record, field, f"expected {count} {what}, got {len(value)}")
    return value


def _object(record: Record, value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(record, field, f"expected an object, got {_type(value)}")
    return value


def _choice(record: Record, value: Any, field: str, allowed: tuple[str, ...]) -> str:
    text = _text(record, value, field)
    if text not in allowed:
        raise _fail(record, field, f"{text!r} is not one of {', '.join(allowed)}")
    return text


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _statements(record: Record) -> list[dict[str, str]]:
    raw = _list(record, record.data.get("statements"), "statements", 2, 4, "statements")
    statements: list[dict[str, str]] = []
    for n, entry in enumerate(raw):
        field = f"statements[{n}]"
        entry = _object(record, entry, field)
        sid = _text(record, entry.get("id"), f"{field}.id")
        kind = _choice(record, entry.get("kind"), f"{field}.kind", KINDS)
        text = _text(record, entry.get("text"), f"{field}.text")
        shape = STATEMENT_ID.fullmatch(sid)
        if shape is None or shape.group(1) != kind[0]:
            raise _fail(record, f"{field}.id", f"{sid!r} does not fit kind '{kind}'",
                        hint="core statements are c1, c2, ...; peripheral ones p1, p2, ...")
        if any(s["id"] == sid for s in statements):
            raise _fail(record, f"{field}.id", f"duplicate statement id {sid!r}",
                        hint="statement ids are unique within an item")
        statements.append({"id": sid, "text": text, "kind": kind})
    kinds = {s["kind"] for s in statements}
    for kind in KINDS:
        if kind not in kinds:
            raise _fail(record, "statements", f"no {kind} statement",
                        hint="every item has at least one core and one peripheral statement")
    return statements


def _options(record: Record, statements: list[dict[str, str]]) -> tuple[list[dict[str, str]], int]:
    raw = _list(record, record.data.get("options"), "options", 2, 2, "options")
    kind_of = {s["id"]: s["kind"] for s in statements}
    options = []
    for n, entry in enumerate(raw):
        field = f"options[{n}]"
        entry = _object(record, entry, field)
        text = _text(record, entry.get("text"), f"{field}.text")
        revises = _text(record, entry.get("revises"), f"{field}.revises")
        if revises not in kind_of:
            raise _fail(record, f"{field}.revises", f"{revises!r} is not the id of a statement in this item",
                        hint=f"statement ids here: {', '.join(kind_of)}")
        options.append({"text": text, "revises": revises, "kind": kind_of[revises]})
    if {o["kind"] for o in options} != set(KINDS):
        raise _fail(record, "options", "both options revise a " + options[0]["kind"] + " statement",
                    hint="one option revises a core statement, the other a peripheral one")
    gold = record.data.get("gold")
    if gold is None:
        raise _fail(record, "gold", "missing")
    if not isinstance(gold, int) or isinstance(gold, bool):
        raise _fail(record, "gold", f"expected an int, got {_type(gold)}")
    if not 0 <= gold < len(options):
        raise _fail(record, "gold", f"{gold} is out of range", hint="'gold' is the index of an option: 0 or 1")
    if options[gold]["kind"] != "peripheral":
        raise _fail(record, "gold", f"option {gold} revises core statement {options[gold]['revises']!r}",
                    hint="'gold' points to the option that revises the peripheral statement")
    if record.data.get("rubric") is not None:
        raise _fail(record, "rubric", f"{record.data['task']} items have no rubric",
                    hint="only argument items have a rubric")
    return options, gold


def _rubric(record: Record) -> list[dict[str, Any]]:
    for field in ("options", "gold"):
        if record.data.get(field) is not None:
            raise _fail(record, field, f"argument items have no {field}",
                        hint="argument items are scored by their rubric")
    raw = _list(record, record.data.get("rubric"), "rubric", 2, 4, "rubric points")
    rubric = []
    for n, entry in enumerate(raw):
        field = f"rubric[{n}]"
        entry = _object(record, entry, field)
        point = _text(record, entry.get("point"), f"{field}.point")
        words = _list(record, entry.get("keywords"), f"{field}.keywords", 2, 4, "keywords")
        keywords = [_text(record, word, f"{field}.keywords[{k}]").lower() for k, word in enumerate(words)]
        rubric.append({"point": point, "keywords": keywords})
    return rubric


def validate(record: Record) -> dict[str, Any]:
    """The item as a clean dict; DataError naming file:line and the field on any violation of the rules."""
    get = record.data.get
    item: dict[str, Any] = {"id": _text(record, get("id"), "id"), "task": _choice(record, get("task"), "task", TASKS),
                            "domain": _text(record, get("domain"), "domain"), "statements": _statements(record),
                            "observation": _text(record, get("observation"), "observation"),
                            "focus": _choice(record, get("focus"), "focus", KINDS),
                            "question": _text(record, get("question"), "question")}
    if item["task"] in PREFERENCE_TASKS:
        item["options"], item["gold"] = _options(record, item["statements"])
    else:
        item["rubric"] = _rubric(record)
    return item


def context(item: dict[str, Any]) -> str:
    """The knowledge web, the observation and the question, as every prompt starts."""
    knowledge = "\n".join(f"- {s['text']}" for s in item["statements"])
    return f"Background knowledge:\n{knowledge}\nObservation: {item['observation']}\nQuestion: {item['question']}"


def loglik_prompt(item: dict[str, Any]) -> str:
    return f"{context(item)}\nAnswer:"


def letter_prompt(item: dict[str, Any]) -> str:
    return f"{options_block(item)}\n{ASK_LETTER}"


def options_block(item: dict[str, Any]) -> str:
    listed = "\n".join(f"{label}. {o['text']}" for label, o in zip(LABELS, item["options"], strict=True))
    return f"{context(item)}\n{listed}"


def argument_prompt(item: dict[str, Any]) -> str:
    # A newline after the colon: the instruct model tends to end its turn right after "Argument:".
    return f"{context(item)}\n{ARGUMENT_TASK}\nArgument:\n"


def load_holism(data: str, settings: EvalSettings) -> LoadedData:
    seen: dict[str, Record] = {}
    checked = []
    pools: dict[str, list[int]] = {}  # the preference items of each task, the few-shot examples' pool
    for record in load_records(data):
        item = validate(record)
        first = seen.get(item["id"])
        if first is not None:
            raise _fail(record, "id", f"duplicate id {item['id']!r}",
                        hint=f"first used at {first.path}:{first.line}; every id is unique")
        seen[item["id"]] = record
        if item["task"] in PREFERENCE_TASKS:
            pools.setdefault(item["task"], []).append(len(checked))
        checked.append(item)
    rng = random.Random(settings.seed)
    return LoadedData([_eval_item(n, item, checked, pools, settings, rng) for n, item in enumerate(checked)],
                      SkipLog(), source=data)


def _eval_item(n: int, item: dict[str, Any], checked: list[dict[str, Any]], pools: dict[str, list[int]],
               settings: EvalSettings, rng: random.Random) -> EvalItem:
    groups = {"task": item["task"], "focus": item["focus"], "domain": item["domain"],
              "task_focus": f"{item['task']}/{item['focus']}"}
    if item["task"] not in PREFERENCE_TASKS:
        text = argument_prompt(item)
        return EvalItem(id=item["id"], prompt=text, choices=(), gold=-1, groups=groups, generate_prompt=text,
                        rubric=item["rubric"])
    shots = loglik_shots = ""
    if settings.num_fewshot:
        pool = [m for m in pools[item["task"]] if m != n]
        for m in rng.sample(pool, min(settings.num_fewshot, len(pool))):
            shot = checked[m]
            loglik_shots += f"{loglik_prompt(shot)} {shot['options'][shot['gold']]['text']}\n\n"
            shots += f"{letter_prompt(shot)} {LABELS[shot['gold']]}\n\n"
    generate = shots + letter_prompt(item)
    if settings.cot:
        generate = f"{shots}{options_block(item)}\n{ASK_COT}"
    return EvalItem(id=item["id"], prompt=loglik_shots + loglik_prompt(item),
                    choices=tuple(f" {o['text']}" for o in item["options"]), gold=item["gold"], groups=groups,
                    labels=LABELS, generate_prompt=generate)


def argument_text(text: str) -> str:
    """The generated argument up to the point where the model starts a new prompt section."""
    match = _NEXT_SECTION.search(text)
    return (text[:match.start()] if match else text).strip()


def _mentions(answer: str, keyword: str) -> bool:
    phrase = r"\s+".join(re.escape(word) for word in keyword.lower().split())
    return re.search(rf"(?<!\w){phrase}(?!\w)", answer) is not None


def keyword_score(rubric: Sequence[dict[str, Any]], text: str) -> float:
    """The fraction of rubric points with at least one keyword in `text`."""
    answer = argument_text(text).lower()
    made = sum(1 for point in rubric if any(_mentions(answer, k) for k in point["keywords"]))
    return made / len(rubric) if rubric else 0.0


def judge_prompt(item: EvalItem, text: str, point: str) -> str:
    situation = item.prompt.split(f"\n{ARGUMENT_TASK}", 1)[0]
    return (f"{situation}\n\nHere is an argument that tries to reconcile the observation with the background "
            f"knowledge.\nArgument: {argument_text(text)}\n\nDoes the argument make this point: {point} "
            "Answer yes or no.\nAnswer:")


def is_yes(answer: str) -> bool:
    words = re.findall(r"[a-z]+", answer.lower())
    return bool(words) and words[0] == "yes"


def judge(items: Sequence[EvalItem], texts: Sequence[str], ctx: EvalContext) -> list[float]:
    """Scores for the answers `texts` to the argument `items`, by the `--judge` the options name (a judge model is
    asked through `--judge-backend` and the run's request cache)."""
    spec = str(ctx.settings.options.get("judge") or KEYWORDS)
    if spec == KEYWORDS:
        return [keyword_score(item.rubric, text) for item, text in zip(items, texts, strict=True)]
    backend = ctx.backend_for(str(ctx.settings.options.get("judge_backend") or "hf"), spec)
    requests = [GenerateRequest(judge_prompt(item, text, point["point"]), JUDGE_MAX_TOKENS, stop=("\n",))
                for item, text in zip(items, texts, strict=True) for point in item.rubric]
    verdicts = iter(ctx.generate(backend, requests))
    scores = []
    for item in items:
        yes = sum(is_yes(next(verdicts)) for _ in item.rubric)
        scores.append(yes / len(item.rubric) if item.rubric else 0.0)
    return scores
