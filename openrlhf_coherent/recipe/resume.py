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
import time
from typing import List

from .config import RecipeConfigError
from .stages import Stage

COMPLETE, RESUME, FRESH = "complete", "resume", "fresh"


def marker_path(stage: Stage) -> str:
    if os.path.splitext(stage.output)[1]:  # a file output (spin pairs): marker beside it
        return stage.output + ".done.json"
    return os.path.join(stage.output, "recipe_stage_done.json")


def latest_checkpoint(stage: Stage):
    """The tag DeepSpeed's `latest` file names under the stage's checkpoint folder, or None."""
    if not stage.ckpt:
        return None
    for sub in ("", "_actor"):  # train_sft/train_dpo save at ckpt.path, train_ppo_ray under _actor
        latest = os.path.join(stage.ckpt, sub, "latest")
        if os.path.isfile(latest):
            with open(latest) as f:
                return f.read().strip() or None
    return None


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
