"""Which models score round t (SeRA eq. 7), and the round's training rows.

Round t >= 2 ranks pairs by the implicit reward margin m_t = r_t(x, y_w) - r_t(x, y_l) with
    r_t = (1 - gamma) log(pi_{t-1} / pi_{t-2}) + gamma log(pi_{t-2} / pi_{t-3})   (t >= 3)
    r_2 = log(pi_1 / pi_0)                                                       (t = 2, no older policy)
where pi_0 is the SFT model and pi_i the policy after round i. The evaluator actor computes it
(`data_tools/actor.py::ensemble_reward`) from --policy_model / --ref_model / --ensemble_model, and
select-pairs / bootstrap-pairs keep the global top k (`data_tools/common.py::select`, --top_k).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from openrlhf_coherent.data_tools.rows import _messages  # a string is one message, as the scorer reads it


def round_reward_models(policies: Sequence[str], t: int, gamma: float) -> Dict:
    """Evaluator flags for r_t; policies[i] is theta_i (policies[0] = SFT)."""
    if t < 2:
        raise ValueError(f"round {t} has no round reward: round 1 trains on every pair")
    models = {"policy_model": policies[t - 1], "ref_model": policies[t - 2]}
    if t >= 3:
        models.update(ensemble_model=policies[t - 3], ensemble_gamma=gamma)
    return models


def as_flags(models: Dict) -> List[str]:
    return [x for key, value in models.items() for x in (f"--{key}", str(value))]


def offline_row(row: dict, keys: Sequence[str], chat: bool, margin=None) -> dict:
    """An input pair as a training row with fixed keys prompt/chosen/rejected. With a chat template
    OpenRLHF concatenates prompt and response *message lists*, so strings become one message each
    (as the evaluator reads them); one file then also holds the bootstrapped pairs' messages."""
    prompt, chosen, rejected = (row[k] for k in keys)
    if chat:
        line = row["line"]
        prompt, chosen, rejected = (
            _messages(prompt, "user", line, repr(keys[0])),
            _messages(chosen, "assistant", line, repr(keys[1])),
            _messages(rejected, "assistant", line, repr(keys[2])),
        )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": "offline", "line": row["line"],
            "sera_margin": margin}  # fmt: skip


def bootstrap_row(pair: dict) -> dict:
    """A bootstrap-pairs output row (already prompt/chosen/rejected in train_dpo's format)."""
    return {"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"], "source": "bootstrap",
            "line": pair["line"], "sera_margin": pair["margin"]}  # fmt: skip
