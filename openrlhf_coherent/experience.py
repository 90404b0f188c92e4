"""The narrow hook into OpenRLHF's experience making: the coherent reward sees `action_mask`.

OpenRLHF's `RemoteExperienceMaker.make_experience` sends a reward model only `sequences` and
`attention_mask`, and drops the reference log-probs right after the KL. This subclass changes
two things and nothing else:

1. `make_experience` dispatches the coherent actor with `action_mask` *before* OpenRLHF's own
   forwards (so it runs in parallel with actor/critic/reference), marks the samples' rewards as
   provided (so OpenRLHF does not call the reward group itself), lets the parent do everything
   else, then fills in the coherent reward.
2. `_dispatch_forward` keeps the Ray refs of the reference forward, which are still in the object
   store after the parent is done: when the reference model is the SFT model at temperature 1
   they *are* log p_SFT, and SRPPO costs one extra forward (the base model), like a reward model.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import List

import torch

import openrlhf.trainer.ppo_utils.experience_maker as openrlhf_experience_maker
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

from .reward import coherent_reward


class CoherentExperienceMaker(RemoteExperienceMaker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.coherent = self.args.coherent
        self._reference_refs = None
        # Forwards run by the coherent actor in the last step (one per micro-batch and model):
        # logged, so a run shows that the SFT model is not run twice when reuse applies.
        self.last_forward_counts = {"base": 0, "sft": 0}
        self.rollout_step = 0
        self.sft_logp_reference = None  # --coherent.sft_logp_floor: per-token log p_SFT of the first rollout
        self.floored = 0  # samples the floor guard replaced in the last rollout

    def _dispatch_forward(self, group, sync_condition, **kwargs):
        ref = super()._dispatch_forward(group, sync_condition, **kwargs)
        if group is not None and group is self.initial_model_group:
            self._reference_refs = ref
        return ref

    @torch.no_grad()
    def make_experience(self, samples_list: List[Experience]) -> List[Experience]:
        args = self.args
        duplicate_factor = args.ds.ring_attn_size * args.ds.tensor_parallel_size
        coherent_refs = self._dispatch_forward(
            self.reward_model_group,
            args.train.colocate_all or args.train.colocate_critic_reward,
            sequences=[s.sequences for s in samples_list],
            action_mask=[s.action_mask for s in samples_list],
            attention_mask=[s.attention_mask for s in samples_list],
        )
        # A non-None reward tells the parent the reward is provided; the real value is set below.
        for samples in samples_list:
            samples.rewards = torch.zeros(len(samples.sequences))

        self._reference_refs = None
        samples_list = super().make_experience(samples_list)

        terms = self._flatten_results(coherent_refs, duplicate_factor)
        if self.coherent.reuse_ref_logprobs:
            sft_log_probs = self._flatten_results(self._reference_refs, duplicate_factor)
        else:
            sft_log_probs = [t["sft"] for t in terms]
        self._reference_refs = None
        self.floored = 0
        self.last_forward_counts = {"base": len(terms), "sft": sum("sft" in t for t in terms)}

        c = self.coherent
        options = dict(reward_type=c.reward_type, aggregate=c.aggregate, scale=c.scale, token_clip=c.token_clip)
        results = [
            coherent_reward(sft, t["base"], samples.action_mask, **options)
            for samples, t, sft in zip(samples_list, terms, sft_log_probs)
        ]
        if self.coherent.sft_logp_floor is not None:
            self._apply_sft_logp_floor(results)

        for samples, result in zip(samples_list, results):
            if result.token_rewards is not None:
                samples.info["coherent_token_rewards"] = result.token_rewards  # consumed below, not logged
                logged_reward = result.token_rewards.sum(dim=-1)
            else:
                logged_reward = result.reward
            samples.rewards = result.reward
            # Per-sample diagnostics: OpenRLHF's actor averages every info tensor into its training
            # status (logged next to its own metrics); the trainer logs rollout-level coherent/* stats.
            samples.info["reward"] = logged_reward
            samples.info["coherent_reward"] = logged_reward
            samples.info["coherent_sft_logp"] = result.sft_log_prob
            samples.info["coherent_base_logp"] = result.base_log_prob
            samples.info["coherent_log_ratio"] = result.log_ratio_sum
        return samples_list

    def _apply_sft_logp_floor(self, results) -> None:
        """Typical-set guard: a response the SFT model itself finds far less likely per token than its
        own samples is outside what the demonstrations taught; there the reward is dominated by what
        the base finds unlikely (the repetition hack), so it gets the rollout's lowest reward instead."""
        per_token = [r.sft_log_prob / r.length.clamp(min=1) for r in results]
        if self.sft_logp_reference is None:  # first rollout: the SFT model's own samples
            self.sft_logp_reference = torch.cat(per_token).mean().item()
        floor = self.sft_logp_reference - self.coherent.sft_logp_floor
        lowest = min(r.reward.min().item() for r in results)
        for result, ppt in zip(results, per_token):
            off = ppt < floor
            result.reward = torch.where(off, torch.full_like(result.reward, lowest), result.reward)
            if result.token_rewards is not None:
                result.token_rewards[off] = 0.0
            self.floored += int(off.sum())

    @torch.no_grad()
    def compute_advantages_and_returns(self, experiences: List[Experience]) -> List[Experience]:
        # Logged here, not in make_experience: these are exactly the rewards OpenRLHF shapes next.
        self.rollout_step += 1
        if self.coherent.rollout_log:
            self._write_rollout_log(experiences)
        if self.coherent.reward_type != "token":
            return super().compute_advantages_and_returns(experiences)
        # Token-wise variant (eq. 8): OpenRLHF's compute_reward only places a scalar on the last
        # token. Add each experience's per-token rewards to what it returns, matched by the
        # experience's KL tensor, which the parent passes to compute_reward for that experience.
        dense = {id(e.kl): e.info.pop("coherent_token_rewards") for e in experiences}
        with _add_token_rewards(dense):
            return super().compute_advantages_and_returns(experiences)

    def cut_rollout_log_after(self, rollout_step: int) -> int:
        """On resume: drop the rows of rollouts after the checkpoint, which the resumed run makes
        again (and of a line cut by the kill), so each step appears once. Returns the rows dropped."""
        path = self.coherent.rollout_log
        if not path or not os.path.exists(path):
            return 0
        kept, dropped = [], 0
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    keep = json.loads(line)["step"] <= rollout_step
                except (json.JSONDecodeError, KeyError, TypeError):
                    keep = False
                if keep:
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    dropped += 1
        if dropped:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(kept)
            os.replace(path + ".tmp", path)
        return dropped

    def _write_rollout_log(self, experiences: List[Experience]) -> None:
        """Append one JSON line per sample: token ids, text, the reward and its terms."""
        with open(self.coherent.rollout_log, "a", encoding="utf-8") as f:
            for e in experiences:
                for i in range(len(e.sequences)):
                    action = e.action_mask[i].bool()
                    first = int(action.nonzero()[0]) + 1 if action.any() else e.sequences.size(1)
                    prompt_ids = e.sequences[i, :first][e.attention_mask[i, :first].bool()].tolist()
                    response_ids = e.sequences[i, 1:][action].tolist()
                    row = {
                        "step": self.rollout_step,
                        "prompt": self.tokenizer.decode(prompt_ids, skip_special_tokens=True),
                        "response": self.tokenizer.decode(response_ids, skip_special_tokens=True),
                        "prompt_ids": prompt_ids,
                        "response_ids": response_ids,
                        "reward": e.rewards[i].item(),
                        "sft_logp": e.info["coherent_sft_logp"][i].item(),
                        "base_logp": e.info["coherent_base_logp"][i].item(),
                        "truncated": bool(e.truncated[i].item()) if e.truncated is not None else None,
                        "label": e.labels[i] if i < len(e.labels) else None,
                    }
                    f.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def _add_token_rewards(dense_by_kl_id):
    original = openrlhf_experience_maker.compute_reward

    def compute_reward_with_token_rewards(r, kl_coef, kl, action_mask=None, reward_clip_range=None):
        reward = original(r, kl_coef, kl, action_mask=action_mask, reward_clip_range=reward_clip_range)
        return reward + dense_by_kl_id[id(kl)].to(reward.dtype)

    openrlhf_experience_maker.compute_reward = compute_reward_with_token_rewards
    try:
        yield
    finally:
        openrlhf_experience_maker.compute_reward = original
