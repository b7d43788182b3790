"""Which prompts an augmentation run sends: for each seed, `multiplier` work items, each with its own
demonstrations and target context chosen by the retrieval mode (RADA, Seo et al. 2024):

- demos: in-context retrieval. The demonstrations are drawn from the store items nearest the seed (a new
  combination for every item, widening the pool of demonstrations); the target is the seed's own context.
- context: target-context retrieval. The target is a store context near the seed (item j takes the j-th
  nearest distinct context); the demonstrations are seeds.
- both: retrieved demonstrations and a retrieved context.
- none: the seed-only baseline: other seeds as demonstrations, the seed's own context as the target.

Everything is a function of the run's seed and the item's id, so a rerun plans the same items.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np

from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.vector_store import Hit, VectorStore
from lmlab.plugins.augment.records import Instance, from_row
from lmlab.plugins.augment.templates import Template

MODES = ("demos", "context", "both", "none")


@dataclass(frozen=True)
class WorkItem:
    id: str
    seed: Instance
    sample: int
    demos: tuple[Instance, ...]
    context: str | None
    context_id: str | None
    prompt: str
    request_seed: int


def stable_int(*parts: object) -> int:
    """A seed for random.Random and the backends, the same in every process (str hashes are salted)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


def _neighbours(seed: Instance, hits: list[Hit]) -> list[Instance]:
    """The store items near a seed, the seed itself left out (a store may hold the seeds)."""
    same = seed.input.strip().lower()
    return [item for item in map(lambda h: from_row(h.item), hits)
            if item.id != seed.id and item.input.strip().lower() != same]


def _contexts(items: list[Instance]) -> list[tuple[str, str]]:
    """Distinct (context, id of its first item) in order."""
    found: dict[str, str] = {}
    for item in items:
        if item.context and item.context not in found:
            found[item.context] = item.id
    return list(found.items())


def check_mode(mode: str, template: Template) -> None:
    """LmlabError unless `mode` is a retrieval mode the template can use (checked before any work starts)."""
    if mode not in MODES:
        raise LmlabError(f"Unknown --retrieval '{mode}'.", hint=f"use one of: {', '.join(MODES)}")
    if mode in ("context", "both") and not template.needs_context:
        raise LmlabError(f"--retrieval {mode} retrieves target contexts, but the template '{template.name}' has no "
                         "{context} in its target.", hint="use --retrieval demos or none with this template")


def plan(seeds: list[Instance], vectors: np.ndarray | None, store: VectorStore | None, template: Template, *,
         mode: str, multiplier: int, demos: int, pool: int, run_seed: int) -> list[WorkItem]:
    """The run's work items, seed by seed; `vectors` are the seeds' embeddings (unused for mode none)."""
    check_mode(mode, template)
    if template.needs_context:
        for seed in seeds:
            if not seed.context:
                raise LmlabError(f"Seed '{seed.id}' has no context, which the template '{template.name}' needs.",
                                 hint="give every seed a 'context', or use a template without {context}")
    retrieved: list[list[Instance]] = [[] for _ in seeds]
    if mode != "none":
        assert store is not None and vectors is not None
        hits = store.search(vectors, max(pool, multiplier) + 1)
        retrieved = [_neighbours(seed, h) for seed, h in zip(seeds, hits, strict=True)]
    items = []
    for s, seed in enumerate(seeds):
        near, others = retrieved[s][:pool], [x for x in seeds if x.id != seed.id]
        contexts = _contexts(retrieved[s])
        for j in range(multiplier):
            rng = random.Random(stable_int(run_seed, seed.id, j))
            context, context_id = seed.context, seed.id
            if mode in ("context", "both") and contexts:
                context, context_id = contexts[j % len(contexts)]
            if mode in ("demos", "both"):
                candidates = [x for x in near if x.context != context] or near
                chosen = rng.sample(candidates, min(demos, len(candidates)))
            elif mode == "context":
                chosen = [seed, *rng.sample(others, min(demos - 1, len(others)))][:demos]
            else:
                chosen = rng.sample(others, min(demos, len(others)))
            items.append(WorkItem(id=f"{seed.id}#{j}", seed=seed, sample=j, demos=tuple(chosen),
                                  context=context if template.needs_context else None,
                                  context_id=context_id if template.needs_context else None,
                                  prompt=template.prompt(chosen, context), request_seed=stable_int(run_seed, seed.id,
                                                                                                   j, "sample")))
    return items
