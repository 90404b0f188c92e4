"""Prompt templates and text formation for SRPO: the 0-revision prompt x and the revision prompt
R(x, y) that turns the one policy into the self-improvement policy pi(y' | R(x, y)).

A template is a text file with the placeholders `{prompt}` (the row's prompt: its text, or with
a chat template the content of its last user message) and, for a revision template,
`{completion}` (the earlier completion, stripped). Nothing else in the file is special: braces in
the template or in the data are kept as they are. One trailing newline (the one editors add) is
dropped. The files shipped with the package (paper appendix C.1, TL;DR and XSum, and a chat
template for general prompts) are in openrlhf_coherent/templates/srpo/.

Training (dataset.py) and inference (cli/revise.py) form text with the same `TextFormat`, so a
revision at inference time sees exactly the prompt it was trained on. The 0-revision text is
formed as OpenRLHF's DPO dataset forms it (datasets/reward_dataset.py::preprocess_data), so SRPO's
x -> y sequences are DPO's chosen/rejected sequences.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.data_tools.rows import BadRow

PROMPT, COMPLETION = "{prompt}", "{completion}"
_PLACEHOLDER = re.compile(r"\{prompt\}|\{completion\}")
TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "templates", "srpo")

Text = Union[str, list]  # a plain string, or chat messages


@dataclass(frozen=True)
class Template:
    text: str

    def fill(self, prompt: str, completion: str = "") -> str:
        # One pass: a "{completion}" that happens to be inside the prompt text stays literal.
        return _PLACEHOLDER.sub(lambda m: prompt if m.group(0) == PROMPT else completion, self.text)

    def as_input_template(self) -> str:
        """OpenRLHF's `--data.input_template` form (str.format with one `{}`) of a 0-revision template."""
        return self.text.replace("{", "{{").replace("}", "}}").replace("{{prompt}}", "{}")


def load_template(path: str, flag: str, revision: bool) -> Template:
    """Read a template file; a revision template needs {prompt} and {completion}, a 0-revision
    template {prompt} only. Errors name the flag."""
    if not path:
        raise ConfigError(f"{flag} is required (a template file; see {TEMPLATE_DIR})")
    if not os.path.isfile(path):
        raise ConfigError(f"{flag} {path}: no such file")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = text[:-1] if text.endswith("\n") else text
    missing = [p for p in ((PROMPT, COMPLETION) if revision else (PROMPT,)) if p not in text]
    if missing:
        raise ConfigError(f"{flag} {path}: the template has no {' and no '.join(missing)} placeholder")
    if not revision and COMPLETION in text:
        raise ConfigError(f"{flag} {path}: a 0-revision template has no earlier completion; remove {COMPLETION}")
    return Template(text)


def content(value: Text) -> str:
    """The text of a completion or prompt: a string, a message, or the last of a message list."""
    if isinstance(value, list):
        value = value[-1] if value else ""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _messages(value: Text, role: str) -> List[dict]:
    # OpenRLHF's DPO data holds message lists; a plain string is one message (as its SFT data).
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


@dataclass
class TextFormat:
    """How a row's prompt and completions become (prompt text, completion text) for the
    0-revision and the revision contexts. `input_template` is OpenRLHF's (plain text only)."""

    revision: Template
    apply_chat_template: bool = False
    input_template: Optional[str] = None

    def generation_context(self, prompt: Text, line: int) -> Text:
        if self.apply_chat_template:
            return _messages(prompt, "user")
        if not isinstance(prompt, str):
            raise BadRow(line, "the prompt is not a string (pass --data.apply_chat_template for chat messages)")
        return self.input_template.format(prompt) if self.input_template else prompt

    def revision_context(self, prompt: Text, earlier: Text, line: int) -> Text:
        """R(x, y): the revision template filled with the prompt and the earlier completion y."""
        earlier_text = content(earlier).strip()
        if not self.apply_chat_template:
            if not isinstance(prompt, str):
                raise BadRow(line, "the prompt is not a string (pass --data.apply_chat_template for chat messages)")
            return self.revision.fill(prompt, earlier_text)
        messages = _messages(prompt, "user")
        if not messages or messages[-1].get("role") != "user":
            raise BadRow(line, "the prompt's last message is not a user message (the revision template fills it)")
        # Earlier turns stay as they are; the last user turn becomes the revision request.
        return messages[:-1] + [{"role": "user", "content": self.revision.fill(content(messages[-1]), earlier_text)}]

    def texts(self, tokenizer, context: Text, completion: Text) -> Tuple[str, str]:
        """(prompt text, completion text) as OpenRLHF's DPO dataset forms them."""
        if not self.apply_chat_template:
            if not isinstance(completion, str):
                raise ValueError("a completion is not a string (pass --data.apply_chat_template for chat messages)")
            return context, completion
        prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(context + _messages(completion, "assistant"), tokenize=False)
        return prompt, full[len(prompt) :]

    def prompt_text(self, tokenizer, context: Text) -> str:
        """The text to generate from (inference)."""
        if not self.apply_chat_template:
            return context
        return tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
