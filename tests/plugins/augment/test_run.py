"""`lmlab augment` and `lmlab augment index` as a user runs them: against a loopback OpenAI-compatible server
(failures and recovery, a SIGKILL and a rerun), on a tiny local model, and with bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmlab.cli.app import main
from lmlab.core.evaluation import backend_openai
from tests.conftest import run_cli, write_jsonl
from tests.plugins.augment.conftest import SEEDS


def served(server, seeds: Path, out: Path, *extra: str) -> list[str]:
    return ["augment", "--backend", "openai", "--base-url", server.url, "--model", "fake", "--data", str(seeds),
            "--retrieval", "none", "-o", str(out), *extra]


def lmlab(args: list[str]) -> None:
    """`lmlab ARGS` in this process; it must succeed."""
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_served_run_keeps_grounded_pairs_and_records_every_item(qa_server, seeds: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    lmlab(served(qa_server, seeds, tmp_path / "run", "--multiplier", "4", "--json"))
    summary = json.loads(capsys.readouterr().out)
    kept = rows(tmp_path / "run" / "augmented.jsonl")
    assert summary["planned"] == 12 and summary["kept"] == len(kept) == 12 and summary["error"] == 0
    first = kept[0]
    assert first["output"] == " ".join(SEEDS[0]["context"].split()[:3]) and first["context"] == SEEDS[0]["context"]
    assert first["seed"] == "s0" and len(first["demos"]) == 2 and first["template"] == "extractive-qa"
    assert first["raw"].startswith(" What is question") and first["retrieval"] == "none"
    assert all(b["temperature"] == 0.9 and b["top_p"] == 0.95 and b["stop"] == ["\n\n", "\nQuestion:"]
               for b in qa_server.bodies)
    assert len({b["seed"] for b in qa_server.bodies}) == 12  # every item has its own sampling seed


def test_500s_then_recovery_lose_nothing(qa_server, seeds: Path, tmp_path: Path, monkeypatch,
                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(backend_openai, "BACKOFF_S", 0.01)
    qa_server.failures = 3  # retried with backoff inside the backend: no item fails
    qa_server.fail_prompts = {SEEDS[1]["context"]}  # seed s1's items fail through every retry
    lmlab(served(qa_server, seeds, tmp_path / "run", "--multiplier", "2", "--max-retries", "2", "--json"))
    first = json.loads(capsys.readouterr().out)
    assert first["kept"] == 4 and first["error"] == 2
    assert {r["seed"] for r in rows(tmp_path / "run" / "augmented.jsonl")} == {"s0", "s2"}
    qa_server.fail_prompts = set()  # the server recovers: a rerun generates only the failed items
    before = len(qa_server.bodies)
    lmlab(served(qa_server, seeds, tmp_path / "run", "--multiplier", "2", "--json"))
    second = json.loads(capsys.readouterr().out)
    assert second["kept"] == 6 and second["error"] == 0 and second["generated_now"] == 2
    assert len(qa_server.bodies) - before == 2
    ids = [r["id"] for r in rows(tmp_path / "run" / "augmented.jsonl")]
    assert sorted(ids) == sorted(f"s{i}#{j}" for i in range(3) for j in range(2))


def test_a_backend_that_keeps_failing_stops_the_run_with_a_hint(qa_server, seeds: Path, tmp_path: Path,
                                                                monkeypatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(backend_openai, "BACKOFF_S", 0.01)
    qa_server.failures = 10**6
    with pytest.raises(SystemExit) as info:
        main(served(qa_server, seeds, tmp_path / "run", "--multiplier", "4", "--max-retries", "0",
                    "--max-failures", "3", "--batch-size", "1"))
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == 2 and "failed on 4 items in a row" in err and "--resume" in err  # the whole chunk
    assert rows(tmp_path / "run" / "journal.jsonl")[0]["status"] == "error"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_run_killed_mid_way_and_rerun_makes_each_item_exactly_once(qa_server, tmp_path: Path, sig: int) -> None:
    many = write_jsonl(tmp_path / "many.jsonl", [{**SEEDS[i % 3], "id": f"s{i}"} for i in range(30)])
    out = tmp_path / "run"
    args = served(qa_server, many, out, "--multiplier", "4", "--batch-size", "1", "--dedupe-threshold", "1.0")
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    journal = out / "journal.jsonl"
    while not (journal.exists() and journal.read_text().count("\n") >= 10):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.005)
    os.kill(proc.pid, sig)
    assert proc.wait() == (130 if sig == signal.SIGTERM else -signal.SIGKILL)  # SIGTERM: saved, then exit 130
    done_before = journal.read_text().count("\n")
    assert done_before < 120 and not (out / "report.json").exists()
    rerun = run_cli(*args, "--json")
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    ids = [r["id"] for r in rows(out / "journal.jsonl")]
    assert sorted(set(ids)) == sorted(f"s{i}#{j}" for i in range(30) for j in range(4))
    assert len(ids) == len(set(ids)) == 120  # nothing generated twice
    kept = [r["id"] for r in rows(out / "augmented.jsonl")]
    assert len(kept) == len(set(kept)) == summary["kept"]
    assert summary["generated_now"] <= 120 - done_before + 1


def test_the_cli_resume_flag_continues_with_the_runs_own_options(qa_server, seeds: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    lmlab(served(qa_server, seeds, tmp_path / "run", "--multiplier", "2", "--limit", "1"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(served(qa_server, seeds, tmp_path / "run", "--multiplier", "3", "--limit", "1"))
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == 2 and "made with other settings (--multiplier 2 → 3)" in err
    lmlab(["augment", "--resume", str(tmp_path / "run"), "--json"])
    assert json.loads(capsys.readouterr().out)["planned"] == 2


@pytest.mark.parametrize(("row", "message"), [
    ({"id": "a", "context": "c", "output": "x"}, "seeds.jsonl:2: field 'input': missing"),
    ({"id": "a", "input": "q", "output": 3, "context": "c"}, "seeds.jsonl:2: field 'output': expected str, got int"),
    ({"id": "a", "input": "q", "output": "x"}, "seeds.jsonl:2: field 'context': missing"),
    ({"id": "s0", "input": "q", "output": "x", "context": "c"}, "seeds.jsonl:2: field 'id': duplicate id 's0'"),
])
def test_malformed_seed_rows_are_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture, row: dict,
                                                 message: str) -> None:
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [SEEDS[0], row])
    with pytest.raises(SystemExit) as info:
        main(["augment", "--data", str(seeds), "-o", str(tmp_path / "run")])
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("args", "message"), [
    (("--retrieval", "nearest"), "Unknown --retrieval 'nearest'. hint: use one of: demos, context, both, none"),
    (("--template", "multiple-choice"), "--retrieval both retrieves target contexts, but the template "
     "'multiple-choice' has no {context} in its target"),
    (("--template", "nope.toml"), "Unknown template 'nope.toml'"),
])
def test_bad_options_are_refused_before_anything_is_written(seeds: Path, tmp_path: Path, args: tuple[str, ...],
                                                            message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["augment", "--data", str(seeds), *args, "-o", str(tmp_path / "run")])
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_bad_store_row_stops_augment_before_its_run_folder_exists(seeds: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    store = write_jsonl(tmp_path / "store.jsonl", [{"id": "x", "input": "q?", "output": ["a"], "context": "c"}])
    with pytest.raises(SystemExit) as info:
        main(["augment", "--data", str(seeds), "--store", str(store), "-o", str(tmp_path / "run")])
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == 2 and "store.jsonl:1: field 'output': expected str, got list" in err
    assert not (tmp_path / "run").exists()


def test_index_builds_a_store_grows_it_and_names_bad_rows(store_file: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "store"
    lmlab(["augment", "index", "--data", str(store_file), "--output-dir", str(store), "--json"])
    first = json.loads(capsys.readouterr().out)
    assert first["added"] == 6 and first["dim"] == 384 and (store / "index.faiss").is_file()
    more = write_jsonl(tmp_path / "more.jsonl", [{"id": "y1", "input": "q?", "output": "a", "context": "a b"}])
    lmlab(["augment", "index", "--data", str(more), "-o", str(store), "--json"])
    second = json.loads(capsys.readouterr().out)
    assert second["added"] == 1 and second["already_there"] == 6 and second["total"] == 7
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "z", "input": "", "output": "a"}])
    with pytest.raises(SystemExit) as info:
        main(["augment", "index", "--data", str(bad), "--output-dir", str(tmp_path / "other")])
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == 2 and "bad.jsonl:1: field 'input': is empty" in err


def test_a_local_model_augments_with_retrieval_from_an_indexed_store(store_file: Path, seeds: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    lmlab(["augment", "index", "--data", str(store_file), "-o", str(tmp_path / "store"), "-q"])
    lmlab(["augment", "--model", "tiny-llama", "--data", str(seeds), "--store", str(tmp_path / "store"),
          "--multiplier", "2", "--max-new-tokens", "6", "-o", str(tmp_path / "run"), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["planned"] == 6 and summary["error"] == 0
    assert sum(summary[k] for k in ("kept", "filtered", "duplicate", "malformed")) == 6
    journal = rows(tmp_path / "run" / "journal.jsonl")
    assert len(journal) == 6 and all(isinstance(r["raw"], str) for r in journal)
