"""Secrets: the one masker for every command, argument list, config and log line we print or write,
and the rule that keeps the wandb key off command lines altogether.

OpenRLHF prints every argument (`strategy.print(args)`) and uploads `args.__dict__` as the wandb
run's config, so a key given as `--logger.wandb.key <key>` would reach the logs and the wandb run
whatever we mask. Hence the key is taken from WANDB_API_KEY: `--logger.wandb.key env` turns wandb
on (OpenRLHF logs in only when wandb has no key yet, and wandb reads WANDB_API_KEY itself); any
other value is refused by our CLIs (`check_wandb_key`), and the recipe and `sera`, which build
command lines from a config that may expand `${WANDB_API_KEY}`, put `env` in its place
(`wandb_key_from_env`).

Everything else we print or write about a command goes through `mask_argv`, `mask_tree` or
`mask_text`: the value of a secret-named flag (`--logger.wandb.key`, `--hf_token`,
`--api_key`, ... but not the dataset fields `--data.input_key` or token counts) and every value of
a secret-named environment variable (HF_TOKEN, WANDB_API_KEY, ...) wherever it appears, become ***.
"""

from __future__ import annotations

import os
import re
from typing import List, Mapping, Optional, Sequence

MASK = "***"
WANDB_KEY_FLAG = "--logger.wandb.key"
WANDB_ENV = "WANDB_API_KEY"
FROM_ENV = "env"

# Environment variables whose values are secrets (the job scripts mask the same names).
SECRET_ENV_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.I)
# Flag (or config key) names whose values are secrets. A bare `key`/`token` counts only as a whole
# dotted part (`--logger.wandb.key`): `input_key`, `chosen_key` name dataset fields, `max_tokens` counts.
SECRET_FLAG = re.compile(
    r"(^|\.)(key|token)$|(^|[._-])(secret|password|passwd|credentials?)$"
    r"|(^|[._-])(api|access|auth|hf|wandb|private|secret)[_-]?(key|token)$",
    re.I,
)
# Values shorter than this are not masked inside other text (TOKENIZERS_PARALLELISM=true is no secret).
MIN_SECRET_LENGTH = 8


def is_secret_name(name: str) -> bool:
    """A flag (with its dashes), config key or environment variable (upper case) whose value is a
    secret. Also argparse's unique abbreviations of --logger.wandb.key (`--logger.wandb.ke`), which
    OpenRLHF's parser accepts."""
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
        return bool(SECRET_ENV_NAME.search(name))
    if name.startswith("--logger.wandb.k") and WANDB_KEY_FLAG.startswith(name):
        return True
    return bool(SECRET_FLAG.search(name.lstrip("-")))


def secret_values(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Values of the secret-named environment variables, longest first."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if SECRET_ENV_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


# A secret-named flag and its value inside a longer string, e.g. a recipe override
# `--set 'ppo.extra_args=[--logger.wandb.key,KEY]'` or a printed command line.
EMBEDDED_FLAG = re.compile(r"(--[\w.-]+)([=,\s]+)([^,\]\s'\"]+)")


def mask_text(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, MASK)

    def embedded(match: re.Match) -> str:
        flag, sep, value = match.groups()
        return f"{flag}{sep}{MASK}" if is_secret_name(flag) and value not in (FROM_ENV, MASK) else match.group(0)

    return EMBEDDED_FLAG.sub(embedded, text)


def mask_argv(argv: Sequence) -> List[str]:
    """`argv` with the value of every secret-named flag (`--flag value` or `--flag=value`) and every
    secret environment value inside any argument shown as ***."""
    out: List[str] = []
    hide_next = False
    for arg in map(str, argv):
        if hide_next:
            out.append(arg if arg == FROM_ENV else MASK)  # `--logger.wandb.key env` names no secret
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if arg.startswith("-") and is_secret_name(flag):
            if eq:
                out.append(f"{flag}={MASK}")
                continue
            hide_next = True
        out.append(mask_text(arg))
    return out


def mask_tree(value):
    """A JSON/YAML-like tree (dicts, lists, strings) with secrets masked: the value of a secret-named
    key (a flag, config key or environment variable: an env_vars mapping too), flag values in lists
    (argument lists), secret environment values in any string."""
    if isinstance(value, Mapping):
        return {k: MASK if isinstance(k, str) and is_secret_name(k) and v is not None else mask_tree(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (str, int, float)) for v in value):
            return mask_argv(value) if any(isinstance(v, str) for v in value) else list(value)
        return [mask_tree(v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def wandb_key_problem(value: Optional[str]) -> Optional[str]:
    """Why `--logger.wandb.key <value>` is refused, or None. The message never shows the value."""
    if value in (None, ""):
        return None
    if value != FROM_ENV:
        return (
            f"{WANDB_KEY_FLAG}: the key itself is refused on a command line (OpenRLHF prints every argument and "
            f"uploads them as the wandb run's config): export {WANDB_ENV}=<key> and pass {WANDB_KEY_FLAG} {FROM_ENV}"
        )
    if not os.environ.get(WANDB_ENV):
        return f"{WANDB_KEY_FLAG} {FROM_ENV} reads the key from {WANDB_ENV}, which is not set"
    return None


def check_wandb_key(args) -> None:
    """ConfigError unless OpenRLHF's parsed `args.logger.wandb.key` is unset or `env` with
    WANDB_API_KEY set (our CLIs call it before anything prints the arguments)."""
    from .errors import ConfigError

    logger = getattr(args, "logger", None)
    problem = wandb_key_problem(getattr(getattr(logger, "wandb", None), "key", None))
    if problem:
        raise ConfigError(problem)


def wandb_key_from_env(argv: Sequence[str], where: str) -> List[str]:
    """`argv` with a wandb key equal to WANDB_API_KEY's value (a config's `${WANDB_API_KEY}`)
    replaced by `env`; ValueError naming `where` for any other literal key."""
    out = [str(a) for a in argv]
    environ_key = os.environ.get(WANDB_ENV)
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if not (arg.startswith("--logger.wandb.k") and WANDB_KEY_FLAG.startswith(flag)):
            continue
        at = i if eq else i + 1
        if not eq:
            value = out[at] if at < len(out) else ""
        if environ_key and value == environ_key:
            value = FROM_ENV
            out[at] = f"{flag}={value}" if eq else value
        problem = wandb_key_problem(value)
        if problem:
            raise ValueError(f"{where}: {problem}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """What the job scripts print, masked (run as a file: `python openrlhf_coherent/redact.py`, so
    only the standard library is needed where a script runs):
      redact.py ARG...       the shell-quoted command line
      redact.py --json TEXT  a JSON object (a runtime_env with its env_vars)"""
    import json
    import shlex
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--json"]:
        try:
            print(json.dumps(mask_tree(json.loads(argv[1]))))
        except (ValueError, IndexError):
            print("<not shown: not a JSON object>")
        return 0
    print(shlex.join(mask_argv(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
