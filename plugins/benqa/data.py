"""Read BEnQA as released (data/BEnQA/<grade>-<subject>.csv, few-shot examples in the sibling
data/BEnQA-few_shots_examples/<grade>-<subject>-few_shot.csv) and build one item per question and language.

Prompt choices, made here because the paper does not fix them for log-likelihood scoring: the instruction is in the
item's language and names the subject and grade; the option letters stay latin a-d in BOTH languages (the release's
answer key is latin a-d for both, and identical continuations " a" ... " d" make the en-bn gap measure the question
and option text rather than how a tokenizer treats ক/খ/গ/ঘ); few-shot examples (the first k rows of the subject's
few-shot file, at most 5; one that is the question itself, as in 8th-Science, is replaced by the next row) follow the
instruction, formatted like the question with its answer or, with chain of thought, its worked solution; chain of
thought asks for the paper's final-answer format {"Answer": "x"}."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.core.evaluation.scoring import EvalItem, EvalSettings, LoadedData, parse_letter
from lmlab.core.files.records import Record, SkipLog, load_records
from lmlab.core.kernel.errors import DataError, LmlabError

LETTERS = ("a", "b", "c", "d")
LANGUAGES = ("en", "bn")
MAX_SHOTS = 5
COLUMNS = ("English Question", "Bengali Question", "A", "B", "C", "D", "A Bn", "B Bn", "C Bn", "D Bn",
           "Correct Answer")
FEWSHOT_DIR = "BEnQA-few_shots_examples"
HINT = ("the official layout is data/BEnQA/<grade>-<subject>.csv (e.g. 10th-Physics.csv) with few-shot files in "
        "data/BEnQA-few_shots_examples/<grade>-<subject>-few_shot.csv (sheikhshafayat/BEnQA); pass the folder "
        "holding data/, data/ itself, or BEnQA/")
FILE_NAME = re.compile(r"(\d+(?:st|nd|rd|th))-(.+)\.csv", re.IGNORECASE)

SUBJECTS_EN = {"math": "mathematics", "science": "science", "physics": "physics", "chemistry": "chemistry",
               "biology": "biology"}
SUBJECTS_BN = {"math": "গণিত", "science": "বিজ্ঞান", "physics": "পদার্থবিজ্ঞান", "chemistry": "রসায়ন",
               "biology": "জীববিজ্ঞান"}
PAPERS_EN = {"I": "first paper", "II": "second paper"}
PAPERS_BN = {"I": "প্রথম পত্র", "II": "দ্বিতীয় পত্র"}
GRADES_BN = {"8th": "অষ্টম", "9th": "নবম", "10th": "দশম", "11th": "একাদশ", "12th": "দ্বাদশ"}

# Per language: the instruction, labels, and the chain-of-thought request.
TEXT = {
    "en": {"head": "The following is a multiple choice question about {subject} ({grade} grade). "
                   "Choose the correct option.",
           "question": "Question:", "answer": "Answer:", "solution": "Solution:",
           "cot": 'Think step by step, then give the final answer in the format {"Answer": "x"}, where x is '
                  "a, b, c or d."},
    "bn": {"head": "নিচে {grade} শ্রেণির {subject} বিষয়ের একটি বহুনির্বাচনি প্রশ্ন দেওয়া হলো। সঠিক বিকল্পটি বেছে নাও।",
           "question": "প্রশ্ন:", "answer": "উত্তর:", "solution": "সমাধান:",
           "cot": 'ধাপে ধাপে চিন্তা করো, তারপর চূড়ান্ত উত্তরটি {"Answer": "x"} আকারে দাও, যেখানে x হলো a, b, c '
                  "অথবা d।"},
}

# The last {"Answer": "x"} (the paper's format; its worked solutions write {{"Answer": "x"}}); the Bengali option
# letters ক খ গ ঘ count as a-d.
JSON_ANSWER = re.compile(r'"answer"\W*\(?([a-dক-ঘ])(?![\w\u0980-\u09ff])', re.IGNORECASE)
# With chain of thought, only a stated answer counts ("answer: c", "the answer is (c)", "উত্তর: গ"): a letter
# somewhere in the reasoning is no answer.
STATED_ANSWER = re.compile(r'(?:answer|উত্তর)(?:\s+is)?\W{0,6}\(?([a-dক-ঘ])(?![\w\u0980-\u09ff])', re.IGNORECASE)
BENGALI_LETTERS = {"ক": "a", "খ": "b", "গ": "c", "ঘ": "d"}


@dataclass
class Question:
    """One row, in both languages."""

    text: dict[str, str]
    options: dict[str, tuple[str, ...]]
    gold: int
    solution: dict[str, str]


def benqa_root(data: str) -> Path:
    """The BEnQA/ folder for `data`: a folder holding data/BEnQA/, one holding BEnQA/, or BEnQA/ itself."""
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError("no such directory", path=data, hint=HINT)
    if not path.is_dir():
        raise DataError("is not a folder", path=data, hint=HINT)
    for candidate in (path / "data" / "BEnQA", path / "BEnQA"):
        if candidate.is_dir():
            return candidate
    if any(FILE_NAME.fullmatch(p.name) for p in path.glob("*.csv")):
        return path
    raise DataError("has no data/BEnQA/ or BEnQA/ folder and no <grade>-<subject>.csv files", path=data,
                    hint=HINT)


def languages(value: Any) -> tuple[str, ...]:
    """--lang "en,bn" → ("en", "bn"); LmlabError for anything but en and bn."""
    chosen = [part.strip().lower() for part in str(value if value is not None else "en,bn").split(",")]
    chosen = [part for part in dict.fromkeys(chosen) if part]
    unknown = [part for part in chosen if part not in LANGUAGES]
    if unknown or not chosen:
        shown = ", ".join(repr(part) for part in unknown) if unknown else "nothing"
        raise LmlabError(f"--lang: unknown language {shown}.",
                         hint="use en, bn or both comma-separated: --lang en,bn")
    return tuple(chosen)


def split_name(name: str) -> tuple[str, str]:
    """'12th-Biology-I.csv' → ('12th', 'Biology-I')."""
    found = FILE_NAME.fullmatch(name)
    assert found is not None
    return found.group(1).lower(), found.group(2)


def _file_order(path: Path) -> tuple[int, str]:
    """8th before 10th before 12th, then by subject."""
    number = re.match(r"\d+", path.name)
    return (int(number.group()) if number else 0, path.stem)


def subject_text(grade: str, subject: str, lang: str) -> tuple[str, str]:
    """The subject and grade as the instruction names them, e.g. ('physics, first paper', '12th')."""
    base, _, paper = subject.rpartition("-") if subject.rsplit("-", 1)[-1] in PAPERS_EN else (subject, "", "")
    if lang == "bn":
        name = SUBJECTS_BN.get(base.lower(), base)
        return (f"{name} {PAPERS_BN[paper]}" if paper else name), GRADES_BN.get(grade, grade)
    name = SUBJECTS_EN.get(base.lower(), base)
    return (f"{name}, {PAPERS_EN[paper]}" if paper else name), grade


def _columns(records: list[Record], path: Path, required: tuple[str, ...]) -> dict[str, str]:
    """The actual column name for each required one, matched case-insensitively; DataError naming the first
    missing column."""
    present = {name.strip().lower(): name for name in records[0].data}
    for column in required:
        if column.lower() not in present:
            shown = ", ".join(name for name in records[0].data if name) or "none"
            raise DataError("missing column", path=str(path), line=1, field=column,
                            hint=f"columns present: {shown}")
    return {column: present[column.lower()] for column in required}


def _letter(value: Any) -> int | None:
    text = str(value or "").strip()
    return LETTERS.index(text.lower()) if text.lower() in LETTERS and len(text) == 1 else None


def read_questions(path: Path, skipped: SkipLog) -> list[tuple[Record, Question, str | None]]:
    """Every usable row of one <grade>-<subject>.csv with its question type (None without the column)."""
    records = load_records(path)
    present = set(records[0].data)
    for column in COLUMNS:  # exact names, as released
        if column not in present:
            shown = ", ".join(name for name in records[0].data if name) or "none"
            raise DataError("missing column", path=str(path), line=1, field=column,
                            hint=f"expected: {', '.join(COLUMNS)} (present: {shown})")
    rows = []
    for record in records:
        data = {column: str(record.data.get(column) or "").strip() for column in (*COLUMNS, "Question_Type")}
        gold = _letter(data["Correct Answer"])
        if gold is None:
            skipped.add("answer not a-d", record)
            continue
        rows.append((record, Question(text={"en": data["English Question"], "bn": data["Bengali Question"]},
                                      options={"en": tuple(data[c] for c in "ABCD"),
                                               "bn": tuple(data[f"{c} Bn"] for c in "ABCD")},
                                      gold=gold, solution={}), data["Question_Type"] or None))
    return rows


def read_shots(path: Path, k: int, cot: bool) -> list[Question]:
    """The first k + 1 examples of a few-shot file (columns looked up by name, case-insensitively: the release
    spells one of them 'C Bn')."""
    if not path.is_file():
        raise DataError("few-shot file not found", path=str(path),
                        hint=f"--num-fewshot needs {FEWSHOT_DIR}/<grade>-<subject>-few_shot.csv next to BEnQA/, "
                             "or use --num-fewshot 0")
    records = load_records(path)
    required = ("Question", "Question Bn", "a", "b", "c", "d", "a Bn", "b Bn", "c Bn", "d Bn", "Correct Answer")
    names = _columns(records, path, required + (("English_Response", "Bengali_Response") if cot else ()))
    shots = []
    for record in records[:k + 1]:  # one spare: an example that is also the question is left out of its prompt
        data = {column: str(record.data[actual] or "").strip() for column, actual in names.items()}
        gold = _letter(data["Correct Answer"])
        if gold is None:
            raise DataError(f"answer {data['Correct Answer']!r} is not a-d", path=str(path), line=record.line,
                            field=names["Correct Answer"], hint="few-shot examples need a valid answer")
        shots.append(Question(
            text={"en": data["Question"], "bn": data["Question Bn"]},
            options={"en": tuple(data[c] for c in LETTERS), "bn": tuple(data[f"{c} Bn"] for c in LETTERS)},
            gold=gold,
            solution={lang: _solution(data.get(column, ""), gold)
                      for lang, column in (("en", "English_Response"), ("bn", "Bengali_Response"))}))
    return shots


def _same(shot: Question, question: Question) -> bool:
    """Whether a few-shot example is the question itself (same text in either language, spacing aside)."""
    return any(shot.text[lang] and " ".join(shot.text[lang].split()) == " ".join(question.text[lang].split())
               for lang in LANGUAGES)


def _solution(text: str, gold: int) -> str:
    """A worked solution ending in {"Answer": "x"}: the release writes {{"Answer": "x"}} (a format-string
    leftover), shown here as the single-brace form the instruction asks for; an empty cell becomes the bare
    answer."""
    text = re.sub(r'\{\{\s*("Answer"\s*:\s*"[^"]*")\s*\}\}', r"{\1}", text)
    return text or f'{{"Answer": "{LETTERS[gold]}"}}'


def block(question: Question, lang: str, translate: bool) -> str:
    """'Question: ...' and the options a) ... d), in `lang`; with `translate` the Bengali question is followed by
    its English original."""
    text = TEXT[lang]
    body = question.text[lang]
    if translate and lang == "bn" and question.text["en"]:
        body += f"\n(English: {question.text['en']})"
    options = "\n".join(f"{letter}) {option}" for letter, option in zip(LETTERS, question.options[lang], strict=True))
    return f"{text['question']} {body}\n{options}"


def prompts(question: Question, shots: list[Question], lang: str, grade: str, subject: str, translate: bool
            ) -> tuple[str, str]:
    """The answer-letter prompt (loglik and plain generate) and the chain-of-thought prompt."""
    text = TEXT[lang]
    name, grade_name = subject_text(grade, subject, lang)
    head = text["head"].format(subject=name, grade=grade_name)
    solved = "".join(f"{block(shot, lang, translate)}\n{text['answer']} {LETTERS[shot.gold]}\n\n" for shot in shots)
    plain = f"{head}\n\n{solved}{block(question, lang, translate)}\n{text['answer']}"
    worked = "".join(f"{block(shot, lang, translate)}\n{text['solution']} {shot.solution[lang]}\n\n" for shot in shots)
    cot = f"{head} {text['cot']}\n\n{worked}{block(question, lang, translate)}\n{text['solution']}"
    return plain, cot


def load_benqa(data: str, settings: EvalSettings) -> LoadedData:
    langs = languages(settings.options.get("lang", "en,bn"))
    translate = bool(settings.options.get("append_translation", False))
    root = benqa_root(data)
    files = sorted((p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".csv"), key=_file_order)
    misnamed = [p for p in files if not FILE_NAME.fullmatch(p.name)]
    if misnamed:
        raise DataError("is not named <grade>-<subject>.csv", path=str(misnamed[0]), hint=HINT)
    if not files:
        raise DataError("has no <grade>-<subject>.csv files", path=str(root), hint=HINT)
    k = min(settings.num_fewshot, MAX_SHOTS)
    skipped = SkipLog()
    items = []
    for path in files:
        grade, subject = split_name(path.name)
        key = f"{grade}-{subject}"
        shots = read_shots(root.parent / FEWSHOT_DIR / f"{path.stem}-few_shot.csv", k, settings.cot) if k else []
        for record, question, question_type in read_questions(path, skipped):
            for lang in langs:
                if not question.text[lang]:
                    skipped.add(f"empty {lang} question", record)
                    continue
                used = [shot for shot in shots if not _same(shot, question)][:k]
                plain, cot = prompts(question, used, lang, grade, subject, translate)
                groups = {"subject": key, "language": lang, "grade": grade, "subject_name": subject}
                if question_type:
                    groups["question_type"] = question_type
                items.append(EvalItem(id=f"{key}:{record.line}:{lang}", prompt=plain,
                                      choices=tuple(f" {letter}" for letter in LETTERS), gold=question.gold,
                                      groups=groups, labels=LETTERS, generate_prompt=cot if settings.cot else plain))
    return LoadedData(items, skipped, source=str(root))


def parse_answer(text: str, item: EvalItem) -> int | None:
    """The option a generated answer names: the last {"Answer": "x"}; otherwise, after chain of thought, a
    stated answer ("the answer is c"), and without it the core's parse_letter; None for an anomalous answer."""
    found = JSON_ANSWER.findall(text)
    cot = item.generate_prompt is not None and item.generate_prompt != item.prompt
    if not found and cot:
        found = STATED_ANSWER.findall(text)
    if not found:
        return None if cot else parse_letter(text, item)
    letter = BENGALI_LETTERS.get(found[-1], found[-1].lower())
    return LETTERS.index(letter)


def en_bn_gap(summary: dict[str, Any]) -> dict[str, Any]:
    """accuracy(en) - accuracy(bn) when both languages were evaluated."""
    by = summary.get("by", {}).get("language", {})
    en, bn = (by.get(lang, {}).get("accuracy") for lang in ("en", "bn"))
    if en is None or bn is None:
        return {}
    return {"gap_en_minus_bn": en - bn}
