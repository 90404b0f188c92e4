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
import logging
import os
import uuid
from typing import List, Optional

import torch

import openrlhf.trainer.ppo_utils.experience_maker as openrlhf_experience_maker
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

from .files import replace_atomically
from .reward import coherent_reward

logger = logging.getLogger("openrlhf_coherent")


class CoherentExperienceMaker(RemoteExperienceMaker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.coherent = self.args.coherent
        self._reference_refs = None
        # Forwards run by the coherent actor in the last step (one per micro-batch and model):
        # logged, so a run shows that the SFT model is not run twice when reuse applies.
        self.last_forward_counts = {"base": 0, "sft": 0}
        self.rollout_step = 0
        # Tags this run's rollout-log rows (kept across resumes through the checkpoint), so a resume
        # cuts only rows this run wrote, never those of an earlier run sharing the file.
        self.run_id = uuid.uuid4().hex
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
            coherent_reward(sft, t["base"], reward_mask(samples, getattr(c, "sft_only_eos_token_ids", None)), **options)
            for samples, t, sft in zip(samples_list, terms, sft_log_probs)
        ]
        self._keep_sft_reference(results)
        if self.coherent.sft_logp_floor is not None:
            self._apply_sft_logp_floor(results)

        for samples, result in zip(samples_list, results):
            if result.token_rewards is not None:
                samples.info["coherent_token_rewards"] = result.token_rewards  # consumed below, not logged
            logged_reward = total_reward(result)
            samples.rewards = result.reward
            # Per-sample diagnostics: OpenRLHF's actor averages every info tensor into its training
            # status (logged next to its own metrics); the trainer logs rollout-level coherent/* stats.
            samples.info["reward"] = logged_reward
            samples.info["coherent_reward"] = logged_reward
            samples.info["coherent_sft_logp"] = result.sft_log_prob
            samples.info["coherent_base_logp"] = result.base_log_prob
            samples.info["coherent_log_ratio"] = result.log_ratio_sum
            # Tokens the two terms count (the response less an excluded SFT-only EOS): per-token stats.
            samples.info["coherent_length"] = result.length.float()
        return samples_list

    def _keep_sft_reference(self, results) -> None:
        """The SFT model's own samples (the first rollout of a fresh run) anchor the floor guard: their
        mean per-token log p_SFT is kept, and checkpointed, whether or not a guard is on, so a guard
        switched on at a resume compares with the SFT model, not with the policy being resumed."""
        if self.sft_logp_reference is not None:
            return
        if self.rollout_step > 0:
            if self.coherent.sft_logp_floor is None:
                return  # resumed from a checkpoint without one: nothing measured it from the SFT model
            logger.warning(
                "openrlhf_coherent: --coherent.sft_logp_floor is on but the checkpoint resumed from holds no SFT "
                "reference (written by an older version): the floor is anchored to this rollout's policy, not "
                "to the SFT model's own samples"
            )
        # Responses with no counted token (only an excluded EOS) say nothing about per-token likelihood.
        per_token = torch.cat([(r.sft_log_prob / r.length.clamp(min=1))[r.length > 0] for r in results])
        if len(per_token):
            self.sft_logp_reference = per_token.mean().item()

    def _apply_sft_logp_floor(self, results) -> None:
        """Typical-set guard: a response the SFT model itself finds far less likely per token than its
        own samples is outside what the demonstrations taught; there the reward is dominated by what
        the base finds unlikely (the repetition hack), so it gets the rollout's lowest reward instead.

        "Reward" is the total a sample gets: for the token-wise variant the sum of its per-token
        rewards. A floored token-wise sample loses its per-token rewards and gets the rollout's lowest
        total as one scalar at its last token."""
        per_token = [r.sft_log_prob / r.length.clamp(min=1) for r in results]
        floor = self.sft_logp_reference - self.coherent.sft_logp_floor
        lowest = min(total_reward(r).min().item() for r in results)
        for result, ppt in zip(results, per_token):
            off = ppt < floor
            result.reward = torch.where(off, torch.full_like(result.reward, lowest), result.reward)
            if result.token_rewards is not None:
                result.token_rewards[off] = 0.0
            self.floored += int(off.sum())

    @torch.no_grad()
    def compute_advantages_and_returns(self, experiences: List[Experience]) -> List[Experience]:
        self.rollout_step += 1
        if self.coherent.reward_type != "token":
            experiences = super().compute_advantages_and_returns(experiences)
        else:
            # Token-wise variant (eq. 8): OpenRLHF's compute_reward only places a scalar on the last
            # token. Add each experience's per-token rewards to what it returns, matched by the
            # experience's KL tensor, which the parent passes to compute_reward for that experience.
            dense = [e.info.pop("coherent_token_rewards") for e in experiences]
            with _add_token_rewards({id(e.kl): d for e, d in zip(experiences, dense)}):
                experiences = super().compute_advantages_and_returns(experiences)
            # The parent's length penalties reset info["reward"] to the scalar part (0 here, plus any
            # overlong penalty): make it the total again, for rollout/reward_mean and its "Sample:" line.
            for e, d in zip(experiences, dense):
                e.info["reward"] = e.rewards + d.to(e.rewards.dtype).sum(dim=-1)
        # Logged after the parent's length penalties: the reward PPO trains on (before baselines and KL).
        if self.coherent.rollout_log:
            self._write_rollout_log(experiences)
        return experiences

    def cut_rollout_log_after(self, rollout_step: int, run_id: Optional[str]) -> int:
        """On resume: drop this run's rows of rollouts after the checkpoint, which the resumed run
        makes again (and a last line cut short by the kill), so each step appears once. Rows of
        other runs stay. `run_id` None (a checkpoint of an older version, whose rows had no run id):
        only rows without one are candidates. Returns the rows dropped."""
        path = self.coherent.rollout_log
        if not path or not os.path.exists(path):
            return 0
        kept, dropped = [], 0
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
                keep = row.get("run_id") != run_id or row["step"] <= rollout_step
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                # config.check_rollout_log admitted only our rows, plus a last line a kill cut short.
                keep = number != len(lines)
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
        if dropped:
            with replace_atomically(path) as f:
                f.writelines(kept)
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
                        "run_id": self.run_id,
                        "step": self.rollout_step,
                        "prompt": self.tokenizer.decode(prompt_ids, skip_special_tokens=True),
                        "response": self.tokenizer.decode(response_ids, skip_special_tokens=True),
                        "prompt_ids": prompt_ids,
                        "response_ids": response_ids,
                        "reward": e.info["reward"][i].item(),
                        "sft_logp": e.info["coherent_sft_logp"][i].item(),
                        "base_logp": e.info["coherent_base_logp"][i].item(),
                        "truncated": bool(e.truncated[i].item()) if e.truncated is not None else None,
                        "label": e.labels[i] if i < len(e.labels) else None,
                    }
                    f.write(json.dumps(row) + "\n")


def total_reward(result) -> torch.Tensor:
    """(B,) what each sample gets in all: the scalar plus, for the token-wise variant, its per-token rewards."""
    if result.token_rewards is None:
        return result.reward
    return result.reward + result.token_rewards.sum(dim=-1)


def reward_mask(samples, sft_only_eos_token_ids) -> torch.Tensor:
    """The response positions the coherent reward counts: `action_mask`, less the final token of a
    finished response when it is an EOS the SFT model stops on and the base does not (see
    `config.check_same_tokenizer`): the base would score it as an ordinary, often very unlikely
    token, a near-constant bonus for every finished response. Excluded from both terms."""
    mask = samples.action_mask
    if not sft_only_eos_token_ids:
        return mask
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, -1).max(dim=-1).values  # last response position, -1 if none
    rows = torch.arange(mask.size(0), device=mask.device)
    # action position j is the token sequences[:, j + 1]
    final_token = samples.sequences[rows, last.clamp(min=0) + 1]
    ends_with_sft_eos = (last >= 0) & torch.isin(final_token, torch.tensor(sft_only_eos_token_ids, device=mask.device))
    mask = mask.clone()
    mask[rows[ends_with_sft_eos], last[ends_with_sft_eos]] = 0
    return mask


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
