"""`lmlab eval --backend openai` against a real OpenAI-compatible HTTP server on loopback that serves the same
tiny model the hf backend loads: both backends must give the same per-item log-likelihoods."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from lmlab.core.models.loading import load_model
from tests.conftest import run_cli
from tests.plugins.click.test_click import write_click


def serve(model, tokenizer) -> ThreadingHTTPServer:
    """/v1/completions with echo + logprobs (prompt log-probabilities), as vLLM answers it."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/completions" or not body.get("echo"):
                self.send_response(404)
                self.end_headers()
                return
            enc = tokenizer(body["prompt"], add_special_tokens=False, return_offsets_mapping=True)
            ids = enc.input_ids
            with lock, torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            values = [None] + [logits[t - 1, ids[t]].item() for t in range(1, len(ids))]
            payload = json.dumps({"choices": [{"text": body["prompt"], "logprobs": {
                "tokens": tokenizer.convert_ids_to_tokens(ids), "token_logprobs": values,
                "text_offset": [start for start, _ in enc.offset_mapping]}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.mark.slow
def test_openai_backend_over_http_agrees_with_the_hf_backend(tmp_path: Path) -> None:
    model, tokenizer = load_model("tiny-llama")
    server = serve(model.eval(), tokenizer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        data = write_click(tmp_path / "data")
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        remote = run_cli("eval", "click", "--data", str(data), "--backend", "openai", "--base-url", url,
                         "--model", "tiny", "--log-samples", "--json", "-o", str(tmp_path / "remote"))
        assert remote.returncode == 0, remote.stderr
        local = run_cli("eval", "click", "--data", str(data), "--model", "tiny-llama", "--log-samples", "--json",
                        "-o", str(tmp_path / "local"))
        assert local.returncode == 0, local.stderr
    finally:
        server.shutdown()

    def samples(run: str) -> list[dict]:
        return [json.loads(x) for x in (tmp_path / run / "samples.jsonl").read_text().splitlines()]

    for a, b in zip(samples("remote"), samples("local"), strict=True):
        assert a["pred"] == b["pred"]
        assert a["loglik"] == pytest.approx(b["loglik"], abs=1e-3)
    assert json.loads(remote.stdout)["accuracy"] == json.loads(local.stdout)["accuracy"]
