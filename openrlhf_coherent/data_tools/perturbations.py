"""Task-agnostic perturbations of a reference response, for the reward audit (cli/audit.py).

Each kind is a small named function `f(ref: Reference) -> str | (str, finished) | None`: the
perturbed response *content* (the text that replaces the reference in the row; the chat template,
if any, is applied afterwards exactly as for the reference), optionally with `finished=False` for
a response that ends without EOS (as a rollout cut at the generation limit does), or None where
the kind does not apply to this reference (a one-sentence answer has no last sentence to drop).

A user adds kinds of their own with `--perturbations file.py`: a Python file defining
`PERTURBATIONS = {"name": function, ...}` with the same signature. It is imported (it is the
user's own code, named by an explicit flag), never evaluated from data.

Kind `continue_sft` (the reference continued past its end by sampling from the SFT model) needs the
model, so the audit builds it itself (`CONTINUATION`); it is listed here so its name is reserved.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from openrlhf_coherent.config import ConfigError

Perturbed = Union[None, str, Tuple[str, bool]]
CONTINUATION = "continue_sft"
FILLER = " I hope this helps! Let me know if you have any other questions."


@dataclass
class Reference:
    """One input row's reference response and what a perturbation may use."""

    line: int
    row: dict
    text: str  # the reference response content
    tokenizer: object
    others: Sequence[str] = ()  # every other row's reference content (for swap_reference)
    rng: random.Random = field(default_factory=random.Random)  # seeded by run seed + line: reproducible

    def token_prefix(self, fraction: float) -> Optional[str]:
        ids = self.tokenizer(self.text, add_special_tokens=False)["input_ids"]
        keep = int(len(ids) * fraction)
        if keep < 1 or keep >= len(ids):
            return None
        return self.tokenizer.decode(ids[:keep], skip_special_tokens=True)


# A sentence ends at . ! ? not after a digit (not "1." of a numbered list), before whitespace, which is
# kept: a perturbed multi-line answer keeps its line breaks.
_SENTENCE_END = re.compile(r"(?<=[^\d][.!?])(\s+)")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
MAX_COMMA_ITEM_WORDS = 4  # longer comma-separated parts are clauses of prose, not list items


def sentence_parts(text: str) -> Tuple[List[str], List[str]]:
    """(sentences, the whitespace between consecutive ones)."""
    pieces = _SENTENCE_END.split(text.strip())
    return pieces[0::2], pieces[1::2]


def sentences(text: str) -> List[str]:
    return [s for s in sentence_parts(text)[0] if s]


def rejoin(units: Sequence[str], separators: Sequence[str]) -> str:
    """units[0] + separators[0] + units[1] + ...: sentences put back with the text's own whitespace."""
    out = units[0] if units else ""
    for sep, unit in zip(separators, units[1:]):
        out += sep + unit
    return out


def lines(text: str) -> List[str]:
    return [s for s in text.strip().split("\n") if s.strip()]


def list_items(text: str) -> Tuple[List[str], str]:
    """(items, separator): markdown list lines, else comma-separated items; ([], "") if neither."""
    rows = lines(text)
    if sum(bool(_LIST_ITEM.match(r)) for r in rows) >= 2:
        return rows, "\n"
    parts = [p for p in text.strip().split(",")]
    if len(parts) >= 2 and all(0 < len(p.split()) <= MAX_COMMA_ITEM_WORDS for p in parts):
        return parts, ","
    return [], ""


def last_unit(text: str) -> str:
    """What the repeat kinds repeat: the last sentence, else the last line, else the last 4 words."""
    for units in (sentences(text), lines(text)):
        if len(units) >= 2:
            return units[-1]
    words = text.split()
    return " ".join(words[-4:])


def truncate_50(ref: Reference) -> Perturbed:
    return ref.token_prefix(0.5)


def truncate_75(ref: Reference) -> Perturbed:
    return ref.token_prefix(0.75)


def drop_last_sentence(ref: Reference) -> Perturbed:
    units, separators = sentence_parts(ref.text)
    return rejoin(units[:-1], separators) if len(units) >= 2 else None


def drop_last_line(ref: Reference) -> Perturbed:
    units = lines(ref.text)
    return "\n".join(units[:-1]) if len(units) >= 2 else None


