"""What every tool checks about the files it writes, before it loads a model, and how it writes JSON.

- An output never aliases an input or another output (real paths, so `./x`, `x` and a symlink to
  `x` are one file): writing it would destroy data the run is still reading.
- An output can be written: its folder exists or can be created, and it is not a folder (for a
  file) or a file (for a folder); found now, not after hours of generation.
- A whole-file output is written to a unique temporary file created exclusively in its folder
  (`mkstemp`: O_EXCL, never through a link) and renamed over it (`replace_atomically`): no fixed
  `<output>.tmp` name that could be a user's file or a link to one.
- An output folder (a trained model, a checkpoint folder) is neither, nor lies inside nor holds, a
  model folder or input the run reads (`check_output_folders`); a checkpoint folder holds only what
  OpenRLHF writes there, since its rotation deletes the oldest subfolders (`check_checkpoint_folder`).
- An appended-to output is locked (`exclusive_lock`) for the run's life: a second run on it refuses.
- JSON we write is strict (`allow_nan=False`): a NaN or infinity is an error at the writer, never a
  bare `NaN` token that other JSON readers reject; JSON we read back refuses them too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from typing import IO, Iterable, Iterator, Optional, Sequence, Tuple

from .errors import ConfigError

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
_HASH_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "openrlhf_coherent", "weight_hashes.json")


def file_sha256(file: str) -> str:
    """sha256 of the whole file, cached by (real path, size, mtime_ns): a checkpoint that differs
    in any byte (a middle tensor too) gets another digest, and an unchanged one is read once."""
    import hashlib

    stat = os.stat(file)
    key = f"{real_path(file)}\0{stat.st_size}\0{stat.st_mtime_ns}"
    cache_file = os.environ.get("OPENRLHF_COHERENT_HASH_CACHE", _HASH_CACHE)
    try:
        with open(cache_file, encoding="utf-8") as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache, dict) and isinstance(cache.get(key), str):
        return cache[key]
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    # Entries of files that are gone, or of this file's older versions, are dropped, so the cache
    # does not grow without bound.
    def keep(k: str) -> bool:
        name = k.split("\0")[0]
        return name != real_path(file) and os.path.exists(name)

    cache = {k: v for k, v in (cache if isinstance(cache, dict) else {}).items() if keep(k)}
    cache[key] = digest.hexdigest()
    try:  # the cache is an optimisation only: an unwritable home just means hashing again
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        with replace_atomically(cache_file) as f:
            json.dump(cache, f)
    except OSError:
        pass
    return cache[key]


def model_identity(path: str) -> dict:
    """{"path", "sha"}: the model's real path and a fingerprint of its weight files (each file's
    name and whole-file sha256, cached by size and mtime). A hub id is identified by its name."""
    import hashlib

    folder = os.path.expanduser(path)
    if not os.path.isdir(folder):
        return {"path": path, "sha": path}
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        file = os.path.join(folder, name)
        if not name.endswith(WEIGHT_SUFFIXES) or not os.path.isfile(file):
            continue
        digest.update(f"{name}\0{file_sha256(file)}\0".encode())
    return {"path": real_path(path), "sha": digest.hexdigest()[:16]}


@contextlib.contextmanager
def replace_atomically(path: str, mode: str = "w") -> Iterator[IO]:
    """Write `path` whole: into a unique file created exclusively (O_EXCL, never following a link)
    in its folder, renamed over `path` when the block ends without error (removed otherwise). A
    reader never sees half a file, and no fixed `<path>.tmp` name can be someone's file or link."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600, else: the permissions `open(path, "w")` gives
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def exclusive_lock(file: IO, path: str, flag: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on an open output for the block: a second run on the
    same output refuses at once instead of appending its rows among ours."""
    import fcntl

    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise ConfigError(
            f"{flag} {path}: another run is writing this file now (it holds the file's lock); wait for it to "
            f"finish or choose another {flag}"
        ) from None
    try:
        yield
    finally:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _inside(path: str, folder: str) -> bool:
    path, folder = real_path(path), real_path(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_folders(outputs: Sequence[PathFlag], reads: Sequence[PathFlag]) -> None:
    """Every output folder (path, flag) can be created and is not, does not lie inside and does not
    contain any model folder or input file (path, flag) the run reads: saving there would overwrite
    or delete it. Paths that are None, and reads that are not local paths (hub ids), are skipped."""
    reads = [(p, f) for p, f in reads if p and os.path.exists(os.path.expanduser(p))]
    for path, flag in outputs:
        if not path:
            continue
        for other, other_flag in reads:
            if same_path(path, other) or _inside(path, other) or _inside(other, path):
                relation = "is the same file or folder as" if same_path(path, other) else "lies inside" if _inside(path, other) else "contains"
                raise ConfigError(
                    f"{flag} {path} {relation} {other_flag} {other}: saving there would overwrite or delete what "
                    f"the run reads; choose another {flag}"
                )
    check_outputs(outputs, folders=[flag for _, flag in outputs])


# What OpenRLHF 0.11.2 and DeepSpeed write into a checkpoint folder (--ckpt.path): tag folders
# (`global_step<N>`, `best...`, their `_hf` exports), DeepSpeed's `latest` and `zero_to_fp32.py`,
# and train_ppo_ray's `_actor`/`_critic` role folders holding the same; plus the temporary file of
# the recipe's rewrite of `latest` (`replace_atomically`) that a kill at that instant leaves.
_CHECKPOINT_ENTRY = re.compile(r"(?:(?:best\w*|global_step\d+)(?:_hf)?|latest|zero_to_fp32\.py|_actor|_critic|\.latest\.\w+\.tmp)$")


def check_checkpoint_folder(path: Optional[str], flag: str = "--ckpt.path") -> None:
    """OpenRLHF's checkpoint rotation deletes the oldest subfolders of the checkpoint folder,
    whatever they are: refuse one that holds anything OpenRLHF did not write there."""
    if not path or not os.path.isdir(os.path.expanduser(path)):
        return
    for role in ("", "_actor", "_critic"):
        folder = os.path.join(os.path.expanduser(path), role)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if not _CHECKPOINT_ENTRY.match(name) or (role and name in ("_actor", "_critic")):
                raise ConfigError(
                    f"{flag} {path}: holds {os.path.join(role, name) or name}, which OpenRLHF did not write there; its "
                    f"checkpoint rotation deletes the oldest subfolders of this folder, whatever they are: choose an "
                    f"empty or new {flag}"
                )


def local_files(value: Optional[str]) -> list:
    """The local paths among a comma-separated dataset or model list (hub ids are left out)."""
    return [p.strip() for p in (value or "").split(",") if p.strip() and os.path.exists(os.path.expanduser(p.strip()))]


def check_training_folders(
    outputs: Sequence[PathFlag], ckpt: PathFlag, reads: Sequence[PathFlag], saves_checkpoints: bool
) -> None:
    """What every training entry point (PPO, train_dpo, train_srpo, sera) checks before it loads
    a model: its output folders and, when it saves checkpoints, its checkpoint folder, against the
    models and inputs it reads (`check_output_folders`), and that the checkpoint folder holds only
    what OpenRLHF wrote there (`check_checkpoint_folder`)."""
    check_output_folders([*outputs, ckpt if saves_checkpoints else (None, ckpt[1])], reads)
    if saves_checkpoints:
        check_checkpoint_folder(*ckpt)


def check_weights_complete(path: Optional[str], flag: str) -> None:
    """Every `*.safetensors` file of a local model folder holds all the bytes its header promises:
    a truncated copy (an interrupted download or rsync) is refused now, naming the file, instead
    of failing inside a Ray actor after the other models loaded. Reads only each file's header."""
    import struct

    folder = os.path.expanduser(path or "")
    if not path or not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        file = os.path.join(folder, name)
        if not name.endswith(".safetensors") or not os.path.isfile(file):
            continue
        size = os.path.getsize(file)
        problem = None
        with open(file, "rb") as f:
            head = f.read(8)
            header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if header_len is None or 8 + header_len > size:
                problem = "its header is cut short"
            else:
                try:
                    header = json.loads(f.read(header_len))
                    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
                except (ValueError, KeyError, TypeError, IndexError):
                    problem = "its header is not valid safetensors JSON"
                else:
                    if 8 + header_len + end > size:
                        problem = f"it has {size} bytes, its header describes {8 + header_len + end} (truncated?)"
        if problem:
            raise ConfigError(f"{flag} {path}: {name}: {problem}; the model cannot load")
