"""Per-round files, finished markers and resume for the SeRA loop.

    OUT/sera_config.json                 the flags of the first run; a resume must match them
    OUT/round_1/train.jsonl              round 1: every input pair
    OUT/round_t/selected.jsonl           t >= 2: top-k input pairs by the eq. 7 margin (+ .scored.jsonl)
    OUT/round_t/bootstrap.jsonl          t >= 2: top-k~ bootstrapped pairs (+ .candidates.jsonl)
    OUT/round_t/train.jsonl              the round's dataset D_t (selected + bootstrapped)
    OUT/round_t/model/                   theta_t (HF format), trained from theta_{t-1} with it as reference
    OUT/round_t/train.log                the train_dpo output
    OUT/round_t/DONE.json                written last: the round is finished

A run starts at the first round without DONE.json. The scored / candidate streams of an
unfinished round are append-only and resumable (evaluator tools), so an interrupted round keeps
its scores and samples; its training always restarts from theta_{t-1}. A round that reruns
invalidates every later round (their data came from the old theta_t): those directories are
renamed `round_u.stale<N>`, kept but never read.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.redact import mask_tree
from openrlhf_coherent.files import replace_atomically

CONFIG = "sera_config.json"
RESUMABLE = ("--rounds",)  # the only flag a resume may change (to add rounds)


@dataclass(frozen=True)
class Round:
    root: str
    t: int

    @property
    def dir(self) -> str:
        return os.path.join(self.root, f"round_{self.t}")

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @property
    def model(self) -> str:
        return self.path("model")

    @property
    def done(self) -> bool:
        return os.path.exists(self.path("DONE.json"))

    def mark_done(self, info: Dict) -> None:
        with replace_atomically(self.path("DONE.json")) as f:  # a reader never sees a half-written marker
            json.dump({"round": self.t, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}, f, indent=1)


def policies(root: str, sft_model: str, rounds: int) -> List[str]:
    """theta_0 .. theta_T: the SFT model, then each round's model directory."""
    return [sft_model] + [Round(root, t).model for t in range(1, rounds + 1)]


def first_unfinished(root: str, rounds: int) -> Optional[int]:
    return next((t for t in range(1, rounds + 1) if not Round(root, t).done), None)


def invalidate_after(root: str, t: int) -> List[str]:
    """Rename every round directory after t (built from the theta_t being replaced). Returns the new names."""
    moved, u = [], t + 1
    while os.path.isdir(Round(root, u).dir):
        n = 1
        while os.path.exists(f"{Round(root, u).dir}.stale{n}"):
            n += 1
        shutil.move(Round(root, u).dir, f"{Round(root, u).dir}.stale{n}")
        moved.append(f"{Round(root, u).dir}.stale{n}")
        u += 1
    return moved


def check_config(root: str, config: Dict) -> None:
    """Record the run's flags on the first run; on a resume, refuse any that differ (scores,
    samples and models on disk were made with the old ones), naming them. Stored and compared
    with secrets masked."""
    config = mask_tree(config)
    path = os.path.join(root, CONFIG)
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        changed = [k for k in sorted(set(before) | set(config)) if k not in RESUMABLE and before.get(k) != config.get(k)]
        if changed:
            diff = "; ".join(f"{k}: {before.get(k)!r} -> {config.get(k)!r}" for k in changed)
            raise ConfigError(
                f"--output_dir {root} holds a SeRA run made with other flags ({diff}). Resume with the same "
                f"flags (only --rounds may change) or use a new --output_dir"
            )
    os.makedirs(root, exist_ok=True)
    with open(path, "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
