"""The demo's task-specific wrong answers as a user perturbation file for the reward audit.

    python -m demo.reward_check --sft SFT --base BASE --audit OUT_FOLDER

runs `python -m openrlhf_coherent.cli.audit --perturbations demo/audit_perturbations.py` on the
held-out prompts with their correct responses: each kind of `demo.reward_check.wrong_responses`
(wrong category, one item fewer or more, a duplicate, the excluded word, every member, the overlong
repetition without EOS) is one perturbation next to the audit's task-agnostic ones. A row carries
its prompt's `spec` (PromptSpec as JSON), which these functions read; the audit imports this file
because the user named it (it is code, as a reward_func file is).
"""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # imported by file path

from demo.evaluate import MAX_NEW_TOKENS  # noqa: E402
from demo.reward_check import KINDS, wrong_responses  # noqa: E402
from demo.world import PromptSpec  # noqa: E402


def _kind(name):
    def perturb(ref):
        spec = PromptSpec.from_dict(ref.row["spec"])
        # A fresh generator per kind, drawn from the row's: the same wrong answer whichever kinds run.
        out = wrong_responses(spec, ref.text, random.Random(f"{ref.row['spec']}|{name}"), MAX_NEW_TOKENS)
        return out.get(name)  # (text, finished) or None (no exclusion: no excluded_word)

    perturb.__name__ = name
    return perturb


PERTURBATIONS = {name: _kind(name) for name in KINDS}