def drop_last_item(ref: Reference) -> Perturbed:
    items, sep = list_items(ref.text)
    return sep.join(items[:-1]).strip() if len(items) >= 2 else None


def _repeat(k: int) -> Callable[[Reference], Perturbed]:
    def repeat(ref: Reference) -> Perturbed:
        unit = last_unit(ref.text)
        joiner = "\n" if "\n" in ref.text.strip() and len(sentences(ref.text)) < 2 else " "
        return ref.text.rstrip() + (joiner + unit) * k if unit else None

    repeat.__name__ = f"repeat_last_x{k}"
    repeat.__doc__ = f"the last sentence (else line, else 4 words) repeated {k} more time(s)"
    return repeat


def filler(ref: Reference) -> Perturbed:
    return ref.text.rstrip() + FILLER


def shuffle_sentences(ref: Reference) -> Perturbed:
    """Sentences shuffled (else lines, else list items); None when there is one unit or no new order."""
    units, separators = sentence_parts(ref.text)
    items, item_sep = list_items(ref.text)
    for units, join in ((units, lambda order: rejoin(order, separators)),
                        (lines(ref.text), "\n".join), (items, item_sep.join)):  # fmt: skip
        if len(units) >= 2:
            for _ in range(10):
                order = list(units)
                ref.rng.shuffle(order)
                if order != units:
                    return join(order).strip()
            return None
    return None


def swap_reference(ref: Reference) -> Perturbed:
    """Another prompt's reference: a reward that ignores the prompt prefers it as often as not."""
    pool = [t for t in ref.others if t != ref.text]
    return ref.rng.choice(pool) if pool else None


def empty(ref: Reference) -> Perturbed:
    return ""


BUILTIN: Dict[str, Callable[[Reference], Perturbed]] = {
    "truncate_50": truncate_50,
    "truncate_75": truncate_75,
    "drop_last_sentence": drop_last_sentence,
    "drop_last_line": drop_last_line,
    "drop_last_item": drop_last_item,
    "repeat_last_x1": _repeat(1),
    "repeat_last_x3": _repeat(3),
    "repeat_last_x8": _repeat(8),
    "filler": filler,
    "shuffle_sentences": shuffle_sentences,
    "swap_reference": swap_reference,
    "empty": empty,
}


def load_user_perturbations(path: str) -> Dict[str, Callable[[Reference], Perturbed]]:
    """`PERTURBATIONS` of the user's Python file (--perturbations), checked before any model loads."""
    flag = "--perturbations"
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise ConfigError(f"{flag} {path}: not a Python file (.py)")
    spec = importlib.util.spec_from_file_location(f"audit_perturbations_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: any error is theirs to see, named
        raise ConfigError(f"{flag} {path}: importing it failed ({type(e).__name__}: {e})") from None
    found = getattr(module, "PERTURBATIONS", None)
    if not isinstance(found, dict) or not found:
        raise ConfigError(f"{flag} {path}: defines no PERTURBATIONS = {{'name': function, ...}} dict")
    reserved = set(BUILTIN) | {CONTINUATION, "reference"}
    for name, fn in found.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{flag} {path}: perturbation name {name!r} must be letters, digits, _ . -")
        if name in reserved:
            raise ConfigError(f"{flag} {path}: perturbation {name!r} has the name of a built-in kind; rename it")
        if not callable(fn):
            raise ConfigError(f"{flag} {path}: PERTURBATIONS[{name!r}] is not a function")
    return dict(found)


def apply(fn: Callable[[Reference], Perturbed], name: str, ref: Reference) -> Optional[Tuple[str, bool]]:
    """(content, finished) of one perturbation of `ref`, or None where it does not apply. A user
    function that raises or returns something else is an error naming the kind and the line."""
    try:
        out = fn(ref)
    except Exception as e:
        raise ConfigError(f"perturbation {name!r} raised on --input line {ref.line}: {type(e).__name__}: {e}") from None
    if out is None:
        return None
    if isinstance(out, str):
        return out, True
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], str) and isinstance(out[1], bool):
        return out
    raise ConfigError(
        f"perturbation {name!r} returned {type(out).__name__} on --input line {ref.line}: expected a string, "
        "(string, finished: bool) or None"
    )
