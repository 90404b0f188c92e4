"""The real-model demo's exact checker (lm-eval's IFEval checker of each prompt's instruction) as an
OpenRLHF reward function: the upper-bound baseline, "PPO with checker reward".

Loaded by OpenRLHF's rollout executor via `--reward.remote_url demo_real/checker_reward.py`:
`reward_func(queries, prompts, labels)`, where a query is the decoded prompt + response with
special tokens (SmolLM2's chat template: the response follows the last "<|im_start|>assistant\n"
and a finished one ends with EOS "<|im_end|>") and a label is the prompt's `Instruction` as JSON.
Reward 1 for a finished response that IFEval's strict test accepts, else 0.

OpenRLHF's executor only logs an exception raised here (the sample then gets no reward), so this
function does not raise on a malformed query: it scores it 0.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # loaded by file path

from demo_real.world import Instruction  # noqa: E402

ASSISTANT = "<|im_start|>assistant\n"
EOS = "<|im_end|>"


def parse_query(query: str):
    """(response text, finished) from a decoded prompt + response."""
    response = query.rsplit(ASSISTANT, 1)[-1] if ASSISTANT in query else ""
    finished = EOS in response
    return response.split(EOS, 1)[0].strip(), finished


def reward_func(queries, prompts, labels):
    rewards = []
    for query, label in zip(queries, labels):
        try:
            response, finished = parse_query(query)
            ok, _ = Instruction.from_dict(json.loads(label)).check(response, finished)
        except Exception as e:  # noqa: BLE001  (see the module docstring)
            print(f"[demo_real.checker_reward] scoring failed, reward 0: {e!r}", file=sys.stderr)
            ok = False
        rewards.append(float(ok))
    rewards = torch.tensor(rewards)
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"checker_accuracy": rewards}}
