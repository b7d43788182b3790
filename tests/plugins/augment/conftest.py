"""A loopback OpenAI-compatible server that writes well-formed QA pairs, and small seed/store files."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.conftest import loopback_server, write_jsonl

SEEDS = [{"id": f"s{i}", "context": f"The {name} router keeps its settings in slot {i} of the admin page.",
          "input": f"Where does the {name} router keep its settings?", "output": f"slot {i}"}
         for i, name in enumerate(["amber", "birch", "cedar"])]
STORE = [{"id": f"x{i}", "source": "helpdesk", "context": f"Printer {i} joins the office network with code {100 + i}.",
          "input": f"Which code does printer {i} use?", "output": f"code {100 + i}"} for i in range(6)]


class QAServer:
    """Answers /v1/completions with "Question ... Answer: <first three words of the prompt's last context>";
    `failures` makes the next N requests answer 500; `fail_prompts` makes requests whose target context contains
    one of its texts fail. Records every request body."""

    def __init__(self) -> None:
        self.url = ""
        self.bodies: list[dict] = []
        self.failures = 0
        self.fail_prompts: set[str] = set()
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        fake: QAServer = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        context = re.findall(r"Context: (.*)", body["prompt"])[-1]  # the target context
        with fake.lock:
            fake.bodies.append(body)
            fail = fake.failures > 0 or any(text in context for text in fake.fail_prompts)
            fake.failures -= fake.failures > 0
        if fail:
            return self.send(500, {"error": {"message": "overloaded"}})
        answer = " ".join(context.split()[:3])
        text = f" What is question {body.get('seed')} about the passage?\nAnswer: {answer}"
        return self.send(200, {"choices": [{"index": 0, "text": text}]})

    def send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def qa_server():
    fake = QAServer()
    with loopback_server(Handler, fake) as url:
        fake.url = url
        yield fake


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "seeds.jsonl", SEEDS)


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "store.jsonl", STORE)
