"""Input rows -> token ids to score, formed exactly as OpenRLHF's SFT/DPO datasets form them.

OpenRLHF (datasets/sft_dataset.py, datasets/reward_dataset.py) builds a training example as
prompt text + response text, where with `--apply_chat_template` the prompt is the template up to
the generation prompt and the response is the rest of the templated conversation; the joined
text gets " " + EOS unless it already ends with EOS, is tokenized without special tokens, and the
prompt/response boundary is the token count of the prompt alone. A score computed on anything
else (another template, no EOS) would not be the log-likelihood the models were trained on.

Every bad row (malformed JSON, missing key, empty response, prompt that leaves no room for a
response within --max_len) becomes a `BadRow` naming its 1-based line number.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.files import loads

ON_BAD_ROW = ("skip", "fail")


class BadRow(ValueError):
    def __init__(self, line: int, reason: str):
        super().__init__(f"line {line}: {reason}")
        self.line, self.reason = line, reason


@dataclass
class Job:
    """One input row and the (prompt_ids, response_ids) pairs it needs scored."""

    line: int  # 1-based line number in the input file: the row's identity for resume
    row: dict
    pairs: List[Tuple[List[int], List[int]]] = field(default_factory=list)
    truncated: List[bool] = field(default_factory=list)  # response cut to fit --max_len


@dataclass
class TextFormat:
    """How rows become text: the OpenRLHF data flags (--prompt_key, --apply_chat_template, ...)."""

    prompt_key: Optional[str]  # None/"": the response field holds the whole conversation
    apply_chat_template: bool = False
    input_template: Optional[str] = None

    def prompt_text(self, tokenizer, row: dict, line: int) -> str:
        """The prompt alone (bootstrap-pairs generates from it)."""
        prompt = _field(row, self.prompt_key, line)
        if self.apply_chat_template:
            messages = _messages(prompt, "user", line, f"{self.prompt_key!r}")
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(prompt, str):
            raise BadRow(line, f"{self.prompt_key!r} is not a string (pass --apply_chat_template for chat messages)")
        return self.input_template.format(prompt) if self.input_template else prompt

    def texts(self, tokenizer, row: dict, response, line: int) -> Tuple[str, str]:
        """(prompt text, response text) of `response` (a string or messages) to the prompt in `row`."""
        if not self.prompt_key:
            # Conversation form (OpenRLHF's DPO without --data.prompt_key): the last message is the response.
            if not self.apply_chat_template or not isinstance(response, list) or len(response) < 2:
                raise BadRow(line, "with no prompt key, the response field must be a chat conversation of 2+ messages")
            check_messages(response, line, "the conversation")
            prompt = tokenizer.apply_chat_template(response[:-1], tokenize=False, add_generation_prompt=True)
            return prompt, tokenizer.apply_chat_template(response, tokenize=False)[len(prompt) :]
        prompt = self.prompt_text(tokenizer, row, line)
        if self.apply_chat_template:
            conversation = _messages(row[self.prompt_key], "user", line, f"{self.prompt_key!r}") + _messages(
                response, "assistant", line, "the response"
            )
            return prompt, tokenizer.apply_chat_template(conversation, tokenize=False)[len(prompt) :]
        if not isinstance(response, str):
            raise BadRow(line, "the response is not a string (pass --apply_chat_template for chat messages)")
        return prompt, response


def _field(row: dict, key: str, line: int):
    if key not in row or row[key] is None:
        raise BadRow(line, f"missing key {key!r}")
    return row[key]


def _messages(value, role: str, line: int, what: str) -> list:
    # OpenRLHF's SFT dataset wraps plain strings as one message; its DPO dataset expects lists.
    # Accepting both lets one file feed either tool.
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    check_messages(value, line, what)
    return list(value)


def check_messages(value, line: int, what: str) -> None:
    """BadRow naming the line unless `value` is a list of chat messages with string role and content
    (anything else makes a chat template fail with a bare TypeError, or template garbage)."""
    ok = isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )
    if not ok:
        raise BadRow(
            line, f"{what} must be a string or a non-empty list of chat messages {{role, content}} with string "
            f"values, got {type(value).__name__} {json.dumps(value, default=str)[:80]}"
        )


def tokenize_pair(tokenizer, prompt: str, response: str, max_len: int, line: int) -> Tuple[List[int], List[int], bool]:
    """(prompt_ids, response_ids, truncated) as OpenRLHF tokenizes a training example."""
    eos = tokenizer.eos_token
    if not response.replace(eos, "").strip():
        raise BadRow(line, "empty response")
    text = (prompt + response).rstrip("\n")
    if not text.endswith(eos):
        text += " " + eos
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if prompt_len == 0:
        raise BadRow(line, "empty prompt")
    if prompt_len >= max_len:
        raise BadRow(line, f"prompt is {prompt_len} tokens, no room for a response within --max_len {max_len}")
    # Like OpenRLHF's training truncation, keep the first max_len tokens; the row is flagged so a
    # cut response's (smaller) sum is not mistaken for a complete one's.
    return ids[:prompt_len], ids[prompt_len:max_len], len(ids) > max_len


def read_jsonl(path: str) -> Iterator[Tuple[int, object]]:
    """(line number, parsed row or BadRow) for every non-blank line; a line that is not UTF-8
    text is a BadRow naming its line and column, like malformed JSON."""
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line, BadRow(line, f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})")
                continue
            if not text.strip():
                continue
            try:
                row = loads(text)  # strict: a NaN anywhere in the row could never be written back
            except json.JSONDecodeError as e:
                yield line, BadRow(line, f"malformed JSON ({e.msg} at column {e.colno})")
                continue
            except ValueError as e:
                yield line, BadRow(line, f"malformed JSON ({e}; our outputs are strict JSON)")
                continue
            yield line, row if isinstance(row, dict) else BadRow(line, "not a JSON object")


def load_jobs(
    path: str,
    make_job: Callable[[int, dict], Job],
    on_bad_row: str,
    skip_lines: Sequence[int] = (),
) -> Tuple[List[Job], List[BadRow]]:
    """Read `path` into Jobs (lines in `skip_lines`, already done, are left out).

    Runs before any model or Ray actor starts, so `--on_bad_row fail` stops the run before it
    writes anything and output from earlier runs is untouched.
    """
    done = set(skip_lines)
    jobs, bad = [], []
    handle = bad_row_handler(path, on_bad_row, bad)
    for line, row in read_jsonl(path):
        if line in done:
            continue
        try:
            if isinstance(row, BadRow):
                raise row
            jobs.append(make_job(line, row))
        except BadRow as e:
            handle(e)
    return jobs, bad


def bad_row_handler(path: str, on_bad_row: str, bad: List[BadRow], report: bool = False) -> Callable[[BadRow], None]:
    """What to do with a bad row of --input `path`: stop (`fail`: a ConfigError naming the line) or
    collect it in `bad` (`skip`; `report`: also print it now, for rows found while scoring)."""
    if on_bad_row not in ON_BAD_ROW:
        raise ConfigError(f"--on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")

    def handle(e: BadRow) -> None:
        if on_bad_row == "fail":
            raise ConfigError(f"--input {path}: {e} (--on_bad_row fail; pass --on_bad_row skip to skip such rows)")
        bad.append(e)
        if report:
            print(f"[openrlhf_coherent] skipped {e} (--on_bad_row skip)", file=sys.stderr)

    return handle


def row_to_job(tokenizer, fmt: TextFormat, response_keys: Sequence[str], max_len: int) -> Callable[[int, dict], Job]:
    """A `make_job` for `load_jobs`: one scored pair per response key (1 for score, 2 for pairs)."""

    def make(line: int, row: Dict) -> Job:
        job = Job(line=line, row=row)
        for key in response_keys:
            prompt, response = fmt.texts(tokenizer, row, _field(row, key, line), line)
            prompt_ids, response_ids, truncated = tokenize_pair(tokenizer, prompt, response, max_len, line)
            job.pairs.append((prompt_ids, response_ids))
            job.truncated.append(truncated)
        return job

    return make
