"""Progress off a terminal (CI): plain log lines at an interval."""

from __future__ import annotations

import pytest

from lmlab.core.kernel.console import Progress


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_a_line_at_each_tenth_of_the_total(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress("eval x", 25, line="{label}: {completed}/{total} requests") as progress:
        for _ in range(25):
            progress.advance()
    assert lines(capsys) == [f"eval x: {n}/25 requests" for n in (3, 5, 8, 10, 13, 15, 18, 20, 23, 25)]


def test_a_line_every_n_units_from_where_a_resumed_run_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress("train", 10, completed=4, every=3, line="step {completed}/{total} {info}") as progress:
        for step in range(5, 11):
            progress.update(step, f"loss {step / 10:.1f}")
    assert lines(capsys) == ["step 6/10 loss 0.6", "step 9/10 loss 0.9"]
