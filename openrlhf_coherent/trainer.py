"""OpenRLHF's PPOTrainer with the coherent experience maker and the coherent-reward diagnostics.

Three overrides: the experience maker is swapped for `CoherentExperienceMaker`; the rollout
statistics (which OpenRLHF merges into each step's status, logged to the console, TensorBoard
and wandb) gain the coherent-reward terms and the reward-hacking alarm; and the state those keep
across steps rides in OpenRLHF's checkpoint `client_states`, so a resumed run goes on with the
same alarm window, the same `--coherent.sft_logp_floor` reference and the rollout log's step count.
"""

from __future__ import annotations

import os
from typing import Dict, List

import ray
import torch
import transformers

from openrlhf.trainer.ppo_trainer import PPOTrainer
from openrlhf.utils.logging_utils import init_logger

from . import redact
from .alarm import HackingAlarm
from .experience import CoherentExperienceMaker

logger = init_logger(__name__)


def coherent_rollout_stats(experiences: List, maker: CoherentExperienceMaker) -> Dict[str, float]:
    """Rollout-level diagnostics of the coherent reward, keyed like OpenRLHF's `rollout/*` stats."""

    def cat(key):
        return torch.cat([e.info[key].float() for e in experiences])

    reward, sft, base = cat("coherent_reward"), cat("coherent_sft_logp"), cat("coherent_base_logp")
    length = torch.cat([e.action_mask.float().sum(-1) for e in experiences]).clamp(min=1)
    counted = cat("coherent_length").clamp(min=1)  # the tokens both terms sum over
    truncated = torch.cat([e.truncated.float() for e in experiences if e.truncated is not None])
    return {
        "coherent/reward_mean": reward.mean().item(),
        "coherent/reward_std": reward.std().item() if len(reward) > 1 else 0.0,
        "coherent/sft_logp_mean": sft.mean().item(),
        "coherent/base_logp_mean": base.mean().item(),
        "coherent/sft_logp_per_token": (sft / counted).mean().item(),
        "coherent/base_logp_per_token": (base / counted).mean().item(),
        "coherent/response_length_mean": length.mean().item(),
        "coherent/truncated_rate": truncated.mean().item() if len(truncated) else 0.0,
        "coherent/eos_rate": 1.0 - truncated.mean().item() if len(truncated) else 1.0,
        "coherent/sft_logprobs_reused": float(maker.coherent.reuse_ref_logprobs),
        "coherent/base_forwards": float(maker.last_forward_counts["base"]),
        "coherent/sft_forwards": float(maker.last_forward_counts["sft"]),
        "coherent/sft_logp_floored": float(maker.floored),
        **mix_rollout_stats(experiences),
    }


def mix_rollout_stats(experiences: List) -> Dict[str, float]:
    """With a rule reward (--reward.remote_url): its mean/std and the total's, next to coherent/*."""
    if "rule_reward" not in experiences[0].info:
        return {}
    stats = {}
    for name, key in (("rule/reward", "rule_reward"), ("reward/total", "reward")):
        values = torch.cat([e.info[key].float() for e in experiences])
        stats[f"{name}_mean"] = values.mean().item()
        stats[f"{name}_std"] = values.std().item() if len(values) > 1 else 0.0
    return stats


def check_same_eos_handling(saved: Dict, c) -> None:
    """A resume must not change what a finished response's final token scores (`--coherent.eos_policy`):
    the reward, the floor's SFT reference and the alarm's window were all measured under the saved one.
    Checkpoints written before the flag existed excluded that token (eos_policy=exclude)."""
    now = c.eos_handling
    if "eos_handling" in saved:
        before = saved["eos_handling"]
    elif now is None:
        before = None
    else:
        before = {"swap": [], "exclude": sorted(set(now["swap"]) | set(now["exclude"])), "base_eos_token_id": None}
    if before != now:
        raise ValueError(
            f"openrlhf_coherent: this checkpoint was written with another end-of-response handling ({before}) than this "
            f"run's ({now}, --coherent.eos_policy {c.eos_policy}): resuming would change the reward mid-run. "
            "Resume with the --coherent.eos_policy (and models) it was written with"
            + ("" if "eos_handling" in saved else " (exclude: it predates the flag)")
            + ", or start a new run in another --ckpt.path"
        )


