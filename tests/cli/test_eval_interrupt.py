"""Ctrl-C during `lmlab eval` saves what is done, exits 130 at once even while a request hangs, and `--resume`
finishes without redoing it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import run_cli
from tests.plugins.click.test_click import write_click


class Slow(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/completions (echo + logprobs) that takes 20 ms per request, except request
    number `stall_at`, which it never answers (a server that hangs; the client's --timeout is 120 s)."""

    seen = 0
    stall_at = 150
    stalled = threading.Event()

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen += 1
        if type(self).seen == self.stall_at:
            self.stalled.set()
            time.sleep(600)
        time.sleep(0.02)
        prompt = body["prompt"]
        payload = json.dumps({"choices": [{"text": prompt, "logprobs": {
            "tokens": [prompt[:-2], prompt[-2:]], "token_logprobs": [None, -float(ord(prompt[-1]) % 5)],
            "text_offset": [0, len(prompt) - 2]}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def cached_answers(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_interrupted_eval_resumes_without_redoing_answers(tmp_path: Path) -> None:
    items = [{"id": f"Kedu_history_{i}", "paragraph": "", "question": f"질문 {i}번은?" + "가" * i,
              "choices": ["하나", "둘", "셋", "넷"], "answer": "셋"} for i in range(80)]
    data = write_click(tmp_path / "data", {"Culture/Korean History/History_Kedu.json": items})
    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    run = tmp_path / "run"
    args = ["eval", "click", "--data", str(data), "--backend", "openai", "--model", "slow", "--concurrency", "1",
            "--base-url", f"http://127.0.0.1:{server.server_address[1]}/v1", "-o", str(run)]
    try:
        proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,  # Ctrl-C as at a terminal, even when the
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # suite runs in `&`
        deadline = time.time() + 120
        while not Slow.stalled.wait(0.05):
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
        assert cached_answers(run / "cache.sqlite") > 0  # the first chunks are committed
        os.kill(proc.pid, signal.SIGINT)
        interrupted = time.time()
        _, stderr = proc.communicate(timeout=100)
        assert time.time() - interrupted < 30, "Ctrl-C waited for the request in flight"
        assert proc.returncode == 130, stderr
        assert "--resume" in stderr and "Traceback" not in stderr
        done = cached_answers(run / "cache.sqlite")
        assert 0 < done < 80
        before = Slow.seen
        resumed = run_cli("eval", "click", "--resume", str(run), "--json")
        assert resumed.returncode == 0, resumed.stderr
        summary = json.loads(resumed.stdout)
    finally:
        server.shutdown()
    assert summary["n"] == 80 and summary["cached_answers"] == done and summary["new_answers"] == 80 - done
    assert Slow.seen - before == 4 * (80 - done)  # one request per option, only for the unfinished items
