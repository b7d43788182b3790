"""Templates, the answer-in-context filter, near-duplicate removal and distinct-n on crafted rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmlab.core.kernel.errors import LmlabError
from lmlab.plugins.augment.plan import load_template
from lmlab.plugins.augment.records import Instance
from lmlab.plugins.augment.run import Deduper, answer_span, choice_answer, distinct_n

DEMO = Instance("d1", "Which port does it use?", "port 8080", "The proxy listens on port 8080 by default.")


def test_the_extractive_qa_prompt_is_the_papers_layout_and_parses_back() -> None:
    qa = load_template("extractive-qa")
    prompt = qa.prompt([DEMO], "Reboot the modem after 30 seconds.")
    assert prompt.startswith("You are a QA generator.")
    assert "\n\nContext: The proxy listens on port 8080 by default.\nQuestion: Which port does it use?\nAnswer: " \
           "port 8080\n\n" in prompt
    assert prompt.endswith("\n\nContext: Reboot the modem after 30 seconds.\nQuestion:")
    assert qa.parse(" How long should you wait?\nAnswer:  30 seconds \nQuestion: more") == \
        {"input": "How long should you wait?", "output": "30 seconds"}
    assert qa.stop == ("\n\n", "\nQuestion:")
    for bad in (" no answer line here", " Who?\nAnswer:", ""):
        assert qa.parse(bad) is None


def test_the_multiple_choice_template_keeps_the_options_inside_the_question() -> None:
    mc = load_template("multiple-choice")
    written = " What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B"
    fields = mc.parse(written)
    assert fields == {"input": "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6", "output": "B"}
    assert choice_answer("B", fields["input"]) == "B" and choice_answer("(c) 5", fields["input"]) == "C"
    assert choice_answer("E", fields["input"]) is None and choice_answer("four", fields["input"]) is None
    assert not mc.needs_context


def test_a_template_file_is_checked_field_by_field(tmp_path: Path) -> None:
    good = tmp_path / "mine.toml"
    good.write_text('instruction = "Write one."\ndemo = "Q: {input}\\nA: {output}"\ntarget = "Q:"\ncheck = "none"\n')
    assert load_template(str(good)).parse(" why?\nA: because") == {"input": "why?", "output": "because"}
    bad = tmp_path / "bad.toml"
    bad.write_text('instruction = "x"\ndemo = "Q: {input}\\nA: {output}"\ntarget = "Question:"\n')
    with pytest.raises(LmlabError, match="field 'target' must be the start of 'demo'"):
        load_template(str(bad))
    bad.write_text('instruction = "x"\ndemo = "Q: {input}"\ntarget = "Q:"\n')
    with pytest.raises(LmlabError, match=r"must hold \{input\} and \{output\}"):
        load_template(str(bad))
    with pytest.raises(LmlabError, match="Unknown template 'nope'"):
        load_template("nope")


def test_the_filter_keeps_answers_that_are_spans_of_the_context() -> None:
    context = "Hold the Reset button for ten seconds, then wait until the LED blinks."
    assert answer_span("ten  seconds", context) == "ten seconds"
    assert answer_span("reset button", context) == "Reset button"  # written back as the context has it
    assert answer_span("twenty seconds", context) is None
    assert answer_span("", context) is None


def test_dedupe_drops_near_copies_but_keeps_new_questions() -> None:
    dedupe = Deduper(0.8)
    dedupe.add("How long do you hold the reset button?", "ten seconds")
    assert dedupe.duplicate("How long do you hold the Reset button??", "Ten seconds")  # case and punctuation
    assert dedupe.duplicate("how long do you hold the reset button", "ten seconds")
    assert not dedupe.duplicate("When does the LED blink?", "after ten seconds")
    assert not dedupe.duplicate("How long do you hold the reset button?", "until the LED blinks")
    exact = Deduper(1.0)
    exact.add("a b c d", "x")
    assert exact.duplicate("A b, c d!", "x") and not exact.duplicate("a b c e", "x")


def test_distinct_n_is_unique_ngrams_over_all_ngrams() -> None:
    texts = ["the router resets", "the router reboots"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n([], 2) == 0.0
