"""`retrieve train-reranker` with a 2-member ensemble on the shared loop, run under torchrun (2 processes, gloo) by
test_ddp_members.py: each process writes a SHA-256 of each trained member's parameters.

    ddp_members_toy.py OUT ENCODER INDEX DATA
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from lmlab.plugins.rerank.command import RerankTrainOptions
from lmlab.plugins.rerank.train import RerankTrainer


class HashingTrainer(RerankTrainer):
    def summarize(self, result: dict[str, Any], run: Any) -> dict[str, Any]:
        digests = [hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in member.parameters()))
                   .hexdigest() for member in result["model"].members]
        (Path(sys.argv[1]) / f"members-rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(digests))
        return super().summarize(result, run)


def main() -> None:
    out, encoder, index, data = sys.argv[1:5]
    opts = RerankTrainOptions(data=data, model=encoder, index=Path(index), eval_data="none", bayes="ensemble",
                              members=2, max_steps=3, batch_size=2, max_length=48, negatives=2, lr=1e-3,
                              warmup_steps=0, save_every=100, output_dir=Path(out) / "run")
    HashingTrainer(opts).run()


if __name__ == "__main__":
    main()
