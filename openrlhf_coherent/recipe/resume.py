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

from openrlhf_coherent.files import replace_atomically

from .config import RecipeConfigError
from .stages import Stage
from ..redact import mask_argv

COMPLETE, RESUME, FRESH = "complete", "resume", "fresh"


def marker_path(stage: Stage) -> str:
    if os.path.splitext(stage.output)[1]:  # a file output (spin pairs): marker beside it
        return stage.output + ".done.json"
    return os.path.join(stage.output, "recipe_stage_done.json")


_TAG = re.compile(r"(?:best_)?global_step(\d+)$")  # OpenRLHF's regular and best-metric tags


def _role_dirs(stage: Stage) -> List[str]:
    """The DeepSpeed checkpoint folders of a stage's trained roles, the one carrying the step first:
    train_sft/train_dpo save at ckpt.path itself; train_ppo_ray under `_actor` and, with GAE (the
    stage passes a critic), `_critic`. A role folder may not exist yet."""
    actor, critic = os.path.join(stage.ckpt, "_actor"), os.path.join(stage.ckpt, "_critic")
    if not (os.path.isdir(actor) or os.path.isdir(critic)):
        return [stage.ckpt]
    return [actor, critic] if "--critic.model_name_or_path" in stage.argv else [actor]


def _last_saved(role_dir: str) -> Optional[Tuple[int, str]]:
    """(step, tag) of the newest checkpoint DeepSpeed finished in `role_dir`, or None.

    DeepSpeed writes `latest` (the tag's name) after the tag's files, by truncating and rewriting
    it: a job killed at that instant leaves it empty (seen in a killed GAE run), although that
    tag's files are complete, and it is the newest tag folder. Missing: no save finished. A name
    that is no tag folder there (OpenRLHF's rotation deleted it before a killed save) is refused:
    the newer folder may be half-written."""
    latest = os.path.join(role_dir, "latest")
    if not os.path.isfile(latest):
        return None
    with open(latest) as f:
        tag = f.read().strip()
    if tag:
        match = _TAG.match(tag)
        if not (match and os.path.isdir(os.path.join(role_dir, tag))):
            raise RecipeConfigError(
                f"{latest} names {tag!r}, which is not a checkpoint folder there (deleted by OpenRLHF's checkpoint "
                f"rotation before a save that did not finish?): the stage cannot resume; move {os.path.dirname(role_dir)} "
                f"away to run it from its start"
            )
        return int(match.group(1)), tag
    tags = sorted((int(m.group(1)), not m.group(0).startswith("best_"), m.group(0)) for m in map(_TAG.match, os.listdir(role_dir)) if m)
    return (tags[-1][0], tags[-1][2]) if tags else None


def _saved(stage: Stage) -> List[Tuple[str, Optional[Tuple[int, str]]]]:
    if not stage.ckpt or not os.path.isdir(stage.ckpt):
        return []
    return [(d, _last_saved(d)) for d in _role_dirs(stage)]


def resume_step(stage: Stage) -> Optional[int]:
    """The step the stage resumes from: the oldest last save of its trained roles (a killed PPO job
    may have saved the actor's step but not yet the critic's), or None when the first role (the
    model, or PPO's actor, whose checkpoint carries the step and the data position) has none. A
    critic that never finished a save starts from its initial weights, as stock OpenRLHF does."""
    return _resume_step(stage, _saved(stage))


def _resume_step(stage: Stage, saved: List[Tuple[str, Optional[Tuple[int, str]]]]) -> Optional[int]:
    if not saved or saved[0][1] is None:
        if any(last is not None for _, last in saved):
            raise RecipeConfigError(
                f"stage {stage.label}: under {stage.ckpt} the critic saved a checkpoint but the actor never finished "
                f"one, so they cannot resume from one step; move {stage.ckpt} away to run the stage from its start"
            )
        return None
    return min(last[0] for _, last in saved if last is not None)


def align_checkpoints(stage: Stage) -> Optional[str]:
    """Point every role's `latest` at its tag of `resume_step` before a resumed stage starts, so
    OpenRLHF loads one consistent step (each role reads its own `latest`); written atomically. Tag
    folders are never touched. Returns what was done, for the log, or None."""
    saved = _saved(stage)
    step = _resume_step(stage, saved)
    if step is None:
        return None
    done = []
    for role_dir, last in saved:
        role = os.path.basename(role_dir).lstrip("_") or "model"
        if last is None:
            done.append(f"{role}: no finished save, starts from its initial weights")
            continue
        tag = next((t for t in (f"global_step{step}", f"best_global_step{step}") if os.path.isdir(os.path.join(role_dir, t))), None)
        if tag is None:
            raise RecipeConfigError(
                f"stage {stage.label}: {role_dir} has no checkpoint of step {step}, the newest step every role saved: "
                f"the roles cannot resume from one step; move {stage.ckpt} away to run the stage from its start"
            )
        latest = os.path.join(role_dir, "latest")
        with open(latest) as f:
            old = f.read().strip()
        if old != tag:
            with replace_atomically(latest) as f:
                f.write(tag)
            done.append(f"{role}: latest {old or '(empty: killed while DeepSpeed wrote it)'} -> {tag}")
    return f"every role resumes from step {step} ({'; '.join(done)})" if done else None


def latest_checkpoint(stage: Stage):
    """The step the stage resumes from (every trained role has saved it), as a tag name, or None."""
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
    with replace_atomically(path) as f:
        json.dump({"stage": stage.label, "command": mask_argv(argv), "seconds": round(seconds, 1),
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)  # fmt: skip


def _has_files(path: str) -> bool:
    if os.path.isfile(path):
        return True
    for _, _, files in os.walk(path):
        if files:
            return True
    return False