class _SeededPPOTrainer(PPOTrainer.__ray_actor_class__):
    """OpenRLHF's PPOTrainer with its RNGs seeded from --train.seed. OpenRLHF builds the prompt
    dataloader in this actor, which seeds nothing (only the model actors call set_seed): its shuffle
    drew another prompt order in every run of one command."""

    def __init__(self, pretrain, strategy, *args, **kwargs):
        transformers.set_seed(strategy.seed)
        super().__init__(pretrain, strategy, *args, **kwargs)


# What our CLI runs when the coherent reward is not selected (plain OpenRLHF PPO, e.g. the demo's oracle).
SeededPPOTrainer = ray.remote(_SeededPPOTrainer)


@ray.remote
class CoherentPPOTrainer(_SeededPPOTrainer):
    def __init__(self, pretrain, strategy, *args, **kwargs):
        if strategy.args.logger.wandb.key == redact.FROM_ENV and not os.environ.get(redact.WANDB_ENV):
            # wandb runs here, maybe on another node than the driver; the key is not passed in the
            # job's runtime_env by us (Ray writes runtime_env values into its logs).
            raise RuntimeError(
                f"--logger.wandb.key env: {redact.WANDB_ENV} is not set where the PPO trainer runs: start Ray "
                f"(`ray start`) with it in the environment, or forward it in the job's runtime_env (which Ray logs)"
            )
        super().__init__(pretrain, strategy, *args, **kwargs)
        self.experience_maker = CoherentExperienceMaker(
            self.actor_model_group,
            self.critic_model_group,
            self.reward_model_group,
            self.reference_model_group,
            self.kl_ctl,
            self.strategy,
            self.tokenizer,
        )
        c = self.args.coherent
        self.alarm = HackingAlarm(c.alarm_window, c.alarm_eos_drop, c.alarm_logp_drop) if c.alarm == "on" else None

    def coherent_state(self) -> Dict:
        maker = self.experience_maker
        return {
            "rollout_step": maker.rollout_step,
            "run_id": maker.run_id,
            "sft_logp_reference": maker.sft_logp_reference,
            "alarm": self.alarm.state_dict() if self.alarm is not None else None,
            "eos_handling": self.args.coherent.eos_handling,
        }

    def save_logs_and_checkpoints(self, global_step: int, logs_dict=None, client_states=None) -> None:
        if client_states is not None:  # saved with the actor's DeepSpeed checkpoint of this step
            client_states["coherent"] = self.coherent_state()
        super().save_logs_and_checkpoints(global_step, logs_dict, client_states)

    def init_checkpoint_states(self) -> Dict:
        states = super().init_checkpoint_states()
        if "global_step" not in states:
            # `_actor` exists but holds no finished checkpoint (killed during its first save):
            # OpenRLHF's loader skipped it and returned {}, and fit() would raise KeyError on every
            # retry. It is a fresh run.
            logger.warning("openrlhf_coherent: no finished actor checkpoint under --ckpt.path: starting from step 0")
            return {"episode": 0, "global_step": 0, "total_consumed_prompts": 0, "data_loader_state_dict": {}}
        if not states["global_step"]:  # a fresh run
            return states
        saved = states.get("coherent")
        if not saved:
            logger.warning(
                "openrlhf_coherent: this checkpoint has no coherent-reward state (written by another version?): "
                "the alarm and --coherent.sft_logp_floor take their SFT reference from the first rollout after the resume"
            )
            return states
        check_same_eos_handling(saved, self.args.coherent)
        maker = self.experience_maker
        maker.rollout_step = saved["rollout_step"]
        # Older checkpoints have no run id (nor had their rows): the cut then only touches rows without one.
        maker.run_id = saved.get("run_id")
        maker.sft_logp_reference = saved["sft_logp_reference"]
        if self.alarm is not None and saved["alarm"] is not None:
            self.alarm.load_state_dict(saved["alarm"])
        elif self.alarm is not None:
            logger.warning(
                "openrlhf_coherent: the alarm was off when this checkpoint was written: it takes its reference from "
                "the first rollout after the resume (the policy being resumed, not the SFT model's own samples)"
            )
        dropped = maker.cut_rollout_log_after(maker.rollout_step, maker.run_id)
        logger.info(
            f"openrlhf_coherent: resumed the coherent-reward state at rollout {maker.rollout_step}"
            + (f"; dropped {dropped} rollout-log rows written after that checkpoint (redone now)" if dropped else "")
        )
        return states

    def _compute_rollout_stats(self, experiences) -> Dict:
        stats = super()._compute_rollout_stats(experiences)
        stats.update(coherent_rollout_stats(experiences, self.experience_maker))
        if self.alarm is not None:
            stats.update(self.alarm.update(stats))
        return stats
