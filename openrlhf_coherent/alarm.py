"""The reward-hacking alarm: catch a policy that raises the coherent reward by leaving SFT behaviour.

At small scale (or with large learning rates) the summed coherent reward is hacked: the policy
repeats text that the base model finds very unlikely and the SFT model only somewhat unlikely,
stops emitting EOS, and the reward grows with length (README, "Reward hacking"). Its signature,
compared with the SFT model's own samples (the first rollout, before any update):

  * the mean coherent reward rises over a window of steps, while
  * the EOS rate falls, or the SFT model's per-token log-likelihood of the samples falls.

The alarm checks exactly that after every rollout, logs `coherent/hacking_alarm` (0/1) with the
step metrics (console, TensorBoard, wandb), and warns on the console with the guards to try.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Dict, Optional

logger = logging.getLogger("openrlhf_coherent")

GUARD_ADVICE = (
    "try the recommended guard --coherent.aggregate mean --coherent.sft_logp_floor 0.5, or "
    "--reward.stop_properly_penalty_coef <a negative reward below the usual range> (a truncated response's whole reward; "
    "a coefficient in [0, 1) is refused: it would scale a signed reward toward 0), "
    "a lower actor learning rate, or a larger KL coefficient (README, 'Reward hacking')"
)


class HackingAlarm:
    def __init__(self, window: int = 5, eos_drop: float = 0.15, logp_drop: float = 0.5):
        """window: rollouts compared; eos_drop: fall of the EOS rate (absolute) that counts;
        logp_drop: fall of the SFT per-token log-likelihood (nats) that counts."""
        self.window = window
        self.eos_drop = eos_drop
        self.logp_drop = logp_drop
        self.history = deque(maxlen=window)
        self.reference: Optional[Dict[str, float]] = None  # the SFT model's own samples (first rollout)
        self.fired_steps = 0

    def state_dict(self) -> Dict:
        """What a resumed run needs to keep judging against the same SFT reference and window."""
        return {"history": list(self.history), "reference": self.reference, "fired_steps": self.fired_steps}

    def load_state_dict(self, state: Dict) -> None:
        self.history = deque(state["history"], maxlen=self.window)
        self.reference = state["reference"]
        self.fired_steps = state["fired_steps"]

    def update(self, stats: Dict[str, float]) -> Dict[str, float]:
        """Feed one rollout's coherent/* stats; returns the alarm metrics to log with them."""
        current = {k: stats[f"coherent/{k}"] for k in ("reward_mean", "eos_rate", "sft_logp_per_token")}
        if self.reference is None:
            self.reference = current
        self.history.append(current)

        firing, why = False, ""
        if len(self.history) == self.window:
            first, last = self.history[0], self.history[-1]
            reward_rising = last["reward_mean"] > first["reward_mean"] and _rising(
                [h["reward_mean"] for h in self.history]
            )
            eos_fell = last["eos_rate"] < self.reference["eos_rate"] - self.eos_drop
            logp_fell = last["sft_logp_per_token"] < self.reference["sft_logp_per_token"] - self.logp_drop
            firing = reward_rising and (eos_fell or logp_fell)
            if firing:
                why = (
                    f"coherent reward rose {first['reward_mean']:.2f} -> {last['reward_mean']:.2f} over the last "
                    f"{self.window} rollouts while, compared with the SFT model's own samples, the EOS rate went "
                    f"{self.reference['eos_rate']:.2f} -> {last['eos_rate']:.2f} and the SFT per-token "
                    f"log-likelihood {self.reference['sft_logp_per_token']:.2f} -> {last['sft_logp_per_token']:.2f}"
                )
        if firing:
            self.fired_steps += 1
            if self.fired_steps == 1 or self.fired_steps % self.window == 0:
                logger.warning(
                    "SRPPO REWARD-HACKING ALARM: %s. The policy is likely hacking the coherent reward; %s",
                    why,
                    GUARD_ADVICE,
                )
        return {"coherent/hacking_alarm": float(firing), "coherent/hacking_alarm_steps": float(self.fired_steps)}


def _rising(values) -> bool:
    """Least-squares slope > 0: robust to one noisy rollout in the window."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    return sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) > 0
