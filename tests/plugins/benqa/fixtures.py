"""Small BEnQA fixtures in the official layout (data/BEnQA/ and data/BEnQA-few_shots_examples/)."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ["English Question", "Bengali Question", "A", "B", "C", "D", "A Bn", "B Bn", "C Bn", "D Bn",
           "Correct Answer"]
# As released: an unnamed index column, lowercase options, 'C Bn' with a capital C, and extra columns.
FEWSHOT_COLUMNS = ["", "Question", "Question Bn", "a", "b", "c", "d", "Correct Answer", "Diagram", "a Bn", "b Bn",
                   "C Bn", "d Bn", "Correct Answer Bn", "Question_Type", "English_Response", "Bengali_Response"]

PHYSICS = [
    ["What is the unit of force?", "বলের একক কী?", "joule", "newton", "watt", "pascal",
     "জুল", "নিউটন", "ওয়াট", "প্যাসকেল", "b"],
    ["Which quantity is a vector?", "কোনটি ভেক্টর রাশি?", "velocity", "mass", "time", "energy",
     "বেগ", "ভর", "সময়", "শক্তি", "a"],
    ["The speed of light in vacuum is about", "শূন্যস্থানে আলোর বেগ প্রায়", "3 km/s", "300 km/s", "3 × 10^{8} m/s",
     "3 × 10^{5} m/s", "3 কিমি/সে", "300 কিমি/সে", "3 × 10^{8} মি/সে", "3 × 10^{5} মি/সে", "c"],
    ["A 60 W bulb runs for 5 hours.\nHow much energy does it use?", "একটি 60 W বাল্ব 5 ঘণ্টা জ্বলে।\nকত শক্তি খরচ হয়?",
     "12 Wh", "65 Wh", "3000 Wh", "300 Wh", "12 Wh", "65 Wh", "3000 Wh", "300 Wh", "d"],
    # the release has one uppercase answer ("B"): normalised to b
    ["Which lens corrects myopia?", "কোন লেন্স ক্ষীণদৃষ্টি সংশোধন করে?", "convex", "concave", "cylindrical",
     "bifocal", "উত্তল", "অবতল", "বেলনাকার", "দ্বিফোকাস", "B"],
]
SCIENCE = [
    ["Which gas do plants take in?", "উদ্ভিদ কোন গ্যাস গ্রহণ করে?", "oxygen", "nitrogen", "carbon dioxide",
     "hydrogen", "অক্সিজেন", "নাইট্রোজেন", "কার্বন ডাইঅক্সাইড", "হাইড্রোজেন", "c"],
    # the release has two answers "*": skipped and counted
    ["How many satellites does Saturn have?", "শনির কয়টি উপগ্রহ?", "62", "82", "146", "13",
     "62", "82", "146", "13", "*"],
    ["What is the powerhouse of the cell?", "কোষের শক্তিঘর কোনটি?", "nucleus", "ribosome", "mitochondria",
     "golgi body", "নিউক্লিয়াস", "রাইবোজোম", "মাইটোকন্ড্রিয়া", "গলগি বস্তু", "c"],
    ["Water boils at", "পানি ফোটে", "100 °C", "0 °C", "50 °C", "212 °C", "100 °C", "0 °C", "50 °C", "212 °C", "a"],
]


def shot(n: int, answer: str) -> list[str]:
    return [str(n), f"Solved question {n}?", f"সমাধানকৃত প্রশ্ন {n}?", f"opt{n}a", f"opt{n}b", f"opt{n}c",
            f"opt{n}d", answer, "N", f"বিকল্প{n}ক", f"বিকল্প{n}খ", f"বিকল্প{n}গ", f"বিকল্প{n}ঘ", "গ",
            "Reasoning", f'Worked solution {n}.\n\nSo, the correct answer is {{{{"Answer": "{answer}"}}}}',
            f'কার্যকর সমাধান {n}।\n\nসুতরাং, সঠিক উত্তর হল {{{{"Answer": "{answer}"}}}}।']


SHOT_ANSWERS = ["c", "a", "d", "b", "c", "a"]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_benqa(root: Path, *, fewshot: bool = True, question_type: bool = False) -> Path:
    """root/data/BEnQA/{10th-Physics,8th-Science}.csv (+ few-shot files); returns root."""
    for name, rows in (("10th-Physics", PHYSICS), ("8th-Science", SCIENCE)):
        header, body = COLUMNS, rows
        if question_type:
            header = [*COLUMNS, "Question_Type"]
            body = [[*row, "Reasoning" if n % 2 else "Factual Knowledge"] for n, row in enumerate(rows)]
        write_csv(root / "data" / "BEnQA" / f"{name}.csv", header, body)
        if fewshot:
            write_csv(root / "data" / "BEnQA-few_shots_examples" / f"{name}-few_shot.csv", FEWSHOT_COLUMNS,
                      [shot(n, answer) for n, answer in enumerate(SHOT_ANSWERS)])
    return root
