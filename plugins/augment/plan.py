"""The prompts an augmentation run sends: prompt templates, and the run's work items (RADA, Seo et al. 2024).

A template (TOML, YAML or JSON) has an `instruction`, the `demo` format of one demonstration (e.g. "Context:
{context}\\nQuestion: {input}\\nAnswer: {output}"), the `target` that ends the prompt (a prefix of demo: the model
writes the rest) and a `check` (span: the answer occurs in the context; choice: an option letter; none). The demo
format is also the parser: a generation that does not read as the rest of a demonstration is malformed.

Each seed gets `multiplier` work items, whose demonstrations and target context the retrieval mode chooses (see
`plan`). Everything is a function of the run's seed and the item's id, so a rerun plans the same items.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomllib
import yaml

from lmlab.core.kernel.errors import LmlabError
from lmlab.core.retrieval.vector_store import Hit, VectorStore
from lmlab.plugins.augment.records import Instance, from_row

BUILT_IN = Path(__file__).resolve().parent / "templates"
CHECKS = ("span", "choice", "none")
FIELD = re.compile(r"\{(input|output|context)\}")
OPTION_LINE = re.compile(r"^\s*\(?([A-Ea-e])[.)]\s+\S", re.MULTILINE)
MODES = ("demos", "context", "both", "none")


@dataclass(frozen=True)
class Template:
    name: str
    instruction: str
    demo: str
    target: str
    check: str = "span"

    @property
    def needs_context(self) -> bool:
        return "{context}" in self.target

    @property
    def stop(self) -> tuple[str, ...]:
        """A blank line ends the new demonstration, and so does the start of another one (the label that opens
        the target's last line, e.g. "Question:")."""
        label = FIELD.sub("", self.target.rsplit("\n", 1)[-1]).strip()
        return ("\n\n", f"\n{label}") if label else ("\n\n",)

    def render_demo(self, item: Instance) -> str:
        return self.demo.format(input=item.input, output=item.output, context=item.context or "")

    def prompt(self, demos: list[Instance], context: str | None) -> str:
        """The instruction, each demonstration, then the target (with `context` when the template has one)."""
        parts = [self.instruction, *(self.render_demo(d) for d in demos), self.target.format(context=context or "")]
        return "\n\n".join(p.strip("\n") for p in parts)

    def parse(self, generated: str) -> dict[str, str] | None:
        """The fields the model wrote after the target ({"input": ..., "output": ...}), or None if it does
        not read as the rest of a demonstration (or a field is empty)."""
        found = _pattern(self.demo[len(self.target):]).match(generated)
        if found is None:
            return None
        fields = {k: v.strip() for k, v in found.groupdict().items()}
        return fields if all(fields.values()) else None


def _pattern(rest: str) -> re.Pattern[str]:
    """A regex for the demo's remainder: literal text with any whitespace flexible, each field lazy; the last
    field runs to the end of its line (anything the model wrote after it is ignored)."""
    pieces = FIELD.split(rest)
    regex = ""
    for n, piece in enumerate(pieces):
        if n % 2:
            last = n == len(pieces) - 2 or not "".join(pieces[n + 1:]).strip()
            regex += f"(?P<{piece}>[^\\n]*\\S)" if last else f"(?P<{piece}>.+?)"
        else:
            regex += "".join(r"\s*" if part.isspace() else re.escape(part) for part in re.split(r"(\s+)", piece)
                             if part)
    return re.compile(r"\s*" + regex, re.DOTALL)


def load_template(spec: str) -> Template:
    """A built-in template by name, or a template file; LmlabError naming the file and field otherwise."""
    path = BUILT_IN / f"{spec}.toml" if (BUILT_IN / f"{spec}.toml").is_file() else Path(spec).expanduser()
    built_in = ", ".join(sorted(p.stem for p in BUILT_IN.glob("*.toml")))
    hint = f"built in: {built_in}; or a TOML/YAML/JSON file with instruction, demo, target"
    if not path.is_file():
        raise LmlabError(f"Unknown template '{spec}' (no such built-in template or file).", hint=hint)
    try:
        parse = {".toml": tomllib.loads, ".json": json.loads}.get(path.suffix, yaml.safe_load)
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise LmlabError(f"{path}: cannot read the template ({str(exc).splitlines()[0]}).", hint=hint) from None
    if not isinstance(data, dict):
        raise LmlabError(f"{path}: a template maps instruction, demo and target to text.", hint=hint)
    for key in ("instruction", "demo", "target"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise LmlabError(f"{path}: field '{key}' is missing or not text.", hint=hint)
    template = Template(name=str(data.get("name") or path.stem), instruction=data["instruction"], demo=data["demo"],
                        target=data["target"], check=str(data.get("check", "span")))
    rest = template.demo[len(template.target):]
    if not template.demo.startswith(template.target):
        raise LmlabError(f"{path}: field 'target' must be the start of 'demo' (the model writes the rest).",
                         hint='e.g. demo = "Context: {context}\\nQuestion: {input}\\nAnswer: {output}", '
                              'target = "Context: {context}\\nQuestion:"')
    if set(FIELD.findall(rest)) != {"input", "output"}:
        raise LmlabError(f"{path}: the part of 'demo' after 'target' must hold {{input}} and {{output}} and no "
                         "{context}.", hint="the model writes the input and the output; the context is given")
    if template.check not in CHECKS:
        raise LmlabError(f"{path}: field 'check' is '{template.check}'.", hint=f"use one of: {', '.join(CHECKS)}")
    if template.check == "span" and not template.needs_context:
        raise LmlabError(f"{path}: check 'span' needs a {{context}} in 'target'.", hint="or use check = 'none'")
    return template


def option_letters(question: str) -> set[str]:
    """The option letters a multiple-choice question lists, one per line ("A. ...", "(B) ...")."""
    return {m.upper() for m in OPTION_LINE.findall(question)}


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
                                  prompt=template.prompt(chosen, context),
                                  request_seed=stable_int(run_seed, seed.id, j, "sample")))
    return items
