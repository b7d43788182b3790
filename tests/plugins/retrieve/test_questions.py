"""`lmlab retrieve questions` through a loopback OpenAI-compatible server: questions per page, malformed
generations counted and dropped, a rerun skipping pages already done (after cutting off a torn last line), and
the pairs accepted by `train`."""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmlab.cli.app import main
from lmlab.core.retrieval.retrievers import RetrievalIndex
from lmlab.plugins.retrieve.train import question_targets
from tests.conftest import loopback_server, write_jsonl
from tests.plugins.retrieve.conftest import DOCS


class Writer(BaseHTTPRequestHandler):
    """Answers with n choices: a question naming the page's title, and (for the second choice) a non-question."""

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.fake.prompts.append(body["prompt"])
        title = re.search(r"Title: (.*)", body["prompt"]).group(1)
        texts = [f" What is said about {title}?\nmore", " not a question"][:body.get("n", 1)]
        data = json.dumps({"choices": [{"index": i, "text": t} for i, t in enumerate(texts)]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def lmlab(args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0


def test_questions_are_written_once_per_page_and_feed_training(built_index: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    fake = SimpleNamespace(prompts=[])
    out = tmp_path / "questions.jsonl"
    with loopback_server(Writer, fake) as url:
        base = ["retrieve", "questions", "--index", str(built_index), "--backend", "openai", "--base-url", url,
                "--model", "fake", "--output", str(out), "--json"]
        lmlab([*base, "--limit", "4"])
        first = json.loads(capsys.readouterr().out)
        with out.open("a") as f:
            f.write('{"id": "105-q0", "input": "What is')  # a line torn by a crash mid-write
        lmlab(base)
        second = json.loads(capsys.readouterr().out)
    assert first["written"] == 4 and first["malformed"] == 4  # per page: one question, one non-question
    assert second["already_done"] == 4 and second["written"] == len(DOCS) - 4
    assert len(fake.prompts) == len(DOCS)  # no page was asked for twice
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    titles = {i: t for i, t, _ in DOCS}
    assert [r["wikipedia_id"] for r in rows] == [i for i, _, _ in DOCS]
    assert all(r["input"] == f"What is said about {titles[r['wikipedia_id']]}?" for r in rows)
    assert len(question_targets(str(out), RetrievalIndex.load(built_index).corpus)) == len(DOCS)


def test_pairs_naming_a_page_outside_the_corpus_are_refused(built_index: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    bad = write_jsonl(tmp_path / "q.jsonl", [{"input": "x?", "title": "Mercury"}, {"input": "y?", "title": "Nope"}])
    with pytest.raises(SystemExit) as info:
        main(["retrieve", "train", "--index", str(built_index), "--questions", str(bad), "--model", "tiny-llama",
              "-o", str(tmp_path / "run")])
    assert info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "q.jsonl:2" in err and "'title'" in err and "Nope" in err
