"""Custom model code runs only when the user asked for it.

transformers 5.15 imports and runs Python from a model folder (or hub repo), when the loader
passes `trust_remote_code=True`, in exactly these cases (`remote_code_source` finds each):

- an `auto_map` in any of its JSON configs (model, tokenizer, processor, image/video/feature
  processor, audio tokenizer: every Auto* class reads one from its own file);
- a `custom_generate/generate.py` (every `from_pretrained` of a model with a generation config
  imports it, replacing `generate`, even with no `auto_map` anywhere);
- a PEFT adapter folder (`adapter_config.json`): the model is loaded from its
  `base_model_name_or_path`, to which all of the above applies in turn.

OpenRLHF's loaders always pass True (its `Actor`, critic, tokenizer, vLLM engine), and so does any
loader that cannot see the user's flags. Without these, `trust_remote_code=True` has no effect.
So the one defence that covers every loader, ours and OpenRLHF's, is to refuse a model path that
would run code unless the user passed the trust flag, before anything loads it:

- the driver (`config.validate`, the evaluator's `check_causal_lm`) calls `refuse_remote_code` for
  every model path before Ray starts, and `share_with_workers` records the user's choice in the
  environment, which the Ray workers it starts inherit;
- a loader inside a Ray worker that has no `args` (the CPU rollout engine) calls
  `trust_remote_code_for(path, what)`: it refuses the path when the driver did not allow custom code
  and returns the value to pass as `trust_remote_code`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional

from .errors import ConfigError

TRUST_ENV = "OPENRLHF_COHERENT_TRUST_REMOTE_CODE"
PPO_TRUST_FLAG = "--coherent.trust_remote_code"
# The JSON files transformers' Auto* classes read an `auto_map` from: looked up by name for a hub
# id; in a local folder every top-level *.json file is read, which covers these and any newer one.
CONFIG_FILES = (
    "config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
    "video_preprocessor_config.json", "audio_tokenizer_config.json", "feature_extractor_config.json",
)  # fmt: skip
CUSTOM_GENERATE = "custom_generate/generate.py"
ADAPTER_CONFIG = "adapter_config.json"


def _is_local(path: str) -> bool:
    return os.path.exists(os.path.expanduser(path)) or path.startswith((".", "/", "~"))


@functools.lru_cache(maxsize=None)
def _hub_listing(repo: str) -> Optional[frozenset]:
    """Every file name of a hub repo (one request per process), or None offline or unreachable."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if HF_HUB_OFFLINE:
        return None
    try:
        return frozenset(HfApi().list_repo_files(repo))
    except Exception:  # unreachable, or no such repo: the cache decides (loading fails otherwise)
        return None


def _hub_files(repo: str, names) -> list:
    """The files among `names` of hub repo `repo`, as transformers would get them: one listing of
    the repo (a single request), then only the small files it has, fetched into the cache. Offline
    or unreachable: the copies in the local cache, which is what transformers then loads."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    listed = _hub_listing(repo)
    found = []
    for name in names:
        try:
            if listed is None:
                file = try_to_load_from_cache(repo, name)
                file = file if isinstance(file, str) else None
            else:
                file = hf_hub_download(repo, name) if name in listed else None
        except Exception:
            file = None
        if file:
            found.append(file)
    return found


def _files(path: str, names) -> list:
    """The existing files among `names` of a local folder or hub id (none for a local non-folder)."""
    folder = os.path.expanduser(path)
    if os.path.isdir(folder):
        return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    if _is_local(path):
        return []  # a local path that is not a folder: no configs (and not a hub id)
    return _hub_files(path, names)


def _json(file: str):
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # unreadable: the loader reports it; it cannot name code either


def remote_code_source(path: str, _seen: Optional[set] = None) -> Optional[str]:
    """What in `path` transformers would import and run with trust_remote_code=True (a sentence
    naming the file), or None."""
    seen = _seen if _seen is not None else set()
    if not path or path in seen:
        return None
    seen.add(path)
    folder = os.path.expanduser(path)
    configs = sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else CONFIG_FILES
    for file in _files(path, configs):
        data = _json(file)
        if isinstance(data, dict) and data.get("auto_map"):
            return f"{file} has an `auto_map`, i.e. names custom Python code"
    for file in _files(path, [CUSTOM_GENERATE]):
        return f"{file} is a custom generate function, which loading this model imports"
    for file in _files(path, [ADAPTER_CONFIG]):
        data = _json(file)
        base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
        inner = remote_code_source(base, seen) if isinstance(base, str) else None
        if inner:
            return f"{file} is a PEFT adapter whose base model {base} would run code: {inner}"
    return None


def refuse_remote_code(path: str, flag: str, allowed: bool, trust_flag: str = "--trust_remote_code") -> None:
    """ConfigError naming `flag` when `path` would load custom code and `allowed` is False."""
    if allowed or not path:
        return
    reason = remote_code_source(path)
    if reason:
        raise ConfigError(
            f"{flag} {path}: {reason}, which loading this model imports and runs; pass {trust_flag} only if "
            f"you trust that code"
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
