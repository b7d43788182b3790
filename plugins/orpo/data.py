"""Preference rows → token ids, with a truncation rule that never exceeds --max-length and never leaves a
response empty (TRL's rule can do both). Rows are `{prompt, chosen, rejected}` strings, or conversational:
`chosen`/`rejected` message lists ending in the assistant turn, the prompt being the shared earlier turns (or
`prompt`), rendered with the tokenizer's chat template.

Special tokens (`bos`, the `--bos` option):
- "auto" (default): the tokenizer's own convention. A plain prompt gets the special tokens the tokenizer adds (a
  Llama tokenizer adds BOS, SmolLM2's none), a chat-templated prompt only what the template writes.
- "always": TRL's `ORPOTrainer` (`tokenize_row`, trl 1.16): BOS put first on every prompt unless it already is
  (again after --max-prompt-length cuts its head), EOS last on every response unless it already is (so also after
  a chat template's end). Gives TRL's ids wherever the prompt/response boundary is a token boundary: TRL tokenises
  prompt + response together and moves a token that merges across it into the response; we tokenise them apart.
- "never": the tokenizer adds no special token to the prompt (a BOS in the text or template stays).
Under "auto" and "never" a plain response ends in EOS, a chat-templated one as the template ends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmlab.core.files.records import Record, SkipLog
from lmlab.core.kernel.errors import DataError, LmlabError

BOS_MODES = ("auto", "always", "never")


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


def _tokenizer_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def check_bos_mode(bos: str) -> None:
    """Refuse an unknown --bos value (before any model is loaded)."""
    if bos not in BOS_MODES:
        raise LmlabError(f"--bos {bos!r} is not a BOS convention.",
                         hint="--bos auto (the tokenizer's own), always (TRL's: BOS first) or never")


def _eos(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise LmlabError(f"plain-text rows need an EOS token to end each response, and the tokenizer of "
                         f"'{_tokenizer_name(tokenizer)}' has none.",
                         hint="use conversational rows with a chat template, or a tokenizer with an EOS token")
    return tokenizer.eos_token_id


def _prompt_ids(tokenizer: Any, text: str, *, templated: bool, bos: str) -> list[int]:
    ids = _ids(tokenizer, text, special=bos == "auto" and not templated)
    if bos == "always" and ids[:1] != [tokenizer.bos_token_id]:
        ids.insert(0, tokenizer.bos_token_id)
    return ids


def _response_ids(tokenizer: Any, text: str, *, templated: bool, bos: str) -> list[int]:
    ids = _ids(tokenizer, text, special=False)
    if bos == "always":
        return ids if ids[-1:] == [tokenizer.eos_token_id] else ids + [_eos(tokenizer)]
    return ids if templated else ids + [_eos(tokenizer)]


def build_examples(records: list[Record], tokenizer: Any, *, max_length: int, max_prompt_length: int | None,
                   skips: SkipLog, bos: str = "auto") -> tuple[list[PreferenceExample], dict[str, int]]:
    """Tokenise and truncate every row, with the special-token convention `bos` (auto, always or never: see
    the module's docstring); returns the examples and counts of what was cut."""
    check_bos_mode(bos)
    if bos == "always" and tokenizer.bos_token_id is None:
        raise LmlabError(f"--bos always needs a BOS token, and the tokenizer of '{_tokenizer_name(tokenizer)}' "
                         "has none.", hint="use --bos never (TRL adds no BOS either with such a tokenizer)")
    examples: list[PreferenceExample] = []
    cut = {"prompts_truncated": 0, "responses_truncated": 0}
    for record in records:
        templated = isinstance(record.data.get("chosen"), list)
        if templated:
            prompt_text, chosen_text, rejected_text = _conversation(record, tokenizer)
        else:
            prompt_text = record.get("prompt", (str,))
            chosen_text, rejected_text = record.get("chosen", (str,)), record.get("rejected", (str,))
            if not chosen_text.strip() or not rejected_text.strip():
                skips.add("empty response", record)
                continue
        prompt = _prompt_ids(tokenizer, prompt_text, templated=templated, bos=bos)
        chosen, rejected = (_response_ids(tokenizer, t, templated=templated, bos=bos)
                            for t in (chosen_text, rejected_text))
        if not prompt:
            skips.add("empty prompt", record)
            continue
        if chosen == rejected:
            skips.add("chosen identical to rejected", record)
            continue
        if max_prompt_length is not None and len(prompt) > max_prompt_length:
            prompt = prompt[-max_prompt_length:]
            if bos == "always":
                prompt[0] = tokenizer.bos_token_id  # BOS, then the prompt's last max_prompt_length - 1 tokens
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
