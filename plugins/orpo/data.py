"""Preference rows → token ids, with a truncation rule that never exceeds --max-length and never leaves a
response empty (TRL's rule can do both; METHODS.md §1).

Rows are `{prompt, chosen, rejected}` strings, or conversational: `chosen`/`rejected` are message lists whose
last message is the assistant turn, and the prompt is the shared earlier turns (or `prompt`, a string or a
message list). Conversational rows go through the tokenizer's chat template; plain rows are used as text
with EOS appended to each response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmlab.core.data import Record, SkipLog
from lmlab.core.errors import DataError


@dataclass
class PreferenceExample:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))


def _messages(record: Record, field: str) -> list[dict[str, str]]:
    value = record.get(field, (list,))
    for i, message in enumerate(value):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise DataError(f"message {i} must be an object with string 'role' and 'content'.",
                            path=record.path, line=record.line, field=field)
    if not value or value[-1]["role"] != "assistant":
        raise DataError("the last message must be the assistant's response.", path=record.path,
                        line=record.line, field=field)
    return value


def _conversation(record: Record, tokenizer: Any) -> tuple[str, str, str]:
    """Prompt text and the two response texts, cut out of the chat-templated conversations."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("conversational rows need a tokenizer with a chat template, and this one has none.",
                        path=record.path, line=record.line, field="chosen",
                        hint="use plain {prompt, chosen, rejected} strings, or a chat model")
    chosen, rejected = _messages(record, "chosen"), _messages(record, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise DataError("chosen and rejected must share the turns before the last one.",
                        path=record.path, line=record.line, field="rejected")
    prompt = chosen[:-1]
    if not prompt:
        given = record.get("prompt", (str, list))
        prompt = [{"role": "user", "content": given}] if isinstance(given, str) else given
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    texts = []
    for reply in (chosen[-1], rejected[-1]):
        full = tokenizer.apply_chat_template(prompt + [reply], tokenize=False)
        if not full.startswith(head):
            raise DataError("the chat template does not render the prompt as a prefix of the conversation.",
                            path=record.path, line=record.line, field="chosen",
                            hint="use plain {prompt, chosen, rejected} strings with this tokenizer")
        texts.append(full[len(head):])
    return head, texts[0], texts[1]


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def build_examples(records: list[Record], tokenizer: Any, *, max_length: int,
                   max_prompt_length: int | None, skips: SkipLog) -> tuple[list[PreferenceExample], dict[str, int]]:
    """Tokenise and truncate every row; returns the examples and counts of what was cut."""
    examples: list[PreferenceExample] = []
    cut = {"prompts_truncated": 0, "responses_truncated": 0}
    for record in records:
        if isinstance(record.data.get("chosen"), list):
            prompt_text, chosen_text, rejected_text = _conversation(record, tokenizer)
            prompt = _ids(tokenizer, prompt_text, special=False)
            chosen, rejected = (_ids(tokenizer, t, special=False) for t in (chosen_text, rejected_text))
        else:
            prompt_text = record.get("prompt", (str,))
            chosen_text, rejected_text = record.get("chosen", (str,)), record.get("rejected", (str,))
            if not chosen_text.strip() or not rejected_text.strip():
                skips.add("empty response", record)
                continue
            prompt = _ids(tokenizer, prompt_text, special=True)
            chosen, rejected = (_ids(tokenizer, t, special=False) + [tokenizer.eos_token_id]
                                for t in (chosen_text, rejected_text))
        if not prompt:
            skips.add("empty prompt", record)
            continue
        if chosen == rejected:
            skips.add("chosen identical to rejected", record)
            continue
        if max_prompt_length is not None and len(prompt) > max_prompt_length:
            prompt = prompt[-max_prompt_length:]
            cut["prompts_truncated"] += 1
        if len(prompt) >= max_length:
            raise DataError(f"the prompt alone is {len(prompt)} tokens, leaving no room for a response within "
                            f"--max-length {max_length}.", path=record.path, line=record.line, field="prompt",
                            hint="raise --max-length, or set --max-prompt-length to keep only the prompt's end")
        room = max_length - len(prompt)
        if len(chosen) > room or len(rejected) > room:
            chosen, rejected = chosen[:room], rejected[:room]
            cut["responses_truncated"] += 1
            if chosen == rejected:
                skips.add("responses identical after truncation", record)
                continue
        examples.append(PreferenceExample(prompt, chosen, rejected))
    return examples, cut
