"""The demo task's exact checker as an OpenRLHF reward function (the upper-bound baseline).

Loaded by OpenRLHF's rollout executor via `--reward.remote_url demo/checker_reward.py`:
`reward_func(queries, prompts, labels)`, where a query is the decoded prompt + response with special
tokens and a label is the prompt's PromptSpec as JSON. Reward 1 for a correct, finished response.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # loaded by file path

from demo.world import PromptSpec, check  # noqa: E402

EOS = "</s>"
ASSISTANT = "assistant :"


def reward_func(queries, prompts, labels):
    rewards = []
    for query, label in zip(queries, labels):
        response = query.rsplit(ASSISTANT, 1)[-1]
        finished = response.rstrip().endswith(EOS)
        response = response.replace(EOS, "").replace("<pad>", "").strip()
        ok, _ = check(PromptSpec.from_dict(json.loads(label)), response, finished=finished)
        rewards.append(float(ok))
    rewards = torch.tensor(rewards)
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"checker_accuracy": rewards}}
