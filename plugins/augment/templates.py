"""Prompt templates for augmentation, as files: TOML (or YAML/JSON) with an instruction, the format of one
demonstration, the target that ends the prompt, and which check the answer-in-context filter applies.

    instruction = "You are a QA generator. ..."
    demo = "Context: {context}\\nQuestion: {input}\\nAnswer: {output}"
    target = "Context: {context}\\nQuestion:"     # a prefix of demo; the model writes the rest
    check = "span"                                 # span: the answer occurs in the context; choice: an option letter

The demo format is also the parser: what the model writes after the target must read as the rest of a
demonstration, or the generation is counted as malformed. Built in: `extractive-qa` (the paper's domain-QA
prompt) and `multiple-choice` (MMLU-style questions with options A-D inside the question).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
import yaml

from lmlab.core.kernel.errors import LmlabError
from lmlab.plugins.augment.records import Instance

BUILT_IN = Path(__file__).resolve().parent / "templates"
CHECKS = ("span", "choice", "none")
FIELD = re.compile(r"\{(input|output|context)\}")
OPTION_LINE = re.compile(r"^\s*\(?([A-Ea-e])[.)]\s+\S", re.MULTILINE)


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


def built_in_names() -> list[str]:
    return sorted(p.stem for p in BUILT_IN.glob("*.toml"))


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return tomllib.loads(text)
    if path.suffix == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


def load_template(spec: str) -> Template:
    """A built-in template by name, or a template file; LmlabError naming the file and field otherwise."""
    path = BUILT_IN / f"{spec}.toml" if (BUILT_IN / f"{spec}.toml").is_file() else Path(spec).expanduser()
    hint = f"built in: {', '.join(built_in_names())}; or a TOML/YAML/JSON file with instruction, demo, target"
    if not path.is_file():
        raise LmlabError(f"Unknown template '{spec}' (no such built-in template or file).", hint=hint)
    try:
        data = _read(path)
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
