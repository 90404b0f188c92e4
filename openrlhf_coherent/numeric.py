"""One validator for the numeric flags of every entry point, keyed by the flag's name.

A NaN or infinite temperature, beta or learning rate, a top-p of 0, a micro batch of 0 or a seed
past 2**32 is accepted by argparse and fails, if at all, hours later (a NaN loss, an all-NaN saved
model, a sampler error after the models load). Every entry point hands its flags, as
(flag, value) pairs, to `check_numeric_flags` before anything loads:

- PPO (`plugin.validate`): OpenRLHF's whole args tree, its own `--rollout.*`/`--algo.*` flags too;
- train_dpo / train_srpo: OpenRLHF's train_dpo tree and our `--dpo.*`/`--srpo.*` flags;
- the evaluator tools and sera (`flat_items` of their parsers);
- the recipe, at dry-run time, every stage's command line (`argv_items`).

The rule for a flag comes from the first pattern in RULES its name (without the leading dashes)
matches; any other float must be finite. Ranges are those the value makes sense in, not taste.
"""

from __future__ import annotations

import argparse
import math
import re
import types
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

from .errors import ConfigError

INF = math.inf
SEED_MAX = 2**32 - 1  # numpy's and vLLM's seed range (torch accepts more; a seed must fit all)

# (pattern over the flag name, low, high, low_open, high_open, integer)
RULES: List[Tuple[str, Optional[float], Optional[float], bool, bool, bool]] = [
    (r"ckpt\.max_mem", 0, INF, True, False, False),  # OpenRLHF's default is inf (no limit)
    (r"(.+\.)?temperature", 0, None, True, False, False),
    (r"(.+\.)?top_p", 0, 1, True, False, False),
    (r"(.+\.)?simpo_gamma", 0, None, False, False, False),
    (r"(.+\.)?beta", 0, None, True, False, False),  # DPO/IPO/SLiC/SimPO's and SRPO's beta
    (r"(.+\.)?(gamma|lambd|ensemble_gamma)|srpo\.alpha", 0, 1, False, False, False),
    (r"(.+\.)?seed", 0, SEED_MAX, False, False, True),
    (r"(.+\.)?\w*batch_size", 1, None, False, False, True),
    (r"(.+\.)?(max_new_tokens|generate_max_len|num_samples|n_samples_per_prompt|num_episodes|\w*epochs\w*)",
     1, None, False, False, True),
    (r"(.+\.)?max_len", 2, None, False, False, True),
    (r"(.+\.)?(lr|\w+_lr|learning_rate)", 0, None, True, False, False),
    (r"(.+\.)?(init_coef|kl_coef)", 0, None, False, False, False),
    (r"(.+\.)?scale", 0, None, True, False, False),
    (r"(.+\.)?\w*gpu_memory_utilization", 0, 1, True, False, False),
    (r"(.+\.)?\w*_fraction", 0, None, False, False, False),
    (r"limit", 0, None, True, False, False),  # evaluate's --limit (examples, or a fraction)
]  # fmt: skip
_COMPILED = [(re.compile(f"(?:{p})$"), rest) for p, *rest in RULES]


def _rule(flag: str):
    name = flag.lstrip("-")
    return next((rest for pattern, rest in _COMPILED if pattern.match(name)), None)


def _range(low, high, low_open, high_open) -> str:
    if high is None or high == INF:
        return f"{'>' if low_open else '>='} {low}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_numeric_flag(flag: str, value) -> None:
    """ConfigError naming `flag` unless `value` (a number, or a list/tuple of them) is in its rule's
    range; a float without a rule must be finite. None, booleans and non-numbers are not checked."""
    if isinstance(value, (list, tuple)):
        for item in value:
            check_numeric_flag(flag, item)
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    rule = _rule(flag)
    if rule is None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {value}")
        return
    low, high, low_open, high_open, integer = rule
    ok = not math.isnan(value) and (math.isfinite(value) or high == INF and value == INF)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if integer and ok and value != int(value):
        ok = False
    if not ok:
        kind = "an integer" if integer else "a finite number" if high != INF else "a number, not NaN"
        raise ConfigError(f"{flag} must be {_range(low, high, low_open, high_open)} ({kind}), got {value}")


def check_numeric_flags(items: Iterable[Tuple[str, object]]) -> None:
    for flag, value in items:
        check_numeric_flag(flag, value)


def tree_items(args, prefix: str = "") -> Iterator[Tuple[str, object]]:
    """(--a.b.c, value) for every leaf of OpenRLHF's hierarchized args tree (SimpleNamespaces)."""
    for key, value in vars(args).items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, (argparse.Namespace, types.SimpleNamespace)):
            yield from tree_items(value, name)
        else:
            yield f"--{name}", value


def flat_items(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Iterator[Tuple[str, object]]:
    """(flag as typed, value) for a flat argparse namespace (a dest such as `beta` is `--model.beta`)."""
    for action in parser._actions:
        if action.option_strings and hasattr(args, action.dest):
            yield action.option_strings[0], getattr(args, action.dest)


def check_parsed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The numeric flags of a flat argparse CLI (the evaluator tools, evaluate, revise, sera)."""
    check_numeric_flags(flat_items(parser, args))


def argv_items(argv: Sequence[str]) -> Iterator[Tuple[str, object]]:
    """(flag, number) for each `--flag value` (or `--flag=value`) of a command line whose value is a
    number: what a stage will be run with, checked before it starts."""
    argv = [str(a) for a in argv]
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        flag, eq, value = arg.partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                continue
            value = argv[i + 1]
        number = _number(value)
        if number is not None:
            yield flag, number


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)  # "nan" and "inf" too: exactly what must be refused
    except ValueError:
        return None
