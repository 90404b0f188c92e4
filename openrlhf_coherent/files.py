"""What every tool checks about the files it writes, before it loads a model, and how it writes JSON.

- An output never aliases an input or another output (real paths, so `./x`, `x` and a symlink to
  `x` are one file): writing it would destroy data the run is still reading.
- An output can be written: its folder exists or can be created, and it is not a folder (for a
  file) or a file (for a folder); found now, not after hours of generation.
- JSON we write is strict (`allow_nan=False`): a NaN or infinity is an error at the writer, never a
  bare `NaN` token that other JSON readers reject; JSON we read back refuses them too.
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterable, Optional, Sequence, Tuple

from .config import ConfigError

PathFlag = Tuple[Optional[str], str]  # (path, the flag that gave it)


def real_path(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def same_path(a: str, b: str) -> bool:
    """Whether two paths name one file or folder (symlinks, `.`/`..`, hard links)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return real_path(a) == real_path(b)


def _check_writable(path: str, flag: str, folder: bool) -> None:
    target = os.path.expanduser(path)
    if os.path.exists(target):
        if folder and not os.path.isdir(target):
            raise ConfigError(f"{flag} {path}: exists and is not a folder")
        if not folder and os.path.isdir(target):
            raise ConfigError(f"{flag} {path}: is a folder, expected a file name")
        if not os.access(target, os.W_OK):
            raise ConfigError(f"{flag} {path}: not writable")
        return
    parent = os.path.dirname(os.path.abspath(target))
    while not os.path.exists(parent):  # created on write: the nearest existing ancestor decides
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag} {path}: {parent} is a file, so this cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot create it, {parent} is not writable")


def check_outputs(outputs: Sequence[PathFlag], inputs: Sequence[PathFlag] = (), folders: Sequence[str] = ()) -> None:
    """Every output (path, flag) can be written and is none of the inputs nor another output.
    `folders` lists the flags whose outputs are folders. Paths that are None are not used."""
    outputs = [(p, f) for p, f in outputs if p]
    inputs = [(p, f) for p, f in inputs if p]
    for i, (path, flag) in enumerate(outputs):
        for other, other_flag in inputs + outputs[:i]:
            if same_path(path, other):
                role = "input" if (other, other_flag) in inputs else "output"
                raise ConfigError(
                    f"{flag} {path} is the same file as the {role} {other_flag} {other}: writing it would "
                    f"destroy what is read; choose another {flag}"
                )
        _check_writable(path, flag, flag in folders)


def dumps(row) -> str:
    """One strict JSON line: ValueError on NaN/inf (checked first where a row number is known)."""
    return json.dumps(row, ensure_ascii=False, allow_nan=False)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str):
    """Strict JSON: NaN, Infinity and -Infinity are refused like any other invalid token."""
    return json.loads(text, parse_constant=_refuse_constant)


def non_finite(values: Iterable[Tuple[str, object]]) -> Optional[str]:
    """'name=value, ...' of the numbers among `values` that are NaN or infinite, or None."""
    bad = [f"{name}={value}" for name, value in values if isinstance(value, float) and not math.isfinite(value)]
    return ", ".join(bad) or None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_FINGERPRINT_BYTES = 1 << 16


def model_identity(path: str) -> dict:
    """{"path", "sha"}: the model's real path and a fingerprint of its weight files (name, size,
    first and last 64 KiB: the header with every tensor's layout, and trained values), cheap even
    for large checkpoints. A hub id is identified by its name."""
    import hashlib

    folder = os.path.expanduser(path)
    if not os.path.isdir(folder):
        return {"path": path, "sha": path}
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        file = os.path.join(folder, name)
        if not name.endswith(WEIGHT_SUFFIXES) or not os.path.isfile(file):
            continue
        size = os.path.getsize(file)
        digest.update(f"{name}\0{size}\0".encode())
        with open(file, "rb") as f:
            digest.update(f.read(_FINGERPRINT_BYTES))
            f.seek(max(0, size - _FINGERPRINT_BYTES))
            digest.update(f.read())
    return {"path": real_path(path), "sha": digest.hexdigest()[:16]}
