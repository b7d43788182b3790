"""Read CLIcK as released (Dataset/{Culture,Language}/<Category>/<Name>_<SOURCE>.json) and build the paper's
Korean prompt with every option, A-D or A-E (lm-evaluation-harness never shows option E)."""

from __future__ import annotations

import random
import re
from pathlib import Path

from lmlab.core.evaluation.scoring import EvalItem, EvalSettings, LoadedData
from lmlab.core.files.records import HF_MARKERS, Record, SkipLog, load_records
from lmlab.core.kernel.errors import DataError

LETTERS = "ABCDE"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
HINT = "the official layout is Dataset/{Culture,Language}/<Category>/<Name>_<SOURCE>.json (EunsuKim/CLIcK)"
# For flat data (a Hub id or one file) the category comes from the item id, as lm-evaluation-harness does it.
CULTURE_IDS = {"economy": "Economy", "geography": "Geography", "history": "History", "khb": "History",
               "law": "Law", "psat": "Law", "politics": "Politics", "popular": "Popular", "society": "Society",
               "tradition": "Tradition"}


def dataset_root(data: str) -> Path | None:
    """The Dataset/ folder for `data` (the folder holding it, or Dataset/ itself); None if not a folder."""
    path = Path(data).expanduser()
    if not path.exists() and not HUB_ID.fullmatch(data):
        raise DataError("no such file or directory", path=data, hint=HINT)
    if not path.is_dir() or any((path / marker).is_file() for marker in HF_MARKERS):
        return None  # a file, a saved Hugging Face dataset, or a Hub id: flat records
    for candidate in (path / "Dataset", path):
        if (candidate / "Culture").is_dir() or (candidate / "Language").is_dir():
            return candidate
    raise DataError("has no Culture/ or Language/ folder", path=str(path), hint=HINT)


def prompt(record: Record) -> tuple[str, int]:
    """The paper's prompt (맥락 only when there is a paragraph) and the index of the gold option."""
    question = record.get("question", str)
    choices = record.get("choices", list)
    if len(choices) not in (4, 5) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"expected a list of 4 or 5 strings, got {len(choices)} items", path=record.path,
                        line=record.line, field="choices", hint=HINT)
    answer = record.get("answer", str)
    if answer not in choices:
        raise DataError(f"answer {answer!r} is not one of the choices", path=record.path, line=record.line,
                        field="answer", hint="'answer' is the text of the right choice")
    letters = LETTERS[:len(choices)]
    options = ", ".join(f"{letter}:{text}" if i == 0 else f"{letter}: {text}"
                        for i, (letter, text) in enumerate(zip(letters, choices, strict=True)))
    paragraph = record.data.get("paragraph") or ""
    listed = ", ".join(letters)
    if paragraph:
        head = (f"주어진 맥락을 천천히 읽고, 질문에 대한 적절한 정답을 {listed} 중에 골라 알파벳 하나로 답하시오.\n\n"
                f"맥락: {paragraph}\n")
    else:
        head = f"주어진 질문을 천천히 읽고, 적절한 정답을 {listed} 중에 골라 알파벳 하나로 답하시오.\n\n"
    return f"{head}질문: {question}\n보기:\n{options}\n정답:", choices.index(answer)


def _records(data: str) -> list[tuple[Record, dict[str, str]]]:
    root = dataset_root(data)
    if root is None:
        rows = []
        for record in load_records(data):
            key = next((k for k in CULTURE_IDS if k in str(record.data.get("id", "")).lower()), None)
            rows.append((record, {"category": CULTURE_IDS[key] if key else "Language",
                                  "group": "Culture" if key else "Language",
                                  "source": str(record.data.get("id", "")).split("_")[0]}))
        return rows
    files = sorted(root.glob("*/*/*.json"))
    if not files:
        raise DataError("has no <Group>/<Category>/<Name>_<SOURCE>.json files", path=str(root), hint=HINT)
    rows = []
    for file in files:
        groups = {"category": file.parent.name.removeprefix("Korean "), "group": file.parent.parent.name,
                  "source": file.stem.rsplit("_", 1)[-1]}
        rows += [(record, groups) for record in load_records(file)]
    return rows


def load_click(data: str, settings: EvalSettings) -> LoadedData:
    rows = _records(data)
    built = [(prompt(record), groups, record) for record, groups in rows]
    rng = random.Random(settings.seed)
    by_category: dict[str, list[int]] = {}
    for n, (_, groups, _) in enumerate(built):
        by_category.setdefault(groups["category"], []).append(n)
    items = []
    for n, ((text, gold), groups, record) in enumerate(built):
        letters = LETTERS[:len(record.data["choices"])]
        shots = ""
        if settings.num_fewshot:
            pool = [m for m in by_category[groups["category"]] if m != n]
            for m in rng.sample(pool, min(settings.num_fewshot, len(pool))):
                (shot, shot_gold), _, shot_record = built[m]
                shots += f"{shot} {LETTERS[shot_gold]}\n\n"
        generate = shots + text
        if settings.cot:
            generate = (f"{shots}{text[:-len('정답:')]}단계별로 생각한 다음, 마지막 줄에 '정답: X' 형식으로 "
                        f"답하시오.\n풀이:")
        items.append(EvalItem(id=str(record.data.get("id", f"{record.path}:{record.line}")),
                              prompt=shots + text, choices=tuple(f" {letter}" for letter in letters), gold=gold,
                              groups=groups, labels=tuple(letters), generate_prompt=generate))
    return LoadedData(items, SkipLog(), source=data)
