"""Task specs for `openrlhf_coherent.cli.evaluate`: `name` or `name:N` (N = few-shot examples).

The paper (section 4.1): IFEval (instruction-level loose and strict accuracy), GSM8k 5-shot exact
match, GPQA few-shot with and without chain of thought, all with lm-evaluation-harness "under its
default settings". GPQA main has 448 questions (the paper's percentages are multiples of 1/448).
The paper does not give GPQA's shot count; lm-eval's `gpqa_main_*_n_shot` tasks default to 0, so
the preset sets 5 like GSM8k. Write `gpqa_main_n_shot:3` (or any spec) to change it.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from openrlhf_coherent.config import ConfigError

PAPER_TASKS = "ifeval,gsm8k:5,gpqa_main_cot_n_shot:5,gpqa_main_n_shot:5"

# lm-eval's IFEval checkers import these; lm-eval declares them as its `ifeval` extra.
IFEVAL_MODULES = ("langdetect", "immutabledict", "nltk")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    num_fewshot: Optional[int]  # None: the task's own default


def parse_task_specs(text: str) -> List[TaskSpec]:
    """`paper` or a comma list of `task[:num_fewshot]`; `paper` may appear inside the list."""
    specs: List[TaskSpec] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item == "paper":
            specs.extend(parse_task_specs(PAPER_TASKS))
            continue
        name, _, shots = item.partition(":")
        if shots and not shots.isdigit():
            raise ConfigError(f"--tasks {item!r}: the part after ':' must be a number of few-shot examples")
        specs.append(TaskSpec(name, int(shots) if shots else None))
    if not specs:
        raise ConfigError("--tasks is empty")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--tasks names {duplicates} more than once (one few-shot count per task)")
    return specs


def check_tasks(specs: Sequence[TaskSpec], known: Sequence[str]) -> None:
    """Every task exists in lm-eval's registry (with --include_path), and IFEval's dependencies are
    importable: both fail here, before the model is loaded."""
    known_set = set(known)
    for spec in specs:
        if spec.name not in known_set:
            close = difflib.get_close_matches(spec.name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"--tasks {spec.name}: not an lm-eval task (nor one under --include_path){hint}")
    if any(spec.name.startswith("ifeval") for spec in specs):
        missing = [m for m in IFEVAL_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"--tasks ifeval needs {', '.join(missing)} (lm-eval's ifeval extra): pip install 'lm-eval[ifeval]==0.4.13'"
            )


def group_by_fewshot(specs: Sequence[TaskSpec]) -> Dict[Optional[int], List[str]]:
    """lm-eval takes one num_fewshot per `simple_evaluate` call: one call per distinct count."""
    groups: Dict[Optional[int], List[str]] = {}
    for spec in specs:
        groups.setdefault(spec.num_fewshot, []).append(spec.name)
    return groups
