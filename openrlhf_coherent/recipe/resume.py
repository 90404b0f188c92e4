"""Which stages are done, which resume, and the guard that never overwrites an output.

A stage is complete when its marker file exists: the recipe writes it (with the command) only
after the stage's process exited 0, so a half-saved model never counts as done. An unfinished
stage is simply run again: the training CLIs get `--ckpt.load_enable`, so OpenRLHF restores its
latest DeepSpeed checkpoint under `ckpt/<stage>` (train_sft/train_dpo: model, optimizer, scheduler
and consumed samples; train_ppo_ray: actor and critic states plus global step, episode, consumed
prompts and the dataloader position); `spin_pairs` appends to its own output and skips the rows
already there. An output that exists without a marker and without a checkpoint to resume from
was not written by this recipe: the run stops rather than overwrite it.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import List, Optional, Tuple

from .config import RecipeConfigError
from .stages import Stage

COMPLETE, RESUME, FRESH = "complete", "resume", "fresh"


def marker_path(stage: Stage) -> str:
    if os.path.splitext(stage.output)[1]:  # a file output (spin pairs): marker beside it
        return stage.output + ".done.json"
    return os.path.join(stage.output, "recipe_stage_done.json")


_TAG = re.compile(r"global_step(\d+)$")


def _role_dirs(stage: Stage) -> List[str]:
    """The DeepSpeed checkpoint folders of a stage: train_sft/train_dpo save at ckpt.path itself,
    train_ppo_ray one folder per trained role (`_actor`, and `_critic` with GAE)."""
    roles = [os.path.join(stage.ckpt, role) for role in ("_actor", "_critic")]
    return [d for d in roles if os.path.isdir(d)] or [stage.ckpt]


def _last_saved_step(role_dir: str) -> Optional[int]:
    """The newest step whose checkpoint DeepSpeed finished in `role_dir`, or None.

    DeepSpeed writes `latest` (the tag's name) after the tag's files, by truncating and rewriting
    it: a job killed at that instant leaves it empty (seen in a killed GAE run), although that
    tag's files are complete. Empty: the newest tag folder is that one. Missing: no save finished."""
    latest = os.path.join(role_dir, "latest")
    if not os.path.isfile(latest):
        return None
    with open(latest) as f:
        match = _TAG.match(f.read().strip())
    if match and os.path.isdir(os.path.join(role_dir, match.group(0))):
        return int(match.group(1))
    steps = [int(m.group(1)) for m in map(_TAG.match, os.listdir(role_dir)) if m]
    return max(steps) if steps else None


def _saved_steps(stage: Stage) -> List[Tuple[str, Optional[int]]]:
    if not stage.ckpt or not os.path.isdir(stage.ckpt):
        return []
    return [(d, _last_saved_step(d)) for d in _role_dirs(stage)]


def resume_step(stage: Stage) -> Optional[int]:
    """The step the stage resumes from: the oldest last save of its trained roles (a killed PPO job
    may have saved the actor's step but not yet the critic's), or None when the first role (the
    model, or PPO's actor, whose checkpoint carries the step and the data position) has none. A
    role that never finished a save starts from its initial weights, as stock OpenRLHF does."""
    saved = _saved_steps(stage)
    if not saved or saved[0][1] is None:
        if any(step is not None for _, step in saved):
            raise RecipeConfigError(
                f"stage {stage.label}: under {stage.ckpt} the critic saved a checkpoint but the actor never finished "
                f"one, so they cannot resume from one step; move {stage.ckpt} away to run the stage from its start"
            )
        return None
    return min(step for _, step in saved if step is not None)


def align_checkpoints(stage: Stage) -> Optional[str]:
    """Point every role's `latest` at `resume_step` before a resumed stage starts, so OpenRLHF
    loads one consistent step (each role reads its own `latest`); written atomically. Tag folders
    are never touched. Returns what was done, for the log, or None."""
    step = resume_step(stage)
    if step is None:
        return None
    done = []
    for role_dir, saved in _saved_steps(stage):
        role = os.path.basename(role_dir).lstrip("_") or "model"
        if saved is None:
            done.append(f"{role}: no finished save, starts from its initial weights")
            continue
        latest = os.path.join(role_dir, "latest")
        with open(latest) as f:
            old = f.read().strip()
        if old != f"global_step{step}":
            with open(latest + ".tmp", "w") as f:
                f.write(f"global_step{step}")
            os.replace(latest + ".tmp", latest)
            done.append(f"{role}: latest {old or '(empty: killed while DeepSpeed wrote it)'} -> global_step{step}")
    return f"every role resumes from global_step{step} ({'; '.join(done)})" if done else None


def latest_checkpoint(stage: Stage):
    """The tag the stage resumes from (every trained role has saved it), or None."""
    step = resume_step(stage)
    return None if step is None else f"global_step{step}"


def stage_status(stage: Stage) -> str:
    if os.path.exists(marker_path(stage)):
        return COMPLETE
    if stage.ckpt is None:
        return RESUME if os.path.exists(stage.output) else FRESH
    if latest_checkpoint(stage):
        return RESUME
    if _has_files(stage.output):
        raise RecipeConfigError(
            f"stage {stage.label}: {stage.output} already holds files but no finished recipe stage wrote it "
            f"(no {os.path.basename(marker_path(stage))}) and there is no checkpoint to resume from under "
            f"{stage.ckpt}; the recipe never overwrites outputs: move it away or pick another output_dir"
        )
    return FRESH


def describe(stage: Stage, status: str) -> str:
    if status == COMPLETE:
        return "complete, skipped"
    if status == RESUME:
        tag = latest_checkpoint(stage)
        return f"resumes from checkpoint {tag}" if tag else "resumes (the tool skips finished rows)"
    return "will run"


def mark_complete(stage: Stage, argv: List[str], seconds: float) -> None:
    path = marker_path(stage)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"stage": stage.label, "command": argv, "seconds": round(seconds, 1),
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)  # fmt: skip
    os.replace(path + ".tmp", path)


def _has_files(path: str) -> bool:
    if os.path.isfile(path):
        return True
    for _, _, files in os.walk(path):
        if files:
            return True
    return False
