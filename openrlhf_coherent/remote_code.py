"""Custom model code runs only when the user asked for it.

transformers imports and runs Python from a model folder (or hub repo) when one of its JSON
configs has an `auto_map` entry and the loader passes `trust_remote_code=True`. OpenRLHF's loaders
always pass True (its `Actor`, critic, tokenizer, vLLM engine), and so does any loader that cannot
see the user's flags. Without an `auto_map`, `trust_remote_code=True` has no effect. So the one
defence that covers every loader, ours and OpenRLHF's, is to refuse a model path whose configs name
custom code unless the user passed the trust flag, before anything loads it:

- the driver (`config.validate`, the evaluator's `check_causal_lm`) calls `refuse_remote_code` for
  every model path before Ray starts, and `share_with_workers` records the user's choice in the
  environment, which the Ray workers it starts inherit;
- a loader inside a Ray worker that has no `args` (the CPU rollout engine) calls
  `trust_remote_code_for(path, what)`: it refuses the path when the driver did not allow custom code
  and returns the value to pass as `trust_remote_code`.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from .config import ConfigError

TRUST_ENV = "OPENRLHF_COHERENT_TRUST_REMOTE_CODE"
PPO_TRUST_FLAG = "--coherent.trust_remote_code"
# Every config a transformers Auto* loader reads an `auto_map` from (model, tokenizer, processors).
CONFIG_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def _config_file(path: str, name: str) -> Optional[str]:
    if os.path.isdir(os.path.expanduser(path)):
        file = os.path.join(os.path.expanduser(path), name)
        return file if os.path.isfile(file) else None
    if os.path.exists(path) or path.startswith((".", "/", "~")):
        return None  # a local path that is not a folder: no configs (and not a hub id)
    try:  # a hub id: the same cached file transformers would read (only this small JSON is fetched)
        from transformers.utils import cached_file

        return cached_file(
            path, name, _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False
        )
    except Exception:  # unreachable or no such repo: loading it fails anyway, with transformers' message
        return None


def needs_remote_code(path: str) -> Optional[str]:
    """The config file of `path` whose `auto_map` names custom code, or None."""
    for name in CONFIG_FILES:
        file = _config_file(path, name)
        if not file:
            continue
        try:
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue  # unreadable config: the loader reports it; it cannot name code either
        if isinstance(data, dict) and data.get("auto_map"):
            return file
    return None


def refuse_remote_code(path: str, flag: str, allowed: bool, trust_flag: str = "--trust_remote_code") -> None:
    """ConfigError naming `flag` when `path` would load custom code and `allowed` is False."""
    if allowed or not path:
        return
    file = needs_remote_code(path)
    if file:
        raise ConfigError(
            f"{flag} {path}: {file} has an `auto_map`, i.e. names custom Python code that loading this "
            f"model imports and runs; pass {trust_flag} only if you trust that code"
        )


def share_with_workers(allowed: bool) -> None:
    """Record the user's choice for loaders in Ray workers started from this process."""
    os.environ[TRUST_ENV] = "1" if allowed else "0"


def trust_remote_code_for(path: str, what: str) -> bool:
    """For a loader without access to args (a Ray worker): refuse `path` if it names custom code and
    the driver did not allow it; else the `trust_remote_code` value to load it with."""
    allowed = os.environ.get(TRUST_ENV) == "1"
    refuse_remote_code(path, what, allowed, PPO_TRUST_FLAG)
    return allowed
